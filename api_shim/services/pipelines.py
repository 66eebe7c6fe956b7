"""Pipelines: a DAG validated as a graph (rime_dagster.pipelines.spec) and against the project's resources."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.common import active_or_paused
from api_shim.schemas.pipelines import (
    Dag,
    PipelineCreate,
    PipelineDetail,
    PipelineList,
    PipelineResponse,
    PipelineUpdate,
)
from rime_dagster.pipelines.spec import (
    ConnectorSyncConfig,
    DagError,
    DbtStepConfig,
    PipelineStepConfig,
    StepBody,
    TableMaintenanceConfig,
    dag_of,
    parse_step_config,
    validate_dag,
)
from rime_dagster.store import slugs
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Connector, DbtProject, Pipeline, Project


def get_pipeline(session: Session, project: Project, pipeline_id: str) -> Pipeline:
    row = session.get(Pipeline, pipeline_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Pipeline", pipeline_id, " in this project")
    return row


def steps_of(row: Pipeline) -> list[StepBody]:
    return [StepBody.model_validate(s) for s in row.steps]


def _refused(message: str, field: str) -> Unprocessable:
    return Unprocessable(message, details=[{"field": field, "message": message}])


def check_steps(session: Session, project: Project, steps: list[StepBody], *, pipeline_id: str | None) -> list[str]:
    """Validates the DAG and every resource it names; returns the execution order. 422 names the step."""
    try:
        order = validate_dag(steps)
    except DagError as exc:
        raise _refused(str(exc), exc.field) from None
    connectors = {c.id: c for c in session.scalars(select(Connector).where(Connector.project_id == project.id))}
    dbt_projects = {d.id: d for d in session.scalars(select(DbtProject).where(DbtProject.project_id == project.id))}
    prefixes = {c.table_prefix for c in connectors.values()} | {d.slug for d in dbt_projects.values()}
    for i, step in enumerate(steps):
        config = parse_step_config(step, i)
        field = f"steps.{i}.config"
        if isinstance(config, ConnectorSyncConfig):
            _check_sync_step(step, config, connectors, field)
        elif isinstance(config, DbtStepConfig):
            if config.dbt_project_id not in dbt_projects:
                raise _refused(f"Step '{step.id}': no dbt project {config.dbt_project_id} in this project.", field)
        elif isinstance(config, TableMaintenanceConfig):
            _check_maintenance_step(step, config, prefixes, field)
        elif isinstance(config, PipelineStepConfig):
            _check_sub_pipeline(session, project, step, config.pipeline_id, pipeline_id, field)
    return order


def _check_sync_step(step: StepBody, config: ConnectorSyncConfig, connectors: dict[str, Connector], field: str) -> None:
    """The connector is the project's and has every table the step syncs."""
    connector = connectors.get(config.connector_id)
    if connector is None:
        raise _refused(f"Step '{step.id}': no connector {config.connector_id} in this project.", field)
    unknown = sorted(set(config.tables or []) - set(connector.tables))
    if unknown:
        raise _refused(f"Step '{step.id}': connector has no table(s) {', '.join(unknown)}.", field)


def _check_maintenance_step(step: StepBody, config: TableMaintenanceConfig, prefixes: set[str], field: str) -> None:
    """The table is one of the project's connectors' or dbt projects' (`<prefix>__<table>`)."""
    prefix = config.table.split("__", 1)[0] if "__" in config.table else None
    if prefix not in prefixes:
        raise _refused(
            f"Step '{step.id}': '{config.table}' is not a table of this project's connectors or dbt projects.",
            field,
        )


def _check_sub_pipeline(
    session: Session, project: Project, step: StepBody, target: str, pipeline_id: str | None, field: str
) -> None:
    """The pipeline exists in the project, and running it can never come back to this pipeline."""
    if target == pipeline_id:
        raise _refused(f"Step '{step.id}': a pipeline cannot run itself.", field)
    stored = {p.id: p for p in session.scalars(select(Pipeline).where(Pipeline.project_id == project.id))}
    if target not in stored:
        raise _refused(f"Step '{step.id}': no pipeline {target} in this project.", field)
    seen: set[str] = set()
    stack = [target]
    while stack:
        current = stack.pop()
        if current in seen or current not in stored:
            continue
        seen.add(current)
        for s in stored[current].steps:
            if s.get("type") == "pipeline":
                child = (s.get("config") or {}).get("pipeline_id")
                if child == pipeline_id and pipeline_id is not None:
                    raise _refused(f"Step '{step.id}': pipeline {target} runs this pipeline again (a cycle).", field)
                if isinstance(child, str):  # anything else names no stored pipeline
                    stack.append(child)


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(select(Pipeline.id).where(Pipeline.project_id == project_id, Pipeline.name == name))
    if clash is not None and clash != except_id:
        raise Conflict(f"A pipeline named '{name}' already exists in this project.")


