"""Pipelines: a DAG validated as a graph (rime_dagster.pipelines.spec) and against the project's resources."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter
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
from rime_dagster.connectors.sources.files.config import FilesConfig
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
from rime_dagster.pipelines.trigger_spec import (
    TARGET_FIELD,
    OnSuccessTrigger,
    OnTableUpdateTrigger,
    OnUploadTrigger,
    TriggerBody,
    TriggerError,
    sensor_suffixes,
    stored_triggers,
)
from rime_dagster.pipelines.versions import PRODUCTION, UAT, environment_slots, head_versions, record_version
from rime_dagster.platform.names import dagster_name
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


# Triggers ------------------------------------------------------------------------------------------------------

Trigger = OnUploadTrigger | OnSuccessTrigger | OnTableUpdateTrigger
_TRIGGERS: TypeAdapter[list[Trigger]] = TypeAdapter(list[TriggerBody])


class _ProjectIndex:
    """The project's connectors, dbt projects and pipelines, read once for checking a pipeline's triggers."""

    def __init__(self, session: Session, project: Project) -> None:
        self.connectors = {
            c.id: c for c in session.scalars(select(Connector).where(Connector.project_id == project.id))
        }
        self.dbt_slugs = {
            d.slug: d.id for d in session.scalars(select(DbtProject).where(DbtProject.project_id == project.id))
        }
        self.pipelines = {p.id: p for p in session.scalars(select(Pipeline).where(Pipeline.project_id == project.id))}

    def steps_run_by(self, steps: Sequence[StepBody]) -> Iterator[StepBody]:
        """The steps a run executes: these, and those of the pipelines they embed (each pipeline once)."""
        stack, seen = list(steps), set[str]()
        while stack:
            step = stack.pop()
            yield step
            target = step.config.get("pipeline_id") if step.type == "pipeline" else None
            if isinstance(target, str) and target not in seen and target in self.pipelines:
                seen.add(target)
                stack.extend(steps_of(self.pipelines[target]))

    def table_owner(self, table: str) -> tuple[str, str] | None:
        """("connector" | "dbt", its id) for a table of the project's connectors or dbt projects, else None."""
        prefix, _, name = table.partition("__")
        connector = next((c for c in self.connectors.values() if c.table_prefix == prefix), None)
        if connector is not None:
            return ("connector", connector.id) if name in connector.tables else None
        return ("dbt", self.dbt_slugs[prefix]) if name and prefix in self.dbt_slugs else None


def stored_trigger_bodies(row: Pipeline) -> list[Trigger]:
    return trigger_bodies(row.triggers)


def trigger_bodies(stored: Iterable[Mapping[str, Any]]) -> list[Trigger]:
    """Stored triggers as a body gives them (without `since`)."""
    return _TRIGGERS.validate_python([{k: t[k] for k in ("type", TARGET_FIELD[t["type"]])} for t in stored])


def check_triggers(
    session: Session,
    project: Project,
    triggers: Sequence[Trigger],
    steps: Sequence[StepBody],
    *,
    pipeline_id: str | None,
) -> None:
    """Each trigger names a resource of the project that can start this pipeline (422 naming `triggers[i]`)."""
    if not triggers:
        return
    index = _ProjectIndex(session, project)
    run_steps = list(index.steps_run_by(steps))
    for i, trigger in enumerate(triggers):
        field = f"triggers.{i}.{TARGET_FIELD[trigger.type]}"
        if isinstance(trigger, OnUploadTrigger):
            message = _upload_trigger_problem(trigger, index, run_steps)
        elif isinstance(trigger, OnSuccessTrigger):
            message = _success_trigger_problem(trigger, index, pipeline_id)
        else:
            message = _table_trigger_problem(trigger, index, run_steps)
        if message:
            raise _refused(f"triggers[{i}]: {message}", field)


def _upload_trigger_problem(trigger: OnUploadTrigger, index: _ProjectIndex, run_steps: list[StepBody]) -> str | None:
    connector = index.connectors.get(trigger.connector_id)
    if connector is None:
        return f"no connector {trigger.connector_id} in this project."
    if connector.connector_type != "files" or FilesConfig.model_validate(connector.config).path is not None:
        return f"connector '{connector.name}' has no upload area (only a `files` connector without a `path` has one)."
    synced = {
        s.config.get("connector_id") for s in run_steps if s.type == "connector_sync" and isinstance(s.config, dict)
    }
    if connector.id not in synced:
        return (
            f"no connector_sync step of this pipeline syncs connector '{connector.name}': the run an upload "
            "starts would not sync the file."
        )
    return None


