"""Pipelines become jobs of the code location: created through the API, visible and runnable in Dagster."""

from __future__ import annotations

import time

import pytest

from tests.dagster.conftest import POLL_SECONDS, Webserver, graphql

pytestmark = pytest.mark.dagster

JOBS = (
    '{ repositoryOrError(repositorySelector: {repositoryLocationName: "rime", repositoryName: "__repository__"})'
    " { ... on Repository { jobs { name solidHandles { handleID } } } } }"
)


def _wait_for_job(settings, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = {j["name"]: j for j in graphql(settings, JOBS)["repositoryOrError"]["jobs"]}
        if name in jobs:
            return jobs[name]
        time.sleep(0.5)
    raise AssertionError(f"job {name} never appeared in the code location")


def test_pipeline_is_a_dagster_job_with_its_steps(api, dagster_webserver: Webserver):
    settings = dagster_webserver.settings
    project = api.post("/api/v1/projects", json={"name": "pipeline jobs"}).json()
    connector = api.post(
        f"/api/v1/projects/{project['id']}/connectors",
        json={"name": "Inbox", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
    ).json()
    api.post(
        f"/api/v1/projects/{project['id']}/connectors/{connector['id']}/files",
        files={"files": ("orders.csv", b"id,amount\n1,2.5\n", "text/csv")},
    )
    created = api.post(
        f"/api/v1/projects/{project['id']}/pipelines",
        json={
            "name": "nightly",
            "schedule": "0 1 * * *",
            "steps": [
                {"id": "sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}},
                {
                    "id": "tidy",
                    "type": "table_maintenance",
                    "config": {"table": "inbox__orders", "operation": "expire_snapshots"},
                    "depends_on": ["sync"],
                },
            ],
        },
    )
    assert created.status_code == 201, created.text
    pipeline = created.json()
    job_name = f"{project['namespace']}__nightly"  # readable: the project's namespace, the pipeline's slug
    job = _wait_for_job(settings, job_name)
    assert {h["handleID"] for h in job["solidHandles"]} == {"step_sync", "step_tidy", "done"}

    launched = dagster_webserver.client.launch_run(
        job_name, tags={"rime/project_id": project["id"], "rime/pipeline_id": pipeline["id"]}
    )
    deadline = time.monotonic() + 120
    while (status := dagster_webserver.client.run_status(launched.dagster_run_id)) in ("queued", "running"):
        assert time.monotonic() < deadline, "pipeline run did not finish"
        time.sleep(POLL_SECONDS)
    assert status == "succeeded"
    tables = api.get(f"/api/v1/projects/{project['id']}/tables").json()["data"]
    assert [(t["name"], t["row_count"]) for t in tables] == [("inbox__orders", 1)]
