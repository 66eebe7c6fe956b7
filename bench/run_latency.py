"""Benchmark pipeline run start-up latency: Rime's `POST .../run` against a raw Dagster GraphQL launch.

The acceptance targets are that triggering a pipeline through the API reaches run success within
1.1x of launching the same Dagster job straight through Dagster's GraphQL (medians), and that the
WebSocket delivers live step and run updates with a p99 delay under 500 ms.

What it does, all in one run, everything under a temporary directory:

1. prepares a deployment the way `rime up --no-demo` does (`ensure_dagster_home`, so
   DefaultRunCoordinator and run monitoring, Dagster storage initialized once, metadata store
   migrated, the admin of RIME_ADMIN_TOKEN ensured) and starts its processes as `rime up`
   does: the `rime` code server (`dagster code-server start`), then `dagster-webserver` and
   `dagster-daemon run` on the generated grpc_server workspace, and the API under uvicorn,
   each on a free loopback port and leading its own process group;
2. through the API, creates a project, a `files` connector "Inbox" with one uploaded
   `orders.csv`, and the trivial two-step pipeline of tests/dagster/test_pipeline_jobs.py
   (connector_sync, then table_maintenance expire_snapshots of `inbox__orders`), and waits for the
   job `<namespace>__bench_two_steps` to show in GraphQL and for the API to see Dagster caught up (so that no
   reload of the definitions sync overlaps the timed runs);
3. times, alternating run by run after one untimed warm-up of each (the pipeline's default run
   config: the in-process executor, steps run in the run worker):
   (a) raw Dagster: `DagsterGraphQLClient.submit_job_execution` of that job with the same
       tags the API sets;
   (b) ours: `POST /api/v1/projects/{id}/pipelines/{pid}/run`, then, right after it returns, the
       run's WebSocket, read until the server closes it;
   for each run, from t0 = wall clock just before the request: the launch call's return, and,
   from the event timestamps of Dagster's event log (read in this process from the instance
   under DAGSTER_HOME), trigger -> RUN_START (the run worker is up), trigger -> first STEP_START
   and trigger -> RUN_SUCCESS; every run must succeed (for (b) also per the API's run detail);
   the API process's CPU seconds over each run are reported too (for (b): the request and the
   run's WebSocket reader, which polls the event log while a client watches; `--no-websocket`
   runs (b) unwatched, to see what watching costs the run on a small machine);
   (c) the WebSocket delay of every live message of the (b) runs (those after the replay, which
   ends with the first `run_update`): receive time - the message's `timestamp` (the time of the
   Dagster event behind it);
4. stops the deployment, then (unless --no-reference) starts a reference deployment as
   `dagster dev` would have it: a second DAGSTER_HOME with an empty dagster.yaml (Dagster's
   defaults: QueuedRunCoordinator, which the daemon dequeues every 5 s), `dagster-webserver` +
   `dagster-daemon run` on the same workspace.yaml and RIME_HOME (so the same job), and times
   (d) GraphQL launches with Dagster's default executor (`multiprocess`, one process per step);
5. prints the tables and verdicts; exits 1 if any run failed (or a WebSocket did not close),
   0 otherwise, whatever the verdicts.

Every process the script starts leads its own process group; each group is killed at the end,
also on Ctrl-C, SIGTERM or an error, and so is any straggler carrying the bench's DAGSTER_HOME.

Run with `python bench/run_latency.py [--runs N] [--reference-runs N] [--no-reference] [--no-websocket]
[--keep]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `bench._common` when run as `python bench/run_latency.py`
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import Processes, free_port, log, wait_http  # noqa: E402
from rime_dagster.pipelines.names import pipeline_job_name  # noqa: E402
from rime_dagster.platform.naming import identifier  # noqa: E402

BIN = Path(sys.executable).parent
WORKSPACE = REPO_ROOT / "workspace.yaml"
ADMIN_TOKEN = "rime_bench_admin_token_0123456789abcdef"
SECRET_KEY = "rime-bench-secret-key-0123456789abcdef0123456789"
ADMIN_EMAIL = "admin@localhost"
LOCATION = "rime"
REPOSITORY = "__repository__"
TARGET_RATIO = 1.1
TARGET_WS_P99_MS = 500.0
START_TIMEOUT = 180.0
RUN_TIMEOUT = 300.0
WS_CLOSE_TIMEOUT = 30.0
POLL_SECONDS = 0.1
MULTIPROCESS = {"execution": {"config": {"multiprocess": {}}}}
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
LABELS = {
    "raw": "(a) raw Dagster GraphQL launch",
    "ours": "(b) Rime `POST .../run`",
    "reference": "(d) `dagster dev` defaults (reference)",
}
NOTES = {
    "raw": "DefaultRunCoordinator, in-process executor",
    "ours": "same instance and job; WebSocket open",
    "ours-no-ws": "same instance and job; no WebSocket (--no-websocket)",
    "reference": "QueuedRunCoordinator + daemon, multiprocess executor",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100)
    return ordered[int(rank) - 1]


# Processes ------------------------------------------------------------------------------------


def child_env(home: Path, dagster_home: Path, **extra: str) -> dict[str, str]:
    # Drop the caller's RIME_*/DAGSTER_* so the children see exactly the bench settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        RIME_HOME=str(home),
        RIME_ADMIN_TOKEN=ADMIN_TOKEN,
        RIME_ADMIN_EMAIL=ADMIN_EMAIL,
        RIME_SECRET_KEY=SECRET_KEY,
        RIME_LOG_LEVEL="WARNING",
        RIME_RATE_LIMIT_DEFAULT="1000000/minute",
        DAGSTER_DISABLE_TELEMETRY="1",
        **extra,
    )
    return env


def start_dagster(procs: Processes, env: dict[str, str], port: int, logs: Path, prefix: str, settings=None) -> None:
    """With `settings`, as `rime up` does: the `rime` code server first, then the webserver and the daemon on
    the generated grpc_server workspace. Without, as `dagster dev` does: both load workspace.yaml themselves."""
    workspace = WORKSPACE
    if settings is not None:
        from api_shim.cli import code_server_command, wait_for_code_server, write_workspace

        procs.start(f"{prefix}code-server", code_server_command(settings, BIN), env, logs / f"{prefix}code-server.log")
        if not wait_for_code_server(settings, START_TIMEOUT):
            procs.check_alive()
            raise RuntimeError("the rime code server did not start")
        workspace = write_workspace(settings)
    procs.start(
        f"{prefix}dagster-webserver",
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
        env,
        logs / f"{prefix}webserver.log",
    )
    procs.start(
        f"{prefix}dagster-daemon",
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        env,
        logs / f"{prefix}daemon.log",
    )


# GraphQL --------------------------------------------------------------------------------------

LOCATIONS_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
JOBS_QUERY = (
    f'{{ repositoryOrError(repositorySelector: {{repositoryLocationName: "{LOCATION}", '
    f'repositoryName: "{REPOSITORY}"}}) {{ ... on Repository {{ jobs {{ name }} }} }} }}'
)


def graphql(port: int, query: str) -> dict:
    response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=10)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def wait_location(procs: Processes, port: int, timeout: float = START_TIMEOUT) -> None:
    """Until the webserver answers and its code server has loaded the `rime` location."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            entries = graphql(port, LOCATIONS_QUERY)["workspaceOrError"].get("locationEntries", [])
            entry = next((e for e in entries if e["name"] == LOCATION), None)
            if entry and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"]
                if error and error["__typename"] == "PythonError":
                    raise RuntimeError(f"code location {LOCATION!r} failed to load: {error['message']}")
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the webserver on port {port} did not load {LOCATION!r} in {timeout:.0f}s")


