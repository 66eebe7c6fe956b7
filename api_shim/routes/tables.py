"""Tables group: the project's Iceberg tables (what landed), their schema and a preview."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from api_shim.deps import CursorCodecDep, Viewer, pagination
from api_shim.pagination import PageRequest
from api_shim.routes._reads import read_context, read_services
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.tables import TableList, TablePreview, TableSchemaResponse
from api_shim.services import tables as service

router = rime_router(prefix="/projects/{id}/tables", tags=["Tables"])
MAX_PREVIEW_ROWS = 1000
TablePage = Annotated[PageRequest, Depends(pagination("name", default_sort="name"))]

# Each route reads the catalog in a worker thread, with no request transaction open (see services/tables.py).


@router.get(
    "",
    name="table.list",
    response_model=TableList,
    responses=error_responses(404),
    summary="List the project's Iceberg tables",
)
async def list_tables(
    id: str, request: Request, principal: Viewer, codec: CursorCodecDep, page: TablePage
) -> TableList:
    state = request.app.state
    return await run_in_threadpool(
        service.list_tables,
        state.sessions,
        state.iceberg,
        tenant_id=principal.tenant_id,
        project_id=id,
        page=page,
        codec=codec,
    )


@router.get(
    "/{table}/schema",
    name="table.schema",
    response_model=TableSchemaResponse,
    responses=error_responses(404),
    summary="Get a table's current schema",
)
async def table_schema(id: str, table: str, request: Request, principal: Viewer) -> TableSchemaResponse:
    state = request.app.state
    return await run_in_threadpool(
        service.table_schema, state.sessions, state.iceberg, tenant_id=principal.tenant_id, project_id=id, table=table
    )


@router.get(
    "/{table}/preview",
    name="table.preview",
    response_model=TablePreview,
    responses=error_responses(400, 404, 422),
    summary="Preview a table's rows (decimals as strings, binary as base64), now or at a snapshot",
    description="Masked per the project's masking policies for the caller's role; a read in clear by an exempt "
    "role is audited as `table.read_unmasked`.",
)
async def table_preview(
    id: str,
    table: str,
    request: Request,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=MAX_PREVIEW_ROWS)] = 100,
    snapshot_id: Annotated[
        int | None, Query(description="Time travel: the rows as of this snapshot (see `.../snapshots`).")
    ] = None,
) -> TablePreview:
    return await run_in_threadpool(
        service.preview_table,
        read_services(request),
        read_context(request, principal),
        project_id=id,
        table=table,
        limit=limit,
        snapshot_id=snapshot_id,
    )
