"""Query group: read-only SQL over a project's tables (`POST /projects/{id}/query`), and its export as a file."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api_shim.deps import Engineer
from api_shim.middleware import READ_ONLY, STREAMED
from api_shim.routes._reads import read_context, read_services
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.query import ExportRequest, QueryRequest, QueryResult
from api_shim.services import data_reads

router = rime_router(prefix="/projects/{id}/query", tags=["Query"])

_RULES = (
    "One DuckDB SELECT (or WITH ... SELECT) over the project's Iceberg tables, named as GET .../tables lists them "
    "(`crm__customer`). Anything else is a 400 naming `sql`: other statements (writes, DDL, ATTACH, COPY, "
    "INSTALL/LOAD, PRAGMA, SET), table functions (file and HTTP reads, catalog functions), other projects' tables. "
    "Values are masked per the project's masking policies for the caller's role; a read in clear by an exempt role "
    "is audited as `table.read_unmasked`. Otherwise a query is a read, not in the audit trail (as a preview is "
    "not), unless it is denied (403). A query that runs past the statement timeout "
    "(RIME_QUERY_TIMEOUT_SECONDS) or needs more than RIME_QUERY_MEMORY_LIMIT is a 422. Needs `data_engineer`: "
    "arbitrary SQL is code the API host runs, which the roles grant from data_engineer up; viewers preview tables."
)


@router.post(
    "",
    name="query.run",
    response_model=QueryResult,
    responses=error_responses(404, 422),
    summary="Run a read-only SQL query",
    description=_RULES,
    openapi_extra={READ_ONLY: True},
)
async def run_query(id: str, body: QueryRequest, request: Request, principal: Engineer) -> QueryResult:
    columns, rows, truncated = await run_in_threadpool(
        data_reads.query,
        read_services(request),
        read_context(request, principal),
        project_id=id,
        sql=body.sql,
        limit=body.limit,
    )
    return QueryResult(columns=columns, rows=rows, truncated=truncated)


@router.post(
    "/export",
    name="query.export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The whole result, streamed: CSV with a header row, or a Parquet file.",
            "content": {media_type: {} for media_type in data_reads.EXPORT_TYPES.values()},
        },
        **error_responses(404, 422),
    },
    summary="Export a query's result as CSV or Parquet",
    description=_RULES.replace("statement timeout (RIME_QUERY_TIMEOUT_SECONDS)", "RIME_EXPORT_TIMEOUT_SECONDS")
    + " Errors found after the first rows have been sent end the stream early.",
    openapi_extra={STREAMED: True, READ_ONLY: True},
)
async def export_query(id: str, body: ExportRequest, request: Request, principal: Engineer) -> StreamingResponse:
    media_type, chunks = await run_in_threadpool(
        data_reads.export,
        read_services(request),
        read_context(request, principal),
        project_id=id,
        sql=body.sql,
        fmt=body.format,
    )
    filename = f"query.{body.format}"
    return StreamingResponse(
        chunks, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