def _success_trigger_problem(trigger: OnSuccessTrigger, index: _ProjectIndex, pipeline_id: str | None) -> str | None:
    """The other pipeline exists, and its success can never come back to start it again (a loop of triggers)."""
    upstream = trigger.pipeline_id
    if upstream == pipeline_id:
        return "a pipeline cannot start after its own success."
    if upstream not in index.pipelines:
        return f"no pipeline {upstream} in this project."
    if pipeline_id is None:  # a new pipeline: no other pipeline's trigger can name it yet
        return None
    # This pipeline's success starts the pipelines with an on_success trigger on it, theirs others...
    started_by = _success_followers(index.pipelines.values())
    path, stack, seen = {pipeline_id: [pipeline_id]}, [pipeline_id], {pipeline_id}
    while stack:
        current = stack.pop()
        for follower in started_by.get(current, []):
            if follower == upstream:
                names = [index.pipelines[p].name for p in [upstream, *path[current]] if p in index.pipelines]
                return f"a loop of triggers: {' -> '.join(names)} -> {index.pipelines[upstream].name}."
            if follower not in seen:
                seen.add(follower)
                path[follower] = [*path[current], follower]
                stack.append(follower)
    return None


def _success_followers(pipelines: Iterable[Pipeline]) -> dict[str, list[str]]:
    """{pipeline id: the pipelines its success starts}, from the stored on_success triggers."""
    followers: dict[str, list[str]] = {}
    for p in pipelines:
        for t in p.triggers:
            if t.get("type") == "on_success":
                followers.setdefault(str(t.get("pipeline_id")), []).append(p.id)
    return followers


def _table_trigger_problem(
    trigger: OnTableUpdateTrigger, index: _ProjectIndex, run_steps: list[StepBody]
) -> str | None:
    owner = index.table_owner(trigger.table)
    if owner is None:
        return f"'{trigger.table}' is not a table of this project's connectors or dbt projects."
    if any(_writes(step, trigger.table, owner) for step in run_steps):
        return f"a run of this pipeline writes {trigger.table} itself, so each run would start the next."
    return None


def _writes(step: StepBody, table: str, owner: tuple[str, str]) -> bool:
    """Whether the step commits a snapshot of `table` (owned by `owner`)."""
    config: Mapping[str, Any] = step.config if isinstance(step.config, dict) else {}
    kind, owner_id = owner
    if step.type == "connector_sync" and kind == "connector" and config.get("connector_id") == owner_id:
        tables = config.get("tables")
        return not tables or table.partition("__")[2] in tables
    if step.type == "dbt" and kind == "dbt":
        return config.get("dbt_project_id") == owner_id
    return step.type == "table_maintenance" and config.get("table") == table and config.get("operation") == "compact"


