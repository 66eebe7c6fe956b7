"""A table operation end to end on a real Dagster: the API launches a compaction as a run of the project's table
maintenance job, the run succeeds, and the table has one data file and the same rows."""

from __future__ import annotations

import time

import pytest

from rime_dagster.platform.iceberg import open_catalog
from tests.dagster.conftest import Webserver, graphql
from tests.tables.conftest import append, checksum

pytestmark = pytest.mark.dagster

RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status tags { key value } } } }"


def wait_for_dagster_run(settings, dagster_run_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = graphql(settings, RUN_STATUS, {"id": dagster_run_id})["runOrError"]
        if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {dagster_run_id} did not finish in {timeout:.0f}s")


def test_a_compaction_launched_from_the_api_succeeds_and_keeps_the_rows(api, dagster_webserver: Webserver):
    settings = dagster_webserver.settings
    project = api.post("/api/v1/projects", json={"name": "E2E Table Ops"}).json()
    identifier = (project["namespace"], "events__clicks")
    catalog = open_catalog(settings)
    for i in range(4):
        append(catalog, i * 25, 25, identifier=identifier)
    before = checksum(catalog, identifier)
    url = f"/api/v1/projects/{project['id']}/tables/events__clicks"
    assert api.get(f"{url}/health").json()["recommendation"] == "compact: 4 small files"

    started = api.post(f"{url}/compact", headers={"Idempotency-Key": "compact-once"})
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["operation"] == "compact" and body["table"] == "events__clicks"
    assert body["run_id"] == "run_" + body["dagster_run_id"].replace("-", "")

    run = wait_for_dagster_run(settings, body["dagster_run_id"])
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["rime/kind"] == "table_maintenance" and tags["rime/table_operation"] == "compact"
    assert tags["rime/triggered_by"]

    health = api.get(f"{url}/health").json()
    assert health["data_file_count"] == 1 and health["recommendation"] == "healthy"
    assert checksum(catalog, identifier) == before
    history = api.get(f"{url}/snapshots").json()["data"]
    assert history[0]["run_id"] == body["dagster_run_id"] and history[0]["operation"] == "overwrite"
    audit = api.get(f"/api/v1/projects/{project['id']}/audit-logs", params={"action": "table.compact"}).json()
    assert [e["status_code"] for e in audit["data"]] == [202]
