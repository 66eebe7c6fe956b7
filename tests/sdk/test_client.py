"""The SDK against the real API (uvicorn on loopback, tests/sdk/conftest.py): errors, pagination, names, retries,
Idempotency-Key, and following a run to its end over the WebSocket and by polling."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from rime_client import (
    Client,
    Conflict,
    Forbidden,
    NotFound,
    Pipeline,
    Project,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
)
from rime_dagster.store.models import IdempotencyKey
from tests.sdk.conftest import Served, served_api

ROOT = Path(__file__).resolve().parents[2]
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def with_pipeline(client: Client, project_name: str, pipeline_name: str = "nightly") -> tuple[Project, Pipeline]:
    project = client.projects.create(project_name, description="sdk test")
    connector = client.connectors.create(
        {"name": "Shop", "connector_type": "files", "config": {}, "selected_tables": ["orders"]}, project=project.id
    )
    sync = {"id": "sync", "type": "connector_sync", "config": {"connector_id": connector.id}}
    return project, client.pipelines.create({"name": pipeline_name, "steps": [sync]}, project=project.id)


class TestErrors:
    def test_an_error_carries_code_message_status_and_request_id(self, api: Served):
        with Client(api.url, api.admin_token) as client:
            project = client.projects.create(unique("errors"))
            with pytest.raises(NotFound) as missing:
                client.connectors.get("conn_missing", project=project.id)
            assert (missing.value.code, missing.value.status) == ("resource_not_found", 404)
            assert "conn_missing" in missing.value.message
            assert missing.value.request_id and missing.value.request_id.startswith("req_")

            with pytest.raises(NotFound) as unmatched:  # the client's own 404: an id, name or slug matching nothing
                client.projects.get("proj_nothing_here")
            assert unmatched.value.code == "resource_not_found" and "'proj_nothing_here'" in unmatched.value.message

            with pytest.raises(ValidationError) as invalid:
                client.projects.create("")
            assert invalid.value.code == "validation_error" and invalid.value.status == 400
            assert invalid.value.request_id.startswith("req_") and invalid.value.request_id != missing.value.request_id
            assert [d["field"] for d in invalid.value.details] == ["name"]

            name = unique("twice")
            client.projects.create(name)
            with pytest.raises(Conflict) as clash:
                client.projects.create(name)
            assert clash.value.code == "conflict" and name in clash.value.message

    def test_auth_errors(self, api: Served):
        with Client(api.url, "not-a-token") as client, pytest.raises(Unauthorized) as caught:
            next(client.projects.list())
        assert caught.value.code == "unauthorized" and caught.value.request_id.startswith("req_")
        with Client(api.url, api.viewer_token) as viewer, pytest.raises(Forbidden) as refused:
            viewer.projects.create(unique("viewers-cannot"))
        assert refused.value.code == "forbidden"

    def test_token_and_url_from_the_environment(self, api: Served, monkeypatch):
        monkeypatch.setenv("RIME_URL", api.url)
        monkeypatch.setenv("RIME_TOKEN", api.admin_token)
        with Client() as client:
            assert client.projects.create(unique("from-env")).id.startswith("proj_")


def test_list_iterates_every_page(api: Served):
    seen_limits: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/projects"):
            seen_limits.append(request.url.params.get("cursor", "first"))

    with Client(api.url, api.admin_token, event_hooks={"request": [record]}) as client:
        made = {client.projects.create(unique("paged")).id for _ in range(7)}
        listed = [p.id for p in client.projects.list(page_size=3)]
        assert made <= set(listed) and len(listed) == len(set(listed))  # every project once
        assert len(seen_limits) >= 3 and seen_limits[0] == "first"  # three pages or more, by cursor
        assert len(list(client.projects.list(limit=4, page_size=3))) == 4


def test_names_work_where_ids_do(api: Served):
    with Client(api.url, api.admin_token) as client:
        name = unique("analytics")
        project, pipeline = with_pipeline(client, name)
        assert client.projects.get(name) == project
        assert client.projects.get(project.namespace).id == project.id  # the slug
        assert client.pipelines.get("nightly", project=name).id == pipeline.id
        assert client.pipelines.get(pipeline.id, project=project.id).name == "nightly"
        plan = client.pipelines.plan("nightly", project=name)
        assert plan.execution_order == ["sync"]
        with pytest.raises(NotFound, match="'weekly' in project"):
            client.pipelines.get("weekly", project=name)
        with pytest.raises(NotFound, match="No project with id, name or slug 'nowhere'"):
            client.pipelines.run("nightly", project="nowhere")
        with Client(api.url, api.admin_token, project=name) as scoped:  # a default project
            assert [p.id for p in scoped.pipelines.list()] == [pipeline.id]


def test_updates_and_deletes_by_name(api: Served):
    with Client(api.url, api.admin_token) as client:
        name = unique("edited")
        project, _ = with_pipeline(client, name)
        assert client.pipelines.update("nightly", {"schedule": "0 2 * * *"}, project=name).schedule == "0 2 * * *"
        client.pipelines.delete("nightly", project=name)
        assert list(client.pipelines.list(project=name)) == []
        renamed = client.projects.update(name, description="renamed", name=name + "-new")
        assert (renamed.id, renamed.name, renamed.description) == (project.id, name + "-new", "renamed")
        client.projects.delete(name + "-new")
        with pytest.raises(NotFound):
            client.projects.get(project.id)


def test_wait_on_a_run_that_does_not_exist(api: Served):
    """The WebSocket refuses the connect (404): the wait falls back to polling, whose read names the error."""
    with Client(api.url, api.admin_token) as client:
        project, pipeline = with_pipeline(client, unique("no-run"))
        run = client.runs.handle("run_" + "0" * 32, pipeline="nightly", project=project.id)
        with pytest.raises(NotFound) as caught:
            run.wait(timeout=10)
        assert caught.value.request_id.startswith("req_") and run.run_id in caught.value.message


def test_connectors(api: Served):
    with Client(api.url, api.admin_token, max_retries=0) as client:
        name = unique("connectors")
        project, _ = with_pipeline(client, name)
        [connector] = client.connectors.list(project=name)
        assert (connector.name, connector.connector_type, connector.selected_tables) == ("Shop", "files", ["orders"])
        assert client.connectors.get(connector.id, project=project.namespace) == connector
        assert list(client.connectors.runs(connector.id, project=name)) == []
        with pytest.raises(ServiceUnavailable):  # Dagster is not running here
            client.connectors.sync(connector.id, project=name)


@pytest.mark.slow  # three failed launches and their backoff: about a second
def test_a_trigger_retried_on_503_sends_one_idempotency_key(api: Served):
    """Dagster is not running: each launch answers 503, and the client tries again under the same key."""
    keys: list[str | None] = []

    def record(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("/run"):
            keys.append(request.headers.get("Idempotency-Key"))

    hooks = {"request": [record]}
    with Client(api.url, api.admin_token, max_retries=2, backoff=0.01, event_hooks=hooks) as client:
        project, pipeline = with_pipeline(client, unique("idem"))
        with pytest.raises(ServiceUnavailable) as caught:
            client.pipelines.run("nightly", project=project.id)
        assert caught.value.code == "service_unavailable"
        assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
        client.pipelines.plan("nightly", project=project.id)  # a dry run: answered at once
        assert len(keys) == 4 and keys[3] and keys[3] != keys[0]  # a new call, a new key

        with pytest.raises(ServiceUnavailable):  # a 503 to a POST without a key is not retried
            client._http.request("POST", f"/projects/{project.id}/pipelines/{pipeline.id}/run", json={})
        assert keys[4:] == [None]


@pytest.mark.slow  # waits out a Retry-After of 1 s
def test_429_waits_for_retry_after_and_the_server_sees_one_key(tmp_path):
    posts: list[str | None] = []

    def record(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("/run"):
            posts.append(request.headers.get("Idempotency-Key"))

    with served_api(tmp_path, rate_limits={"pipelines": "2/second"}) as api:
        with Client(api.url, api.admin_token, event_hooks={"request": [record]}) as client:
            project, pipeline = with_pipeline(client, "limited")  # one `pipelines` call
            started = time.monotonic()
            plan = client.pipelines.plan(pipeline.id, project=project.id)  # a GET, then a POST over the limit
            assert plan.pipeline_id == pipeline.id
            assert time.monotonic() - started >= 0.9  # Retry-After: 1
            assert len(posts) == 2 and posts[0] == posts[1]
            with api.app.state.sessions() as session:
                stored = session.scalars(select(IdempotencyKey.key)).all()
            assert stored == [posts[0]]  # the server ran it once, under the one key

        with Client(api.url, api.admin_token, max_retry_after=0.1) as impatient:
            with pytest.raises(RateLimited) as caught:
                for _ in range(3):
                    impatient.pipelines.get(pipeline.id, project=project.id)
            assert caught.value.code == "rate_limited" and caught.value.retry_after == 1


RUN_SCRIPT = """
import json, sys, time
from pathlib import Path
import dagster as dg

