"""Bodies of table retention policies: what a table's scheduled maintenance keeps, one policy per table."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.schemas.connectors import RunStatus
from api_shim.schemas.table_operations import CompactRequest
from api_shim.services.cron import validate_cron

MAX_AGE = timedelta(days=3650)  # a table_maintenance step's older_than_days bound
MIN_ORPHAN_AGE = timedelta(hours=1)  # files of a write in flight are newer (as POST .../remove-orphan-files)


def _duration_text(value: object) -> object:
    # pydantic also reads a bare number as seconds, which no client means by "older than 7".
    if not isinstance(value, (str, timedelta)):
        raise ValueError("Must be an ISO 8601 duration, e.g. P7D or PT12H.")
    return value


# An age, as ISO 8601 duration text (`P7D`, `PT12H`, `P1DT6H`); answered in the same form.
Duration = Annotated[timedelta, BeforeValidator(_duration_text), Field(json_schema_extra={"examples": ["P7D"]})]


def _within(value: timedelta | None, low: timedelta, what: str) -> timedelta | None:
    if value is not None and not low <= value <= MAX_AGE:
        raise ValueError(f"Must be between {what} and 3650 days.")
    return value


class OrphanFileRemoval(RequestModel):
    older_than: Duration | None = Field(
        None,
        description="Remove only unreferenced files last modified longer ago than this before the run, at least "
        "PT1H. Default: P3D (Iceberg's own).",
    )

    @field_validator("older_than")
    @classmethod
    def _age(cls, value: timedelta | None) -> timedelta | None:
        return _within(value, MIN_ORPHAN_AGE, "one hour (PT1H)")


class RetentionPolicyPut(RequestModel):
    schedule: str = Field(
        min_length=1, max_length=100, description="5-field cron (UTC) on which the policy runs, e.g. `0 3 * * *`."
    )
    enabled: bool = Field(True, description="false stops the policy's Dagster schedule.")
    retain_last: int | None = Field(
        None, ge=1, le=1000, description="Snapshot expiry: always keep this many newest snapshots (default 1)."
    )
    older_than: Duration | None = Field(
        None,
        description="Snapshot expiry: expire only snapshots committed longer ago than this before the run "
        "(default P7D). Give `retain_last`, `older_than` or both.",
    )
    remove_orphan_files: OrphanFileRemoval | None = Field(
        None, description="Also remove orphan files, after the expiry. null: off."
    )
    compact: CompactRequest | None = Field(None, description="Also compact small files, before the expiry. null: off.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return validate_cron(value)

    @field_validator("older_than")
    @classmethod
    def _age(cls, value: timedelta | None) -> timedelta | None:
        return _within(value, timedelta(0), "zero (PT0S)")


class RetentionLastRun(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: Timestamp | None
    finished_at: Timestamp | None


class RetentionPolicyResponse(ResponseModel):
    id: str
    project_id: str
    table: str
    schedule: str
    enabled: bool
    retain_last: int | None
    older_than: timedelta | None = Field(description="ISO 8601 duration.")
    remove_orphan_files: OrphanFileRemoval | None
    compact: CompactRequest | None
    dagster_schedule: str = Field(description="The Dagster schedule that runs the policy.")
    next_run_at: Timestamp | None = Field(description="The schedule's next tick; null while disabled.")
    last_run: RetentionLastRun | None = Field(
        description="The policy's newest run in Dagster's run storage (queued, running or ended); null before its "
        "first tick."
    )
    created_at: Timestamp
    updated_at: Timestamp


class RetentionPolicyList(Page[RetentionPolicyResponse]):
    pass
