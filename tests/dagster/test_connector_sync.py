"""Connectors end to end on a real Dagster: API -> code location reload -> sync run -> Iceberg -> API."""

from __future__ import annotations

import time

import pytest

from tests.dagster.conftest import Webserver, graphql, wait_for_run

pytestmark = pytest.mark.dagster

CUSTOMERS_V1 = (
    b"id,name,amount,signed_up\n1,Ada,10.50,2026-01-02T03:04:05\n2,Grace,,2026-02-03T04:05:06\n3,Linus,7.25,\n"
)
CUSTOMERS_V2 = b"id,name,amount,signed_up\n1,Ada,11.00,2026-01-02T03:04:05\n4,Barbara,3.00,2026-03-04T05:06:07\n"


def _wait_for_asset(settings, key: list[str], timeout: float = 30) -> None:
    query = "{ assetNodes { assetKey { path } } }"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if key in [n["assetKey"]["path"] for n in graphql(settings, query)["assetNodes"]]:
            return
        time.sleep(0.5)
    raise AssertionError(f"asset {key} never appeared in the code location")


def test_files_connector_syncs_into_iceberg_and_back_out_of_the_api_and_a_failed_sync_keeps_the_data(
    api, dagster_webserver: Webserver
):
    settings = dagster_webserver.settings
    project = api.post("/api/v1/projects", json={"name": "E2E Sales"}).json()
    created = api.post(
        f"/api/v1/projects/{project['id']}/connectors",
        json={"name": "Drop Zone", "connector_type": "files", "config": {}, "schedule": "0 2 * * *"},
    )
    assert created.status_code == 201, created.text
    connector = created.json()
    base = f"/api/v1/projects/{project['id']}/connectors/{connector['id']}"

    upload = api.post(f"{base}/files", files={"files": ("customers.csv", CUSTOMERS_V1, "text/csv")})
    assert upload.status_code == 201, upload.text
    asset_key = [project["namespace"], "drop_zone", "customers"]
    _wait_for_asset(settings, asset_key)

    # The schedule is a Dagster schedule of the project's sync job (each tick selects the connector's tables).
    schedules = graphql(
        settings,
        '{ schedulesOrError(repositorySelector: {repositoryLocationName: "rime", repositoryName: "__repository__"})'
        " { ... on Schedules { results { name cronSchedule } } } }",
    )["schedulesOrError"]["results"]
    assert {"name": f"{project['namespace']}__drop_zone_schedule", "cronSchedule": "0 2 * * *"} in schedules

    started = api.post(f"{base}/sync", headers={"Idempotency-Key": "first-sync"})
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    assert started.json()["dagster_url"].endswith(started.json()["dagster_run_id"])
    replay = api.post(f"{base}/sync", headers={"Idempotency-Key": "first-sync"})
    assert replay.json()["run_id"] == run_id  # nothing new started

    run = wait_for_run(api, base, run_id)
    assert run["status"] == "succeeded", run
    assert run["rows_synced"] == 3 and run["tables"] == [{"name": "customers", "rows": 3, "status": "succeeded"}]
    assert run["duration_seconds"] is not None and run["error"] is None

    tables = api.get(f"/api/v1/projects/{project['id']}/tables").json()["data"]
    assert [(t["name"], t["row_count"], t["source"]) for t in tables] == [
        ("drop_zone__customers", 3, {"connector_id": connector["id"], "table": "customers"})
    ]
    preview = api.get(f"/api/v1/projects/{project['id']}/tables/drop_zone__customers/preview").json()
    rows = sorted(dict(zip(preview["columns"], r, strict=True))["name"] for r in preview["rows"])
    assert rows == ["Ada", "Grace", "Linus"]
    detail = api.get(base).json()
    assert detail["status"] == "active" and detail["last_sync"]["run_id"] == run_id

    # A full refresh replaces the rows atomically.
    api.post(f"{base}/files", files={"files": ("customers.csv", CUSTOMERS_V2, "text/csv")})
    second = api.post(f"{base}/sync", json={"full_refresh": True}).json()["run_id"]
    assert wait_for_run(api, base, second)["status"] == "succeeded"
    preview = api.get(f"/api/v1/projects/{project['id']}/tables/drop_zone__customers/preview").json()
    assert sorted(dict(zip(preview["columns"], r, strict=True))["name"] for r in preview["rows"]) == ["Ada", "Barbara"]

    # A run launched in Dagster directly (as from the UI: the project's sync job) shows up in the API's history.
    launched = dagster_webserver.client.launch_run(f"sync_{project['namespace']}", tags={})
    ui_run = wait_for_run(api, base, launched.run_id)
    assert ui_run["status"] == "succeeded"
    history = [r["run_id"] for r in api.get(f"{base}/runs").json()["data"]]
    assert history[:3] == [launched.run_id, second, run_id]

    # A failed sync is reported and keeps the previous data (this connector's runs above are the "before"):
    # the same table, now with a row whose id is not an integer, far past the rows the types are read from.
    broken = (
        b"id,name,amount,signed_up\n"
        + b"".join(b"%d,Row,1.00,2026-01-02T03:04:05\n" % i for i in range(5, 200_000))
        + b"not-a-number,Bad,1.00,2026-01-02T03:04:05\n"
    )
    api.post(f"{base}/files", files={"files": ("customers.csv", broken, "text/csv")})
    failed = api.post(f"{base}/sync").json()["run_id"]
    run = wait_for_run(api, base, failed)
    assert run["status"] == "failed"
    assert run["error"] and "customers" in run["error"]
    assert run["tables"] == [{"name": "customers", "rows": None, "status": "failed"}]
    assert api.get(base).json()["status"] == "error"
    tables = api.get(f"/api/v1/projects/{project['id']}/tables").json()["data"]
    assert [(t["name"], t["row_count"]) for t in tables] == [("drop_zone__customers", 2)]
    preview = api.get(f"/api/v1/projects/{project['id']}/tables/drop_zone__customers/preview").json()
    assert sorted(dict(zip(preview["columns"], r, strict=True))["name"] for r in preview["rows"]) == ["Ada", "Barbara"]
