"""Projects group: `/projects` and `/projects/{id}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import BackgroundTasks, Query, Request, status
from sqlalchemy import select

from api_shim.deps import Admin, CursorCodecDep, Lead, SessionDep, SettingsDep, Viewer
from api_shim.errors import ValidationFailed
from api_shim.pagination import Listing, PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.projects import ProjectCreate, ProjectList, ProjectResponse, ProjectUpdate
from api_shim.services import projects as service
from rime_dagster.store.models import Project

router = rime_router(prefix="/projects", tags=["Projects"])

PROJECTS = Listing(
    "projects",
    {"created_at": Project.created_at, "updated_at": Project.updated_at, "name": Project.name},
    Project.id,
)
ProjectPage = Annotated[PageRequest, page_params(PROJECTS)]


@router.get("", name="project.list", response_model=ProjectList, summary="List all projects in the tenant")
def list_projects(
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    page: ProjectPage,
) -> ProjectList:
    stmt = select(Project).where(Project.tenant_id == principal.tenant_id)
    return PROJECTS.page(session, stmt, page, codec).as_page(ProjectList, ProjectResponse.model_validate)


@router.post(
    "",
    name="project.create",
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectResponse,
    responses=error_responses(409, 422),
    dependencies=[Idempotent],
    summary="Create a new project",
)
def create_project(body: ProjectCreate, principal: Admin, session: SessionDep) -> Project:
    # The commit bumps the definitions generation; Dagster reloads in the background (definitions_sync).
    return service.create_project(session, tenant_id=principal.tenant_id, name=body.name, description=body.description)


@router.get(
    "/{id}",
    name="project.get",
    response_model=ProjectResponse,
    responses=error_responses(404),
    summary="Get project details",
)
def get_project(id: str, principal: Viewer, session: SessionDep) -> Project:
    return service.get_project(session, id, tenant_id=principal.tenant_id)


@router.patch(
    "/{id}",
    name="project.update",
    response_model=ProjectResponse,
    responses=error_responses(404, 409),
    summary="Update project settings",
)
def update_project(id: str, body: ProjectUpdate, principal: Lead, session: SessionDep) -> Project:
    project = service.get_project(session, id, tenant_id=principal.tenant_id)
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        raise ValidationFailed.field("name", "Cannot be null.")
    return service.update_project(session, project, changes=changes)


@router.delete(
    "/{id}",
    name="project.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete a project and all its resources",
)
def delete_project(
    id: str,
    request: Request,
    principal: Admin,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    purge_data: Annotated[bool, Query(description="Also drop the project's Iceberg tables.")] = False,
) -> None:
    project = service.get_project(session, id, tenant_id=principal.tenant_id)
    service.delete_project(session, project, settings=settings)
    if purge_data:
        # After the commit: a failed purge must not resurrect the project. Logged if it fails.
        background.add_task(service.purge_project_data, request.app.state.iceberg, project.namespace)
