"""Pipeline runs against a real Dagster webserver: API, WebSocket, SSE, Dagster-launched runs (cancel: in
test_definitions_sync.py, on its long run)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from tests.dagster.conftest import Webserver
from tests.dagster.test_pipeline_jobs import _wait_for_job

pytestmark = pytest.mark.dagster

TERMINAL = ("succeeded", "failed", "canceled")


def wait_for_pipeline_run(api, base: str, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"{base}/runs/{run_id}").json()
        if run.get("status") in TERMINAL:
            return run
        time.sleep(0.5)
    raise AssertionError(f"pipeline run {run_id} did not finish in {timeout:.0f}s")


def drain(ws) -> list[dict]:
    """Every message until the server closes the socket (normally)."""
    messages = []
    try:
        while True:
            messages.append(ws.receive_json())
    except WebSocketDisconnect as closed:
        assert closed.code == 1000, closed
    return messages


def watch(api, pipeline_id: str, run_id: str, token: str) -> list[dict]:
    """Authenticated by the subprotocols `bearer, <token>` (the shared watch below uses `?token=`)."""
    url = f"/api/v1/ws/pipelines/{pipeline_id}/runs/{run_id}"
    with api.websocket_connect(url, subprotocols=["bearer", token]) as ws:
        assert ws.accepted_subprotocol == "bearer"
        return drain(ws)


def split_replay(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the state sent on connect, up to its run_update; the live messages after it)."""
    first_run = next(i for i, m in enumerate(messages) if m["type"] == "run_update")
    return messages[: first_run + 1], messages[first_run + 1 :]


def transitions(messages: list[dict]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for m in messages:
        if m["type"] == "step_update":
            seen.setdefault(m["step_id"], []).append(m["status"])
    return seen


def sse_events(api, url: str) -> list[tuple[str, dict]]:
    events = []
    with api.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    return events


def inbox(api, tmp_path, project_name: str) -> tuple[dict, dict, Path]:
    """A project with a files connector `Inbox` over a folder holding orders.csv: (project, connector, folder)."""
    project = api.post("/api/v1/projects", json={"name": project_name}).json()
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "orders.csv").write_text("id,amount\n1,2.5\n")
    body = {"name": "Inbox", "connector_type": "files", "config": {"path": str(folder)}, "selected_tables": ["orders"]}
    connector = api.post(f"/api/v1/projects/{project['id']}/connectors", json=body).json()
    return project, connector, folder


