"""Pipelines group: `/projects/{id}/pipelines...` definitions (JSON or YAML bodies)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response, WebSocket, WebSocketDisconnect, status
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_shim.dagster_client import RUN_STATUS, DagsterClient, DagsterClientDep, to_dagster_run_id
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, Viewer
from api_shim.errors import Conflict, Forbidden, NotFound, RateLimited, RimeError
from api_shim.middleware import refuse_websocket
from api_shim.pagination import Listing, Page
from api_shim.routes._paging import page_params
from api_shim.routing import API_PREFIX, Idempotent, rime_router, yaml_body
from api_shim.run_watch import RunWatchHub
from api_shim.schemas.common import error_responses
from api_shim.schemas.pipelines import (
    Dag,
    PipelineCreate,
    PipelineDetail,
    PipelineList,
    PipelineLogLine,
    PipelineResponse,
    PipelineRun,
    PipelineRunCanceled,
    PipelineRunList,
    PipelineRunLogs,
    PipelineRunPlan,
    PipelineRunRequest,
    PipelineRunStarted,
    PipelineStepRun,
    PipelineUpdate,
    PlannedStep,
)
from api_shim.services import audit, pipeline_runs
from api_shim.services import pipelines as service
from api_shim.services.auth import Role, authenticate
from api_shim.services.projects import get_project
from api_shim.services.runs import launch_summary, run_page, run_view
from rime_dagster.pipelines.names import MAX_NESTING, pipeline_job_name, pipeline_tags
from rime_dagster.pipelines.spec import dag_of, validate_dag
from rime_dagster.platform import run_tags
from rime_dagster.store.models import Pipeline, Project
from rime_dagster.store.session import release

log = logging.getLogger(__name__)

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


@router.get(
    "", name="pipeline.list", response_model=PipelineList, responses=error_responses(404), summary="List pipelines"
)
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
):
    project = _project(session, principal, id)
    row = service.create_pipeline(session, project, body)
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
):
    project = _project(session, principal, id)
    row = service.update_pipeline(session, project, service.get_pipeline(session, project, pipelineId), body)
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
):
    project = _project(session, principal, id)
    row = service.get_pipeline(session, project, pipelineId)
    users = service.referencing_pipelines(session, project, row.id)
    if users:
        raise Conflict(f"Pipeline(s) {', '.join(sorted(users))} run this pipeline; change them first.")
    session.delete(row)
    session.flush()


# Runs ----------------------------------------------------------------------------------


def _plan(session: Session, project: Project, row: Pipeline, depth: int = 0) -> list[PlannedStep]:
    steps = service.steps_of(row)
    by_id = {s.id: s for s in steps}
    planned = []
    for n, step_id in enumerate(validate_dag(steps), start=1):
        step = by_id[step_id]
        nested = None
        if step.type == "pipeline" and depth < MAX_NESTING:
            inner = service.get_pipeline(session, project, step.config["pipeline_id"])
            nested = _plan(session, project, inner, depth + 1)
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


@router.post(
    "/{pipelineId}/run",
    name="pipeline.run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PipelineRunStarted | PipelineRunPlan,
    responses={
        200: {"model": PipelineRunPlan, "description": "`dry_run`: the validated plan; nothing ran."},
        **error_responses(404, 409, 422),
    },
    dependencies=[Idempotent],
    summary="Trigger a pipeline run",
    description="Launches the pipeline's Dagster job (202). With `dry_run` the steps and the resources they "
    "name are validated again and the ordered plan comes back (200); nothing is launched.",
)
def run_pipeline(
    id: str,
    pipelineId: str,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
    response: Response,
    body: Annotated[PipelineRunRequest | None, Body()] = None,
):
    body = body or PipelineRunRequest()
    project = _project(session, principal, id)
    row = service.get_pipeline(session, project, pipelineId)
    order = service.check_steps(session, project, service.steps_of(row), pipeline_id=row.id)
    if body.dry_run:
        response.status_code = status.HTTP_200_OK
        return PipelineRunPlan(
            pipeline_id=row.id,
            full_refresh=body.full_refresh,
            variables={**row.variables, **(body.variables or {})},
            execution_order=order,
            plan=_plan(session, project, row),
        )
    release(session)
    tags = {
        **pipeline_tags(project.id, row.id),
        run_tags.FULL_REFRESH: run_tags.flag(body.full_refresh),
        run_tags.TRIGGERED_BY: principal.email,
    }
    if body.variables:
        tags[run_tags.VARIABLES] = json.dumps(body.variables, separators=(",", ":"), sort_keys=True)
    launched = dagster.launch_run(
        pipeline_job_name(project.namespace, row.slug), generation=project.definitions_generation, tags=tags
    )
    return PipelineRunStarted(**launch_summary(dagster, launched), pipeline_id=row.id)


def _run_record(dagster: DagsterClient, project: Project, row: Pipeline, run_id: str):
    dagster_run_id = to_dagster_run_id(run_id)
    record = dagster.run_record(dagster_run_id) if dagster_run_id else None
    tags = record.dagster_run.tags if record else {}
    if record is None or tags.get(run_tags.PIPELINE_ID) != row.id or tags.get(run_tags.PROJECT_ID) != project.id:
        raise NotFound.of("Run", run_id, " for this pipeline")
    return record


def _run(dagster: DagsterClient, row: Pipeline, record) -> PipelineRun:
    view = run_view(dagster, record, with_events=False)
    fold = pipeline_runs.fold_run(dagster, record, service.steps_of(row))
    tags = record.dagster_run.tags
    try:
        variables = json.loads(tags.get(run_tags.VARIABLES) or "{}")
    except ValueError:
        variables = {}
    failed = [s.error for s in fold.states() if s.status == "failed" and s.error]
    return PipelineRun(
        run_id=view.run_id,
        dagster_run_id=view.dagster_run_id,
        dagster_url=view.dagster_url,
        pipeline_id=row.id,
        status=view.status,
        trigger=pipeline_runs.trigger_of(tags),
        triggered_by=tags.get(run_tags.TRIGGERED_BY),
        full_refresh=run_tags.is_set(tags, run_tags.FULL_REFRESH),
        variables=variables,
        started_at=view.started_at,
        finished_at=view.finished_at,
        duration_seconds=view.duration_seconds,
        error=(failed[0] if failed else fold.run_error) if view.status == "failed" else None,
        steps=[PipelineStepRun(**s.as_dict()) for s in fold.states()],
    )


@router.get(
    "/{pipelineId}/runs",
    name="pipeline.runs",
    response_model=PipelineRunList,
    responses=error_responses(404),
    summary="List run history",
    description="Every run of the pipeline's Dagster job, newest first: from the API, its schedule or Dagster's UI.",
)
def pipeline_runs_list(
    id: str,
    pipelineId: str,
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query()] = None,
):
    project = _project(session, principal, id)
    row = service.get_pipeline(session, project, pipelineId)
    release(session)
    page = run_page(
        dagster,
        codec,
        scope=f"pipeline-runs:{row.id}",
        tags={run_tags.PIPELINE_ID: row.id, run_tags.PROJECT_ID: project.id},
        limit=limit,
        cursor=cursor,
    )
    return PipelineRunList(
        data=[_run(dagster, row, r) for r in page.records], next_cursor=page.next_cursor, has_more=page.has_more
    )


@router.get(
    "/{pipelineId}/runs/{runId}",
    name="pipeline.run_detail",
    response_model=PipelineRun,
    responses=error_responses(404),
    summary="Get run details and step status",
)
def pipeline_run_detail(
    id: str, pipelineId: str, runId: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep
):
    project = _project(session, principal, id)
    row = service.get_pipeline(session, project, pipelineId)
    release(session)
    return _run(dagster, row, _run_record(dagster, project, row, runId))


@router.post(
    "/{pipelineId}/runs/{runId}/cancel",
    name="pipeline.cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PipelineRunCanceled,
    responses=error_responses(404, 409),
    summary="Cancel a run",
    description="Asks Dagster to terminate the run. Steps not started become `skipped`; the running step ends "
    "`failed`. A run already over is a 409.",
)
def cancel_pipeline_run(
    id: str, pipelineId: str, runId: str, principal: Engineer, session: SessionDep, dagster: DagsterClientDep
):
    project = _project(session, principal, id)
    row = service.get_pipeline(session, project, pipelineId)
    release(session)
    record = _run_record(dagster, project, row, runId)
    current = RUN_STATUS.get(record.dagster_run.status.value, "running")
    if current in pipeline_runs.TERMINAL_RUN:
        raise Conflict(f"Run {runId} is already {current}.")
    dagster.terminate(record.dagster_run.run_id)
    return PipelineRunCanceled(run_id=runId)


LOGS_RESPONSE = {
    "description": "JSON by default. With `Accept: text/event-stream`, Server-Sent Events: `event: log` (data: a "
    "log line as JSON), `event: status` (data: the run's status when it changes), `event: error`; the stream "
    "starts with the lines after `after` and ends with the run.",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PipelineRunLogs"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}
SSE_KEEPALIVE_SECONDS = 15.0


@router.get(
    "/{pipelineId}/runs/{runId}/logs",
    name="pipeline.run_logs",
    response_model=PipelineRunLogs,
    responses={200: LOGS_RESPONSE, **error_responses(404)},
    summary="Get a run's logs (JSON, or live as Server-Sent Events)",
)
def pipeline_run_logs(
    id: str,
    pipelineId: str,
    runId: str,
    request: Request,
    principal: Viewer,
    session: SessionDep,
    dagster: DagsterClientDep,
    after: Annotated[int, Query(ge=0, description="Only lines after this `id`.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
):
    project = _project(session, principal, id)
    row = service.get_pipeline(session, project, pipelineId)
    release(session)
    record = _run_record(dagster, project, row, runId)
    steps = service.steps_of(row)
    if "text/event-stream" in request.headers.get("accept", ""):
        hub: RunWatchHub = request.app.state.run_watch
        return EventSourceResponse(
            _log_stream(hub, dagster, record.dagster_run.run_id, runId, steps, after),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    fold = pipeline_runs.RunFold(steps)
    records, more = dagster.run_event_records(record.dagster_run.run_id, after=after, limit=limit)
    lines = [PipelineLogLine(**pipeline_runs.log_line(r, fold)) for r in records]
    return PipelineRunLogs(
        run_id=runId,
        status=RUN_STATUS.get(record.dagster_run.status.value, "running"),
        logs=lines,
        next_after=lines[-1].id if more and lines else None,
    )


def _sse(event: str, data: Any) -> bytes:
    return format_sse_event(data_str=json.dumps(data, default=str), event=event)


async def _log_stream(hub: RunWatchHub, dagster: DagsterClient, dagster_run_id: str, run_id: str, steps, after: int):
    """Backlog from storage up to the shared reader's cursor, then its live feed, until the run ends."""
    async with hub.watch(dagster_run_id, run_id, steps, logs=True) as (sub, watch):
        cursor = after
        while cursor < sub.log_cursor:
            records, more = await asyncio.to_thread(dagster.run_event_records, dagster_run_id, after=cursor)
            for r in records:
                if r.storage_id > sub.log_cursor:
                    break
                yield _sse("log", pipeline_runs.log_line(r, watch.fold))
            if not records or not more:
                break
            cursor = records[-1].storage_id
        while True:
            try:
                kind, payload = await asyncio.wait_for(sub.queue.get(), SSE_KEEPALIVE_SECONDS)
            except TimeoutError:
                yield KEEPALIVE_COMMENT.encode() if isinstance(KEEPALIVE_COMMENT, str) else KEEPALIVE_COMMENT
                continue
            if kind == "log":
                if payload["id"] > after:
                    yield _sse("log", payload)
            elif kind == "run":
                yield _sse("status", {"run_id": run_id, "status": payload["status"], "timestamp": payload["timestamp"]})
            elif kind == "error":
                yield _sse("error", {"message": payload})
                return
            elif kind == "end":
                return


