"""A real Dagster for the session, as `rime up` runs it: the `rime` code server and a `dagster-webserver`
that reaches it through the generated grpc_server workspace. `running_dagster` starts one; the session's, the
`dagster_webserver` fixture, is in tests/conftest.py.

They get their own DAGSTER_HOME (dagster.yaml written by `ensure_dagster_home`) and RIME_HOME (a
migrated SQLite metadata store), each leads its own process group, and teardown stops both groups
(the code server's child and run workers included), then checks that no process carrying this
DAGSTER_HOME survived.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from api_shim.cli import (
    REPO_ROOT,
    code_server_command,
    wait_for_code_server,
    webserver_command,
    write_workspace,
)
from api_shim.dagster_client import DagsterClient, ensure_dagster_home
from api_shim.errors import ServiceUnavailable
from rime_dagster.settings import Settings
from tests.conftest import closed_port, make_settings

BIN = Path(sys.executable).parent  # the venv running the tests, as `rime up` does
START_TIMEOUT = 90.0
STOP_GRACE = 10.0


@dataclass
class Webserver:
    settings: Settings
    client: DagsterClient
    process: subprocess.Popen
    log_path: Path
    code_server: subprocess.Popen | None = None
    # The environment the webserver runs in and its workspace: what a daemon started beside it needs.
    env: dict[str, str] = field(default_factory=dict)
    workspace: Path | None = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _pids_with_env(entry: str) -> list[int]:
    """Our processes whose environment holds `entry` (e.g. DAGSTER_HOME=<this test's home>)."""
    needle = entry.encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes() + b"\0":
                found.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return found


def code_server_pids(server: Webserver) -> list[int]:
    """This Dagster's code server processes: the standalone server and its child (two while one replaces the other).

    The webserver and the daemon start none of their own: they reach the standalone one.
    """
    found = []
    for pid in _pids_with_env(f"DAGSTER_HOME={server.settings.dagster_home_path}"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"code-server" in argv or (b"api" in argv and b"grpc" in argv):
            found.append(pid)
    return found


@contextmanager
def api_process(server: Webserver, log_path: Path) -> Iterator[str]:
    """The API as `rime up` runs it (uvicorn, its own process) against this Dagster; yields its base URL."""
    with uvicorn_api(server.settings, log_path) as url:
        yield url


@contextmanager
def uvicorn_api(
    settings: Settings,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    access_log: bool = False,
    memory_limit_bytes: int | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[str]:
    """uvicorn serving `api_shim.main:app_from_env` with `settings` (and `env` over them), its own process
    group, stdout and stderr in `log_path`; yields its base URL. `memory_limit_bytes` caps its address space,
    so that a test of a memory attack cannot take the machine down with it; `args`: more of uvicorn's options
    (`--workers 2`)."""
    port = closed_port()
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "DAGSTER_"))}
    process_env.update(
        RIME_HOME=str(settings.home),
        RIME_ADMIN_TOKEN=settings.admin_token or "",
        RIME_SECRET_KEY=settings.secret_key or "",
        RIME_DAGSTER_GRAPHQL_URL=settings.graphql_url,
        RIME_DAGSTER_PORT=str(settings.dagster_port),
        RIME_RATE_LIMIT_DEFAULT="1000000/minute",
        RIME_LOG_LEVEL="WARNING",
        RIME_CONNECTOR_PATH_ROOTS=json.dumps([str(root) for root in settings.connector_path_roots]),
        DAGSTER_HOME=str(settings.dagster_home_path),
        **monitoring_env(settings),
        **({"RIME_DATABASE_URL": settings.database_url} if settings.database_url else {}),
    )
    process_env.update(env or {})
    argv = [str(BIN / "uvicorn"), "--factory", "api_shim.main:app_from_env", "--port", str(port), *args]
    if not access_log:
        argv.append("--no-access-log")

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    process = _start(argv, process_env, log_path, preexec_fn=cap_memory if memory_limit_bytes else None)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the API did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def monitoring_env(settings: Settings) -> dict[str, str]:
    """The run monitoring settings, for a process that writes dagster.yaml (the API at start) to write the same."""
    return {
        "RIME_RUN_MONITORING_POLL_SECONDS": str(settings.run_monitoring_poll_seconds),
        "RIME_RUN_SLOTS_FREE_AFTER_SECONDS": str(settings.run_slots_free_after_seconds),
    }


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(process: subprocess.Popen, env_marker: str) -> None:
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    # The leader may be gone while its code server or a run worker lingers: kill the group anyway.
    _signal_group(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    # Anything that left the group but still carries our DAGSTER_HOME is ours too.
    deadline = time.monotonic() + 5
    while (pids := _pids_with_env(env_marker)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.2)


@contextmanager
def running_daemon(server: Webserver) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` beside a webserver (sensors, schedules, run retries), as `rime up` runs it: the same
    environment and workspace. Stopping it stops only its own process group (its sensor-launched run workers)."""
    log_path = server.log_path.with_name(f"daemon-{time.monotonic_ns()}.log")
    assert server.workspace is not None
    daemon = _start([str(BIN / "dagster-daemon"), "run", "-w", str(server.workspace)], server.env, log_path)
    try:
        yield daemon
    finally:
        _signal_group(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=5)


LOCATIONS_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def graphql(settings: Settings, query: str, variables: dict | None = None) -> dict:
    response = httpx.post(settings.graphql_url, json={"query": query, "variables": variables or {}}, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def location_entry(settings: Settings) -> dict | None:
    data = graphql(settings, LOCATIONS_QUERY)["workspaceOrError"]
    return next((e for e in data.get("locationEntries", []) if e["name"] == settings.dagster_location), None)


def _location_loaded(settings: Settings) -> bool:
    """The webserver answers `version` before its code server has loaded the location."""
    entry = location_entry(settings)
    if entry is None or entry["loadStatus"] != "LOADED":
        return False
    error = entry["locationOrLoadError"]
    if error and error["__typename"] == "PythonError":
        pytest.fail(f"the {settings.dagster_location!r} code location failed to load: {error['message']}")
    return True


def _start(argv: list[str], env: dict[str, str], log_path: Path, preexec_fn=None) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )


@contextmanager
def running_dagster(tmp: Path, database_url: str | None = None) -> Iterator[Webserver]:
    """The `rime` code server and a webserver over a fresh metadata store (SQLite under `tmp`, or `database_url`)."""
    port = closed_port()
    settings = make_settings(
        tmp,
        database_url,
        dagster_port=port,
        dagster_graphql_url=f"http://127.0.0.1:{port}/graphql",
        code_server_port=closed_port(),
        dagster_timeout_seconds=10,
        dagster_launch_timeout_seconds=60,
        dagster_reload_timeout_seconds=120,
        health_timeout_seconds=5,
        # A daemon's run monitoring marks a run whose worker was killed failed within a second, and frees the pool
        # slot it held a second later (test_run_worker_killed.py re-syncs at once).
        run_monitoring_poll_seconds=1,
        run_slots_free_after_seconds=1,
        # Source files of the session's tests (each under its own tmp_path) and the repository's demo data.
        connector_path_roots=[tmp.parent, DEMO_DATA],
    )  # migrates the metadata store under settings.home
    dagster_home = ensure_dagster_home(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        RIME_HOME=str(settings.home),
        # The API in the tests encrypts credentials with this key; the run workers must decrypt them.
        RIME_SECRET_KEY=settings.secret_key,
        # Run workers confine connectors as the API does.
        RIME_CONNECTOR_PATH_ROOTS=json.dumps([str(root) for root in settings.connector_path_roots]),
        DAGSTER_DISABLE_TELEMETRY="1",
        **monitoring_env(settings),
        # A cancelled dbt step gets 5 s, not dagster-dbt's 25, to stop on SIGINT before it is killed: dbt does not
        # stop while a model runs (the slow fixture's sleeps), so each cancel of one waited the full 25 s.
        DAGSTER_DBT_TERMINATION_TIMEOUT_SECONDS="5",
        **({"RIME_DATABASE_URL": settings.database_url} if settings.database_url else {}),
    )
    env_marker = f"DAGSTER_HOME={dagster_home}"
    log_path = tmp / "webserver.log"
    code_server = _start(code_server_command(settings, BIN), env, log_path)
    process: subprocess.Popen | None = None
    client = DagsterClient(settings)
    try:
        if not wait_for_code_server(settings, START_TIMEOUT, alive=lambda: code_server.poll() is None):
            pytest.fail(f"the rime code server did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
        workspace = write_workspace(settings)
        process = _start(webserver_command(settings, BIN, workspace), env, log_path)
        server = Webserver(
            settings=settings,
            client=client,
            process=process,
            log_path=log_path,
            code_server=code_server,
            env=env,
            workspace=workspace,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{server.log_tail()}")
            try:
                client.ping(timeout=2)
                if _location_loaded(settings):
                    break
            except ServiceUnavailable:
                pass
            if time.monotonic() > deadline:
                location, tail = settings.dagster_location, server.log_tail()
                pytest.fail(f"dagster-webserver did not load {location!r} in {START_TIMEOUT:.0f}s:\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        client.close()
        if process is not None:
            _stop(process, env_marker)
        _stop(code_server, env_marker)
    leftovers = _pids_with_env(env_marker)
    assert not leftovers, f"Dagster processes survived teardown: {leftovers}"


# How often the tests look at a run's state (one API request a look): a run's end shows within a quarter second.
POLL_SECONDS = 0.25


def wait_for_run(api, connector_url: str, run_id: str, timeout: float = 120) -> dict:
    """Polls the connector's run history until `run_id` is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.get(f"{connector_url}/runs").json()["data"]
        run = next((r for r in runs if r["run_id"] == run_id), None)
        if run and run["status"] in ("succeeded", "failed", "canceled"):
            return run
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"run {run_id} did not finish in {timeout:.0f}s")


DEMO_DATA = REPO_ROOT / "demo" / "data"
DEMO_DBT = REPO_ROOT / "dbt_projects" / "demo_shop"


def create_demo_shop_connector(api, project_id: str) -> dict:
    """The `Demo Shop` files connector over demo/data (customers, orders), as `make up` loads it."""
    response = api.post(
        f"/api/v1/projects/{project_id}/connectors",
        json={
            "name": "Demo Shop",
            "connector_type": "files",
            "config": {"path": str(DEMO_DATA)},
            "selected_tables": ["customers", "orders"],
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="session")
def demo_shop(dagster_webserver: Webserver) -> tuple[dict, dict, dict]:
    """A project with the Demo Shop connector and the demo dbt project reading its tables, as `make up` loads them:
    (project, connector, dbt project as created). Made once for the tests that each sync and build it with runs of
    their own (test_dbt.py, test_pipeline_runs.py), so that Dagster loads them and dbt parses the project once."""
    from fastapi.testclient import TestClient

    from api_shim.main import create_app

    settings = dagster_webserver.settings
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        api.headers["Authorization"] = f"Bearer {settings.admin_token}"
        project = api.post("/api/v1/projects", json={"name": "demo shop"}).json()
        connector = create_demo_shop_connector(api, project["id"])
        dbt = api.post(
            f"/api/v1/projects/{project['id']}/dbt-projects",
            json={"name": "Shop Models", "source": {"type": "path", "path": str(DEMO_DBT)}},
        )
        assert dbt.status_code == 201, dbt.text
    return project, connector, dbt.json()
