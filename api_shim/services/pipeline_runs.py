"""A pipeline's runs as the API shows them: launched (or only planned), listed, read step by step, canceled, their
logs as JSON or a live stream, and the target of a WebSocket watch.

Step states are folded by rime_dagster.pipelines.run_fold, from the event log read here. A run is only ever
read through the pipeline whose tags it carries: its id alone reaches no other tenant's or pipeline's run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api_shim.dagster_client import RUN_STATUS, DagsterClient, to_dagster_run_id, to_rime_run_id
from api_shim.errors import Conflict, NotFound, RimeError
from api_shim.pagination import CursorCodec
from api_shim.schemas.pipelines import (
    PipelineLogLine,
    PipelineRun,
    PipelineRunCanceled,
    PipelineRunList,
    PipelineRunLogs,
    PipelineRunPlan,
    PipelineRunRequest,
    PipelineRunRetried,
    PipelineRunRetry,
    PipelineRunStarted,
    PipelineStepRun,
    PlannedStep,
    TriggerEvent,
)
from api_shim.services.auth import Principal
from api_shim.services.pipelines import check_steps, get_pipeline, steps_of
from api_shim.services.runs import launch_summary, launch_tags, run_page, run_view, when
from api_shim.services.websocket_auth import WatchRefused, websocket_principal, within_connect_limit
from rime_dagster.pipelines.names import MAX_NESTING, pipeline_job_name, pipeline_tags
from rime_dagster.pipelines.run_fold import (
    FOLDED_EVENTS,
    TERMINAL_RUN,
    RunFold,
    StepState,
    failure_text,
    reused_steps,
    run_steps,
)
from rime_dagster.pipelines.spec import StepBody, validate_dag
from rime_dagster.pipelines.versions import DEVELOPMENT, environment_slots, environment_suffix, latest_version
from rime_dagster.platform import run_tags
from rime_dagster.store.models import Pipeline, PipelineEnvironment, PipelineVersion, Project
from rime_dagster.store.session import release

if TYPE_CHECKING:
    from dagster import EventLogRecord
    from dagster._core.storage.dagster_run import RunRecord

    from api_shim.middleware import RateLimits
    from api_shim.run_watch import RunWatchHub, Subscription

# A log stream with nothing to say sends a keep-alive this often (proxies close idle connections).
SSE_KEEPALIVE_SECONDS = 15.0


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


# What the fold becomes on the wire -----------------------------------------------------------------------------


def step_message(state: StepState) -> dict[str, Any]:
    """The WebSocket `step_update` for a step's state."""
    return {
        "type": "step_update",
        "step_id": state.step_id,
        "step_name": state.step_name,
        "status": state.status,
        "duration_seconds": state.duration_seconds,
        "timestamp": _iso(state.changed_at or state.finished_at or state.started_at or datetime.now(UTC)),
        "started_at": _iso(state.started_at),
        "finished_at": _iso(state.finished_at),
        "rows": state.rows,
        "error": state.error,
        "reused": state.reused,
    }


def run_message(fold: RunFold, run_id: str) -> dict[str, Any]:
    """The WebSocket `run_update` for the run's status."""
    return {
        "type": "run_update",
        "run_id": run_id,
        "status": fold.status,
        "started_at": _iso(fold.started_at),
        "finished_at": _iso(fold.finished_at),
        "duration_seconds": fold.duration_seconds,
        "error": fold.run_error if fold.status == "failed" else None,
        "timestamp": _iso(fold.finished_at or fold.started_at or datetime.now(UTC)),
    }