def test_sync_then_dbt_build_from_the_api_with_live_progress(api, dagster_webserver: Webserver, demo_shop):
    project, connector, dbt = demo_shop
    pid = project["id"]
    token = dagster_webserver.settings.admin_token
    created = api.post(
        f"/api/v1/projects/{pid}/pipelines",
        headers={"Content-Type": "application/yaml"},
        content=f"""
name: Nightly shop
variables: {{demo_shop_min_order_amount: 0}}
steps:
  - id: sync
    name: Sync the shop
    type: connector_sync
    config: {{connector_id: {connector["id"]}}}
  - id: models
    name: Build the marts
    type: dbt
    config: {{dbt_project_id: {dbt["id"]}, command: build, select: "+customer_orders"}}
    depends_on: [sync]
""",
    )
    assert created.status_code == 201, created.text
    pipeline = created.json()
    base = f"/api/v1/projects/{pid}/pipelines/{pipeline['id']}"

    plan = api.post(f"{base}/run", json={"dry_run": True, "variables": {"demo_shop_min_order_amount": 10**9}})
    assert plan.status_code == 200, plan.text
    assert plan.json()["execution_order"] == ["sync", "models"]
    assert [s["step_name"] for s in plan.json()["plan"]] == ["Sync the shop", "Build the marts"]
    assert plan.json()["variables"] == {"demo_shop_min_order_amount": 10**9}
    assert api.get(f"{base}/runs").json()["data"] == []  # the dry run launched nothing

    # Variables reach dbt: no order reaches this minimum, so every customer counts 0 orders.
    key = {"Idempotency-Key": "nightly-1"}
    started = api.post(f"{base}/run", json={"variables": {"demo_shop_min_order_amount": 10**9}}, headers=key)
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    again = api.post(f"{base}/run", json={"variables": {"demo_shop_min_order_amount": 10**9}}, headers=key)
    assert again.json()["run_id"] == run_id

    # Two clients on the run share one reader of its event log.
    url = f"/api/v1/ws/pipelines/{pipeline['id']}/runs/{run_id}?token={token}"
    with api.websocket_connect(url) as first, api.websocket_connect(url) as second:
        messages, others = [first.receive_json()], [second.receive_json()]
        watches = list(api.app.state.run_watch.watches.values())
        assert len(watches) == 1 and len(watches[0].subscribers) == 2
        messages += drain(first)
        others += drain(second)
    assert others[-1] == messages[-1]
    replay, live = split_replay(messages)
    assert [m["step_id"] for m in replay if m["type"] == "step_update"] == ["sync", "models"]
    # Every transition shows, in order, as it happens (whatever part of it the replay covered).
    seen = transitions(messages)
    for step in ("sync", "models"):
        statuses = [s for s in seen[step] if s != "pending"]
        assert statuses[-2:] == ["running", "completed"] or statuses == ["completed"], seen
    assert "running" in transitions(live)["models"]
    final = messages[-1]
    assert final["type"] == "run_update" and final["status"] == "succeeded" and final["duration_seconds"] > 0
    update = next(m for m in live if m["type"] == "step_update" and m["status"] == "completed")
    assert set(update) >= {"type", "step_id", "step_name", "status", "duration_seconds", "timestamp"}
    assert update["timestamp"].endswith("Z")

    run = wait_for_pipeline_run(api, base, run_id)
    assert run["status"] == "succeeded" and run["trigger"] == "api"
    assert run["variables"] == {"demo_shop_min_order_amount": 10**9}
    steps = {s["step_id"]: s for s in run["steps"]}
    assert [s["status"] for s in run["steps"]] == ["completed", "completed"]
    assert steps["sync"]["rows"] > 0 and steps["sync"]["step_name"] == "Sync the shop"
    assert steps["models"]["rows"] == 50  # customer_orders, published to Iceberg
    assert steps["models"]["started_at"] >= steps["sync"]["finished_at"]
    preview = api.get(f"/api/v1/projects/{pid}/tables/shop_models__customer_orders/preview").json()
    counts = [row[preview["columns"].index("order_count")] for row in preview["rows"]]
    assert counts and set(counts) == {0}

    # A client joining after the end gets the final state of every step, then the socket closes.
    late = watch(api, pipeline["id"], run_id, token)
    assert [(m["step_id"], m["status"]) for m in late if m["type"] == "step_update"] == [
        ("sync", "completed"),
        ("models", "completed"),
    ]
    assert late[-1]["type"] == "run_update" and late[-1]["status"] == "succeeded"

    # Logs: JSON pages, and SSE that replays the run and ends with it.
    logs = api.get(f"{base}/runs/{run_id}/logs", params={"limit": 5}).json()
    assert logs["status"] == "succeeded" and len(logs["logs"]) == 5 and logs["next_after"] == logs["logs"][-1]["id"]
    events = sse_events(api, f"{base}/runs/{run_id}/logs")
    lines = [data for kind, data in events if kind == "log"]
    assert lines[:5] == logs["logs"]
    assert any(line["step_id"] == "models" and line["event_type"] == "STEP_SUCCESS" for line in lines)
    assert [data["status"] for kind, data in events if kind == "status"][-1] == "succeeded"

    # Bad tokens never get a socket.
    for bad in ("", "rime_not_a_token"):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with api.websocket_connect(f"/api/v1/ws/pipelines/{pipeline['id']}/runs/{run_id}?token={bad}"):
                pass
        assert denied.value.status_code == 401
    with pytest.raises(WebSocketDenialResponse) as denied:
        with api.websocket_connect(f"/api/v1/ws/pipelines/{pipeline['id']}/runs/run_{'0' * 32}?token={token}"):
            pass
    assert denied.value.status_code == 404
    audit = api.get("/api/v1/audit-logs", params={"action": "pipeline.run_watch"}).json()["data"]
    assert {a["status_code"] for a in audit} >= {401, 404}