def wait_job(port: int, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = graphql(port, JOBS_QUERY)["repositoryOrError"].get("jobs") or []
        if any(j["name"] == name for j in jobs):
            return
        time.sleep(0.5)
    raise RuntimeError(f"job {name} never appeared in the code location on port {port}")


def graphql_client(port: int):
    from dagster_graphql import DagsterGraphQLClient

    return DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)


# One run --------------------------------------------------------------------------------------


@dataclass
class WsWatch:
    """The WebSocket of one run, read in a thread until the server closes it."""

    url: str
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    close_code: int | None = None
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._read, name="ws", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=10, close_timeout=5) as ws:
                while not self.stop.is_set():
                    try:
                        raw = ws.recv(timeout=0.5)
                    except TimeoutError:
                        continue
                    except ConnectionClosed:
                        break
                    self.messages.append((time.time(), json.loads(raw)))
                self.close_code = ws.close_code
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.error = f"the server did not close the WebSocket within {timeout:.0f}s of the run's end"
            self.stop.set()
            self.thread.join(10)

    def live_delays(self) -> list[tuple[float, dict[str, Any]]]:
        """(delay seconds, message) of every message after the replay (which ends with the first run_update)."""
        out = []
        replay = True
        for received, message in self.messages:
            if replay:
                replay = message.get("type") != "run_update"
                continue
            stamp = message.get("timestamp")
            if stamp:
                out.append((received - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), message))
        return out