def log_line(record: EventLogRecord, fold: RunFold | None = None) -> dict[str, Any]:
    """One event-log record as a log line of the logs endpoint."""
    entry = record.event_log_entry
    event = entry.dagster_event
    step_key = entry.step_key or (event.step_key if event else None)
    message = entry.user_message or (event.message if event else "") or ""
    if event is not None and event.event_type_value == "STEP_FAILURE":
        message = f"{message}: {failure_text(event)}" if message else failure_text(event)
    step_id = fold.step_id_of(step_key) if step_key and fold is not None else None
    return {
        "id": record.storage_id,
        "timestamp": _iso(when(entry.timestamp)),
        "level": logging.getLevelName(entry.level) if isinstance(entry.level, int) else str(entry.level),
        "step_id": step_id,
        "step_key": step_key,
        "event_type": event.event_type_value if event else None,
        "message": message,
    }


def trigger_of(tags: Mapping[str, str]) -> str:
    if tags.get("dagster/schedule_name"):
        return "schedule"
    if tags.get("dagster/sensor_name") or tags.get(run_tags.TRIGGER) == run_tags.TRIGGER_SENSOR:
        return "sensor"
    return "api" if tags.get(run_tags.TRIGGERED_BY) else "dagster"


def trigger_event(tags: Mapping[str, str]) -> TriggerEvent | None:
    """The event a pipeline trigger's sensor started the run for (rime_dagster/pipelines/triggers.py)."""
    event = run_tags.trigger_event_of(tags)
    if event is None:
        return None
    if event.get("type") == "on_success" and isinstance(event.get("run_id"), str):
        event = {**event, "run_id": to_rime_run_id(event["run_id"]), "dagster_run_id": event["run_id"]}
    try:
        return TriggerEvent.model_validate(event)
    except ValueError:  # a tag edited by hand in the Dagster UI: no event, rather than a failed list
        return None


def followed_steps(
    client: DagsterClient, record: RunRecord, steps: Sequence[StepBody]
) -> tuple[list[StepBody], frozenset[str]]:
    """The steps a run's state shows, and those of them it reused: a run of a subset of the steps (launched from
    Dagster's UI) shows those; a re-execution shows them all, the ones it did not plan reused from its parent."""
    planned = client.execution_plan_steps(record)
    if record.dagster_run.parent_run_id:
        return list(steps), reused_steps(steps, planned)
    return run_steps(steps, planned), frozenset()


def fold_run(client: DagsterClient, record: RunRecord, steps: Sequence[StepBody]) -> RunFold:
    """The run's state from its step and run events (all of them, page by page)."""
    run = record.dagster_run
    steps, reused = followed_steps(client, record, steps)
    fold = RunFold(steps, reused=reused)
    while True:
        records, more = client.run_event_records(run.run_id, after=fold.cursor, limit=5000, of_type=FOLDED_EVENTS)
        fold.apply(records)
        if not more:
            break
    fold.set_run_status(RUN_STATUS.get(run.status.value, "running"), when(record.start_time), when(record.end_time))
    return fold


# Launching -----------------------------------------------------------------------------------------------------


def plan(
    session: Session, project: Project, row: Pipeline, depth: int = 0, steps: list[StepBody] | None = None
) -> list[PlannedStep]:
    """The steps in the order a run takes them (`steps`: a version's, else the newest), each embedded pipeline with
    its own plan."""
    steps = steps_of(row) if steps is None else steps
    by_id = {s.id: s for s in steps}
    planned = []
    for n, step_id in enumerate(validate_dag(steps), start=1):
        step = by_id[step_id]
        nested = None
        if step.type == "pipeline" and depth < MAX_NESTING:
            nested = plan(session, project, get_pipeline(session, project, step.config["pipeline_id"]), depth + 1)
        planned.append(
            PlannedStep(
                order=n,
                step_id=step.id,
                step_name=step.name or step.id,
                type=step.type,
                depends_on=step.depends_on,
                config=step.config,
                steps=nested,
            )
        )
    return planned