gate, tags = Path(sys.argv[1]), json.loads(sys.argv[2])

@dg.op(name="step_sync")
def step_sync() -> None:
    deadline = time.monotonic() + 60
    while not gate.exists():
        assert time.monotonic() < deadline, "the test never opened the gate"
        time.sleep(0.05)

@dg.job(name="sdk_wait")
def job() -> None:
    step_sync()

assert job.execute_in_process(instance=dg.DagsterInstance.get(), tags=tags).success
"""


@pytest.mark.slow  # each runs a Dagster job in a process of its own: a few seconds
class TestWait:
    """A pipeline run executed in process on the app's Dagster instance (tagged as the API tags it), followed."""

    @staticmethod
    def start_run(api: Served, project: Project, pipeline: Pipeline, gate: Path) -> subprocess.Popen:
        """The run, in a process of its own on the app's DAGSTER_HOME (as a run worker is); its step waits for the
        `gate` file. Not a thread of the test process: Dagster's compute-log capture swaps the process's stdout and
        stderr, which under pytest-xdist left its `tail` helpers hanging for 30 s each."""
        from rime_dagster.pipelines.names import pipeline_tags

        tags = {**pipeline_tags(project.id, pipeline.id), "rime/triggered_by": "sdk@example.com"}
        env = {**os.environ, "DAGSTER_HOME": str(api.settings.dagster_home_path)}
        return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(gate), json.dumps(tags)], env=env, cwd=ROOT)

    @staticmethod
    def run_of(client: Client, project: Project, pipeline: Pipeline) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = list(client.pipelines.runs(pipeline.id, project=project.id, limit=1))
            if runs:
                return runs[0].run_id
            time.sleep(0.05)
        raise AssertionError("the run did not appear in the run history")

    @pytest.mark.parametrize("websocket", [True, False], ids=["websocket", "polling"])
    def test_wait_returns_the_finished_run_with_its_steps(self, api: Served, websocket: bool, tmp_path: Path):
        gate = tmp_path / "gate"
        with Client(api.url, api.admin_token) as client:
            project, pipeline = with_pipeline(client, unique("wait"))
            thread = self.start_run(api, project, pipeline, gate)
            run = client.runs.handle(self.run_of(client, project, pipeline), pipeline="nightly", project=project.name)
            updates: list[dict] = []

            def on_update(message: dict) -> None:
                updates.append(message)
                if message["type"] == "run_update":
                    gate.touch()  # the step ends once the client follows the run

            finished = run.wait(timeout=60, on_update=on_update, websocket=websocket)
            assert thread.wait(30) == 0
            assert finished.status == "succeeded" and run.status == "succeeded"
            assert [(s.step_id, s.status) for s in finished.steps] == [("sync", "completed")]
            assert updates[-1]["type"] == "run_update" and updates[-1]["status"] == "succeeded"
            # Polled or not, each change of a step's status reaches `on_update` (once: the polls repeat no status).
            sync_states = [m["status"] for m in updates if m["type"] == "step_update"]
            assert sync_states[0] in ("pending", "running") and sync_states[-1] == "completed"
            assert all(a != b for a, b in zip(sync_states, sync_states[1:], strict=False))
            with pytest.raises(Conflict, match="already succeeded"):
                client.runs.cancel(run.run_id, pipeline=pipeline.id, project=project.id)

    def test_wait_times_out(self, api: Served, tmp_path: Path):
        gate = tmp_path / "gate"
        with Client(api.url, api.admin_token) as client:
            project, pipeline = with_pipeline(client, unique("slow"))
            thread = self.start_run(api, project, pipeline, gate)
            run = client.runs.handle(self.run_of(client, project, pipeline), pipeline=pipeline.id, project=project.id)
            for websocket in (True, False):
                with pytest.raises(TimeoutError):
                    run.wait(timeout=0.5, websocket=websocket)
            assert client.runs.get(run.run_id, pipeline=pipeline.id, project=project.id).status in ("queued", "running")
            gate.touch()
            assert run.wait(timeout=60).status == "succeeded"
            assert thread.wait(30) == 0


def test_the_sdk_imports_nothing_of_the_server():
    """A client over HTTP only (the import-linter contract in pyproject.toml holds the same line in `make lint`)."""
    server = {"api_shim", "rime_dagster", "dagster", "fastapi"}
    probe = f"import sys, rime_client; print(sorted({{m.split('.')[0] for m in sys.modules}} & {server!r}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