def _dump(steps: list[StepBody]) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json") for s in steps]


def create_pipeline(session: Session, project: Project, body: PipelineCreate) -> Pipeline:
    _ensure_name_free(session, project.id, body.name)
    check_steps(session, project, body.steps, pipeline_id=None)
    row = Pipeline(
        id=new_id("pipeline"),
        project_id=project.id,
        name=body.name,
        slug=slugs.new_slug(session, project.id, body.name, fallback="pipeline"),
        description=body.description,
        steps=_dump(body.steps),
        variables=body.variables or {},
        schedule=body.schedule,
        retries=body.retries,
        timeout_seconds=body.timeout_seconds,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A pipeline named '{body.name}' already exists in this project.") from None
    return row


def update_pipeline(session: Session, project: Project, row: Pipeline, body: PipelineUpdate) -> Pipeline:
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "steps", "retries"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    # Past the check above, a name or steps not None is one the body sets.
    if body.name is not None:
        _ensure_name_free(session, project.id, body.name, except_id=row.id)
        row.name = body.name
    if body.steps is not None:
        check_steps(session, project, body.steps, pipeline_id=row.id)
        row.steps = _dump(body.steps)
    for field in ("description", "schedule", "retries", "timeout_seconds"):
        if field in changes:
            setattr(row, field, changes[field])
    if "variables" in changes:
        row.variables = changes["variables"] or {}
    if body.status is not None:
        row.paused = body.status == "paused"
    session.flush()
    return row


def referencing_pipelines(session: Session, project: Project, pipeline_id: str) -> list[str]:
    """Names of the project's pipelines with a step that runs `pipeline_id`."""

    def runs_it(step: dict[str, Any]) -> bool:
        return step.get("type") == "pipeline" and (step.get("config") or {}).get("pipeline_id") == pipeline_id

    pipelines = session.scalars(select(Pipeline).where(Pipeline.project_id == project.id))
    return [p.name for p in pipelines if any(runs_it(s) for s in p.steps)]


# What the Pipelines routes call -------------------------------------------------------------------------------

PIPELINES = Listing(
    "pipelines",
    {"created_at": Pipeline.created_at, "updated_at": Pipeline.updated_at, "name": Pipeline.name},
    Pipeline.id,
)


def pipeline_response(row: Pipeline) -> PipelineResponse:
    steps = [{**s.model_dump(), "name": s.name or s.id} for s in steps_of(row)]
    return PipelineResponse.of(row, steps=steps, status=active_or_paused(row.paused))


def pipeline_detail(row: Pipeline) -> PipelineDetail:
    """The pipeline with its DAG and the order a run takes its steps."""
    steps = steps_of(row)
    return PipelineDetail.of(
        pipeline_response(row), dag=Dag.model_validate(dag_of(steps)), execution_order=validate_dag(steps)
    )


def list_page(session: Session, codec: CursorCodec, project: Project, page: PageRequest) -> PipelineList:
    result = PIPELINES.page(
        session, select(Pipeline).where(Pipeline.project_id == project.id), page, codec, {"project": project.id}
    )
    return result.as_page(PipelineList, pipeline_response)


def create(session: Session, project: Project, body: PipelineCreate) -> PipelineDetail:
    return pipeline_detail(create_pipeline(session, project, body))


def describe(session: Session, project: Project, pipeline_id: str) -> PipelineDetail:
    return pipeline_detail(get_pipeline(session, project, pipeline_id))


def update(session: Session, project: Project, pipeline_id: str, body: PipelineUpdate) -> PipelineDetail:
    return pipeline_detail(update_pipeline(session, project, get_pipeline(session, project, pipeline_id), body))


def delete(session: Session, project: Project, pipeline_id: str) -> None:
    """Deletes the pipeline, unless another pipeline of the project has a step that runs it (Conflict)."""
    row = get_pipeline(session, project, pipeline_id)
    users = referencing_pipelines(session, project, row.id)
    if users:
        raise Conflict(f"Pipeline(s) {', '.join(sorted(users))} run this pipeline; change them first.")
    session.delete(row)
    session.flush()