@dataclass
class RunResult:
    leg: str
    dagster_run_id: str
    status: str
    launch_returned: float  # seconds from t0
    first_step: float | None
    run_start: float | None
    done: float | None
    error: str | None = None
    ws: WsWatch | None = None
    api_cpu: float | None = None  # CPU seconds the API process used from the trigger to the run's end


def wait_terminal(instance, dagster_run_id: str, timeout: float = RUN_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = instance.get_run_record_by_id(dagster_run_id)
        if record is not None and record.dagster_run.status.value in TERMINAL:
            return record.dagster_run.status.value
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"run {dagster_run_id} did not finish within {timeout:.0f}s")


def run_result(instance, leg: str, dagster_run_id: str, t0: float, returned: float) -> RunResult:
    status = wait_terminal(instance, dagster_run_id)
    by_type: dict[str, list[float]] = {}
    errors = []
    for record in instance.get_records_for_run(dagster_run_id).records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None:
            continue
        by_type.setdefault(event.event_type_value, []).append(entry.timestamp)
        if event.event_type_value in ("STEP_FAILURE", "PIPELINE_FAILURE"):
            errors.append(f"{event.step_key or 'run'}: {(event.message or '').strip()[:300]}")

    def since_t0(kind: str) -> float | None:
        stamps = by_type.get(kind)
        return min(stamps) - t0 if stamps else None

    return RunResult(
        leg=leg,
        dagster_run_id=dagster_run_id,
        status=status,
        launch_returned=returned - t0,
        first_step=since_t0("STEP_START"),
        run_start=since_t0("PIPELINE_START"),
        done=since_t0("PIPELINE_SUCCESS"),
        error=None if status == "SUCCESS" else "; ".join(errors) or f"run ended {status}",
    )


@dataclass
class Target:
    """What a run is launched against."""

    project_id: str
    pipeline_id: str
    job: str  # `<project namespace>__<pipeline slug>`

    @property
    def tags(self) -> dict[str, str]:
        """The tags `POST .../run` sets (services: pipeline_tags + full_refresh + triggered_by)."""
        from rime_dagster.pipelines.jobs import pipeline_tags

        return {
            **pipeline_tags(self.project_id, self.pipeline_id),
            "rime/full_refresh": "false",
            "rime/triggered_by": ADMIN_EMAIL,
        }


def launch_graphql(client, instance, target: Target, run_config: dict, leg: str = "raw") -> RunResult:
    t0 = time.time()
    dagster_run_id = client.submit_job_execution(
        target.job,
        repository_location_name=LOCATION,
        repository_name=REPOSITORY,
        run_config=run_config,
        tags=target.tags,
    )
    returned = time.time()
    return run_result(instance, leg, dagster_run_id, t0, returned)


