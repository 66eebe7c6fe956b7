"""Infrastructure end to end on a real Dagster: declared through the API, planned, applied as a run of the
`infrastructure_apply` job (one step per change), everything made for real, the next plan all no-op."""

from __future__ import annotations

import time

import pytest

from rime_dagster.platform.iceberg import open_catalog
from tests.dagster.conftest import Webserver
from tests.dagster.test_table_operations_e2e import wait_for_dagster_run

pytestmark = pytest.mark.dagster

TABLE = {
    "namespace": "marts",
    "schema": [{"name": "id", "type": "long", "required": True}, {"name": "region", "type": "string"}],
    "partition_spec": [{"source": "region"}],
}


def test_declare_plan_apply_then_all_no_op(api, dagster_webserver: Webserver):
    settings = dagster_webserver.settings
    project = api.post("/api/v1/projects", json={"name": "E2E Infra"}).json()
    base = f"/api/v1/projects/{project['id']}/infrastructure"
    for body in (
        {"resource_type": "iceberg_namespace", "name": "marts"},
        {"resource_type": "iceberg_table", "name": "orders", "config": TABLE},
    ):
        assert api.post(base, json=body).status_code == 201
    plan = api.post(f"{base}/plan").json()
    assert plan["summary"] == {"create": 2, "update": 0, "delete": 0, "unchanged": 0}

    started = api.post(f"{base}/apply", json={}, headers={"Idempotency-Key": "apply-once"})
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["plan_id"] == plan["plan_id"] and body["run_id"] == "run_" + body["dagster_run_id"].replace("-", "")
    again = api.post(f"{base}/apply", json={})  # the plan is applying (or applied): not twice
    assert again.status_code == 409, again.text

    run = wait_for_dagster_run(settings, body["dagster_run_id"])
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["rime/kind"] == "infrastructure" and tags["rime/infra_plan_id"] == plan["plan_id"]

    catalog = open_catalog(settings)
    assert catalog.load_table((project["namespace"], "marts", "orders")).spec().fields[0].name == "region"
    deadline = time.monotonic() + 10
    while {r["state"] for r in api.get(base).json()["data"]} != {"applied"}:
        assert time.monotonic() < deadline, api.get(base).json()
        time.sleep(0.2)
    assert api.post(f"{base}/plan").json()["summary"] == {"create": 0, "update": 0, "delete": 0, "unchanged": 2}
    audit = api.get(f"/api/v1/projects/{project['id']}/audit-logs", params={"action": "infrastructure.apply"}).json()
    assert [e["status_code"] for e in audit["data"]][-1] == 202
