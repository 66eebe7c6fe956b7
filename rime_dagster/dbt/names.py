"""How dbt projects are named in Dagster: one place, used by the API and the code location."""

from __future__ import annotations

from rime_dagster.platform import run_tags


def dbt_op_name(dbt_project_id: str) -> str:
    return f"dbt_{dbt_project_id}"


def dbt_job_name(dbt_project_id: str) -> str:
    return f"dbt_run_{dbt_project_id}"


def dbt_tags(project_id: str, dbt_project_id: str) -> dict[str, str]:
    return {run_tags.PROJECT_ID: project_id, run_tags.DBT_PROJECT_ID: dbt_project_id, run_tags.KIND: run_tags.KIND_DBT}