def launch_api(api: httpx.Client, api_port: int, instance, target: Target, *, websocket: bool = True) -> RunResult:
    t0 = time.time()
    response = api.post(f"/api/v1/projects/{target.project_id}/pipelines/{target.pipeline_id}/run", json={})
    returned = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"POST .../run answered {response.status_code}: {response.text[:500]}")
    body = response.json()
    ws = WsWatch(
        f"ws://127.0.0.1:{api_port}/api/v1/ws/pipelines/{target.pipeline_id}/runs/{body['run_id']}?token={ADMIN_TOKEN}"
    )
    if websocket:
        ws.start()
    result = run_result(instance, "ours", body["dagster_run_id"], t0, returned)
    if websocket:
        ws.join(WS_CLOSE_TIMEOUT)
        result.ws = ws
    detail = api.get(f"/api/v1/projects/{target.project_id}/pipelines/{target.pipeline_id}/runs/{body['run_id']}")
    api_status = detail.json().get("status") if detail.status_code == 200 else f"HTTP {detail.status_code}"
    problems = []
    if result.error:
        problems.append(result.error)
    if result.status == "SUCCESS" and api_status != "succeeded":
        problems.append(f"the run detail says {api_status!r} for a run Dagster says succeeded")
    final = ws.messages[-1][1] if ws.messages else {}
    if not websocket:
        pass
    elif ws.error:
        problems.append(f"WebSocket: {ws.error}")
    elif ws.close_code != 1000:
        problems.append(f"WebSocket closed with code {ws.close_code}, expected 1000")
    elif final.get("type") != "run_update" or final.get("status") != "succeeded":
        problems.append(f"the WebSocket's last message was {final}, expected the final run_update 'succeeded'")
    result.error = "; ".join(problems) or None
    return result


def describe(result: RunResult) -> str:
    def s(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}s"

    text = (
        f"launch returned {s(result.launch_returned)}, run start {s(result.run_start)}, "
        f"first step {s(result.first_step)}, done {s(result.done)}"
    )
    if result.ws is not None:
        live = result.ws.live_delays()
        worst = max((d for d, _ in live), default=None)
        text += f"; WebSocket {len(result.ws.messages)} messages, {len(live)} live"
        if worst is not None:
            text += f", worst delay {worst * 1000:.0f} ms"
    if result.error:
        text += f"; FAILED: {result.error}"
    return text


# Phases ---------------------------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[str, list[RunResult]] = field(default_factory=lambda: {"raw": [], "ours": [], "reference": []})
    failures: list[str] = field(default_factory=list)

    def measure(self, label: str, launch: Callable[[], RunResult], api_pid: int | None = None) -> None:
        """One run; kept for the tables unless it is a warm-up; a failed one is a failure either way."""
        try:
            cpu_before = cpu_seconds(api_pid) if api_pid else None
            result = launch()
            if cpu_before is not None:
                result.api_cpu = cpu_seconds(api_pid) - cpu_before
        except Exception as exc:
            log(f"  {label}: FAILED: {type(exc).__name__}: {exc}")
            self.failures.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        log(f"  {label}: {describe(result)}")
        if result.error:
            self.failures.append(f"{label} (Dagster run {result.dagster_run_id}): {result.error}")
        elif not label.startswith("warm-up"):
            self.runs[result.leg].append(result)