# WebSocket -----------------------------------------------------------------------------

ws_router = APIRouter(prefix=API_PREFIX + "/ws", tags=["Pipelines"])
WS_UNAUTHORIZED, WS_FORBIDDEN, WS_NOT_FOUND = 4401, 4403, 4404
# `Sec-WebSocket-Protocol: bearer, <token>` (browsers: `new WebSocket(url, ["bearer", token])`) keeps the token
# out of URLs, which proxies and servers log; the answer names `bearer` alone, never the token.
BEARER_SUBPROTOCOL = "bearer"


def _ws_credentials(websocket: WebSocket, query_token: str | None) -> tuple[str | None, str | None]:
    """(the token, the subprotocol to accept): the entry after `bearer` in the offered subprotocols, else `?token=`."""
    offered = list(websocket.scope.get("subprotocols") or [])
    if BEARER_SUBPROTOCOL not in offered:
        return query_token, None
    after = offered.index(BEARER_SUBPROTOCOL) + 1
    return (offered[after] if after < len(offered) else None), BEARER_SUBPROTOCOL


class _Refused(Exception):
    def __init__(self, status_code: int, error: RimeError):
        self.status_code, self.error = status_code, error


def _ws_target(websocket: WebSocket, token: str | None, pipeline_id: str, run_id: str):
    """(principal, pipeline steps, Dagster run id), or _Refused."""
    settings = websocket.app.state.settings
    dagster: DagsterClient = websocket.app.state.dagster
    with websocket.app.state.sessions.begin() as session:
        try:
            principal = authenticate(session, token, tenant_id=settings.tenant)
        except RimeError as exc:
            raise _Refused(401, exc) from None
        websocket.state.principal = principal
        if not websocket.app.state.rate_limits.websocket_connect("user", principal.user_id):
            raise _Refused(429, RateLimited("Too many WebSocket connects by this user; retry shortly."))
        row = session.get(Pipeline, pipeline_id)
        project = session.get(Project, row.project_id) if row else None
        if row is None or project is None or project.tenant_id != principal.tenant_id:
            raise _Refused(404, NotFound.of("Pipeline", pipeline_id))
    try:
        record = _run_record(dagster, project, row, run_id)
    except RimeError as exc:
        raise _Refused(exc.status, exc) from None
    return principal, service.steps_of(row), record.dagster_run.run_id


