"""Tables group: the project's Iceberg tables (what landed), their schema and a preview."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from api_shim.deps import CursorCodecDep, Viewer, pagination
from api_shim.errors import NotFound
from api_shim.pagination import PageRequest, paginate_items, scope_of
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.tables import TableColumn, TableList, TablePreview, TableResponse, TableSchemaResponse
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/tables", tags=["Tables"])
MAX_PREVIEW_ROWS = 1000
TablePage = Annotated[PageRequest, Depends(pagination("name", default_sort="name"))]


def _namespace(request: Request, principal, project_id: str) -> str:
    with request.app.state.sessions() as session:
        return get_project(session, project_id, tenant_id=principal.tenant_id).namespace


def _load(catalog, namespace: str, table: str):
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table((namespace, table))
    except (NoSuchTableError, NoSuchNamespaceError):
        raise NotFound.of("Table", table, " in this project") from None


def _describe(catalog, namespace: str, name: str) -> TableResponse:
    from rime_dagster.connectors.landing import table_stats

    stats = table_stats(catalog, (namespace, name))
    props = _load(catalog, namespace, name).properties
    source = None
    if "rime.connector_id" in props:
        source = {"connector_id": props["rime.connector_id"], "table": props.get("rime.source_table", name)}
    elif "rime.dbt_project_id" in props:
        source = {"dbt_project_id": props["rime.dbt_project_id"], "model": props.get("rime.dbt_model", name)}
    return TableResponse(
        name=name,
        namespace=namespace,
        row_count=stats.get("row_count"),
        snapshot_id=str(stats["snapshot_id"]) if stats.get("snapshot_id") is not None else None,
        updated_at=stats.get("updated_at"),
        source=source,
    )


@router.get(
    "",
    name="table.list",
    response_model=TableList,
    responses=error_responses(404),
    summary="List the project's Iceberg tables",
)
async def list_tables(id: str, request: Request, principal: Viewer, codec: CursorCodecDep, page: TablePage):
    def run() -> TableList:
        from pyiceberg.exceptions import NoSuchNamespaceError

        namespace = _namespace(request, principal, id)
        catalog = request.app.state.iceberg.catalog()
        try:
            names = [identifier[-1] for identifier in catalog.list_tables(namespace)]
        except NoSuchNamespaceError:
            names = []
        # Only the page's tables are loaded (each is a metadata file read).
        result = paginate_items(
            names, lambda name: (name,), request=page, codec=codec, scope=scope_of("table.list", {"project": id})
        )
        return TableList(
            data=[_describe(catalog, namespace, name) for name in result.items],
            next_cursor=result.next_cursor,
            has_more=result.has_more,
        )

    return await run_in_threadpool(run)


@router.get(
    "/{table}/schema",
    name="table.schema",
    response_model=TableSchemaResponse,
    responses=error_responses(404),
    summary="Get a table's current schema",
)
async def table_schema(id: str, table: str, request: Request, principal: Viewer):
    def run() -> TableSchemaResponse:
        iceberg_table = _load(request.app.state.iceberg.catalog(), _namespace(request, principal, id), table)
        columns = [
            TableColumn(name=f.name, type=str(f.field_type), nullable=not f.required)
            for f in iceberg_table.schema().fields
        ]
        return TableSchemaResponse(name=table, columns=columns)

    return await run_in_threadpool(run)


def _json_value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: a float would round
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


@router.get(
    "/{table}/preview",
    name="table.preview",
    response_model=TablePreview,
    responses=error_responses(404),
    summary="Preview a table's rows (decimals as strings, binary as base64)",
)
async def table_preview(
    id: str,
    table: str,
    request: Request,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=MAX_PREVIEW_ROWS)] = 100,
):
    def run() -> TablePreview:
        from rime_dagster.connectors.landing import preview

        catalog = request.app.state.iceberg.catalog()
        namespace = _namespace(request, principal, id)
        _load(catalog, namespace, table)
        data = preview(catalog, (namespace, table), limit)
        rows = [[_json_value(row[c]) for c in data.column_names] for row in data.to_pylist()]
        return TablePreview(columns=data.column_names, rows=rows)

    return await run_in_threadpool(run)
