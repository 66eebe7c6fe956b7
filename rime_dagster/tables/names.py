"""How table maintenance runs are named and tagged: one place, used by the API and the code location (no Dagster)."""

from __future__ import annotations

from typing import Any

from rime_dagster.platform import run_tags


def maintenance_job_name(namespace: str) -> str:
    """The project's table maintenance job: `table_maintenance_demo`. Not `<namespace>__<slug>`, which a pipeline
    named "Table maintenance" could take (rime_dagster/platform/names.py)."""
    return f"table_maintenance_{namespace}"


def maintenance_op_name(namespace: str) -> str:
    """Its one op (op names are unique in a code location)."""
    return f"maintain_table_{namespace}"


def maintenance_tags(project_id: str, table: str, operation: str) -> dict[str, str]:
    return {
        run_tags.PROJECT_ID: project_id,
        run_tags.KIND: run_tags.KIND_TABLE_MAINTENANCE,
        run_tags.ICEBERG_TABLE: table,
        run_tags.TABLE_OPERATION: operation,
    }


def maintenance_run_config(namespace: str, step_config: dict[str, Any]) -> dict[str, Any]:
    """The run config of one operation: a `table_maintenance` step's config (rime_dagster/pipelines/spec.py)."""
    return {"ops": {maintenance_op_name(namespace): {"config": step_config}}}
