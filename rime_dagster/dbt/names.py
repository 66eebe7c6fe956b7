"""How dbt projects are named in Dagster: one place, used by the API and the code location."""

from __future__ import annotations

from rime_dagster.platform import run_tags
from rime_dagster.platform.names import dagster_name


def dbt_op_name(namespace: str, slug: str) -> str:
    """The op that runs dbt for the project's models: `demo__shop_models__dbt`."""
    return dagster_name(namespace, slug, "dbt")


def dbt_job_name(namespace: str, slug: str) -> str:
    """The dbt project's job: `demo__shop_models` (project namespace, dbt project slug)."""
    return dagster_name(namespace, slug)


def dbt_tags(project_id: str, dbt_project_id: str) -> dict[str, str]:
    return {run_tags.PROJECT_ID: project_id, run_tags.DBT_PROJECT_ID: dbt_project_id, run_tags.KIND: run_tags.KIND_DBT}
