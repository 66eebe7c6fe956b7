"""Bodies of pipeline versions, environments and approval requests (rime_dagster/pipelines/versions.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp

Environment = Literal["development", "qa", "uat", "production"]
VersionStanding = Literal["development", "qa", "uat", "production", "superseded", "retired"]
ApprovalStatus = Literal["pending", "approved", "rejected"]


class PipelineVersionSummary(ResponseModel):
    id: str
    pipeline_id: str
    version: int = Field(description="1 when the pipeline was created, then one more for each change of definition.")
    environment: VersionStanding = Field(
        description="Where it stands: the furthest environment it runs in; `development` for the newest version; "
        "`superseded` when replaced everywhere it ran; `retired` when retired from production."
    )
    environments: list[Environment] = Field(description="Every environment that runs this version now.")
    created_at: Timestamp
    created_by: str | None = Field(description="Who made the change (null for versions older than versioning).")
    retired_at: Timestamp | None
    retired_by: str | None


class PipelineVersionDetail(PipelineVersionSummary):
    definition: dict[str, Any] = Field(
        description="The pipeline as this version defines it: name, description, steps, variables, schedule, "
        "retries, timeout_seconds, triggers."
    )


class PipelineVersionList(Page[PipelineVersionSummary]):
    pass


class FieldChange(ResponseModel):
    field: str
    before: Any
    after: Any


class StepChange(ResponseModel):
    step_id: str
    change: Literal["added", "removed", "changed"]
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class PipelineVersionDiff(ResponseModel):
    pipeline_id: str
    from_version: int
    to_version: int
    fields: list[FieldChange] = Field(description="Changed fields other than steps (name, schedule, variables, ...).")
    steps: list[StepChange] = Field(description="Steps added, removed or changed, by step id.")


class EnvironmentState(ResponseModel):
    environment: Environment
    version: int | None = Field(description="The version it runs; null when none was promoted there.")
    version_id: str | None
    since: Timestamp | None
    by: str | None
    job_name: str = Field(description="Its Dagster job.")
    live: bool = Field(description="Its schedule runs and its triggers start runs (production once it has a version).")


class PipelineEnvironments(ResponseModel):
    pipeline_id: str
    environments: list[EnvironmentState]


class PromotionResult(ResponseModel):
    status: Literal["promoted", "pending_approval", "demoted", "retired"]
    environment: VersionStanding = Field(description="Where the version stands now.")
    version: int
    approval_request_id: str | None = Field(description="Set when the move waits for a lead's approval.")


class ApprovalDecision(RequestModel):
    reason: str | None = Field(None, max_length=2000, description="Why (optional to approve).")


class ApprovalRejection(RequestModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why: required to reject.")


class CommentCreate(RequestModel):
    content: str = Field(min_length=1, max_length=4000)


class ApprovalComment(ResponseModel):
    id: str
    author: str
    content: str
    created_at: Timestamp


class ApprovalCommentList(Page[ApprovalComment]):
    pass


class ApprovalRequestSummary(ResponseModel):
    id: str
    project_id: str
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version: int
    from_environment: Environment
    to_environment: Environment
    status: ApprovalStatus
    requested_by: str
    requested_at: Timestamp
    decided_by: str | None
    decided_at: Timestamp | None
    reason: str | None
    comments: int = Field(description="How many comments it has.")


class ApprovalRequestDetail(ApprovalRequestSummary):
    snapshot: PipelineVersionDetail = Field(description="The version to approve, as it is (immutable).")


class ApprovalRequestList(Page[ApprovalRequestSummary]):
    pass


class PendingApprovals(ResponseModel):
    count: int = Field(description="Pending requests in every project of the tenant.")
    requests: list[ApprovalRequestSummary] = Field(description="The oldest pending requests first (up to 100).")
