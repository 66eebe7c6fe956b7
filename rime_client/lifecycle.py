"""A pipeline's lifecycle: its versions, the environments that run them, and the approval requests that move a
version into uat and production. Pipelines and projects are named by id or name, versions by number or id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from rime_client._http import Http
from rime_client.models import Model
from rime_client.resources import Pipelines, _InProject, _items, _seg


class PipelineVersion(Model):
    id: str
    pipeline_id: str
    version: int
    environment: str  # development | qa | uat | production | superseded | retired
    environments: list[str] = []
    created_at: datetime
    created_by: str | None = None
    retired_at: datetime | None = None
    definition: dict[str, Any] | None = None  # a single version's read, not the list's


class VersionDiff(Model):
    pipeline_id: str
    from_version: int
    to_version: int
    fields: list[dict[str, Any]]
    steps: list[dict[str, Any]]


class EnvironmentState(Model):
    environment: str
    version: int | None = None
    version_id: str | None = None
    since: datetime | None = None
    by: str | None = None
    job_name: str
    live: bool


class Promotion(Model):
    status: Literal["promoted", "pending_approval", "demoted", "retired"]
    environment: str
    version: int
    approval_request_id: str | None = None


class ApprovalRequest(Model):
    id: str
    project_id: str
    pipeline_id: str
    pipeline_name: str
    version: int
    from_environment: str
    to_environment: str
    status: Literal["pending", "approved", "rejected"]
    requested_by: str
    requested_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    comments: int = 0
    snapshot: dict[str, Any] | None = None  # a single request's read: the version as it is


class Comment(Model):
    id: str
    author: str
    content: str
    created_at: datetime


class PendingApprovals(Model):
    count: int
    requests: list[ApprovalRequest]


class PipelineVersions:
    """`client.versions`: list, read and compare a pipeline's versions; promote, demote and retire them."""

    def __init__(self, http: Http, pipelines: Pipelines):
        self._http, self._pipelines = http, pipelines

    def _path(self, pipeline: str, project: str | None) -> str:
        path, _ = self._pipelines._resolve(pipeline, project)
        return path

    def list(
        self, pipeline: str, *, project: str | None = None, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[PipelineVersion]:
        params = {"order": "desc" if newest_first else "asc"}
        path = f"{self._path(pipeline, project)}/versions"
        return _items(self._http, path, PipelineVersion, limit=limit, page_size=100, params=params)

    def get(self, pipeline: str, version: int | str, *, project: str | None = None) -> PipelineVersion:
        path = f"{self._path(pipeline, project)}/versions/{_seg(str(version))}"
        return PipelineVersion.model_validate(self._http.request("GET", path))

    def diff(self, pipeline: str, before: int | str, after: int | str, *, project: str | None = None) -> VersionDiff:
        path = f"{self._path(pipeline, project)}/versions/diff"
        return VersionDiff.model_validate(self._http.request("GET", path, params={"from": before, "to": after}))

    def environments(self, pipeline: str, *, project: str | None = None) -> dict[str, EnvironmentState]:
        """What each environment runs: {"development": ..., "qa": ..., "uat": ..., "production": ...}."""
        answer = self._http.request("GET", f"{self._path(pipeline, project)}/environments")
        return {e["environment"]: EnvironmentState.model_validate(e) for e in answer["environments"]}

    def _move(self, action: str, pipeline: str, version: int | str, project: str | None) -> Promotion:
        path = f"{self._path(pipeline, project)}/versions/{_seg(str(version))}/{action}"
        return Promotion.model_validate(self._http.request("POST", path))

    def promote(self, pipeline: str, version: int | str, *, project: str | None = None) -> Promotion:
        """development -> qa at once; qa -> uat and uat -> production as an approval request
        (`status == "pending_approval"`, `approval_request_id`)."""
        return self._move("promote", pipeline, version, project)

    def demote(self, pipeline: str, version: int | str, *, project: str | None = None) -> Promotion:
        return self._move("demote", pipeline, version, project)

    def retire(self, pipeline: str, version: int | str, *, project: str | None = None) -> Promotion:
        return self._move("retire", pipeline, version, project)


class Approvals(_InProject):
    """`client.approvals`: a project's approval requests; leads approve or reject, engineers comment."""

    def _base(self, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}/approvals"

    def list(
        self, *, project: str | None = None, status: str | None = None, limit: int | None = None
    ) -> Iterator[ApprovalRequest]:
        params = {"status": status} if status else None
        return _items(self._http, self._base(project), ApprovalRequest, limit=limit, page_size=100, params=params)

    def get(self, request_id: str, *, project: str | None = None) -> ApprovalRequest:
        return ApprovalRequest.model_validate(self._http.request("GET", f"{self._base(project)}/{_seg(request_id)}"))

    def approve(self, request_id: str, *, project: str | None = None, reason: str | None = None) -> ApprovalRequest:
        path = f"{self._base(project)}/{_seg(request_id)}/approve"
        return ApprovalRequest.model_validate(self._http.request("POST", path, json={"reason": reason}))

    def reject(self, request_id: str, reason: str, *, project: str | None = None) -> ApprovalRequest:
        path = f"{self._base(project)}/{_seg(request_id)}/reject"
        return ApprovalRequest.model_validate(self._http.request("POST", path, json={"reason": reason}))

    def comments(self, request_id: str, *, project: str | None = None) -> Iterator[Comment]:
        path = f"{self._base(project)}/{_seg(request_id)}/comments"
        return _items(self._http, path, Comment, limit=None, page_size=100, params={"order": "asc"})

    def comment(self, request_id: str, content: str, *, project: str | None = None) -> Comment:
        path = f"{self._base(project)}/{_seg(request_id)}/comments"
        return Comment.model_validate(self._http.request("POST", path, json={"content": content}))

    def pending(self) -> PendingApprovals:
        """Pending requests of every project: how many, and the oldest."""
        return PendingApprovals.model_validate(self._http.request("GET", "/notifications/pending-approvals"))
