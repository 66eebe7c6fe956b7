"""How dbt projects are named in Dagster: one place, used by the API and the code location."""

from __future__ import annotations


def dbt_op_name(dbt_project_id: str) -> str:
    return f"dbt_{dbt_project_id}"


def dbt_job_name(dbt_project_id: str) -> str:
    return f"dbt_run_{dbt_project_id}"


def dbt_tags(project_id: str, dbt_project_id: str) -> dict[str, str]:
    return {"rime/project_id": project_id, "rime/dbt_project_id": dbt_project_id, "rime/kind": "dbt"}