def _stored(bodies: Sequence[Trigger], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The triggers to store (rime_dagster.pipelines.trigger_spec.stored_triggers); the same one twice is a 400."""
    try:
        return stored_triggers(bodies, previous)
    except TriggerError as exc:
        raise ValidationFailed.field(f"triggers.{exc.index}", str(exc)) from None


def triggering_pipelines(session: Session, project: Project, pipeline_id: str) -> list[str]:
    """Names of the project's pipelines with an on_success trigger on `pipeline_id`."""
    pipelines = session.scalars(select(Pipeline).where(Pipeline.project_id == project.id))
    return [p.name for p in pipelines if pipeline_id in _success_followers([p])]


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(select(Pipeline.id).where(Pipeline.project_id == project_id, Pipeline.name == name))
    if clash is not None and clash != except_id:
        raise Conflict(f"A pipeline named '{name}' already exists in this project.")


def _dump(steps: list[StepBody]) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json") for s in steps]


def create_pipeline(session: Session, project: Project, body: PipelineCreate, *, by: str | None = None) -> Pipeline:
    """The new pipeline, with its version 1 (`by`: who made it)."""
    _ensure_name_free(session, project.id, body.name)
    check_steps(session, project, body.steps, pipeline_id=None)
    triggers = _stored(body.triggers, [])
    check_triggers(session, project, body.triggers, body.steps, pipeline_id=None)
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
        triggers=triggers,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A pipeline named '{body.name}' already exists in this project.") from None
    record_version(session, row, by=by)
    return row


def update_pipeline(
    session: Session, project: Project, row: Pipeline, body: PipelineUpdate, *, by: str | None = None
) -> Pipeline:
    """Applies the change; a change of definition (not a pause or resume) makes the next version."""
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "steps", "retries", "triggers"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    # Past the check above, a name or steps not None is one the body sets.
    if body.name is not None:
        _ensure_name_free(session, project.id, body.name, except_id=row.id)
        row.name = body.name
    if body.steps is not None:
        check_steps(session, project, body.steps, pipeline_id=row.id)
        row.steps = _dump(body.steps)
    if body.steps is not None or body.triggers is not None:
        _update_triggers(session, project, row, body.triggers)
    for field in ("description", "schedule", "retries", "timeout_seconds"):
        if field in changes:
            setattr(row, field, changes[field])
    if "variables" in changes:
        row.variables = changes["variables"] or {}
    if body.status is not None:
        row.paused = body.status == "paused"
    session.flush()
    record_version(session, row, by=by)
    return row


def _update_triggers(session: Session, project: Project, row: Pipeline, triggers: list[Trigger] | None) -> None:
    """Stores new triggers (kept ones keep their `since`), and checks them, or the stored ones against new steps."""
    if triggers is not None:
        row.triggers = _stored(triggers, row.triggers or [])
    check_triggers(
        session,
        project,
        triggers if triggers is not None else stored_trigger_bodies(row),
        steps_of(row),
        pipeline_id=row.id,
    )


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


def pipeline_response(row: Pipeline, project: Project, version: int | None) -> PipelineResponse:
    steps = [{**s.model_dump(), "name": s.name or s.id} for s in steps_of(row)]
    triggers = [
        {**t, "sensor_name": dagster_name(project.namespace, row.slug, suffix)}
        for t, suffix in zip(row.triggers, sensor_suffixes(row.triggers), strict=True)
    ]
    return PipelineResponse.of(
        row, steps=steps, status=active_or_paused(row.paused), triggers=triggers, version=version
    )


def pipeline_detail(session: Session, row: Pipeline, project: Project) -> PipelineDetail:
    """The pipeline with its DAG and the order a run takes its steps."""
    steps = steps_of(row)
    head = head_versions(session, [row.id]).get(row.id)
    return PipelineDetail.of(
        pipeline_response(row, project, head),
        dag=Dag.model_validate(dag_of(steps)),
        execution_order=validate_dag(steps),
    )


def list_page(session: Session, codec: CursorCodec, project: Project, page: PageRequest) -> PipelineList:
    result = PIPELINES.page(
        session, select(Pipeline).where(Pipeline.project_id == project.id), page, codec, {"project": project.id}
    )
    heads = head_versions(session, [row.id for row in result.items])
    return result.as_page(PipelineList, lambda row: pipeline_response(row, project, heads.get(row.id)))


def create(session: Session, project: Project, body: PipelineCreate, *, by: str | None = None) -> PipelineDetail:
    return pipeline_detail(session, create_pipeline(session, project, body, by=by), project)


def describe(session: Session, project: Project, pipeline_id: str) -> PipelineDetail:
    return pipeline_detail(session, get_pipeline(session, project, pipeline_id), project)


def update(
    session: Session, project: Project, pipeline_id: str, body: PipelineUpdate, *, by: str | None = None
) -> PipelineDetail:
    row = update_pipeline(session, project, get_pipeline(session, project, pipeline_id), body, by=by)
    return pipeline_detail(session, row, project)


def check_deletable(session: Session, row: Pipeline) -> None:
    """A pipeline running in uat or production is not deleted: retire or demote it first."""
    held = environment_slots(session, row.id)
    blocking = [env for env in (UAT, PRODUCTION) if env in held]
    if blocking:
        raise Conflict(f"Pipeline '{row.name}' runs in {' and '.join(blocking)}: retire or demote it first.")


def delete(session: Session, project: Project, pipeline_id: str) -> None:
    """Deletes the pipeline, unless another pipeline of the project has a step that runs it, or starts after its
    success (Conflict)."""
    row = get_pipeline(session, project, pipeline_id)
    users = referencing_pipelines(session, project, row.id)
    if users:
        raise Conflict(f"Pipeline(s) {', '.join(sorted(users))} run this pipeline; change them first.")
    check_deletable(session, row)
    followers = triggering_pipelines(session, project, row.id)
    if followers:
        raise Conflict(
            f"Pipeline(s) {', '.join(sorted(followers))} start after this pipeline succeeds (an on_success "
            "trigger); change them first."
        )
    session.delete(row)
    session.flush()
