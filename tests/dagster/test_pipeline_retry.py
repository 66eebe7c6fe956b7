"""Retrying a failed pipeline run against a real Dagster webserver: a re-execution from its failure, linked to it,
over REST and through the SDK (which follows it over the run's WebSocket).

The refusals that need no launch are in tests/api/test_pipeline_retry.py."""

from __future__ import annotations

import httpx
import pytest

from api_shim.main import create_app
from rime_client import Client
from tests.api.test_alert_stream import served
from tests.dagster.conftest import Webserver
from tests.dagster.test_pipeline_jobs import _wait_for_job
from tests.dagster.test_pipeline_runs import wait_for_pipeline_run

pytestmark = pytest.mark.dagster


def files_connector(api: httpx.Client, project_id: str, name: str, folder, table: str) -> dict:
    return api.post(
        f"/api/v1/projects/{project_id}/connectors",
        json={"name": name, "connector_type": "files", "config": {"path": str(folder)}, "selected_tables": [table]},
    ).json()


def test_a_failed_run_retried_from_its_failure_reruns_only_the_failed_step_and_after(
    dagster_webserver: Webserver, tmp_path
):
    token = dagster_webserver.settings.admin_token
    with (
        served(create_app(dagster_webserver.settings)) as ws_url,
        httpx.Client(base_url=ws_url.replace("ws://", "http://"), timeout=120) as api,
        Client(ws_url.replace("ws://", "http://"), token) as sdk,
    ):
        api.headers["Authorization"] = f"Bearer {token}"
        retried_from_failure(api, sdk, dagster_webserver, tmp_path)


def retried_from_failure(api: httpx.Client, sdk: Client, dagster_webserver: Webserver, tmp_path) -> None:
    project = api.post("/api/v1/projects", json={"name": "pipeline retries"}).json()
    pid = project["id"]
    steady, inbox = tmp_path / "steady", tmp_path / "inbox"
    steady.mkdir()
    inbox.mkdir()
    (steady / "customers.csv").write_text("id,name\n1,Ada\n")
    orders = inbox / "orders.csv"
    orders.write_text("id,amount\n1,2.5\n")
    first = files_connector(api, pid, "Steady", steady, "customers")
    second = files_connector(api, pid, "Inbox", inbox, "orders")
    sync = {"type": "connector_sync"}
    pipeline = api.post(
        f"/api/v1/projects/{pid}/pipelines",
        json={
            "name": "retried",
            "steps": [
                {**sync, "id": "customers", "config": {"connector_id": first["id"]}},
                {**sync, "id": "orders", "config": {"connector_id": second["id"]}, "depends_on": ["customers"]},
                {
                    "id": "tidy",
                    "type": "table_maintenance",
                    "config": {"table": "inbox__orders", "operation": "expire_snapshots"},
                    "depends_on": ["orders"],
                },
            ],
        },
    ).json()
    base = f"/api/v1/projects/{pid}/pipelines/{pipeline['id']}"
    _wait_for_job(dagster_webserver.settings, f"{project['namespace']}__retried")

    # The orders file disappears: the second sync fails, the step after it never starts.
    orders.unlink()
    failed = wait_for_pipeline_run(api, base, api.post(f"{base}/run").json()["run_id"])
    assert [(s["step_id"], s["status"]) for s in failed["steps"]] == [
        ("customers", "completed"),
        ("orders", "failed"),
        ("tidy", "skipped"),
    ]
    assert failed["parent_run_id"] is None and failed["root_run_id"] is None

    # The file is back: the retry re-runs the failed sync and the step after it, and reuses the first sync.
    orders.write_text("id,amount\n1,2.5\n2,4.0\n")
    key = {"Idempotency-Key": "retry-1"}
    started = api.post(f"{base}/runs/{failed['run_id']}/retry", json={"from_failure": True}, headers=key)
    assert started.status_code == 202, started.text
    retry = started.json()
    assert retry["run_id"] != failed["run_id"] and retry["from_failure"] is True
    assert (retry["parent_run_id"], retry["root_run_id"]) == (failed["run_id"], failed["run_id"])
    assert retry["parent_dagster_run_id"] == failed["dagster_run_id"]
    assert (retry["environment"], retry["version"]) == ("development", 1)
    repeat = api.post(f"{base}/runs/{failed['run_id']}/retry", json={"from_failure": True}, headers=key)
    assert repeat.status_code == 202 and repeat.json()["run_id"] == retry["run_id"]
    # The SDK's retry of every step (`from_failure=False`), at the same time: a run of its own.
    everything = sdk.runs.retry(failed["run_id"], pipeline="retried", project=pid, from_failure=False)
    assert everything.started["from_failure"] is False and everything.started["parent_run_id"] == failed["run_id"]

    # Followed on its WebSocket like any run: the reused step is skipped from the start, the others run.
    messages: list[dict] = []
    followed = sdk.runs.handle(retry["run_id"], pipeline=pipeline["id"], project=pid)
    run = followed.wait(timeout=120, on_update=messages.append).model_dump(mode="json")
    first_seen: dict[str, dict] = {}
    for m in messages:
        if m["type"] == "step_update":
            first_seen.setdefault(m["step_id"], m)
    assert (first_seen["customers"]["status"], first_seen["customers"]["reused"]) == ("skipped", True)
    assert [m["status"] for m in messages if m.get("step_id") == "orders"][-1] == "completed"
    assert messages[-1]["type"] == "run_update" and messages[-1]["status"] == "succeeded"

    steps = {s["step_id"]: s for s in run["steps"]}
    assert run["status"] == "succeeded"
    customers = steps["customers"]
    assert (customers["status"], customers["reused"], customers["attempts"]) == ("skipped", True, 0)
    assert [(steps[s]["status"], steps[s]["reused"]) for s in ("orders", "tidy")] == [("completed", False)] * 2
    assert steps["orders"]["rows"] == 2
    assert (run["parent_run_id"], run["root_run_id"]) == (failed["run_id"], failed["run_id"])
    detail = api.get(f"{base}/runs/{retry['run_id']}").json()
    assert detail["trigger"] == "api" and detail["triggered_by"] == failed["triggered_by"]
    assert (detail["environment"], detail["version"]) == ("development", 1)
    tags = dagster_webserver.client.run_record(run["dagster_run_id"]).dagster_run.tags
    assert tags["dagster/parent_run_id"] == tags["dagster/root_run_id"] == failed["dagster_run_id"]
    assert tags["rime/pipeline_id"] == pipeline["id"] and tags["rime/pipeline_version"] == "1"

    again = everything.wait(timeout=120)
    assert [(s.status, s.reused) for s in again.steps] == [("completed", False)] * 3
    assert again.status == "succeeded" and again.root_run_id == failed["run_id"]
    history = [r["run_id"] for r in api.get(f"{base}/runs").json()["data"]]
    assert history == [again.run_id, run["run_id"], failed["run_id"]]

    # A success is not retried; nor is a run of a version its environment no longer runs.
    succeeded = api.post(f"{base}/runs/{run['run_id']}/retry")
    assert succeeded.status_code == 409 and "succeeded" in succeeded.json()["error"]["message"]
    assert api.patch(base, json={"description": "version 2"}).json()["version"] == 2
    moved_on = api.post(f"{base}/runs/{failed['run_id']}/retry")
    assert moved_on.status_code == 409 and "version 2" in moved_on.json()["error"]["message"]
    audit = api.get("/api/v1/audit-logs", params={"action": "pipeline.retry"}).json()["data"]
    assert {a["status_code"] for a in audit} >= {202, 409}
