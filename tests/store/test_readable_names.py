"""Readable Dagster names (`<project namespace>__<slug>`): slugs fixed at creation, existing pipelines migrated,
and a migrated pipeline's earlier runs (under its old job name) still listed by the API."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from sqlalchemy import select, text

from rime_dagster.platform import run_tags
from rime_dagster.platform.instance import ensure_dagster_home
from rime_dagster.store.migrate import alembic_config, downgrade_to_base, upgrade_to_head
from rime_dagster.store.models import Pipeline
from rime_dagster.store.session import engine_for, session_scope

NOW = "2026-01-01 00:00:00"


def _rows_at_0005(url: str) -> None:
    """A project as release 0005 stored it: a connector `nightly`, a dbt project `shop`, three pipelines."""
    with engine_for(url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (id, tenant_id, name, namespace, created_at, updated_at) "
                "VALUES ('prj_1', 'default', 'Shop', 'shop', :now, :now)"
            ),
            {"now": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO connectors (id, project_id, name, connector_type, config, sync_mode, cursor_fields, "
                "paused, table_prefix, known_tables, created_at, updated_at) VALUES ('conn_1', 'prj_1', 'Nightly', "
                "'files', '{}', 'full_refresh', '{}', false, 'nightly', '[]', :now, :now)"
            ),
            {"now": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO dbt_projects (id, project_id, name, slug, source, target, vars, paused, revision, "
                "dbt_project_name, profile_name, models_count, parsed_at, created_at, updated_at) VALUES ('dbt_1', "
                "'prj_1', 'Shop', 'shop', '{}', '{}', '{}', false, 1, 'shop', 'shop', 0, :now, :now, :now)"
            ),
            {"now": NOW},
        )
        for n, (pipeline_id, name) in enumerate([("pipe_a", "Nightly"), ("pipe_b", "nightly!"), ("pipe_c", "Shop")]):
            conn.execute(
                text(
                    "INSERT INTO pipelines (id, project_id, name, steps, variables, paused, retries, created_at, "
                    "updated_at) VALUES (:id, 'prj_1', :name, '[]', '{}', false, 0, :at, :at)"
                ),
                {"id": pipeline_id, "name": name, "at": f"2026-01-01 00:00:0{n}"},
            )


def test_existing_pipelines_get_slugs_unique_in_their_project(db_url):
    downgrade_to_base(db_url)
    command.upgrade(alembic_config(db_url), "0005")
    _rows_at_0005(db_url)

    upgrade_to_head(db_url)

    with session_scope(db_url) as session:
        slugs = dict(session.execute(select(Pipeline.id, Pipeline.slug)).all())
    # Oldest first; never a connector prefix or dbt slug of the project (they name assets and jobs too).
    assert slugs == {"pipe_a": "nightly_2", "pipe_b": "nightly_3", "pipe_c": "shop_2"}


def _sync_steps(api, project: dict) -> list[dict]:
    connector = api.post(
        f"/api/v1/projects/{project['id']}/connectors",
        json={"name": "Shop nightly files", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
    ).json()
    return [{"id": "sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}}]


def test_slugs_are_fixed_at_creation(clients, project, settings):
    api = clients.admin
    base = f"/api/v1/projects/{project['id']}/pipelines"
    steps = _sync_steps(api, project)
    first = api.post(base, json={"name": "Shop nightly", "steps": steps})
    assert first.status_code == 201, first.text
    first = first.json()
    second = api.post(base, json={"name": "shop-nightly", "steps": steps}).json()
    renamed = api.patch(f"{base}/{first['id']}", json={"name": "Shop at night"})
    assert renamed.status_code == 200, renamed.text

    with session_scope(settings.metadata_url) as session:
        slugs = dict(session.execute(select(Pipeline.id, Pipeline.slug)).all())
    assert slugs == {first["id"]: "shop_nightly", second["id"]: "shop_nightly_2"}  # the rename kept its slug


@pytest.mark.slow
def test_a_migrated_pipelines_earlier_runs_stay_in_its_history(clients, project, settings):
    """Runs are found by their rime/ tags, not by job name: a run of the job's old name is still listed."""
    api = clients.admin
    steps = _sync_steps(api, project)
    pipeline = api.post(f"/api/v1/projects/{project['id']}/pipelines", json={"name": "Nightly", "steps": steps}).json()
    instance = DagsterInstance.from_config(str(ensure_dagster_home(settings)))
    try:
        old_run = instance.add_run(
            DagsterRun(
                job_name=f"pipeline_{pipeline['id']}",  # the name release 0005 gave its job
                run_id=str(uuid.uuid4()),
                status=DagsterRunStatus.SUCCESS,
                tags={
                    run_tags.PROJECT_ID: project["id"],
                    run_tags.PIPELINE_ID: pipeline["id"],
                    run_tags.KIND: run_tags.KIND_PIPELINE,
                },
            )
        )
    finally:
        instance.dispose()

    runs = api.get(f"/api/v1/projects/{project['id']}/pipelines/{pipeline['id']}/runs")
    assert runs.status_code == 200, runs.text
    assert [r["run_id"] for r in runs.json()["data"]] == ["run_" + old_run.run_id.replace("-", "")]