def create_pipeline(api: httpx.Client, dagster_port: int) -> Target:
    def ok(response: httpx.Response, expected: int) -> dict:
        if response.status_code != expected:
            raise RuntimeError(
                f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:500]}"
            )
        return response.json()

    project = ok(api.post("/api/v1/projects", json={"name": "bench run latency"}), 201)
    pid = project["id"]
    connector = ok(
        api.post(
            f"/api/v1/projects/{pid}/connectors",
            json={"name": "Inbox", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
        ),
        201,
    )
    upload = api.post(
        f"/api/v1/projects/{pid}/connectors/{connector['id']}/files",
        files={"files": ("orders.csv", b"id,amount\n1,2.5\n", "text/csv")},
    )
    if upload.status_code >= 300:
        raise RuntimeError(f"file upload: {upload.status_code} {upload.text[:500]}")
    pipeline = ok(
        api.post(
            f"/api/v1/projects/{pid}/pipelines",
            json={
                "name": "bench two steps",
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
        ),
        201,
    )
    # The pipeline's slug is its name made an identifier: nothing else in this fresh project takes it.
    job = pipeline_job_name(project["namespace"], identifier(pipeline["name"]))
    target = Target(project_id=pid, pipeline_id=pipeline["id"], job=job)
    # The API's definitions sync reloads the code location after the changes above: wait until the job
    # is there and the API sees Dagster caught up, so that no reload overlaps the timed runs.
    wait_job(dagster_port, target.job)
    deadline = time.monotonic() + START_TIMEOUT
    while not api.get("/health/ready").json()["dependencies"]["dagster_definitions"]["detail"].startswith("generation"):
        if time.monotonic() > deadline:
            raise RuntimeError("Dagster did not catch up with the definitions")
        time.sleep(0.5)
    return target


def prepare_deployment(scratch: Path):
    """What `rime up --no-demo` does before it starts anything, under `scratch`: settings on free loopback
    ports (nothing of the caller's RIME_* shell), dagster.yaml, Dagster storage, the migrated metadata store and
    the admin of ADMIN_TOKEN. Returns (settings, DAGSTER_HOME)."""
    from api_shim.cli import bootstrap, ensure_dagster_home, initialize_dagster_storage, migrate
    from rime_dagster.settings import Settings

    for key in [k for k in os.environ if k.startswith("RIME_")]:
        del os.environ[key]  # nothing of the caller's shell leaks into the settings below
    settings = Settings(
        home=scratch / "home",
        admin_token=ADMIN_TOKEN,
        admin_email=ADMIN_EMAIL,
        secret_key=SECRET_KEY,
        api_port=free_port(),
        dagster_port=free_port(),
        code_server_port=free_port(),
    )
    log(f"preparing the deployment under {scratch} (what `rime up --no-demo` does before it starts anything)")
    dagster_home = ensure_dagster_home(settings)
    initialize_dagster_storage(dagster_home)
    migrate(settings)
    bootstrap(settings, demo=False)
    return settings, dagster_home


def main_phase(args: argparse.Namespace, scratch: Path, results: Results) -> Target:
    """Rime's deployment: (a) and (b) alternating, the WebSocket on every (b)."""
    from dagster import DagsterInstance

    settings, dagster_home = prepare_deployment(scratch)
    home, api_port, dagster_port = settings.home, settings.api_port, settings.dagster_port
    env = child_env(home, dagster_home, RIME_API_PORT=str(api_port), RIME_DAGSTER_PORT=str(dagster_port))
    procs = Processes()
    instance = None
    try:
        start_dagster(procs, env, dagster_port, scratch, "", settings=settings)
        api_proc = procs.start(
            "api",
            [
                str(BIN / "uvicorn"),
                *("--factory", "api_shim.main:app_from_env", "--host", "127.0.0.1", "--port", str(api_port)),
                *("--no-access-log", "--log-level", "warning"),
            ],
            env,
            scratch / "api.log",
        )
        started = time.monotonic()
        wait_location(procs, dagster_port)
        wait_http(f"http://127.0.0.1:{api_port}/health/ready", procs, START_TIMEOUT)
        log(f"  up in {time.monotonic() - started:.1f}s (webserver :{dagster_port}, API :{api_port})")
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=60) as api:
            target = create_pipeline(api, dagster_port)
            log(f"  pipeline {target.pipeline_id}: job {target.job} is in the code location")
            client = graphql_client(dagster_port)
            instance = DagsterInstance.from_config(str(dagster_home))
            for round_ in range(args.runs + 1):
                label = "warm-up" if round_ == 0 else f"round {round_}/{args.runs}"
                for leg in ("raw", "ours"):
                    procs.check_alive()
                    if leg == "raw":
                        launch = partial(launch_graphql, client, instance, target, {})
                    else:
                        launch = partial(launch_api, api, api_port, instance, target, websocket=args.websocket)
                    results.measure(f"{label} {LABELS[leg]}", launch, api_pid=api_proc.pid)
                    time.sleep(args.pause)
        return target
    finally:
        if instance is not None:
            instance.dispose()
        log("stopping the deployment")
        procs.stop()


def reference_phase(args: argparse.Namespace, scratch: Path, target: Target, results: Results) -> None:
    """(d): a `dagster dev`-style instance (empty dagster.yaml) on the same workspace and RIME_HOME."""
    from dagster import DagsterInstance

    from api_shim.cli import initialize_dagster_storage

    home = scratch / "home"
    dagster_home = scratch / "dagster-reference"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("")  # Dagster's defaults, as `dagster dev` gets them
    initialize_dagster_storage(dagster_home)
    port = free_port()
    env = child_env(home, dagster_home, RIME_DAGSTER_PORT=str(port))
    procs = Processes()
    instance = None
    log("starting the reference deployment (empty dagster.yaml: QueuedRunCoordinator)")
    try:
        start_dagster(procs, env, port, scratch, "reference-")
        started = time.monotonic()
        wait_location(procs, port)
        wait_job(port, target.job)
        log(f"  up in {time.monotonic() - started:.1f}s (webserver :{port})")
        client = graphql_client(port)
        instance = DagsterInstance.from_config(str(dagster_home))
        for round_ in range(args.reference_runs + 1):
            procs.check_alive()
            label = "warm-up" if round_ == 0 else f"round {round_}/{args.reference_runs}"
            results.measure(
                f"{label} {LABELS['reference']}",
                partial(launch_graphql, client, instance, target, MULTIPROCESS, leg="reference"),
            )
            time.sleep(args.pause)
    finally:
        if instance is not None:
            instance.dispose()
        log("stopping the reference deployment")
        procs.stop()


# Report ---------------------------------------------------------------------------------------


def median_of(runs: list[RunResult], attr: str) -> float | None:
    values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
    return statistics.median(values) if values else None


def p90_of(runs: list[RunResult], attr: str) -> float | None:
    values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
    return percentile(values, 90) if values else None


def latency_table(results: Results, websocket: bool) -> list[str]:
    lines = [
        "| launch | runs | launch call returned s | trigger -> run start s | trigger -> first step s (p50 / p90) "
        "| trigger -> done s (p50 / p90) | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]

    def cell(runs: list[RunResult], attr: str, p90: bool = True) -> str:
        median = median_of(runs, attr)
        if median is None:
            return "n/a"
        return f"{median:.3f} / {p90_of(runs, attr):.3f}" if p90 else f"{median:.3f}"

    for leg in ("raw", "ours"):
        runs = results.runs[leg]
        lines.append(
            f"| {LABELS[leg]} | {len(runs)} | {cell(runs, 'launch_returned', False)} "
            f"| {cell(runs, 'run_start', False)} | {cell(runs, 'first_step')} | {cell(runs, 'done')} "
            f"| {NOTES[leg] if websocket or leg == 'raw' else NOTES['ours-no-ws']} |"
        )
    raw, ours = results.runs["raw"], results.runs["ours"]

    def ratio(attr: str) -> str:
        a, b = median_of(raw, attr), median_of(ours, attr)
        return f"{b / a:.2f}x" if a and b else "n/a"

    lines.append(
        f"| ratio (b) / (a), medians | | {ratio('launch_returned')} | {ratio('run_start')} | {ratio('first_step')} "
        f"| {ratio('done')} "
        f"| target <= {TARGET_RATIO}x on trigger -> done |"
    )
    ref = results.runs["reference"]
    if ref:
        lines.append(
            f"| {LABELS['reference']} | {len(ref)} | {cell(ref, 'launch_returned', False)} "
            f"| {cell(ref, 'run_start', False)} | {cell(ref, 'first_step')} | {cell(ref, 'done')} "
            f"| {NOTES['reference']} |"
        )
    cpu = {leg: median_of(results.runs[leg], "api_cpu") for leg in ("raw", "ours")}
    if cpu["raw"] is not None and cpu["ours"] is not None:
        lines += [
            "",
            f"CPU seconds the API process used per run, trigger to run end (median): (a) {cpu['raw']:.2f}, "
            f"(b) {cpu['ours']:.2f} (the request, and the run's WebSocket reader when one watches)",
        ]
    return lines


def ws_table(results: Results) -> list[str]:
    live = [(d, m) for r in results.runs["ours"] if r.ws for d, m in r.ws.live_delays()]
    lines = ["| WebSocket live messages | count | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|"]
    if not live:
        lines.append("| all (b) runs | 0 | n/a | n/a | n/a |")
        return lines
    delays = [d * 1000 for d, _ in live]
    lines.append(
        f"| all (b) runs | {len(delays)} | {percentile(delays, 50):.0f} | {percentile(delays, 99):.0f} "
        f"| {max(delays):.0f} |"
    )
    kinds: dict[str, list[float]] = {}
    for delay, message in live:
        kinds.setdefault(f"{message.get('type')} {message.get('status')}", []).append(delay * 1000)
    for kind, values in sorted(kinds.items()):
        lines.append(
            f"| &nbsp;&nbsp;{kind} | {len(values)} | {percentile(values, 50):.0f} | {percentile(values, 99):.0f} "
            f"| {max(values):.0f} |"
        )
    return lines


def verdicts(results: Results) -> list[str]:
    raw, ours = median_of(results.runs["raw"], "done"), median_of(results.runs["ours"], "done")
    lines = []
    if raw and ours:
        ratio = ours / raw
        verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
        lines.append(
            f"ours / raw, trigger -> done p50 = {ratio:.2f}x ({ours:.3f}s / {raw:.3f}s; "
            f"target <= {TARGET_RATIO}x): {verdict}"
        )
    else:
        lines.append(f"ours / raw, trigger -> done p50 = n/a (target <= {TARGET_RATIO}x): n/a")
    delays = [d * 1000 for r in results.runs["ours"] if r.ws for d, _ in r.ws.live_delays()]
    if delays:
        p99 = percentile(delays, 99)
        verdict = "PASS" if p99 < TARGET_WS_P99_MS else "FAIL"
        lines.append(
            f"WebSocket delay p99 = {p99:.0f} ms over {len(delays)} live messages "
            f"(target < {TARGET_WS_P99_MS:.0f} ms): {verdict}"
        )
    else:
        lines.append(f"WebSocket delay p99 = n/a (target < {TARGET_WS_P99_MS:.0f} ms): n/a")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=(
            f"Targets: POST .../run trigger -> run success p50 <= {TARGET_RATIO}x the raw GraphQL launch; "
            f"WebSocket delay p99 < {TARGET_WS_P99_MS:.0f} ms. Exits 1 if a run fails, else 0."
        ),
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs of (a) and of (b), alternating (default 10)")
    parser.add_argument(
        "--reference-runs", type=int, default=5, help="timed runs of the `dagster dev` reference (d) (default 5)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the `dagster dev` reference (d)")
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds between runs, for the last run worker to exit (default 1)"
    )
    parser.add_argument(
        "--no-websocket",
        dest="websocket",
        action="store_false",
        help="(b) without its WebSocket (no (c)): to see what watching a run costs the run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the servers' logs")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.reference_runs < 1 or args.pause < 0:
        parser.error("--runs and --reference-runs must be >= 1, --pause >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)  # the `finally`s stop every process group
    scratch = Path(tempfile.mkdtemp(prefix="rime-bench-runs-"))
    results = Results()
    aborted = None
    try:
        target = main_phase(args, scratch, results)
        if not args.no_reference:
            reference_phase(args, scratch, target, results)
    except KeyboardInterrupt:
        aborted = "interrupted"
    except Exception as exc:
        aborted = f"{type(exc).__name__}: {exc}"
    finally:
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if aborted:
        log(f"benchmark aborted: {aborted}")
        results.failures.append(f"aborted: {aborted}")

    from bench._common import installed_versions

    versions = installed_versions("dagster", "dagster-webserver", "fastapi", "uvicorn")
    today = datetime.now(UTC).date().isoformat()
    reference = "no reference" if args.no_reference else f"{args.reference_runs} reference run(s)"
    print(
        f"\n{versions}\n{today}; N = {args.runs} timed run(s) of (a) and of (b), alternating after 1 warm-up "
        f"each; {reference}; pipeline: connector_sync (files, 1 row) -> table_maintenance expire_snapshots\n"
    )
    print("\n".join(latency_table(results, args.websocket)))
    if args.websocket:
        print()
        print("\n".join(ws_table(results)))
    print()
    print("\n".join(verdicts(results)))
    if results.failures:
        print("\nFailures:")
        for failure in results.failures:
            print(f"- {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