def launch(
    session: Session,
    dagster: DagsterClient,
    project: Project,
    pipeline_id: str,
    body: PipelineRunRequest,
    *,
    triggered_by: str,
) -> PipelineRunStarted | PipelineRunPlan:
    """Launches the pipeline's job; a dry run validates the steps and the resources they name again, and answers
    the plan instead."""
    row = get_pipeline(session, project, pipeline_id)
    target = environment_target(session, project, row, body.environment)
    order = check_steps(session, project, target.steps, pipeline_id=row.id)
    if body.dry_run:
        return PipelineRunPlan(
            pipeline_id=row.id,
            environment=body.environment,
            version=target.version,
            full_refresh=body.full_refresh,
            variables={**target.variables, **(body.variables or {})},
            execution_order=order,
            plan=plan(session, project, row, steps=target.steps),
        )
    release(session)
    tags = {**pipeline_tags(project.id, row.id), **launch_tags(triggered_by, full_refresh=body.full_refresh)}
    if body.variables:
        tags[run_tags.VARIABLES] = run_tags.encode_variables(body.variables)
    launched = dagster.launch_run(target.job_name, generation=project.definitions_generation, tags=tags)
    return PipelineRunStarted.of(
        launch_summary(dagster, launched), pipeline_id=row.id, environment=body.environment, version=target.version
    )


@dataclass(frozen=True)
class EnvironmentTarget:
    """What a run of the pipeline in an environment runs: its job, version, steps and variables."""

    job_name: str
    version: int | None
    steps: list[StepBody]
    variables: dict[str, Any]


def environment_target(session: Session, project: Project, row: Pipeline, environment: str) -> EnvironmentTarget:
    if environment == DEVELOPMENT:
        head = latest_version(session, row.id)
        return EnvironmentTarget(
            pipeline_job_name(project.namespace, row.slug),
            head.version if head else None,
            steps_of(row),
            dict(row.variables or {}),
        )
    slot = session.get(PipelineEnvironment, (row.id, environment))
    if slot is None:
        raise Conflict(f"Pipeline '{row.name}' has no version in {environment}: promote one there first.")
    version = session.scalars(select(PipelineVersion).where(PipelineVersion.id == slot.version_id)).one()
    return EnvironmentTarget(
        pipeline_job_name(project.namespace, f"{row.slug}__{environment_suffix(environment)}"),
        version.version,
        [StepBody.model_validate(s) for s in version.definition["steps"]],
        dict(version.definition.get("variables") or {}),
    )


class RunSteps:
    """The steps of the version each run ran (its `rime/pipeline_version` tag), to name its steps' states.

    The newest version's and the environments' are read up front; an older one when a run asks for it, in a
    transaction of its own (the request's ended before Dagster was called)."""

    def __init__(self, session: Session, row: Pipeline) -> None:
        self._session, self._row = session, row
        head = latest_version(session, row.id)
        self._steps: dict[int, list[StepBody]] = {head.version: steps_of(row)} if head else {}
        held = [slot.version_id for slot in environment_slots(session, row.id).values()]
        for version in session.scalars(select(PipelineVersion).where(PipelineVersion.id.in_(held))):
            self._steps[version.version] = [StepBody.model_validate(s) for s in version.definition["steps"]]
        self._newest = steps_of(row)

    def of(self, tags: Mapping[str, str], session: Session | None = None) -> list[StepBody]:
        """`session`: where to read an older version (the one given at construction by default)."""
        number = version_of(tags)
        if number is None:
            return self._newest
        if number not in self._steps:
            reader = session or self._session
            definition = reader.scalar(
                select(PipelineVersion.definition).where(
                    PipelineVersion.pipeline_id == self._row.id, PipelineVersion.version == number
                )
            )
            release(reader)
            self._steps[number] = (
                [StepBody.model_validate(s) for s in definition["steps"]] if definition else self._newest
            )
        return self._steps[number]


def version_of(tags: Mapping[str, str]) -> int | None:
    value = tags.get(run_tags.PIPELINE_VERSION, "")
    return int(value) if value.isdigit() else None


# Reading -------------------------------------------------------------------------------------------------------


