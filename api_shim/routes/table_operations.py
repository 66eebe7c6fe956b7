"""Table operations: `/projects/{id}/tables/{table}/...` health, snapshot history, maintenance and schema evolution.

Each operation is a run of the project's table maintenance job, answered 202 with the run, as a connector sync.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Depends, Request, status

from api_shim.dagster_client import DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, Viewer, pagination
from api_shim.errors import ValidationFailed
from api_shim.pagination import PageRequest
from api_shim.routing import Idempotent, rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.table_operations import (
    AddColumnRequest,
    CompactRequest,
    ExpireSnapshotsRequest,
    RemoveOrphanFilesRequest,
    RenameColumnRequest,
    SnapshotList,
    TableHealthResponse,
    TableOperationRun,
)
from api_shim.services import table_operations as service
from api_shim.services.auth import Principal

router = rime_router(prefix="/projects/{id}/tables", tags=["Tables"])
SnapshotPage = Annotated[PageRequest, Depends(pagination("committed_at", default_sort="committed_at"))]
LAUNCH: dict[str, Any] = {
    "status_code": status.HTTP_202_ACCEPTED,
    "response_model": TableOperationRun,
    "responses": error_responses(400, 404, 409, 422, 503),
    "dependencies": [Idempotent],
}


def _launch(
    request: Request,
    principal: Principal,
    dagster: DagsterClientDep,
    project_id: str,
    table: str,
    operation: str,
    fields: dict[str, Any],
) -> TableOperationRun:
    state = request.app.state
    return service.launch_operation(
        state.sessions,
        state.iceberg,
        dagster,
        tenant_id=principal.tenant_id,
        project_id=project_id,
        table=table,
        operation=operation,
        fields=fields,
        triggered_by=principal.email,
    )


@router.get(
    "/{table}/health",
    name="table.health",
    response_model=TableHealthResponse,
    responses=error_responses(404),
    summary="Table health: snapshots, data and delete files, small files, sizes and a recommendation",
)
def table_health(id: str, table: str, request: Request, principal: Viewer) -> TableHealthResponse:
    state = request.app.state
    return service.table_health(
        state.sessions, state.iceberg, tenant_id=principal.tenant_id, project_id=id, table=table
    )


@router.get(
    "/{table}/snapshots",
    name="table.snapshots",
    response_model=SnapshotList,
    responses=error_responses(400, 404),
    summary="List the table's snapshots (its history; preview one with `?snapshot_id=`)",
)
def table_snapshots(
    id: str, table: str, request: Request, principal: Viewer, codec: CursorCodecDep, page: SnapshotPage
) -> SnapshotList:
    state = request.app.state
    return service.snapshots(
        state.sessions,
        state.iceberg,
        tenant_id=principal.tenant_id,
        project_id=id,
        table=table,
        page=page,
        codec=codec,
    )


@router.post("/{table}/compact", name="table.compact", summary="Compact the table's small data files", **LAUNCH)
def compact(
    id: str,
    table: str,
    request: Request,
    principal: Engineer,
    dagster: DagsterClientDep,
    body: Annotated[CompactRequest | None, Body()] = None,
) -> TableOperationRun:
    fields = (body or CompactRequest()).model_dump(exclude_none=True)
    return _launch(request, principal, dagster, id, table, "compact", fields)


@router.post(
    "/{table}/expire-snapshots",
    name="table.expire_snapshots",
    summary="Expire old snapshots (the newest `retain_last` and the current one are kept)",
    **LAUNCH,
)
def expire_snapshots(
    id: str,
    table: str,
    request: Request,
    principal: Engineer,
    dagster: DagsterClientDep,
    body: Annotated[ExpireSnapshotsRequest | None, Body()] = None,
) -> TableOperationRun:
    fields = (body or ExpireSnapshotsRequest()).model_dump(exclude_none=True)
    return _launch(request, principal, dagster, id, table, "expire_snapshots", fields)


@router.post(
    "/{table}/remove-orphan-files",
    name="table.remove_orphan_files",
    summary="Delete files under the table's location that no snapshot or metadata file references",
    **LAUNCH,
)
def remove_orphan_files(
    id: str,
    table: str,
    request: Request,
    principal: Engineer,
    dagster: DagsterClientDep,
    body: Annotated[RemoveOrphanFilesRequest | None, Body()] = None,
) -> TableOperationRun:
    fields = (body or RemoveOrphanFilesRequest()).model_dump(exclude_none=True)
    return _launch(request, principal, dagster, id, table, "remove_orphan_files", fields)


@router.post("/{table}/columns", name="table.add_column", summary="Add a (nullable) column", **LAUNCH)
def add_column(
    id: str, table: str, body: AddColumnRequest, request: Request, principal: Engineer, dagster: DagsterClientDep
) -> TableOperationRun:
    if not body.nullable:
        raise ValidationFailed.field("nullable", "A new column must be nullable: existing rows have no value for it.")
    fields = {"name": body.name, "type": body.type, "doc": body.comment}
    return _launch(request, principal, dagster, id, table, "add_column", fields)


@router.patch("/{table}/columns/{column}", name="table.rename_column", summary="Rename a column", **LAUNCH)
def rename_column(
    id: str,
    table: str,
    column: str,
    body: RenameColumnRequest,
    request: Request,
    principal: Engineer,
    dagster: DagsterClientDep,
) -> TableOperationRun:
    return _launch(request, principal, dagster, id, table, "rename_column", {"column": column, "name": body.name})


@router.delete(
    "/{table}/columns/{column}",
    name="table.drop_column",
    summary="Drop a column (not an identifier, partition, sort or incremental cursor column)",
    **LAUNCH,
)
def drop_column(
    id: str, table: str, column: str, request: Request, principal: Engineer, dagster: DagsterClientDep
) -> TableOperationRun:
    return _launch(request, principal, dagster, id, table, "drop_column", {"column": column})