def _audit_refusal(websocket: WebSocket, status_code: int, pipeline_id: str, run_id: str) -> None:
    principal = getattr(websocket.state, "principal", None)
    client = websocket.client
    entry = audit.AuditEntry(
        tenant_id=websocket.app.state.settings.tenant,
        project_id=None,
        actor_id=principal.user_id if principal else None,
        actor=principal.email if principal else "anonymous",
        action="pipeline.run_watch",
        resource_type="pipeline",
        resource_id=run_id,
        request_id=websocket.scope.get("state", {}).get("request_id", ""),
        method="WEBSOCKET",
        path=websocket.url.path[:500],
        status_code=status_code,
        ip=client.host if client else None,
    )
    with websocket.app.state.sessions.begin() as session:
        audit.record(session, entry)


async def _refuse(websocket: WebSocket, refused: _Refused, pipeline_id: str, run_id: str) -> None:
    # Like HTTP 429s, refused connects over the rate limit are not audited; failed logins within their budget.
    status_code = refused.status_code
    if status_code != 429 and websocket.app.state.rate_limits.audits(status_code, websocket.scope):
        try:
            await run_in_threadpool(_audit_refusal, websocket, status_code, pipeline_id, run_id)
        except Exception:
            log.exception("could not audit a refused WebSocket")
    await refuse_websocket(websocket, status_code, refused.error.code, refused.error.message)


