"""Bodies of the Pipelines group (definitions; runs come with the Dagster job)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.schemas.connectors import _ScheduleMixin
from rime_dagster.pipelines.spec import MAX_STEPS, StepBody
from rime_dagster.pipelines.trigger_spec import MAX_TRIGGERS, TriggerBody

TRIGGERS_DESCRIPTION = (
    "What starts a run besides the schedule, each a Dagster sensor: `on_upload` (each new or changed file in a "
    "`files` connector's upload area starts one run; a `connector_sync` step of the pipeline must sync that "
    "connector), `on_success` (each successful run of another pipeline), `on_table_update` (a new snapshot of a "
    "table of the project; not one the pipeline writes itself). Events before a trigger was added start nothing."
)


class PipelineCreate(_ScheduleMixin, RequestModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    steps: list[StepBody] = Field(min_length=1, max_length=MAX_STEPS, description="The DAG: steps and depends_on.")
    variables: dict[str, Any] | None = Field(None, description="Defaults every run sees (a run's own win).")
    schedule: str | None = Field(None, description="5-field cron, run by a Dagster schedule; null = manual only.")
    retries: int = Field(0, ge=0, le=10, description="Retries of a failed step.")
    timeout_seconds: int | None = Field(None, ge=1, le=7 * 24 * 3600, description="The whole run's limit.")
    triggers: list[TriggerBody] = Field(default_factory=list, max_length=MAX_TRIGGERS, description=TRIGGERS_DESCRIPTION)


class PipelineUpdate(_ScheduleMixin, RequestModel):
    """Fields given replace the stored ones; `steps` replaces the whole DAG (validated again)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    steps: list[StepBody] | None = Field(None, min_length=1, max_length=MAX_STEPS)
    variables: dict[str, Any] | None = None
    schedule: str | None = None
    retries: int | None = Field(None, ge=0, le=10)
    timeout_seconds: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    status: Literal["active", "paused"] | None = Field(
        None, description="`paused` stops the schedule and the triggers' sensors."
    )
    triggers: list[TriggerBody] | None = Field(
        None,
        max_length=MAX_TRIGGERS,
        description="Replaces the triggers; one kept (same type and target) keeps its `since` and its sensor.",
    )


class Step(ResponseModel):
    id: str
    name: str
    type: str
    config: dict[str, Any]
    depends_on: list[str]


class DagNode(ResponseModel):
    id: str
    name: str
    type: str


class DagEdge(ResponseModel):
    model_config = {"populate_by_name": True}

    from_: str = Field(alias="from", serialization_alias="from")
    to: str


class Dag(ResponseModel):
    nodes: list[DagNode]
    edges: list[DagEdge]


class _TriggerInfo(ResponseModel):
    since: Timestamp = Field(description="When the trigger was added: earlier events start no run.")
    sensor_name: str = Field(description="Its Dagster sensor, `<namespace>__<pipeline slug>__<type>[_<n>]`.")


class OnUploadTriggerInfo(_TriggerInfo):
    type: Literal["on_upload"]
    connector_id: str


class OnSuccessTriggerInfo(_TriggerInfo):
    type: Literal["on_success"]
    pipeline_id: str


class OnTableUpdateTriggerInfo(_TriggerInfo):
    type: Literal["on_table_update"]
    table: str


PipelineTrigger = Annotated[
    OnUploadTriggerInfo | OnSuccessTriggerInfo | OnTableUpdateTriggerInfo, Field(discriminator="type")
]


class PipelineResponse(ResponseModel):
    id: str
    name: str
    description: str | None
    steps: list[Step]
    variables: dict[str, Any]
    schedule: str | None
    status: Literal["active", "paused"]
    retries: int
    timeout_seconds: int | None
    triggers: list[PipelineTrigger] = Field(description=TRIGGERS_DESCRIPTION)
    version: int | None = Field(
        description="Its newest version (what development runs): GET .../versions lists them all."
    )
    created_at: Timestamp
    updated_at: Timestamp


class PipelineDetail(PipelineResponse):
    dag: Dag
    execution_order: list[str] = Field(description="Step ids in the order a run executes them.")


class PipelineList(Page[PipelineResponse]):
    pass