def run_record(dagster: DagsterClient, row: Pipeline, run_id: str) -> RunRecord:
    """The run's record, if it is a run of this pipeline (by its tags); else NotFound."""
    dagster_run_id = to_dagster_run_id(run_id)
    record = dagster.run_record(dagster_run_id) if dagster_run_id else None
    tags = record.dagster_run.tags if record else {}
    if record is None or tags.get(run_tags.PIPELINE_ID) != row.id or tags.get(run_tags.PROJECT_ID) != row.project_id:
        raise NotFound.of("Run", run_id, " for this pipeline")
    return record


def pipeline_run(dagster: DagsterClient, row: Pipeline, record: RunRecord, steps: RunSteps) -> PipelineRun:
    view = run_view(dagster, record, with_events=False)
    tags = record.dagster_run.tags
    fold = fold_run(dagster, record, steps.of(tags))
    try:
        variables = run_tags.variables_of(tags)
    except ValueError:  # a tag edited by hand in the Dagster UI: no variables, rather than a failed list
        variables = {}
    failed = [s.error for s in fold.states() if s.status == "failed" and s.error]
    return PipelineRun.of(
        view,
        pipeline_id=row.id,
        environment=tags.get(run_tags.ENVIRONMENT) or DEVELOPMENT,
        version=version_of(tags),
        trigger=trigger_of(tags),
        triggered_by=tags.get(run_tags.TRIGGERED_BY),
        trigger_event=trigger_event(tags),
        full_refresh=run_tags.is_set(tags, run_tags.FULL_REFRESH),
        variables=variables,
        error=(failed[0] if failed else fold.run_error) if view.status == "failed" else None,
        steps=[PipelineStepRun.of(s) for s in fold.states()],
        **lineage(record),
    )


def lineage(record: RunRecord) -> dict[str, str | None]:
    """The run a re-execution was made from, and the first run of its line (Dagster's ids, and Rime's)."""
    run = record.dagster_run
    parent, root = run.parent_run_id, run.root_run_id
    return {
        "parent_run_id": to_rime_run_id(parent) if parent else None,
        "parent_dagster_run_id": parent,
        "root_run_id": to_rime_run_id(root) if root else None,
        "root_dagster_run_id": root,
    }


def _pipeline_then_release(session: Session, project: Project, pipeline_id: str) -> tuple[Pipeline, RunSteps]:
    """The pipeline and its versions' steps, with the request's transaction ended: what follows talks to Dagster."""
    row = get_pipeline(session, project, pipeline_id)
    steps = RunSteps(session, row)
    release(session)
    return row, steps


def run_history(
    session: Session,
    dagster: DagsterClient,
    codec: CursorCodec,
    project: Project,
    pipeline_id: str,
    *,
    limit: int,
    cursor: str | None,
) -> PipelineRunList:
    """Every run of the pipeline's job, newest first: from the API, its schedule or Dagster's UI."""
    row, steps = _pipeline_then_release(session, project, pipeline_id)
    page = run_page(
        dagster,
        codec,
        scope=f"pipeline-runs:{row.id}",
        tags={run_tags.PIPELINE_ID: row.id, run_tags.PROJECT_ID: project.id},
        limit=limit,
        cursor=cursor,
    )
    return page.as_page(PipelineRunList, lambda r: pipeline_run(dagster, row, r, steps))


def run_detail(
    session: Session, dagster: DagsterClient, project: Project, pipeline_id: str, run_id: str
) -> PipelineRun:
    row, steps = _pipeline_then_release(session, project, pipeline_id)
    return pipeline_run(dagster, row, run_record(dagster, row, run_id), steps)


def cancel(
    session: Session, dagster: DagsterClient, project: Project, pipeline_id: str, run_id: str
) -> PipelineRunCanceled:
    """Asks Dagster to terminate the run; a run already over is a Conflict."""
    row, _ = _pipeline_then_release(session, project, pipeline_id)
    record = run_record(dagster, row, run_id)
    current = RUN_STATUS.get(record.dagster_run.status.value, "running")
    if current in TERMINAL_RUN:
        raise Conflict(f"Run {run_id} is already {current}.")
    dagster.terminate(record.dagster_run.run_id)
    return PipelineRunCanceled(run_id=run_id)


