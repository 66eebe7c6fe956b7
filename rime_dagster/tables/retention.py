"""Table retention policies as runs: the operations a policy's scheduled run carries out, its run config, tags and
schedule name. No Dagster import: the API checks a policy with the same functions the schedule runs it with.

A policy's run is one run of the project's table maintenance job (rime_dagster/tables/jobs.py) carrying out, in
order, compaction (when on: it makes the snapshot that replaces the small files), snapshot expiry (which can then
expire the snapshots that named them) and orphan-file removal (when on: last, so it sees what expiry left behind).
Durations become absolute cut-offs at the tick's scheduled time, so a tick's run config says exactly what it did.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from rime_dagster.pipelines.spec import TableMaintenanceConfig
from rime_dagster.platform import run_tags
from rime_dagster.specs import RetentionPolicySpec
from rime_dagster.tables.names import maintenance_op_name, maintenance_tags

RETENTION_OPERATION = "retention"  # the TABLE_OPERATION tag of a policy's run
_NOT_A_NAME_CHAR = re.compile(r"[^A-Za-z0-9_]")


def retention_schedule_name(namespace: str, table: str) -> str:
    """`table_retention_demo__shop__orders`: next to the project's `table_maintenance_demo` job it launches. A
    character Dagster names cannot hold becomes `_`, and a digest of the real name is added then, so `a.b` and
    `a_b` never share a name (a repeated name would fail the whole code location)."""
    slug = _NOT_A_NAME_CHAR.sub("_", table)
    if slug != table:
        slug = f"{slug}_{hashlib.sha256(table.encode()).hexdigest()[:8]}"
    return f"table_retention_{namespace}__{slug}"


def retention_operations(policy: RetentionPolicySpec, at: datetime) -> list[dict[str, Any]]:
    """The policy's operations as `table_maintenance` step configs, with cut-offs counted back from `at`."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    table = policy.table
    operations: list[dict[str, Any]] = []
    if policy.compact:
        compact: dict[str, Any] = {"table": table, "operation": "compact"}
        if policy.compact_target_file_rows is not None:
            compact["target_file_rows"] = policy.compact_target_file_rows
        if policy.compact_min_files is not None:
            compact["min_files"] = policy.compact_min_files
        operations.append(compact)
    expire: dict[str, Any] = {"table": table, "operation": "expire_snapshots"}
    if policy.retain_last is not None:
        expire["retain_last"] = policy.retain_last
    if policy.older_than_seconds is not None:
        expire["older_than"] = (at - timedelta(seconds=policy.older_than_seconds)).isoformat()
    operations.append(expire)
    if policy.remove_orphan_files:
        orphans: dict[str, Any] = {"table": table, "operation": "remove_orphan_files"}
        if policy.orphan_older_than_seconds is not None:
            orphans["older_than"] = (at - timedelta(seconds=policy.orphan_older_than_seconds)).isoformat()
        operations.append(orphans)
    return operations


def retention_run_config(policy: RetentionPolicySpec, at: datetime) -> dict[str, Any]:
    config = {"retention_policy_id": policy.id, "operations": retention_operations(policy, at)}
    return {"ops": {maintenance_op_name(policy.namespace): {"config": config}}}


def retention_tags(policy: RetentionPolicySpec) -> dict[str, str]:
    return {
        **maintenance_tags(policy.project_id, policy.table, RETENTION_OPERATION),
        run_tags.RETENTION_POLICY_ID: policy.id,
    }


def maintenance_configs(op_config: Mapping[str, Any]) -> list[TableMaintenanceConfig]:
    """A maintenance run's operations, in order: one (a table operation of the API, a pipeline step), or a retention
    policy's (`{"retention_policy_id", "operations": [...]}`), all on one table: the run writes it under one pool."""
    if "operations" not in op_config:
        return [TableMaintenanceConfig.model_validate(op_config)]
    configs = [TableMaintenanceConfig.model_validate(step) for step in op_config["operations"]]
    if not configs or len({c.table for c in configs}) != 1:
        raise ValueError("A retention run carries out one or more operations, all on the same table.")
    return configs
