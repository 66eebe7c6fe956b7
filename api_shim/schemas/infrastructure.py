"""Bodies of the Infrastructure group: declared resources, plans and applies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.schemas.connectors import RunStatus
from rime_dagster.infrastructure.providers import KNOWN_TYPES

_CONFIG = (
    "Per type: iceberg_namespace `{properties?}`; iceberg_table `{namespace?, schema: [{name, type, required?, "
    "doc?}], partition_spec?: [{source, transform}], sort_order?: [{source, direction?, null_order?}], "
    "properties?}`; see the README's Infrastructure section for every type. Unknown keys are refused (400 naming "
    "the field, as `config.schema.0.type`). Secret fields are stored encrypted and never answered."
)


class ResourceCreate(RequestModel):
    resource_type: str = Field(description=f"One of: {', '.join(KNOWN_TYPES)}.")
    name: str = Field(min_length=1, max_length=200, description="Unique per type in the project.")
    config: dict[str, Any] = Field(default_factory=dict, description=_CONFIG)


class ResourceUpdate(RequestModel):
    config: dict[str, Any] = Field(description="The whole new config (its type and name stay). " + _CONFIG)


class ResourceResponse(ResponseModel):
    id: str
    project_id: str
    resource_type: str
    name: str
    config: dict[str, Any] = Field(description="As declared, without its secret fields.")
    secrets_set: list[str] = Field(
        description="The secret fields the declaration holds (their values are never answered)."
    )
    state: Literal["pending", "applied", "failed", "deleting"] = Field(
        description="pending: declared or changed since the last apply; applied; failed: its last apply step failed "
        "(`last_error`); deleting: deleted from the declaration, removed at the next apply."
    )
    revision: int = Field(description="Moves on every change of the declaration.")
    applied_revision: int | None
    applied_at: Timestamp | None
    last_error: str | None
    created_at: Timestamp
    updated_at: Timestamp


class ResourceList(Page[ResourceResponse]):
    pass


class PlanChange(ResponseModel):
    action: Literal["create", "update", "delete", "no-op"]
    resource_id: str
    resource_type: str
    name: str
    before: dict[str, Any] | None = Field(description="What exists (null: nothing).")
    after: dict[str, Any] | None = Field(description="What the declaration asks for (null: a deletion).")
    statements: list[str] | None = Field(
        None, description="The SQL the change runs, for types whose changes run SQL (PostgreSQL, Snowflake)."
    )


class PlanSummary(ResponseModel):
    create: int
    update: int
    delete: int
    unchanged: int


class PlanResponse(ResponseModel):
    plan_id: str
    created_at: Timestamp
    status: Literal["planned", "applying", "applied", "failed"]
    dagster_run_id: str | None = Field(
        None, description="The run of infrastructure_apply that applies it, once launched."
    )
    changes: list[PlanChange]
    summary: PlanSummary


class ApplyRequest(RequestModel):
    plan_id: str | None = Field(None, max_length=40, description="The plan to apply; default: the project's latest.")


class ApplyRun(ResponseModel):
    plan_id: str
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: Timestamp