def retry(
    session: Session,
    dagster: DagsterClient,
    project: Project,
    pipeline_id: str,
    run_id: str,
    body: PipelineRunRetry,
    *,
    triggered_by: str,
) -> PipelineRunRetried:
    """Re-executes a failed or canceled run as a new run of the same environment's job, linked to it: from its
    failure (the steps that failed or never ran, and every step after them) or every step again.

    Dagster re-executes the job its code location serves now, so the environment must still run the version the
    run ran (else a Conflict): re-running some steps of one version over the results of another is no retry.
    The new run keeps what the run did (pipeline, environment, version, variables, full refresh) and names the
    caller as who started it."""
    row = get_pipeline(session, project, pipeline_id)
    record = run_record(dagster, row, run_id)
    tags = record.dagster_run.tags
    status = RUN_STATUS.get(record.dagster_run.status.value, "running")
    if status == "succeeded":
        raise Conflict(f"Run {run_id} succeeded: only a failed or canceled run is retried (`.../run` starts anew).")
    if status not in ("failed", "canceled"):
        raise Conflict(f"Run {run_id} is still {status}: wait for its end, or cancel it, before retrying it.")
    environment = tags.get(run_tags.ENVIRONMENT) or DEVELOPMENT
    ran = version_of(tags)
    target = environment_target(session, project, row, environment)
    if ran is None or target.version != ran:
        raise Conflict(
            f"Run {run_id} ran version {ran if ran is not None else '(unknown)'} in {environment}, which now runs "
            f"version {target.version}: Dagster would re-execute the new version's job. Start a new run instead."
        )
    check_steps(session, project, target.steps, pipeline_id=row.id)
    release(session)
    launched = dagster.reexecute_run(
        record.dagster_run.run_id,
        from_failure=body.from_failure,
        tags={**run_tags.inherited(tags), run_tags.TRIGGERED_BY: triggered_by},
        generation=project.definitions_generation,
    )
    parent = record.dagster_run
    root = parent.root_run_id or parent.run_id  # as Dagster links them
    return PipelineRunRetried.of(
        launch_summary(dagster, launched),
        parent_run_id=to_rime_run_id(parent.run_id),
        parent_dagster_run_id=parent.run_id,
        root_run_id=to_rime_run_id(root),
        root_dagster_run_id=root,
        pipeline_id=row.id,
        environment=environment,
        version=ran,
        from_failure=body.from_failure,
    )


def run_logs(
    session: Session,
    dagster: DagsterClient,
    project: Project,
    pipeline_id: str,
    run_id: str,
    *,
    after: int,
    limit: int,
) -> PipelineRunLogs:
    """Up to `limit` log lines after the line `after`."""
    row, steps = _pipeline_then_release(session, project, pipeline_id)
    record = run_record(dagster, row, run_id)
    fold = RunFold(steps.of(record.dagster_run.tags))
    records, more = dagster.run_event_records(record.dagster_run.run_id, after=after, limit=limit)
    lines = [PipelineLogLine(**log_line(r, fold)) for r in records]
    return PipelineRunLogs(
        run_id=run_id,
        status=RUN_STATUS.get(record.dagster_run.status.value, "running"),
        logs=lines,
        next_after=lines[-1].id if more and lines else None,
    )


