"""Infrastructure: a project's declared resources (Iceberg namespaces and tables, storage, SQL schemas), reconciled
like Terraform: declare, plan (the diff with what exists), apply (a Dagster run)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from rime_client._crud import Named, ProjectCrud
from rime_client.models import Model, RunStatus


class InfraResource(Named):
    project_id: str
    resource_type: str
    config: dict[str, Any]  # as declared, without its secret fields
    secrets_set: list[str] = []
    state: Literal["pending", "applied", "failed", "deleting"]
    revision: int
    applied_revision: int | None = None
    applied_at: datetime | None = None
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime


class PlanChange(Model):
    action: Literal["create", "update", "delete", "no-op"]
    resource_id: str
    resource_type: str
    name: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    statements: list[str] | None = None


class PlanSummary(Model):
    create: int
    update: int
    delete: int
    unchanged: int


class Plan(Model):
    plan_id: str
    created_at: datetime
    status: Literal["planned", "applying", "applied", "failed"]
    dagster_run_id: str | None = None
    changes: list[PlanChange]
    summary: PlanSummary


class ApplyRun(Model):
    plan_id: str
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: datetime


class Infrastructure(ProjectCrud[InfraResource]):
    """Declared resources by id or name (names are unique per type: a name two types share needs the id).
    `create` body: {resource_type, name, config}; `update` replaces the whole `config`."""

    collection, prefix, kind = "infrastructure", "res_", "infrastructure resource"
    model = InfraResource

    def update_config(self, ref: str, config: dict[str, Any], *, project: str | None = None) -> InfraResource:
        """The declaration's new `config` (its type and name stay)."""
        return self.update(ref, {"config": config}, project=project)

    def plan(self, *, project: str | None = None) -> Plan:
        """Reads what exists, diffs it with the declarations and stores the plan."""
        return Plan.model_validate(self._http.request("POST", f"{self._base(project)}/plan"))

    def apply(self, plan_id: str | None = None, *, project: str | None = None) -> ApplyRun:
        """Applies a stored plan (default: the latest) as a Dagster run (202). A stale plan (what it compared
        changed since), or one already applied: Conflict. Not retried: the plan id makes a repeat a Conflict."""
        path = f"{self._base(project)}/apply"
        return ApplyRun.model_validate(self._http.request("POST", path, json={"plan_id": plan_id}))
