"""Bodies of the Connectors group (and the runs they start)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.services.cron import validate_cron

SyncMode = Literal["full_refresh", "incremental"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class _ScheduleMixin:
    @field_validator("schedule", check_fields=False)
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return validate_cron(value) if value is not None else None


def _some_distinct(tables: list[str]) -> list[str]:
    if not tables:
        raise ValueError("Must name at least one table, or be null for all tables")
    if len(set(tables)) != len(tables):
        raise ValueError("Tables must not repeat")
    return tables


# At least one table, each named once (null, not [], selects every table), on create and update alike.
SelectedTables = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    Field(json_schema_extra={"minItems": 1, "uniqueItems": True}),
    AfterValidator(_some_distinct),
]


class ConnectorCreate(_ScheduleMixin, RequestModel):
    name: str = Field(min_length=1, max_length=200)
    connector_type: str = Field(description="`postgresql`, `sqlite` or `files`.", examples=["postgresql"])
    config: dict[str, Any] = Field(description="Validated by the connector type's own schema; unknown keys are errors.")
    credentials: dict[str, Any] | None = Field(None, description="Encrypted at rest; never returned.")
    selected_tables: SelectedTables | None = Field(
        None, description="Tables to sync; null means every discovered table."
    )
    schedule: str | None = Field(None, description="5-field cron, run by a Dagster schedule; null = manual only.")
    sync_mode: SyncMode = "full_refresh"
    cursor_fields: dict[str, str] | None = Field(None, description="Incremental cursor column per table.")


class ConnectorUpdate(_ScheduleMixin, RequestModel):
    """JSON merge patch: `config` and `credentials` are merged key by key; null removes a key."""

    name: str | None = Field(None, min_length=1, max_length=200)
    config: dict[str, Any] | None = None
    credentials: dict[str, Any] | None = None
    selected_tables: SelectedTables | None = None
    schedule: str | None = None
    sync_mode: SyncMode | None = None
    cursor_fields: dict[str, str | None] | None = None
    status: Literal["active", "paused"] | None = Field(None, description="`paused` stops the schedule.")


class TableRunSummary(ResponseModel):
    name: str
    rows: int | None
    status: Literal["pending", "running", "succeeded", "failed", "skipped"]


class LastSync(ResponseModel):
    run_id: str
    status: RunStatus
    started_at: Timestamp | None
    finished_at: Timestamp | None


class ConnectorResponse(ResponseModel):
    id: str
    name: str
    connector_type: str
    config: dict[str, Any]
    credentials_set: bool
    selected_tables: list[str] | None
    schedule: str | None
    sync_mode: SyncMode
    cursor_fields: dict[str, str]
    status: Literal["created", "active", "paused", "error"]
    created_at: Timestamp
    updated_at: Timestamp
    last_sync: LastSync | None


ConnectorList = Page[ConnectorResponse]


class ConnectionTestResult(ResponseModel):
    success: bool
    message: str


class SchemaColumn(ResponseModel):
    name: str
    type: str
    nullable: bool


class SchemaTable(ResponseModel):
    name: str
    columns: list[SchemaColumn]
    primary_key: list[str]
    row_estimate: int | None


class DiscoveredSchema(ResponseModel):
    tables: list[SchemaTable]


class SyncRequest(RequestModel):
    full_refresh: bool = Field(False, description="Replace every table even in incremental mode.")


class RunStarted(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: Timestamp


class ConnectorRun(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_seconds: float | None
    rows_synced: int
    tables: list[TableRunSummary]
    error: str | None


ConnectorRunList = Page[ConnectorRun]


class UploadedFile(ResponseModel):
    name: str
    size_bytes: int
    uploaded_at: Timestamp


class UploadedFiles(ResponseModel):
    files: list[UploadedFile]