def test_failure_skips_downstream_and_dagster_launched_runs_show(api, dagster_webserver: Webserver, tmp_path):
    project, connector, folder = inbox(api, tmp_path, "pipeline failures")
    pid = project["id"]
    pipeline = api.post(
        f"/api/v1/projects/{pid}/pipelines",
        json={
            "name": "fragile",
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
    ).json()
    base = f"/api/v1/projects/{pid}/pipelines/{pipeline['id']}"
    job_name = f"{project['namespace']}__fragile"  # the project's namespace, the pipeline's slug
    _wait_for_job(dagster_webserver.settings, job_name)

    # Launched from Dagster (as the UI does: no Rime tags beyond the job's own): it is in the history.
    launched = dagster_webserver.client.launch_run(job_name, tags={})
    ui_run = wait_for_pipeline_run(api, base, "run_" + launched.dagster_run_id.replace("-", ""))
    assert ui_run["status"] == "succeeded" and ui_run["trigger"] == "dagster" and ui_run["triggered_by"] is None
    assert [s["status"] for s in ui_run["steps"]] == ["completed", "completed"]

    # The source file disappears: the sync fails, the maintenance step after it never starts.
    (folder / "orders.csv").unlink()
    run_id = api.post(f"{base}/run").json()["run_id"]
    # An SSE client follows the run live while a WebSocket client watches it.
    with ThreadPoolExecutor(1) as pool:
        streamed = pool.submit(sse_events, api, f"{base}/runs/{run_id}/logs")
        messages = watch(api, pipeline["id"], run_id, dagster_webserver.settings.admin_token)
        events = streamed.result(timeout=120)
    ids = [data["id"] for kind, data in events if kind == "log"]
    assert ids == sorted(set(ids))  # backlog then live: every line once, in order
    stored = [line["id"] for line in api.get(f"{base}/runs/{run_id}/logs", params={"limit": 10_000}).json()["logs"]]
    # Everything up to the run's end and the lines right after it (Dagster may log more later).
    assert ids == stored[: len(ids)]
    assert "PIPELINE_FAILURE" in [data["event_type"] for kind, data in events if kind == "log"]
    assert any(
        data["event_type"] == "STEP_FAILURE" and data["step_id"] == "sync" for kind, data in events if kind == "log"
    )
    assert [data["status"] for kind, data in events if kind == "status"][-1] == "failed"
    assert transitions(messages)["tidy"][-1] == "skipped"
    assert transitions(messages)["sync"][-1] == "failed"
    assert messages[-1]["type"] == "run_update" and messages[-1]["status"] == "failed"
    run = wait_for_pipeline_run(api, base, run_id)
    steps = {s["step_id"]: s for s in run["steps"]}
    assert run["status"] == "failed" and "orders" in run["error"]
    assert steps["sync"]["status"] == "failed" and "orders" in steps["sync"]["error"]
    assert steps["tidy"]["status"] == "skipped" and steps["tidy"]["started_at"] is None
    history = api.get(f"{base}/runs").json()["data"]
    assert [r["run_id"] for r in history] == [run_id, ui_run["run_id"]]
    assert api.post(f"{base}/runs/{run_id}/cancel").status_code == 409  # already over


# Cancel (the running dbt step stopped, the step after it skipped) is proven on the two-minute dbt run of
# test_definitions_sync.py::test_reloads_during_a_long_run_leave_no_old_code_server_behind_then_cancel_stops_it,
# which reloads the code location during the same run first.


def test_production_runs_its_approved_version_while_development_changes(api, dagster_webserver: Webserver, tmp_path):
    project, connector, _ = inbox(api, tmp_path, "pipeline environments")
    pid = project["id"]
    sync = {"id": "sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}}
    pipeline = api.post(f"/api/v1/projects/{pid}/pipelines", json={"name": "staged", "steps": [sync]}).json()
    base = f"/api/v1/projects/{pid}/pipelines/{pipeline['id']}"

    # Version 1 to production: the admin requests each approval, another lead gives it.
    user = api.post("/api/v1/users", json={"email": "approver@example.com", "name": "A", "role": "lead_data_engineer"})
    token = api.post(f"/api/v1/users/{user.json()['id']}/tokens", json={"name": "t"}).json()["token"]
    approver = {"Authorization": f"Bearer {token}"}
    assert api.post(f"{base}/versions/1/promote").status_code == 200
    for _ in ("uat", "production"):
        request_id = api.post(f"{base}/versions/1/promote").json()["approval_request_id"]
        approved = api.post(f"/api/v1/projects/{pid}/approvals/{request_id}/approve", json={}, headers=approver)
        assert approved.status_code == 200, approved.text
    # Development moves on: version 2 adds a step.
    tidy = {
        "id": "tidy",
        "type": "table_maintenance",
        "config": {"table": "inbox__orders", "operation": "expire_snapshots"},
    }
    changed = api.patch(base, json={"steps": [sync, {**tidy, "depends_on": ["sync"]}]})
    assert changed.status_code == 200 and changed.json()["version"] == 2

    # Each run at once after the change: the launch waits for Dagster to build the environment's job.
    production = api.post(f"{base}/run", json={"environment": "production"})
    assert production.status_code == 202, production.text
    assert production.json()["environment"] == "production" and production.json()["version"] == 1
    runs = {"production": wait_for_pipeline_run(api, base, production.json()["run_id"])}
    development = api.post(f"{base}/run").json()  # after production's: both sync one connector (a pool of one)
    runs["development"] = wait_for_pipeline_run(api, base, development["run_id"])
    assert [(s["step_id"], s["status"]) for s in runs["production"]["steps"]] == [("sync", "completed")], runs
    assert [(s["step_id"], s["status"]) for s in runs["development"]["steps"]] == [
        ("sync", "completed"),
        ("tidy", "completed"),
    ]
    assert (runs["production"]["environment"], runs["production"]["version"]) == ("production", 1)
    assert (runs["development"]["environment"], runs["development"]["version"]) == ("development", 2)
    history = api.get(f"{base}/runs").json()["data"]
    assert {(r["environment"], r["version"]) for r in history} == {("production", 1), ("development", 2)}
    jobs = {dagster_webserver.client.run_record(r["dagster_run_id"]).dagster_run.job_name for r in history}
    assert jobs == {f"{project['namespace']}__staged", f"{project['namespace']}__staged__production"}
