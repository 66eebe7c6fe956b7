"""Connectors group: `/projects/{id}/connectors...` (CRUD, test, schema, sync, runs, uploads)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import BackgroundTasks, Body, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api_shim.dagster_client import DagsterClient, DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, SettingsDep, Viewer
from api_shim.errors import Unprocessable, ValidationFailed
from api_shim.pagination import Listing, Page
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, files_body, rime_router, uploaded_files
from api_shim.schemas.common import error_responses
from api_shim.schemas.connectors import (
    ConnectionTestResult,
    ConnectorCreate,
    ConnectorList,
    ConnectorResponse,
    ConnectorRun,
    ConnectorRunList,
    ConnectorUpdate,
    DiscoveredSchema,
    LastSync,
    RunStarted,
    SyncRequest,
    TableRunSummary,
    UploadedFile,
    UploadedFiles,
)
from api_shim.services import connectors as service
from api_shim.services import uploads
from api_shim.services.projects import get_project
from api_shim.services.runs import RunView, launch_summary, run_page, run_view
from rime_dagster.connectors.names import connector_job_name, connector_tags, table_asset_key
from rime_dagster.platform import run_tags
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.models import Connector, Project
from rime_dagster.store.session import release

log = logging.getLogger(__name__)
router = rime_router(prefix="/projects/{id}/connectors", tags=["Connectors"])

CONNECTORS = Listing(
    "connectors",
    {"created_at": Connector.created_at, "updated_at": Connector.updated_at, "name": Connector.name},
    Connector.id,
)
ConnectorPage = page_params(CONNECTORS)
CONNECTION_TIMEOUT_SECONDS = 10.0


def _cipher(request: Request) -> CredentialCipher:
    return request.app.state.cipher


def _project(session: Session, principal, project_id: str) -> Project:
    return get_project(session, project_id, tenant_id=principal.tenant_id)


def _last_run(dagster: DagsterClient, connector: Connector) -> RunView | None:
    records = dagster.run_records(tags={run_tags.CONNECTOR_ID: connector.id}, limit=1)
    return run_view(dagster, records[0], with_events=False) if records else None


def _response(connector: Connector, last: RunView | None) -> ConnectorResponse:
    if connector.paused:
        state = "paused"
    elif last is None:
        state = "created"
    else:
        state = "error" if last.status == "failed" else "active"
    return ConnectorResponse(
        id=connector.id,
        name=connector.name,
        connector_type=connector.connector_type,
        config=connector.config,
        credentials_set=connector.credentials_encrypted is not None,
        selected_tables=connector.selected_tables,
        schedule=connector.schedule,
        sync_mode=connector.sync_mode,
        cursor_fields=connector.cursor_fields,
        status=state,
        created_at=connector.created_at,
        updated_at=connector.updated_at,
        last_sync=LastSync(
            run_id=last.run_id, status=last.status, started_at=last.started_at, finished_at=last.finished_at
        )
        if last
        else None,
    )


def _run_response(connector: Connector, namespace: str, view: RunView) -> ConnectorRun:
    tables: list[TableRunSummary] = []
    for table in connector.tables:
        meta = view.events.materialized.get(tuple(table_asset_key(namespace, connector.table_prefix, table)))
        if meta is not None:
            tables.append(TableRunSummary(name=table, rows=meta.get("rows"), status="succeeded"))
        else:
            pending = {"queued": "pending", "running": "running"}.get(view.status, "failed")
            tables.append(TableRunSummary(name=table, rows=None, status=pending))
    return ConnectorRun(
        run_id=view.run_id,
        dagster_run_id=view.dagster_run_id,
        dagster_url=view.dagster_url,
        status=view.status,
        started_at=view.started_at,
        finished_at=view.finished_at,
        duration_seconds=view.duration_seconds,
        rows_synced=sum(t.rows or 0 for t in tables),
        tables=tables,
        error=view.error,
    )


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
):
    project = _project(session, principal, id)
    stmt = select(Connector).where(Connector.project_id == project.id)
    result = CONNECTORS.page(session, stmt, page, codec, {"project": project.id})
    return Page[ConnectorResponse](
        data=[_response(c, _last_run(dagster, c)) for c in result.items],
        next_cursor=result.next_cursor,
        has_more=result.has_more,
    )


@router.post(
    "",
    name="connector.create",
    status_code=status.HTTP_201_CREATED,
    response_model=ConnectorResponse,
    responses=error_responses(404, 409),
    summary="Create a connector",
)
def create_connector(
    id: str,
    body: ConnectorCreate,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
):
    project = _project(session, principal, id)
    connector = service.create_connector(
        session, project, body, _cipher(request), settings=settings, catalog=request.app.state.iceberg
    )
    service.refresh_known_tables(connector, _cipher(request), settings, timeout=CONNECTION_TIMEOUT_SECONDS)
    return _response(connector, None)


@router.get(
    "/{connectorId}",
    name="connector.get",
    response_model=ConnectorResponse,
    responses=error_responses(404),
    summary="Get connector details",
)
def get_connector(id: str, connectorId: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep):
    connector = service.get_connector(session, _project(session, principal, id), connectorId)
    return _response(connector, _last_run(dagster, connector))


@router.patch(
    "/{connectorId}",
    name="connector.update",
    response_model=ConnectorResponse,
    responses=error_responses(404, 409),
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
):
    connector = service.get_connector(session, _project(session, principal, id), connectorId)
    changes = body.model_dump(exclude_unset=True)
    service.update_connector(session, connector, changes, _cipher(request), settings=settings)
    if changes.keys() & {"config", "credentials", "selected_tables"}:
        service.refresh_known_tables(connector, _cipher(request), settings, timeout=CONNECTION_TIMEOUT_SECONDS)
    return _response(connector, _last_run(dagster, connector))


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
):
    project = _project(session, principal, id)
    connector = service.get_connector(session, project, connectorId)
    service.delete_connector(session, connector, settings)
    if purge_data:
        background.add_task(
            service.purge_connector_data, request.app.state.iceberg, project.namespace, connector.table_prefix
        )


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
    def run_test() -> ConnectionTestResult:
        with request.app.state.sessions() as session:
            connector = service.get_connector(session, _project(session, principal, id), connectorId)
            source = service.build_source(connector, _cipher(request), settings)
            left_out = service.left_out_tables_note(connector)
            discovers = connector.selected_tables is None
        result = source.test(CONNECTION_TIMEOUT_SECONDS)
        if result.success and discovers:
            # The explicit refresh of what the connector syncs: a data engineer's write, unlike GET .../schema.
            names = service.discovered_names(source, timeout=CONNECTION_TIMEOUT_SECONDS, connector_id=connectorId)
            with request.app.state.sessions.begin() as session:
                connector = session.get(Connector, connectorId)
                if connector is not None:
                    service.store_known_tables(connector, names)
                    left_out = service.left_out_tables_note(connector)
        message = f"{result.message} {left_out}" if result.success and left_out else result.message
        return ConnectionTestResult(success=result.success, message=message)

    # A slow source must not hold a DB transaction (SQLite: the write lock) open.
    return await run_in_threadpool(run_test)


@router.get(
    "/{connectorId}/schema",
    name="connector.schema",
    response_model=DiscoveredSchema,
    responses=error_responses(404, 422),
    summary="Get discovered schema (live; stores nothing)",
)
async def connector_schema(id: str, connectorId: str, request: Request, principal: Viewer, settings: SettingsDep):
    def discover() -> DiscoveredSchema:
        # A read: the live schema, nothing stored (a stored change would reload the Dagster definitions).
        with request.app.state.sessions() as session:
            connector = service.get_connector(session, _project(session, principal, id), connectorId)
            source = service.build_source(connector, _cipher(request), settings)
        tables = service.discover(source, timeout=CONNECTION_TIMEOUT_SECONDS)
        return DiscoveredSchema.model_validate(
            {"tables": [{**t.__dict__, "columns": [c.__dict__ for c in t.columns]} for t in tables]}
        )

    return await run_in_threadpool(discover)


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
):
    project = _project(session, principal, id)
    connector = service.get_connector(session, project, connectorId)
    if not connector.tables:
        raise Unprocessable("The connector has no tables to sync: select tables or make some discoverable first.")
    full_refresh = bool(body and body.full_refresh)
    release(session)
    tags = {
        **connector_tags(project.id, connector.id),
        run_tags.FULL_REFRESH: run_tags.flag(full_refresh),
        run_tags.TRIGGERED_BY: principal.email,
    }
    launched = dagster.launch_run(
        connector_job_name(project.namespace),
        generation=project.definitions_generation,
        tags=tags,
        # The project's sync job, this connector's tables.
        asset_selection=[table_asset_key(project.namespace, connector.table_prefix, t) for t in connector.tables],
    )
    return RunStarted(**launch_summary(dagster, launched))


@router.get(
    "/{connectorId}/runs",
    name="connector.runs",
    response_model=ConnectorRunList,
    responses=error_responses(404),
    summary="List sync history",
)
def connector_runs(
    id: str,
    connectorId: str,
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query()] = None,
):
    project = _project(session, principal, id)
    connector = service.get_connector(session, project, connectorId)
    release(session)
    page = run_page(
        dagster,
        codec,
        scope=f"runs:{connector.id}",
        tags={run_tags.CONNECTOR_ID: connector.id},
        limit=limit,
        cursor=cursor,
    )
    runs = [_run_response(connector, project.namespace, run_view(dagster, r)) for r in page.records]
    return ConnectorRunList(data=runs, next_cursor=page.next_cursor, has_more=page.has_more)


@router.post(
    "/{connectorId}/files",
    name="connector.upload",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadedFiles,
    responses=error_responses(404, 413, 422),
    summary="Upload files to a `files` connector's upload area (32 MB per file)",
    openapi_extra=files_body("files", "CSV, Parquet or JSON-lines files."),
)
async def upload_files(id: str, connectorId: str, request: Request, principal: Engineer, settings: SettingsDep):
    def save(files: list[UploadFile]) -> UploadedFiles:
        with request.app.state.sessions() as session:
            connector = service.get_connector(session, _project(session, principal, id), connectorId)
        if connector.connector_type != "files":
            raise Unprocessable("Only `files` connectors have an upload area.")
        names = [uploads.check_name(f.filename, i) for i, f in enumerate(files)]
        if len(set(names)) != len(names):
            raise ValidationFailed.field("files", "File names must be unique within one upload.")
        # All-or-nothing: every file is checked before any is written.
        uploads.check_sizes(
            [(n, uploads.file_size(f.file)) for n, f in zip(names, files, strict=True)], settings.upload_max_file_bytes
        )
        directory = service.upload_dir(settings, connector)
        stored = [uploads.store(directory, n, f.file) for n, f in zip(names, files, strict=True)]
        if connector.selected_tables is None:
            with request.app.state.sessions.begin() as session:
                fresh = session.get(Connector, connector.id)
                service.refresh_known_tables(fresh, _cipher(request), settings, timeout=CONNECTION_TIMEOUT_SECONDS)
        return UploadedFiles(files=[UploadedFile(**s.__dict__) for s in stored])

    async with uploaded_files(request, "files") as files:  # read only now that the caller passed the guard
        return await run_in_threadpool(save, files)


@router.get(
    "/{connectorId}/files",
    name="connector.files",
    response_model=UploadedFiles,
    responses=error_responses(404),
    summary="List the files in a connector's upload area",
)
def list_uploaded_files(id: str, connectorId: str, principal: Viewer, session: SessionDep, settings: SettingsDep):
    connector = service.get_connector(session, _project(session, principal, id), connectorId)
    return UploadedFiles(
        files=[UploadedFile(**s.__dict__) for s in uploads.list_files(service.upload_dir(settings, connector))]
    )