# Runs ----------------------------------------------------------------------------------
MAX_VARIABLES_BYTES = 64 * 1024
StepStatus = Literal["pending", "running", "completed", "failed", "skipped"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class PipelineRunRequest(RequestModel):
    full_refresh: bool = Field(False, description="Connector steps reload everything; dbt steps run --full-refresh.")
    dry_run: bool = Field(False, description="Validate and return the plan of steps; execute nothing.")
    variables: dict[str, Any] | None = Field(
        None,
        description="Merged over the pipeline's variables for this run; dbt steps get them as dbt vars.",
    )
    environment: Literal["development", "qa", "uat", "production"] = Field(
        "development",
        description="Whose job runs: development's (the newest version) or the version promoted into qa, uat or "
        "production (409 when that environment has none).",
    )

    @field_validator("variables")
    @classmethod
    def _small_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        if len(json.dumps(value, separators=(",", ":"))) > MAX_VARIABLES_BYTES:
            raise ValueError(f"variables take at most {MAX_VARIABLES_BYTES} bytes as JSON")
        return value


class PlannedStep(ResponseModel):
    order: int = Field(description="Position in the execution order (1 = first).")
    step_id: str
    step_name: str
    type: str
    depends_on: list[str]
    config: dict[str, Any]
    steps: list[PlannedStep] | None = Field(None, description="A `pipeline` step: the other pipeline's plan.")


class PipelineRunPlan(ResponseModel):
    dry_run: Literal[True] = True
    run_id: None = None
    status: Literal["validated"] = "validated"
    pipeline_id: str
    environment: str
    version: int | None
    full_refresh: bool
    variables: dict[str, Any] = Field(description="What the steps would see: the pipeline's, then the run's.")
    execution_order: list[str]
    plan: list[PlannedStep]


class PipelineRunStarted(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    pipeline_id: str
    environment: str
    version: int | None
    status: Literal["queued", "running"]
    started_at: Timestamp
    dry_run: Literal[False] = False


class PipelineRunRetry(RequestModel):
    from_failure: bool = Field(
        True,
        description="Re-run only the steps that failed or never ran, and every step after them; the other steps "
        "keep the run's results (`reused`). `false`: every step again.",
    )


class PipelineRunRetried(PipelineRunStarted):
    parent_run_id: str = Field(description="The run retried.")
    parent_dagster_run_id: str
    root_run_id: str = Field(description="The first run of its line of retries (the parent, on a first retry).")
    root_dagster_run_id: str
    from_failure: bool


class PipelineStepRun(ResponseModel):
    step_id: str
    step_name: str
    type: str
    status: StepStatus
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_seconds: float | None
    rows: int | None = Field(description="Rows the step landed or built, when it reports them.")
    error: str | None
    attempts: int = Field(description="Times Dagster started the step (retries included).")
    reused: bool = Field(
        False,
        description="A retried run's step that it did not run again (`status: skipped`): its result is the "
        "parent run's (`parent_run_id`).",
    )


class TriggerEvent(ResponseModel):
    """What started a triggered run; the fields of its `type` are set, the others null."""

    type: Literal["on_upload", "on_success", "on_table_update"]
    connector_id: str | None = Field(None, description="on_upload: the connector whose upload area got the file.")
    file: str | None = Field(None, description="on_upload: the file's name in the upload area.")
    pipeline_id: str | None = Field(None, description="on_success: the pipeline whose run succeeded.")
    run_id: str | None = Field(None, description="on_success: that run (`run_...`, as its run history names it).")
    dagster_run_id: str | None = Field(None, description="on_success: that run's Dagster id.")
    table: str | None = Field(None, description="on_table_update: the table.")
    snapshot_id: str | None = Field(None, description="on_table_update: its new snapshot.")


class PipelineRun(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    pipeline_id: str
    status: RunStatus
    environment: str = Field(description="The environment whose job ran (development for runs older than versions).")
    version: int | None = Field(description="The pipeline version it ran (null for runs older than versions).")
    trigger: Literal["api", "schedule", "sensor", "dagster"] = Field(
        description="Who started it: the API, the pipeline's schedule, a sensor, or Dagster (UI, CLI, GraphQL)."
    )
    triggered_by: str | None = Field(description="The API user who started it.")
    trigger_event: TriggerEvent | None = Field(
        description="A run a pipeline trigger started (`trigger: sensor`): the event that started it."
    )
    full_refresh: bool
    variables: dict[str, Any]
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_seconds: float | None
    error: str | None
    steps: list[PipelineStepRun]
    parent_run_id: str | None = Field(None, description="A retry (re-execution): the run it was made from.")
    parent_dagster_run_id: str | None = Field(None, description="That run's Dagster id (`dagster/parent_run_id`).")
    root_run_id: str | None = Field(None, description="A retry: the first run of its line of retries.")
    root_dagster_run_id: str | None = Field(None, description="That run's Dagster id (`dagster/root_run_id`).")


class PipelineRunList(Page[PipelineRun]):
    pass


class PipelineRunCanceled(ResponseModel):
    run_id: str
    status: Literal["canceling"] = "canceling"


class PipelineLogLine(ResponseModel):
    id: int = Field(description="Dagster's storage id: pass the last one as `after` to read on.")
    timestamp: str
    level: str
    step_id: str | None
    step_key: str | None
    event_type: str | None = Field(description="Dagster's event type; null for a step's own log lines.")
    message: str


class PipelineRunLogs(ResponseModel):
    run_id: str
    status: RunStatus
    logs: list[PipelineLogLine]
    next_after: int | None = Field(description="Set when more lines follow: the `after` of the next read.")


PIPELINE_FORMAT_VERSION = 1  # what GET .../export writes and POST .../import reads at most


class PipelineDefinition(PipelineCreate):
    """A pipeline as a document holds it: what creating it takes, and whether it is paused."""

    status: Literal["active", "paused"] = "active"


class PipelineDocument(RequestModel):
    """An exported pipeline: portable between environments as JSON or YAML (`rime apply -f pipeline.yaml`)."""

    format_version: int = Field(
        ge=1, description=f"The document format; this server writes and reads up to {PIPELINE_FORMAT_VERSION}."
    )
    kind: Literal["pipeline"] = "pipeline"
    pipeline: PipelineDefinition

    @field_validator("format_version")
    @classmethod
    def _known(cls, value: int) -> int:
        if value > PIPELINE_FORMAT_VERSION:
            newest = PIPELINE_FORMAT_VERSION
            raise ValueError(f"Format {value} is newer than this server reads ({newest}): upgrade Rime.")
        return value
