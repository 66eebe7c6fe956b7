"""Pipelines group: `/projects/{id}/pipelines...` definitions (JSON or YAML bodies)."""

from __future__ import annotations

from fastapi import BackgroundTasks, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.dagster_client import DagsterClientDep
from api_shim.db.models import Pipeline, Project
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, Viewer
from api_shim.errors import Conflict
from api_shim.pagination import Listing, Page
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router, yaml_body
from api_shim.schemas.common import error_responses
from api_shim.schemas.pipelines import (
    Dag,
    PipelineCreate,
    PipelineDetail,
    PipelineList,
    PipelineResponse,
    PipelineUpdate,
)
from api_shim.services import pipelines as service
from api_shim.services.projects import get_project
from rime_dagster.pipelines.spec import dag_of, validate_dag

router = rime_router(prefix="/projects/{id}/pipelines", tags=["Pipelines"])

PIPELINES = Listing(
    "pipelines",
    {"created_at": Pipeline.created_at, "updated_at": Pipeline.updated_at, "name": Pipeline.name},
    Pipeline.id,
)
PipelinePage = page_params(PIPELINES)


def _project(session: Session, principal, project_id: str) -> Project:
    return get_project(session, project_id, tenant_id=principal.tenant_id)


def _response(row: Pipeline, cls=PipelineResponse, **extra):
    steps = service.steps_of(row)
    return cls(
        id=row.id,
        name=row.name,
        description=row.description,
        steps=[{**s.model_dump(), "name": s.name or s.id} for s in steps],
        variables=row.variables,
        schedule=row.schedule,
        status="paused" if row.paused else "active",
        retries=row.retries,
        timeout_seconds=row.timeout_seconds,
        created_at=row.created_at,
        updated_at=row.updated_at,
        **extra,
    )


def _detail(row: Pipeline) -> PipelineDetail:
    steps = service.steps_of(row)
    return _response(
        row, cls=PipelineDetail, dag=Dag.model_validate(dag_of(steps)), execution_order=validate_dag(steps)
    )


@router.get("", name="pipeline.list", response_model=PipelineList, summary="List pipelines")
def list_pipelines(id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: PipelinePage):
    project = _project(session, principal, id)
    stmt = select(Pipeline).where(Pipeline.project_id == project.id)
    result = PIPELINES.page(session, stmt, page, codec, {"project": project.id})
    return Page[PipelineResponse](
        data=[_response(r) for r in result.items], next_cursor=result.next_cursor, has_more=result.has_more
    )


@router.post(
    "",
    name="pipeline.create",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelineDetail,
    responses=error_responses(404, 409, 422),
    summary="Create a pipeline",
    description="JSON, or YAML with `Content-Type: application/yaml`. An invalid DAG (cycle, unknown step, "
    "unknown resource, another project's resource) is a 422 naming the step.",
    openapi_extra=yaml_body("PipelineCreate"),
)
def create_pipeline(
    id: str,
    body: PipelineCreate,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
    background: BackgroundTasks,
):
    project = _project(session, principal, id)
    row = service.create_pipeline(session, project, body)
    background.add_task(dagster.definitions_changed)
    return _detail(row)


@router.get(
    "/{pipelineId}",
    name="pipeline.get",
    response_model=PipelineDetail,
    responses=error_responses(404),
    summary="Get pipeline details and DAG",
)
def get_pipeline(id: str, pipelineId: str, principal: Viewer, session: SessionDep):
    return _detail(service.get_pipeline(session, _project(session, principal, id), pipelineId))


@router.patch(
    "/{pipelineId}",
    name="pipeline.update",
    response_model=PipelineDetail,
    responses=error_responses(404, 409, 422),
    summary="Update pipeline configuration",
    openapi_extra=yaml_body("PipelineUpdate"),
)
def update_pipeline(
    id: str,
    pipelineId: str,
    body: PipelineUpdate,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
    background: BackgroundTasks,
):
    project = _project(session, principal, id)
    row = service.update_pipeline(session, project, service.get_pipeline(session, project, pipelineId), body)
    background.add_task(dagster.definitions_changed)
    return _detail(row)


@router.delete(
    "/{pipelineId}",
    name="pipeline.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a pipeline",
    description="Refused with 409 while another pipeline of the project has a step that runs it.",
)
def delete_pipeline(
    id: str,
    pipelineId: str,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
    background: BackgroundTasks,
):
    project = _project(session, principal, id)
    row = service.get_pipeline(session, project, pipelineId)
    users = service.referencing_pipelines(session, project, row.id)
    if users:
        raise Conflict(f"Pipeline(s) {', '.join(sorted(users))} run this pipeline; change them first.")
    session.delete(row)
    session.flush()
    background.add_task(dagster.definitions_changed)