def log_stream(
    session: Session,
    hub: RunWatchHub,
    dagster: DagsterClient,
    project: Project,
    pipeline_id: str,
    run_id: str,
    *,
    after: int,
) -> AsyncIterator[tuple[str, Any] | None]:
    """The run's log lines after `after`, then live ones, as (event, data) pairs: `log`, `status`, `error`;
    None when a keep-alive is due. The run is looked up now (NotFound before any streaming), read later."""
    row, steps = _pipeline_then_release(session, project, pipeline_id)
    record = run_record(dagster, row, run_id)
    followed, reused = followed_steps(dagster, record, steps.of(record.dagster_run.tags))
    return _log_events(hub, dagster, record.dagster_run.run_id, run_id, followed, reused, after)


async def _log_events(
    hub: RunWatchHub,
    dagster: DagsterClient,
    dagster_run_id: str,
    run_id: str,
    steps: list[StepBody],
    reused: frozenset[str],
    after: int,
) -> AsyncIterator[tuple[str, Any] | None]:
    """Backlog from storage up to the shared reader's cursor, then its live feed, until the run ends."""
    async with hub.watch(dagster_run_id, run_id, steps, logs=True, reused=reused) as (sub, watch):
        async for line in _stored_log_lines(dagster, dagster_run_id, watch.fold, after=after, until=sub.log_cursor):
            yield "log", line
        async for event in _live_log_events(sub, run_id, after=after):
            yield event


async def _stored_log_lines(
    dagster: DagsterClient, dagster_run_id: str, fold: RunFold, *, after: int, until: int
) -> AsyncIterator[dict[str, Any]]:
    """The log lines from storage after `after`, up to `until` (the storage id past which the shared reader
    sends them live)."""
    cursor = after
    while cursor < until:
        records, more = await asyncio.to_thread(dagster.run_event_records, dagster_run_id, after=cursor)
        for r in records:
            if r.storage_id > until:
                break
            yield log_line(r, fold)
        if not records or not more:
            break
        cursor = records[-1].storage_id


async def _live_log_events(sub: Subscription, run_id: str, *, after: int) -> AsyncIterator[tuple[str, Any] | None]:
    """The shared reader's feed as `log`, `status` and `error` events (None: a keep-alive is due), until the run
    ends or the feed fails."""
    while True:
        try:
            kind, payload = await asyncio.wait_for(sub.queue.get(), SSE_KEEPALIVE_SECONDS)
        except TimeoutError:
            yield None
            continue
        if kind == "log":
            if payload["id"] > after:
                yield "log", payload
        elif kind == "run":
            yield "status", {"run_id": run_id, "status": payload["status"], "timestamp": payload["timestamp"]}
        elif kind == "error":
            yield "error", {"message": payload}
            return
        elif kind == "end":
            return


# Watching over a WebSocket -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchTarget:
    principal: Principal
    steps: list[StepBody]
    dagster_run_id: str
    reused: frozenset[str] = frozenset()  # a re-execution's steps taken from its parent run


def watch_target(
    sessions: sessionmaker[Session],
    dagster: DagsterClient,
    rate_limits: RateLimits,
    token: str | None,
    *,
    tenant_id: str,
    pipeline_id: str,
    run_id: str,
) -> WatchTarget:
    """Who watches which run: the token's principal, within the per-user connect limit, and a run of a pipeline of
    their tenant. Raises WatchRefused."""
    with sessions.begin() as session:
        principal = websocket_principal(session, token, tenant_id=tenant_id)
    within_connect_limit(rate_limits, principal)
    with sessions.begin() as session:
        row = session.get(Pipeline, pipeline_id)
        project = session.get(Project, row.project_id) if row else None
        if row is None or project is None or project.tenant_id != principal.tenant_id:
            raise WatchRefused(NotFound.of("Pipeline", pipeline_id), principal)
        steps = RunSteps(session, row)
    try:
        record = run_record(dagster, row, run_id)
        with sessions.begin() as session:  # an older version's steps, if the run ran one
            version_steps = steps.of(record.dagster_run.tags, session)
        followed, reused = followed_steps(dagster, record, version_steps)
    except RimeError as exc:
        raise WatchRefused(exc, principal) from None
    return WatchTarget(principal, followed, record.dagster_run.run_id, reused)
