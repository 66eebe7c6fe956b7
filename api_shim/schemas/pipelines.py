"""Bodies of the Pipelines group (definitions; runs come with the Dagster job)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.schemas.connectors import _ScheduleMixin
from rime_dagster.pipelines.spec import MAX_STEPS, StepBody


class PipelineCreate(_ScheduleMixin, RequestModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    steps: list[StepBody] = Field(min_length=1, max_length=MAX_STEPS, description="The DAG: steps and depends_on.")
    variables: dict[str, Any] | None = Field(None, description="Defaults every run sees (a run's own win).")
    schedule: str | None = Field(None, description="5-field cron, run by a Dagster schedule; null = manual only.")
    retries: int = Field(0, ge=0, le=10, description="Retries of a failed step.")
    timeout_seconds: int | None = Field(None, ge=1, le=7 * 24 * 3600, description="The whole run's limit.")


class PipelineUpdate(_ScheduleMixin, RequestModel):
    """Fields given replace the stored ones; `steps` replaces the whole DAG (validated again)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    steps: list[StepBody] | None = Field(None, min_length=1, max_length=MAX_STEPS)
    variables: dict[str, Any] | None = None
    schedule: str | None = None
    retries: int | None = Field(None, ge=0, le=10)
    timeout_seconds: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    status: Literal["active", "paused"] | None = Field(None, description="`paused` stops the schedule.")


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
    created_at: Timestamp
    updated_at: Timestamp


class PipelineDetail(PipelineResponse):
    dag: Dag
    execution_order: list[str] = Field(description="Step ids in the order a run executes them.")


class PipelineList(Page[PipelineResponse]):
    pass
