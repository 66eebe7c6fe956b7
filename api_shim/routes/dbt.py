"""Transformations group: `/projects/{id}/dbt-projects...` (register, update, run, runs, models, lineage)."""

from __future__ import annotations

from typing import Annotated

from fastapi import BackgroundTasks, Body, Depends, Query, Request, status
from starlette.concurrency import run_in_threadpool

from api_shim.dagster_client import DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, SettingsDep, Viewer, pagination
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.dbt import (
    DbtModelList,
    DbtProjectCreate,
    DbtProjectDetail,
    DbtProjectList,
    DbtProjectUpdate,
    DbtRunList,
    DbtRunRequest,
    DbtRunStarted,
    Lineage,
)
from api_shim.services import dbt as service
from api_shim.services import dbt_runs
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/dbt-projects", tags=["Transformations"])
DbtProjectPage = Annotated[PageRequest, page_params(service.DBT_PROJECTS)]
ModelPage = Annotated[PageRequest, Depends(pagination("name", default_sort="name"))]


@router.get(
    "", name="dbt.list", response_model=DbtProjectList, responses=error_responses(404), summary="List dbt projects"
)
def list_dbt_projects(
    id: str,
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    page: DbtProjectPage,
) -> DbtProjectList:
    return service.list_page(session, dagster, codec, get_project(session, id, tenant_id=principal.tenant_id), page)


@router.post(
    "",
    name="dbt.create",
    status_code=status.HTTP_201_CREATED,
    response_model=DbtProjectDetail,
    responses=error_responses(404, 409, 422),
    summary="Create a dbt project",
    description="Copies (path) or checks out (git) the project under RIME_HOME, generates its profile and "
    "parses it at once: a broken project is refused with 422 and dbt's own message.",
)
async def create_dbt_project(
    id: str, body: DbtProjectCreate, request: Request, principal: Engineer, settings: SettingsDep
) -> DbtProjectDetail:
    state = request.app.state
    return await run_in_threadpool(
        service.create, state.sessions, settings, state.cipher, body, tenant_id=principal.tenant_id, project_id=id
    )


@router.get(
    "/{dbtId}",
    name="dbt.get",
    response_model=DbtProjectDetail,
    responses=error_responses(404, 422),
    summary="Get project details including lineage",
)
def get_dbt_project(
    id: str, dbtId: str, principal: Viewer, session: SessionDep, settings: SettingsDep, dagster: DagsterClientDep
) -> DbtProjectDetail:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.describe(session, settings, dagster, project, dbtId)


@router.patch(
    "/{dbtId}",
    name="dbt.update",
    response_model=DbtProjectDetail,
    responses=error_responses(404, 409, 422),
    summary="Update a dbt project",
    description="A new `source`, `target` or `vars`, or `refresh: true`, fetches and parses a new revision; "
    "a broken one is refused with 422 and the current revision stays in service.",
)
async def update_dbt_project(
    id: str,
    dbtId: str,
    body: DbtProjectUpdate,
    request: Request,
    principal: Engineer,
    settings: SettingsDep,
    dagster: DagsterClientDep,
) -> DbtProjectDetail:
    state = request.app.state
    return await run_in_threadpool(
        service.update,
        state.sessions,
        settings,
        state.cipher,
        dagster,
        body,
        tenant_id=principal.tenant_id,
        project_id=id,
        dbt_project_id=dbtId,
    )


@router.delete(
    "/{dbtId}",
    name="dbt.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete a dbt project",
)
def delete_dbt_project(
    id: str,
    dbtId: str,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    purge_data: Annotated[bool, Query(description="Also drop the Iceberg tables its models published.")] = False,
) -> None:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    row = service.delete(session, project, dbtId)
    background.add_task(service.delete_files, settings, row)  # after the commit
    if purge_data:
        background.add_task(service.purge_published, request.app.state.iceberg, project.namespace, row.slug)


@router.post(
    "/{dbtId}/run",
    name="dbt.run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DbtRunStarted,
    responses=error_responses(404, 409, 422),
    dependencies=[Idempotent],
    summary="Trigger a dbt run",
    description="Launches the project's Dagster job. `select`/`exclude` are evaluated by dbt's selector on the "
    "manifest and become the run's asset selection (tests come with the nodes they test).",
)
def run_dbt_project(
    id: str,
    dbtId: str,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
    dagster: DagsterClientDep,
    body: Annotated[DbtRunRequest | None, Body()] = None,
) -> DbtRunStarted:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    body = body or DbtRunRequest()
    return dbt_runs.launch(session, dagster, settings, project, dbtId, body, triggered_by=principal.email)


@router.get(
    "/{dbtId}/runs",
    name="dbt.runs",
    response_model=DbtRunList,
    responses=error_responses(404),
    summary="List run history",
)
def dbt_runs_list(
    id: str,
    dbtId: str,
    principal: Viewer,
    session: SessionDep,
    settings: SettingsDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> DbtRunList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return dbt_runs.run_history(session, dagster, settings, codec, project, dbtId, limit=limit, cursor=cursor)


@router.get(
    "/{dbtId}/models",
    name="dbt.models",
    response_model=DbtModelList,
    responses=error_responses(404, 422),
    summary="List models in the project",
    description="Models, seeds and snapshots with their columns, tests and latest run status.",
)
def dbt_models(
    id: str,
    dbtId: str,
    principal: Viewer,
    session: SessionDep,
    settings: SettingsDep,
    dagster: DagsterClientDep,
    codec: CursorCodecDep,
    page: ModelPage,
) -> DbtModelList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return dbt_runs.models_page(session, dagster, settings, codec, project, dbtId, page)


@router.get(
    "/{dbtId}/lineage",
    name="dbt.lineage",
    response_model=Lineage,
    responses=error_responses(404, 422),
    summary="Get the lineage DAG",
    description="Sources, seeds, models, snapshots and tests, with the connector tables that feed sources upstream.",
)
def dbt_lineage(id: str, dbtId: str, principal: Viewer, session: SessionDep, settings: SettingsDep) -> Lineage:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.lineage(session, settings, project, service.get_dbt_project(session, project, dbtId))
