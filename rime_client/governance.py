"""Governance: classifications, masking policies, the audit log and tables' retention policies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from rime_client._crud import Named, ProjectCrud, given
from rime_client.models import Model
from rime_client.resources import _InProject, _items, _seg

Sensitivity = Literal["public", "internal", "confidential", "restricted"]


class ColumnRef(Model):
    table: str
    column: str


class Classification(Named):
    description: str | None = None
    sensitivity: Sensitivity
    rules: list[dict[str, Any]] = []  # {column_pattern} | {value_pattern} | {detector}
    assignments: list[ColumnRef] = []
    created_at: datetime
    updated_at: datetime


class ClassifiedTable(Model):
    table: str
    columns: list[dict[str, Any]]


class MaskingPolicy(Named):
    classification_id: str | None = None
    columns: list[ColumnRef] | None = None
    strategy: Literal["redact", "hash", "partial", "null"]
    options: dict[str, Any] = {}
    exempt_roles: list[str] = []
    created_at: datetime
    updated_at: datetime


class AuditEntry(Model):
    id: str
    timestamp: datetime
    actor: str
    actor_id: str | None = None
    action: str
    resource_type: str
    resource_id: str | None = None
    project_id: str | None = None
    request_id: str
    method: str
    path: str
    status_code: int
    ip: str | None = None
    details: dict[str, Any] | None = None


class RetentionPolicy(Model):
    id: str
    project_id: str
    table: str
    schedule: str
    enabled: bool
    retain_last: int | None = None
    older_than: str | None = None
    remove_orphan_files: dict[str, Any] | None = None
    compact: dict[str, Any] | None = None
    dagster_schedule: str
    next_run_at: datetime | None = None
    last_run: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class Classifications(ProjectCrud[Classification]):
    """Classifications by id or name. `create` body: {name, sensitivity, description?, rules?: [{column_pattern} |
    {value_pattern} | {detector}], assignments?: [{table, column}]}."""

    collection, prefix, kind = "classifications", "cls_", "classification"
    model = Classification

    def run(self, *, project: str | None = None, tables: list[str] | None = None) -> list[ClassifiedTable]:
        """Classifies the project's tables (or `tables`) now, synchronously; the columns each rule tagged."""
        path = f"{self._base(project)}/run"
        answer = self._http.request("POST", path, json={"tables": tables})
        return [ClassifiedTable.model_validate(table) for table in answer["tables"]]


class MaskingPolicies(ProjectCrud[MaskingPolicy]):
    """Masking policies by id or name. `create` body: {name, classification_id | columns: [{table, column}],
    strategy: "redact" | "hash" | "partial" | "null", options?, exempt_roles?}."""

    collection, prefix, kind = "masking-policies", "mask_", "masking policy"
    model = MaskingPolicy


class AuditLogs(_InProject):
    """The audit trail (auditors and admins): every mutating call, denied call and run trigger. Append-only."""

    def list(
        self,
        *,
        project: str | None = None,
        all_projects: bool = False,
        actor: str | None = None,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        page_size: int = 50,
    ) -> Iterator[AuditEntry]:
        """Newest first: the project's entries (`project`, else the client's), or the tenant's with
        `all_projects=True`; `since` inclusive, `until` exclusive (both with a time zone)."""
        path = "/audit-logs" if all_projects else f"/projects/{_seg(self._project_id(project))}/audit-logs"
        params = given(actor=actor, action=action, resource_type=resource_type, resource_id=resource_id)
        params.update(given(**{"from": since and since.isoformat(), "to": until and until.isoformat()}))
        return _items(self._http, path, AuditEntry, limit=limit, page_size=page_size, params=params)


class RetentionPolicies(_InProject):
    """A table's retention policy (expire snapshots, remove orphan files, compact on a schedule), by table name."""

    def _table(self, table: str, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}/tables/{_seg(table)}/retention"

    def list(
        self, *, project: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> Iterator[RetentionPolicy]:
        path = f"/projects/{_seg(self._project_id(project))}/retention-policies"
        return _items(self._http, path, RetentionPolicy, limit=limit, page_size=page_size)

    def get(self, table: str, *, project: str | None = None) -> RetentionPolicy:
        return RetentionPolicy.model_validate(self._http.request("GET", self._table(table, project)))

    def put(self, table: str, body: dict[str, Any], *, project: str | None = None) -> RetentionPolicy:
        """Creates or replaces the table's policy. `body`: {schedule (cron), enabled?, retain_last?, older_than?
        (e.g. "7d"), remove_orphan_files?: {older_than?}, compact?: {target_file_rows?, min_files?}}."""
        return RetentionPolicy.model_validate(self._http.request("PUT", self._table(table, project), json=body))

    def delete(self, table: str, *, project: str | None = None) -> None:
        self._http.request("DELETE", self._table(table, project))
