"""What the API answers, as typed models of the client's own (never the server's schemas: this is a client over HTTP).

Fields the server adds later are kept (`extra="allow"`), so a newer API does not break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
StepStatus = Literal["pending", "running", "completed", "failed", "skipped"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Project(Model):
    id: str
    name: str
    description: str | None = None
    namespace: str
    created_at: datetime
    updated_at: datetime


class Connector(Model):
    id: str
    name: str
    connector_type: str
    config: dict[str, Any]
    credentials_set: bool
    selected_tables: list[str] | None = None
    schedule: str | None = None
    sync_mode: str
    status: str
    created_at: datetime
    updated_at: datetime
    last_sync: dict[str, Any] | None = None


class CheckResult(Model):
    """A connection or delivery test: `success: false` carries the reason; it is not an error."""

    success: bool
    message: str


class SourceTable(Model):
    """A table a connector's source offers (discovered live): columns as {name, type, nullable}."""

    name: str
    columns: list[dict[str, Any]]
    primary_key: list[str] = []
    row_estimate: int | None = None


class UploadedFile(Model):
    name: str
    size_bytes: int
    uploaded_at: datetime


class RunStarted(Model):
    """A connector sync's 202."""

    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: datetime


class ConnectorRun(Model):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    rows_synced: int = 0
    tables: list[dict[str, Any]] = []
    error: str | None = None


class Step(Model):
    id: str
    name: str
    type: str
    config: dict[str, Any]
    depends_on: list[str]


class Pipeline(Model):
    id: str
    name: str
    description: str | None = None
    steps: list[Step]
    variables: dict[str, Any] = {}
    schedule: str | None = None
    status: Literal["active", "paused"]
    retries: int = 0
    timeout_seconds: int | None = None
    triggers: list[dict[str, Any]] = []
    created_at: datetime
    updated_at: datetime
    version: int | None = None  # the newest version: what development runs
    execution_order: list[str] | None = None  # the detail view's, not the list's


class StepRun(Model):
    step_id: str
    step_name: str
    type: str
    status: StepStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    rows: int | None = None
    error: str | None = None
    attempts: int = 0
    reused: bool = False  # a retry's step it did not run again (`skipped`): its result is the parent run's


class PipelineRun(Model):
    """A pipeline run with each step's status (`GET .../runs/{runId}`)."""

    run_id: str
    dagster_run_id: str
    dagster_url: str
    pipeline_id: str
    status: RunStatus
    environment: str = "development"
    version: int | None = None
    trigger: str
    triggered_by: str | None = None
    full_refresh: bool = False
    variables: dict[str, Any] = {}
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    error: str | None = None
    steps: list[StepRun]
    parent_run_id: str | None = None  # a retry: the run it was made from
    root_run_id: str | None = None  # a retry: the first run of its line of retries

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class PipelineRunPlan(Model):
    """A dry run's answer: the validated plan; nothing ran."""

    dry_run: Literal[True] = True
    pipeline_id: str
    environment: str = "development"
    version: int | None = None
    full_refresh: bool
    variables: dict[str, Any]
    execution_order: list[str]
    plan: list[dict[str, Any]]
