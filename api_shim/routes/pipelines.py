"""Pipelines group: `/projects/{id}/pipelines...` definitions (JSON or YAML bodies), their runs and logs.

A run's live step transitions come over a WebSocket: routes/pipeline_watch.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, Query, Request, Response, status
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event

from api_shim.dagster_client import DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, rime_router, yaml_body
from api_shim.schemas.common import error_responses
from api_shim.schemas.pipelines import (
    PipelineCreate,
    PipelineDetail,
    PipelineList,
    PipelineRun,
    PipelineRunCanceled,
    PipelineRunList,
    PipelineRunLogs,
    PipelineRunPlan,
    PipelineRunRequest,
    PipelineRunRetried,
    PipelineRunRetry,
    PipelineRunStarted,
    PipelineUpdate,
)
from api_shim.services import pipeline_runs
from api_shim.services import pipelines as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/pipelines", tags=["Pipelines"])
PipelinePage = Annotated[PageRequest, page_params(service.PIPELINES)]


@router.get(
    "", name="pipeline.list", response_model=PipelineList, responses=error_responses(404), summary="List pipelines"
)
def list_pipelines(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: PipelinePage
) -> PipelineList:
    return service.list_page(session, codec, get_project(session, id, tenant_id=principal.tenant_id), page)


@router.post(
    "",
    name="pipeline.create",
    status_code=status.HTTP_201_CREATED,
    response_model=PipelineDetail,
    responses=error_responses(404, 409, 422),
    summary="Create a pipeline",
    description="JSON, or YAML with `Content-Type: application/yaml`. An invalid DAG (cycle, unknown step, "
    "unknown resource, another project's resource) is a 422 naming the step; a trigger that cannot start this "
    "pipeline (unknown or unfit connector, pipeline or table, a loop of `on_success` triggers) a 422 naming "
    "`triggers[i]`.",
    openapi_extra=yaml_body("PipelineCreate"),
)
def create_pipeline(id: str, body: PipelineCreate, principal: Engineer, session: SessionDep) -> PipelineDetail:
    return service.create(session, get_project(session, id, tenant_id=principal.tenant_id), body, by=principal.email)


@router.get(
    "/{pipelineId}",
    name="pipeline.get",
    response_model=PipelineDetail,
    responses=error_responses(404),
    summary="Get pipeline details and DAG",
)
def get_pipeline(id: str, pipelineId: str, principal: Viewer, session: SessionDep) -> PipelineDetail:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), pipelineId)


@router.patch(
    "/{pipelineId}",
    name="pipeline.update",
    response_model=PipelineDetail,
    responses=error_responses(404, 409, 422),
    summary="Update pipeline configuration",
    description="A change of definition (anything but `status`) makes the pipeline's next version, which "
    "development runs at once; qa, uat and production keep the versions promoted into them.",
    openapi_extra=yaml_body("PipelineUpdate"),
)
def update_pipeline(
    id: str, pipelineId: str, body: PipelineUpdate, principal: Engineer, session: SessionDep
) -> PipelineDetail:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.update(session, project, pipelineId, body, by=principal.email)


@router.delete(
    "/{pipelineId}",
    name="pipeline.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a pipeline",
    description="Refused with 409 while another pipeline of the project has a step that runs it, or an "
    "`on_success` trigger on it, or while it runs in uat or production.",
)
def delete_pipeline(id: str, pipelineId: str, principal: Engineer, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), pipelineId)


# Runs ----------------------------------------------------------------------------------


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
) -> PipelineRunStarted | PipelineRunPlan:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    body = body or PipelineRunRequest()
    result = pipeline_runs.launch(session, dagster, project, pipelineId, body, triggered_by=principal.email)
    if isinstance(result, PipelineRunPlan):
        response.status_code = status.HTTP_200_OK
    return result


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
) -> PipelineRunList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return pipeline_runs.run_history(session, dagster, codec, project, pipelineId, limit=limit, cursor=cursor)


@router.get(
    "/{pipelineId}/runs/{runId}",
    name="pipeline.run_detail",
    response_model=PipelineRun,
    responses=error_responses(404),
    summary="Get run details and step status",
)
def pipeline_run_detail(
    id: str, pipelineId: str, runId: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep
) -> PipelineRun:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return pipeline_runs.run_detail(session, dagster, project, pipelineId, runId)


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
) -> PipelineRunCanceled:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return pipeline_runs.cancel(session, dagster, project, pipelineId, runId)


@router.post(
    "/{pipelineId}/runs/{runId}/retry",
    name="pipeline.retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PipelineRunRetried,
    responses=error_responses(404, 409, 422),
    dependencies=[Idempotent],
    summary="Retry a failed or canceled run",
    description="Re-executes the run in Dagster as a new run of the same environment's job, linked to it "
    "(`parent_run_id`, `root_run_id`). `from_failure` (default): only the steps that failed or never ran, and every "
    "step after them, run again; the others keep the run's results and show as `skipped` with `reused: true`. "
    "`from_failure: false`: every step again. The new run keeps the run's environment, version, variables and "
    "full refresh, and names the caller as `triggered_by`. A run that succeeded or has not ended is a 409, and so "
    "is a run of a version its environment no longer runs (Dagster re-executes the job as it is now).",
)
def retry_pipeline_run(
    id: str,
    pipelineId: str,
    runId: str,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
    body: Annotated[PipelineRunRetry | None, Body()] = None,
) -> PipelineRunRetried:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    body = body or PipelineRunRetry()
    return pipeline_runs.retry(session, dagster, project, pipelineId, runId, body, triggered_by=principal.email)


LOGS_RESPONSE = {
    "description": "JSON by default. With `Accept: text/event-stream`, Server-Sent Events: `event: log` (data: a "
    "log line as JSON), `event: status` (data: the run's status when it changes), `event: error`; the stream "
    "starts with the lines after `after` and ends with the run.",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PipelineRunLogs"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}


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
) -> PipelineRunLogs | EventSourceResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return pipeline_runs.run_logs(session, dagster, project, pipelineId, runId, after=after, limit=limit)
    hub = request.app.state.run_watch
    events = pipeline_runs.log_stream(session, hub, dagster, project, pipelineId, runId, after=after)
    return EventSourceResponse(_sse(events), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(events: AsyncIterator[tuple[str, Any] | None]) -> AsyncIterator[bytes]:
    keepalive = KEEPALIVE_COMMENT.encode() if isinstance(KEEPALIVE_COMMENT, str) else KEEPALIVE_COMMENT
    async for item in events:
        if item is None:
            yield keepalive
        else:
            yield format_sse_event(data_str=json.dumps(item[1], default=str), event=item[0])