@ws_router.websocket("/pipelines/{pipelineId}/runs/{runId}", name="pipeline.run_watch")
async def watch_pipeline_run(websocket: WebSocket, pipelineId: str, runId: str, token: str | None = None):
    """Live step transitions of a run: `step_update` per transition and `run_update` per run status.

    On connect: one `step_update` per step (its current state), then a `run_update` (the run's
    current status); everything after is live. The socket closes (1000) after the final
    `run_update` of a run that ended. The token comes as the subprotocols `bearer, <token>` or as `?token=`.
    Refused (HTTP 401/404 before the upgrade, or close codes 4401/4404): a bad or missing token, an unknown
    pipeline or run.
    """
    token, subprotocol = _ws_credentials(websocket, token)
    try:
        principal, steps, dagster_run_id = await run_in_threadpool(_ws_target, websocket, token, pipelineId, runId)
    except _Refused as refused:
        await _refuse(websocket, refused, pipelineId, runId)
        return
    if not principal.has(Role.viewer):  # every role may watch; kept for when roles narrow
        await _refuse(websocket, _Refused(403, Forbidden("Not allowed.")), pipelineId, runId)
        return
    await websocket.accept(subprotocol=subprotocol)
    hub: RunWatchHub = websocket.app.state.run_watch

    async def until_client_leaves() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    leaving = asyncio.create_task(until_client_leaves())
    try:
        async with hub.watch(dagster_run_id, runId, steps) as (sub, _watch):
            while True:
                getting = asyncio.create_task(sub.queue.get())
                done, _ = await asyncio.wait({getting, leaving}, return_when=asyncio.FIRST_COMPLETED)
                if leaving in done:
                    getting.cancel()
                    return
                kind, payload = getting.result()
                if kind in ("step", "run"):
                    await websocket.send_json(payload)
                elif kind == "error":
                    await websocket.send_json({"type": "error", "message": payload})
                    await websocket.close(code=1011)
                    return
                elif kind == "end":
                    await websocket.close(code=1000)
                    return
    except (WebSocketDisconnect, RuntimeError):  # the client went away mid-send
        return
    finally:
        leaving.cancel()
