"""Infrastructure group: declared resources `/projects/{id}/infrastructure[/{resourceId}]` and their plan.

Declarations and plans need `lead_data_engineer` (CONTRACT: infrastructure plan/apply); viewers read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, Request, status
from starlette.concurrency import run_in_threadpool

from api_shim.dagster_client import DagsterClientDep
from api_shim.deps import CursorCodecDep, Lead, SessionDep, SettingsDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.infrastructure import (
    ApplyRequest,
    ApplyRun,
    PlanResponse,
    ResourceCreate,
    ResourceList,
    ResourceResponse,
    ResourceUpdate,
)
from api_shim.services import infrastructure as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/infrastructure", tags=["Infrastructure"])
ResourcePage = Annotated[PageRequest, page_params(service.RESOURCES)]


@router.get(
    "",
    name="infrastructure.list",
    response_model=ResourceList,
    responses=error_responses(400, 404),
    summary="List managed resources",
)
def list_resources(
    id: str, request: Request, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: ResourcePage
) -> ResourceList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, request.app.state.cipher, codec, project, page)


@router.post(
    "",
    name="infrastructure.create",
    status_code=status.HTTP_201_CREATED,
    response_model=ResourceResponse,
    responses=error_responses(404, 409),
    summary="Create a resource",
    description="Declares it (`state: pending`); nothing is made until a plan is applied. 409 when the project "
    "already declares a resource of that type and name.",
)
def create_resource(
    id: str, body: ResourceCreate, request: Request, principal: Lead, session: SessionDep
) -> ResourceResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.create(session, request.app.state.cipher, project, body)


@router.post(
    "/plan",
    name="infrastructure.plan",
    status_code=status.HTTP_201_CREATED,
    response_model=PlanResponse,
    responses=error_responses(404, 422),
    summary="Generate a plan (preview changes)",
    description="Reads the actual state of every declared resource, diffs it with the declaration and stores the "
    "plan: `create`, `update` (drift made outside the platform included), `delete` (a deleted declaration whose "
    "resource still exists) or `no-op` per resource, with `before`/`after` and, for SQL types, the statements. "
    "422 naming each resource whose actual state could not be read.",
)
def plan(id: str, request: Request, principal: Lead, session: SessionDep, settings: SettingsDep) -> PlanResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    state = request.app.state
    return service.plan(session, state.cipher, settings, state.iceberg, project, principal)


@router.post(
    "/apply",
    name="infrastructure.apply",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ApplyRun,
    responses=error_responses(404, 409, 422, 503),
    summary="Apply the current plan",
    description="Applies a stored plan (`plan_id`, default the latest) as a run of the Dagster job "
    "`infrastructure_apply`: one step per change, deletions before creates, a namespace before its tables. 409 when "
    "the plan is stale (a declaration or what exists changed since it was made), already applied or failed, or "
    "while another apply of the project runs. Each resource records its outcome (`state`, `last_error`); a failed "
    "change stops what follows, and the next plan shows what remains.",
)
async def apply(
    id: str,
    request: Request,
    principal: Lead,
    settings: SettingsDep,
    dagster: DagsterClientDep,
    body: Annotated[ApplyRequest | None, Body()] = None,
) -> ApplyRun:
    state = request.app.state
    with state.sessions() as session:
        project = get_project(session, id, tenant_id=principal.tenant_id)
    return await run_in_threadpool(
        service.apply,
        state.sessions,
        state.cipher,
        settings,
        state.iceberg,
        dagster,
        project,
        body.plan_id if body else None,
        principal.email,
    )


@router.get(
    "/{resourceId}",
    name="infrastructure.get",
    response_model=ResourceResponse,
    responses=error_responses(404),
    summary="Get resource details",
)
def get_resource(
    id: str, resourceId: str, request: Request, principal: Viewer, session: SessionDep
) -> ResourceResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.resource_response(service.get_resource(session, project, resourceId), request.app.state.cipher)


@router.patch(
    "/{resourceId}",
    name="infrastructure.update",
    response_model=ResourceResponse,
    responses=error_responses(400, 404, 409),
    summary="Update resource configuration",
    description="Replaces its config (type and name stay); secret fields left out keep their stored values. The "
    "resource is `pending` until a plan with the change is applied. 409 while it is being deleted.",
)
def update_resource(
    id: str, resourceId: str, body: ResourceUpdate, request: Request, principal: Lead, session: SessionDep
) -> ResourceResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.update(session, request.app.state.cipher, project, resourceId, body)


@router.delete(
    "/{resourceId}",
    name="infrastructure.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete a resource",
    description="A declaration never applied goes at once. One that was applied stays as `state: deleting`: the "
    "next plan shows the deletion of what it made, and the next apply carries it out.",
)
def delete_resource(id: str, resourceId: str, principal: Lead, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), resourceId)
