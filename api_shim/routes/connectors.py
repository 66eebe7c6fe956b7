"""Connectors group: `/projects/{id}/connectors...` (CRUD, test, schema, sync, runs, uploads)."""

from __future__ import annotations

from typing import Annotated

from fastapi import BackgroundTasks, Body, Query, Request, status
from starlette.concurrency import run_in_threadpool

from api_shim.dagster_client import DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, SettingsDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, files_body, rime_router, uploaded_files
from api_shim.schemas.common import error_responses
from api_shim.schemas.connectors import (
    ConnectionTestResult,
    ConnectorCreate,
    ConnectorList,
    ConnectorResponse,
    ConnectorRunList,
    ConnectorUpdate,
    DiscoveredSchema,
    RunStarted,
    SyncRequest,
    UploadedFiles,
)
from api_shim.services import connector_runs, uploads
from api_shim.services import connectors as service
from api_shim.services.auth import Principal
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/connectors", tags=["Connectors"])
ConnectorPage = Annotated[PageRequest, page_params(service.CONNECTORS)]


def _connector_ids(principal: Principal, project_id: str, connector_id: str) -> dict[str, str]:
    """The keywords naming the connector to a service run in the threadpool (it reaches the source or writes files:
    seconds), which opens sessions of its own rather than holding the request's."""
    return {"tenant_id": principal.tenant_id, "project_id": project_id, "connector_id": connector_id}


@router.get(
    "", name="connector.list", response_model=ConnectorList, responses=error_responses(404), summary="List connectors"
)
def list_connectors(
    id: str,
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    page: ConnectorPage,
) -> ConnectorList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, dagster, codec, project, page)


@router.post(
    "",
    name="connector.create",
    status_code=status.HTTP_201_CREATED,
    response_model=ConnectorResponse,
    responses=error_responses(404, 409, 422),
    summary="Create a connector",
)
def create_connector(
    id: str, body: ConnectorCreate, request: Request, principal: Engineer, session: SessionDep, settings: SettingsDep
) -> ConnectorResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    state = request.app.state
    return service.create(session, project, body, state.cipher, settings=settings, catalog=state.iceberg)


@router.get(
    "/{connectorId}",
    name="connector.get",
    response_model=ConnectorResponse,
    responses=error_responses(404),
    summary="Get connector details",
)
def get_connector(
    id: str, connectorId: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep
) -> ConnectorResponse:
    return service.describe(session, dagster, get_project(session, id, tenant_id=principal.tenant_id), connectorId)


@router.patch(
    "/{connectorId}",
    name="connector.update",
    response_model=ConnectorResponse,
    responses=error_responses(404, 409, 422),
    summary="Update connector configuration",
)
def update_connector(
    id: str,
    connectorId: str,
    body: ConnectorUpdate,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
    dagster: DagsterClientDep,
) -> ConnectorResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.update(session, dagster, project, connectorId, body, request.app.state.cipher, settings=settings)


@router.delete(
    "/{connectorId}",
    name="connector.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete a connector",
)
def delete_connector(
    id: str,
    connectorId: str,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    purge_data: Annotated[bool, Query(description="Also drop the connector's Iceberg tables.")] = False,
) -> None:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    connector = service.delete(session, project, connectorId, settings=settings)
    if purge_data:  # after the commit; a failed purge is logged
        catalog = request.app.state.iceberg
        background.add_task(service.purge_connector_data, catalog, project.namespace, connector.table_prefix)


@router.post(
    "/{connectorId}/test",
    name="connector.test",
    response_model=ConnectionTestResult,
    responses=error_responses(404),
    summary="Test the connection (and refresh the tables a connector without selected_tables syncs)",
)
async def test_connector(
    id: str, connectorId: str, request: Request, principal: Engineer, settings: SettingsDep
) -> ConnectionTestResult:
    state = request.app.state
    return await run_in_threadpool(
        service.test_connection, state.sessions, state.cipher, settings, **_connector_ids(principal, id, connectorId)
    )


@router.get(
    "/{connectorId}/schema",
    name="connector.schema",
    response_model=DiscoveredSchema,
    responses=error_responses(404, 422),
    summary="Get discovered schema (live; stores nothing)",
)
async def connector_schema(
    id: str, connectorId: str, request: Request, principal: Viewer, settings: SettingsDep
) -> DiscoveredSchema:
    state = request.app.state
    return await run_in_threadpool(
        service.discover_schema, state.sessions, state.cipher, settings, **_connector_ids(principal, id, connectorId)
    )


@router.post(
    "/{connectorId}/sync",
    name="connector.sync",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunStarted,
    responses=error_responses(404, 409, 422),
    dependencies=[Idempotent],
    summary="Trigger a manual sync",
)
def sync_connector(
    id: str,
    connectorId: str,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
    body: Annotated[SyncRequest | None, Body()] = None,
) -> RunStarted:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    full_refresh = bool(body and body.full_refresh)
    return connector_runs.launch_sync(
        session, dagster, project, connectorId, full_refresh=full_refresh, triggered_by=principal.email
    )


@router.get(
    "/{connectorId}/runs",
    name="connector.runs",
    response_model=ConnectorRunList,
    responses=error_responses(404),
    summary="List sync history",
)
def connector_runs_list(
    id: str,
    connectorId: str,
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> ConnectorRunList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return connector_runs.run_history(session, dagster, codec, project, connectorId, limit=limit, cursor=cursor)


@router.post(
    "/{connectorId}/files",
    name="connector.upload",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadedFiles,
    responses=error_responses(404, 413, 422),
    summary="Upload files to a `files` connector's upload area (32 MB per file)",
    openapi_extra=files_body("files", "CSV, Parquet or JSON-lines files."),
)
async def upload_files(
    id: str, connectorId: str, request: Request, principal: Engineer, settings: SettingsDep
) -> UploadedFiles:
    state = request.app.state
    async with uploaded_files(request, "files") as files:  # read only now that the caller passed the guard
        return await run_in_threadpool(
            uploads.save_uploads,
            state.sessions,
            state.cipher,
            settings,
            files,
            **_connector_ids(principal, id, connectorId),
        )


@router.get(
    "/{connectorId}/files",
    name="connector.files",
    response_model=UploadedFiles,
    responses=error_responses(404),
    summary="List the files in a connector's upload area",
)
def list_uploaded_files(
    id: str, connectorId: str, principal: Viewer, session: SessionDep, settings: SettingsDep
) -> UploadedFiles:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return uploads.uploaded_files(session, project, connectorId, settings=settings)
