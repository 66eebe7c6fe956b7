"""Benchmark the definitions sync under churn, and a trivial pipeline's start-up against Dagster's floor.

Targets (issue 10): 0 responses 5xx and every launched run succeeded; readiness OK in every sample
after the burst ends; code server processes <= 3 in every sample; write p99 <= 200 ms; reloads <=
burst seconds / reload time + 2; a trivial pipeline's trigger -> done <= 1.5x a trivial Dagster job
in a location that imports only dagster (both in-process executor).

What it does, everything under a temporary directory:

1. starts the platform with `rime up --no-demo` (the `rime` code server, webserver, daemon, API),
   on free loopback ports, as a newcomer would;
2. after an untimed warm-up (each kind of write three times, then until Dagster serves them), the
   burst: 8 concurrent clients (processes of their own) make 300 mutating calls between them
   (create, patch and delete of projects, `files` connectors over a one-row CSV, and pipelines
   that sync them), timing each;
3. right after the burst, triggers 20 runs of connectors and pipelines created during it, 8 at a
   time, and waits for every run to end;
4. every second from the start of the burst to 30 s after its end, samples `/health/ready` and
   counts the code server processes carrying the platform's DAGSTER_HOME (`dagster code-server`
   and `dagster api grpc` processes); the API's `/metrics` gives the number of reloads and their
   mean duration;
5. start-up latency: starts a second Dagster (the same dagster.yaml, its own DAGSTER_HOME) serving
   `bench/floor_location.py` through its own code server, and alternates, after one warm-up each,
   (a) a GraphQL launch of its one-op `trivial_job` and (b) `POST .../run` of a one-step pipeline
   (`connector_sync` of a one-row CSV) on the platform; trigger -> done runs from the wall clock
   before the request to the RUN_SUCCESS event's timestamp in the instance's event log;
6. prints the tables and verdicts; exits 1 when a run failed or a call answered 5xx.

Run with `python bench/definitions_churn.py [--writes 300] [--clients 8] [--launches 20] [--runs 5] [--keep]`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import Processes, free_port, installed_versions, log, pids_with_env, wait_http  # noqa: E402

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "rime_bench_admin_token_0123456789abcdef"
SECRET_KEY = "rime-bench-secret-key-0123456789abcdef0123456789"
START_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0
AFTER_BURST_SECONDS = 30.0
TARGET_WRITE_P99_MS = 200.0
TARGET_MAX_CODE_SERVERS = 3
TARGET_START_RATIO = 1.5
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# Processes -----------------------------------------------------------------------------------


def code_servers(dagster_home: Path) -> int:
    count = 0
    for pid in pids_with_env(f"DAGSTER_HOME={dagster_home}"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"code-server" in argv or (b"api" in argv and b"grpc" in argv):
            count += 1
    return count


# The platform --------------------------------------------------------------------------------


@dataclass
class Platform:
    api: str
    dagster_home: Path
    headers: dict[str, str]
    data_dir: Path


def start_platform(procs: Processes, work: Path) -> Platform:
    home = work / "rime"
    api_port, dagster_port, code_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "DAGSTER_"))}
    env.update(
        RIME_HOME=str(home),
        RIME_API_PORT=str(api_port),
        RIME_DAGSTER_PORT=str(dagster_port),
        RIME_CODE_SERVER_PORT=str(code_port),
        RIME_ADMIN_TOKEN=ADMIN_TOKEN,
        RIME_SECRET_KEY=SECRET_KEY,
        RIME_LOG_LEVEL="WARNING",
        RIME_RATE_LIMIT_DEFAULT="1000000/minute",
        # The `files` connectors read the CSVs this script writes under `work` (data/, latency/).
        RIME_CONNECTOR_PATH_ROOTS=str(work),
        DAGSTER_HOME=str(home / "dagster"),  # what `rime up` sets for its children; marks our processes
    )
    procs.start("rime up", [str(BIN / "rime"), "up", "--no-demo"], env, work / "rime-up.log")
    api = f"http://127.0.0.1:{api_port}"
    wait_http(f"{api}/health/ready", procs)
    data = work / "data"
    data.mkdir()
    (data / "orders.csv").write_text("id,total\n1,9.99\n")
    return Platform(api, home / "dagster", {"Authorization": f"Bearer {ADMIN_TOKEN}"}, data)


# The burst ----------------------------------------------------------------------------------


@dataclass
class Burst:
    latencies: list[float] = field(default_factory=list)
    by_kind_latency: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    # (kind, project id, resource id) of what exists at the end and can be launched
    launchable: list[tuple[str, str, str]] = field(default_factory=list)
    slowest: list[tuple[float, float, str]] = field(default_factory=list)  # (seconds, started after burst s, kind)


def churn_client(n: int, api: str, headers: dict, data_dir: str, writes: int, budget, barrier, results) -> None:
    """One client of the burst, in a process of its own (so that clients never wait on each other's GIL):
    random creates, patches and deletes until the shared budget of `writes` calls is spent."""
    rnd = random.Random(n)
    calls: list[tuple[str, float, int, str, float]] = []  # (kind, seconds, status, body when refused, start)
    # project id -> {"connectors": [connector id], "pipelines": {pipeline id: the connector it syncs}}
    projects: dict[str, dict] = {}

    def call(client: httpx.Client, kind: str, method: str, url: str, **kwargs) -> httpx.Response | None:
        with budget.get_lock():
            if budget.value >= writes:
                return None
            budget.value += 1
        at, started = time.time(), time.perf_counter()
        response = client.request(method, url, **kwargs)
        refused = response.text[:200] if response.status_code >= 500 or response.status_code in (400, 422) else ""
        calls.append((kind, time.perf_counter() - started, response.status_code, refused, at))
        return response

    with httpx.Client(base_url=f"{api}/api/v1", headers=headers, timeout=120) as client:
        client.get("/projects")  # connection made before the burst starts
        barrier.wait()
        while True:
            if not projects or rnd.random() < 0.08:
                r = call(client, "project.create", "POST", "/projects", json={"name": f"churn {n} {rnd.random()}"})
                if r is None:
                    break
                if r.status_code == 201:
                    projects[r.json()["id"]] = {"connectors": [], "pipelines": {}}
                continue
            pid = rnd.choice(list(projects))
            owned = projects[pid]
            roll = rnd.random()
            if roll < 0.35 or not owned["connectors"]:
                body = {
                    "name": f"src {rnd.random()}",
                    "connector_type": "files",
                    "config": {"path": data_dir},
                    "selected_tables": ["orders"],
                }
                r = call(client, "connector.create", "POST", f"/projects/{pid}/connectors", json=body)
                if r is not None and r.status_code == 201:
                    owned["connectors"].append(r.json()["id"])
            elif roll < 0.55:
                cid = rnd.choice(owned["connectors"])
                body = {
                    "name": f"flow {rnd.random()}",
                    "steps": [{"id": "sync", "type": "connector_sync", "config": {"connector_id": cid}}],
                }
                r = call(client, "pipeline.create", "POST", f"/projects/{pid}/pipelines", json=body)
                if r is not None and r.status_code == 201:
                    owned["pipelines"][r.json()["id"]] = cid
            elif roll < 0.72:
                cid = rnd.choice(owned["connectors"])
                cron = f"{rnd.randrange(60)} {rnd.randrange(24)} * * *"
                r = call(
                    client, "connector.patch", "PATCH", f"/projects/{pid}/connectors/{cid}", json={"schedule": cron}
                )
            elif roll < 0.82 and owned["pipelines"]:
                plid = rnd.choice(list(owned["pipelines"]))
                body = {"description": f"v{rnd.random()}", "retries": rnd.randrange(3)}
                r = call(client, "pipeline.patch", "PATCH", f"/projects/{pid}/pipelines/{plid}", json=body)
            elif roll < 0.88:
                r = call(client, "project.patch", "PATCH", f"/projects/{pid}", json={"description": f"d{rnd.random()}"})
            elif roll < 0.94 and owned["pipelines"]:
                plid = rnd.choice(list(owned["pipelines"]))
                owned["pipelines"].pop(plid)
                r = call(client, "pipeline.delete", "DELETE", f"/projects/{pid}/pipelines/{plid}")
            elif len(projects) > 1 and roll < 0.97:
                projects.pop(pid)
                r = call(client, "project.delete", "DELETE", f"/projects/{pid}")
            else:
                # A connector that none of the project's pipelines syncs, keeping one at least.
                spare = [c for c in owned["connectors"] if c not in owned["pipelines"].values()]
                if len(spare) < 2:
                    continue
                owned["connectors"].remove(spare[-1])
                r = call(client, "connector.delete", "DELETE", f"/projects/{pid}/connectors/{spare[-1]}")
            if r is None:
                break
    launchable = [("connector", pid, c) for pid, owned in projects.items() for c in owned["connectors"]]
    launchable += [("pipeline", pid, p) for pid, owned in projects.items() for p in owned["pipelines"]]
    results.put((calls, launchable))


def warm_up(platform: Platform) -> None:
    """A few untimed writes of every kind, as any server has served before a burst (statement caches, first
    imports), then until Dagster serves them: the timed burst starts from a caught-up platform."""
    with httpx.Client(base_url=f"{platform.api}/api/v1", headers=platform.headers, timeout=120) as api:
        for n in range(3):
            pid = api.post("/projects", json={"name": f"warm-up {n}"}).json()["id"]
            body = {"name": "src", "connector_type": "files", "config": {"path": str(platform.data_dir)}}
            cid = api.post(f"/projects/{pid}/connectors", json={**body, "selected_tables": ["orders"]}).json()["id"]
            step = {"id": "sync", "type": "connector_sync", "config": {"connector_id": cid}}
            plid = api.post(f"/projects/{pid}/pipelines", json={"name": "p", "steps": [step]}).json()["id"]
            api.patch(f"/projects/{pid}/connectors/{cid}", json={"schedule": "0 1 * * *"})
            api.patch(f"/projects/{pid}/pipelines/{plid}", json={"retries": 1})
            api.patch(f"/projects/{pid}", json={"description": "warm"})
            api.delete(f"/projects/{pid}/pipelines/{plid}")
            api.delete(f"/projects/{pid}/connectors/{cid}")
            api.delete(f"/projects/{pid}")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready = httpx.get(f"{platform.api}/health/ready", timeout=10).json()
        if ready["dependencies"]["dagster_definitions"]["detail"].startswith("generation"):
            return
        time.sleep(0.5)
    raise RuntimeError("Dagster did not catch up with the warm-up writes")


def burst(platform: Platform, writes: int, clients: int) -> tuple[Burst, float, float]:
    ctx = multiprocessing.get_context("spawn")
    budget = ctx.Value("i", 0)
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=churn_client,
            args=(n, platform.api, platform.headers, str(platform.data_dir), writes, budget, barrier, results),
        )
        for n in range(clients)
    ]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=120)  # every client is up and connected
    started, wall = time.monotonic(), time.time()
    outcome = Burst()
    for _ in workers:
        calls, launchable = results.get(timeout=600)
        for kind, seconds, status, refused, at in calls:
            outcome.slowest.append((seconds, at - wall, kind))
            outcome.latencies.append(seconds)
            outcome.by_kind_latency.setdefault(kind, []).append(seconds)
            outcome.statuses[status] += 1
            outcome.by_kind[kind] += 1
            if refused:
                outcome.errors.append(f"{kind}: {status} {refused}")
        outcome.launchable += launchable
    ended = time.monotonic()
    for worker in workers:
        worker.join(timeout=30)
    return outcome, started, ended


# Launches -------------------------------------------------------------------------------------


def launch_and_wait(platform: Platform, chosen: list[tuple[str, str, str]], clients: int, instance):
    def launch(item):
        kind, pid, rid = item
        url = f"{platform.api}/api/v1/projects/{pid}/" + (
            f"connectors/{rid}/sync" if kind == "connector" else f"pipelines/{rid}/run"
        )
        started = time.perf_counter()
        response = httpx.post(url, headers=platform.headers, timeout=180)
        return response, time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        launched = list(pool.map(launch, chosen))
    outcomes = []
    for (kind, _, rid), (response, seconds) in zip(chosen, launched, strict=True):
        if response.status_code == 202:
            run = response.json()["dagster_run_id"]
            status = wait_terminal(instance, run)
            if status != "SUCCESS":
                log(f"  {kind} {rid}: run {run} ended {status}: {run_errors(instance, run)}")
            outcomes.append((response.status_code, seconds, status))
        else:
            outcomes.append((response.status_code, seconds, response.text[:200]))
    return outcomes


def run_errors(instance, dagster_run_id: str) -> str:
    messages = []
    for record in instance.get_records_for_run(dagster_run_id).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.event_type_value in ("STEP_FAILURE", "PIPELINE_FAILURE", "ENGINE_EVENT"):
            error = getattr(event.event_specific_data, "error", None)
            messages.append((error.message if error else event.message or "").strip()[:300])
    return " | ".join(m for m in messages if m)[:1500]


def wait_terminal(instance, dagster_run_id: str, timeout: float = RUN_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = instance.get_run_record_by_id(dagster_run_id)
        if record is not None and record.dagster_run.status.value in TERMINAL:
            return record.dagster_run.status.value
        time.sleep(0.2)
    return "TIMEOUT"


MILESTONES = {
    "PIPELINE_START": "run start",
    "STEP_START": "step start",
    "STEP_SUCCESS": "step end",
    "PIPELINE_SUCCESS": "done",
}


def milestones(instance, dagster_run_id: str, t0: float, returned: float) -> dict[str, float]:
    """Seconds from the trigger to: the launch call's return, and the first event of each kind in MILESTONES."""
    status = wait_terminal(instance, dagster_run_id)
    if status != "SUCCESS":
        raise RuntimeError(f"run {dagster_run_id} ended {status}: {run_errors(instance, dagster_run_id)}")
    seen = {"launch returned": returned - t0}
    for record in instance.get_records_for_run(dagster_run_id).records:
        event = record.event_log_entry.dagster_event
        name = MILESTONES.get(event.event_type_value) if event is not None else None
        if name and name not in seen:
            seen[name] = record.event_log_entry.timestamp - t0
    return seen


# Sampling ----------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    ready: int
    definitions: str
    code_servers: int


def sampler(platform: Platform, samples: list[Sample], stop: threading.Event) -> None:
    while not stop.is_set():
        at = time.monotonic()
        try:
            response = httpx.get(f"{platform.api}/health/ready", timeout=10)
            ready = response.status_code
            definitions = response.json()["dependencies"]["dagster_definitions"]["detail"] or ""
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            ready, definitions = 0, type(exc).__name__
        samples.append(Sample(at, ready, definitions, code_servers(platform.dagster_home)))
        stop.wait(max(0.0, 1.0 - (time.monotonic() - at)))


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# Start-up latency ------------------------------------------------------------------------------


def start_floor(procs: Processes, work: Path):
    """A second Dagster serving bench/floor_location.py through its own code server."""
    from api_shim.dagster_client import ensure_dagster_home
    from rime_dagster.settings import Settings

    settings = Settings(home=work / "floor", code_server_port=free_port(), dagster_port=free_port())
    dagster_home = ensure_dagster_home(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(dagster_home), DAGSTER_DISABLE_TELEMETRY="1")
    procs.start(
        "floor code server",
        [
            str(BIN / "dagster"),
            "code-server",
            "start",
            "-f",
            str(REPO_ROOT / "bench" / "floor_location.py"),
            "-h",
            "127.0.0.1",
            "-p",
            str(settings.code_server_port),
            "--location-name",
            "floor",
        ],
        env,
        work / "floor-code-server.log",
    )
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {settings.code_server_port}\n      location_name: floor\n"
    )
    from api_shim.cli import wait_for_code_server

    if not wait_for_code_server(settings, START_TIMEOUT):
        raise RuntimeError("the floor code server did not start")
    procs.start(
        "floor webserver",
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(settings.dagster_port), "-w", str(workspace)],
        env,
        work / "floor-webserver.log",
    )
    wait_http(f"http://127.0.0.1:{settings.dagster_port}/server_info", procs)
    return settings.dagster_port, dagster_home


def start_up_latency(
    platform: Platform, procs: Processes, work: Path, runs: int, instance
) -> dict[str, list[dict[str, float]]]:
    from dagster import DagsterInstance
    from dagster_graphql import DagsterGraphQLClient

    floor_port, floor_home = start_floor(procs, work)
    floor_instance = DagsterInstance.from_config(str(floor_home))
    floor = DagsterGraphQLClient("127.0.0.1", port_number=floor_port, timeout=120)
    data = work / "latency"
    data.mkdir()
    (data / "orders.csv").write_text("id,total\n1,9.99\n")
    with httpx.Client(base_url=f"{platform.api}/api/v1", headers=platform.headers, timeout=180) as api:
        pid = api.post("/projects", json={"name": "latency"}).json()["id"]
        cid = api.post(
            f"/projects/{pid}/connectors",
            json={
                "name": "Inbox",
                "connector_type": "files",
                "config": {"path": str(data)},
                "selected_tables": ["orders"],
            },
        ).json()["id"]
        plid = api.post(
            f"/projects/{pid}/pipelines",
            json={
                "name": "trivial",
                "steps": [{"id": "sync", "type": "connector_sync", "config": {"connector_id": cid}}],
            },
        ).json()["id"]

        def ours() -> dict[str, float]:
            t0 = time.time()
            response = api.post(f"/projects/{pid}/pipelines/{plid}/run")
            response.raise_for_status()
            return milestones(instance, response.json()["dagster_run_id"], t0, time.time())

        def raw() -> dict[str, float]:
            t0 = time.time()
            run_id = floor.submit_job_execution(
                "trivial_job", repository_location_name="floor", repository_name="__repository__"
            )
            return milestones(floor_instance, run_id, t0, time.time())

        ours(), raw()  # warm-up
        times: dict[str, list[dict[str, float]]] = {"floor": [], "ours": []}
        for _ in range(runs):
            times["floor"].append(raw())
            times["ours"].append(ours())
    floor_instance.dispose()
    return times


# Report ------------------------------------------------------------------------------------------


def verdict(ok: bool | str) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5, help="timed start-up runs of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rime-churn-"))
    procs = Processes()
    samples: list[Sample] = []
    stop_sampling = threading.Event()
    failed = False

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        log("starting the platform (rime up --no-demo)")
        platform = start_platform(procs, work)
        from dagster import DagsterInstance

        instance = DagsterInstance.from_config(str(platform.dagster_home))
        log("warm-up: a few writes of every kind, untimed")
        warm_up(platform)
        sampling = threading.Thread(target=sampler, args=(platform, samples, stop_sampling), daemon=True)
        sampling.start()
        time.sleep(2)
        log(f"burst: {args.writes} writes from {args.clients} clients")
        result, burst_start, burst_end = burst(platform, args.writes, args.clients)
        log(f"  {sum(result.statuses.values())} writes in {burst_end - burst_start:.1f} s: {dict(result.statuses)}")
        rnd = random.Random(7)
        connectors = [x for x in result.launchable if x[0] == "connector"]
        pipelines = [x for x in result.launchable if x[0] == "pipeline"]
        chosen = rnd.sample(pipelines, min(len(pipelines), args.launches // 2))
        chosen += rnd.sample(connectors, min(len(connectors), args.launches - len(chosen)))
        log(f"launching {len(chosen)} runs of jobs made during the burst")
        launches = launch_and_wait(platform, chosen, args.clients, instance)
        while time.monotonic() < burst_end + AFTER_BURST_SECONDS:
            time.sleep(0.5)
        stop_sampling.set()
        sampling.join()
        metrics_text = httpx.get(f"{platform.api}/metrics", timeout=10).text
        times = {}
        if args.runs:
            log(f"start-up latency: {args.runs} timed runs of each, alternating")
            times = start_up_latency(platform, procs, work, args.runs, instance)
        instance.dispose()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_sampling.set()
        procs.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    burst_seconds = burst_end - burst_start
    reloads = metric(metrics_text, "rime_definitions_reloads_total")
    reload_count = metric(metrics_text, "rime_definitions_reload_seconds_count")
    reload_mean = metric(metrics_text, "rime_definitions_reload_seconds_sum") / reload_count if reload_count else 0.0
    five_xx = sum(n for code, n in result.statuses.items() if code >= 500) + sum(
        1 for code, _, _ in launches if code >= 500
    )
    launched_ok = sum(1 for code, _, status in launches if code == 202 and status == "SUCCESS")
    after = [s for s in samples if s.at >= burst_end]
    during = [s for s in samples if burst_start <= s.at < burst_end]
    max_servers = max(s.code_servers for s in samples)
    p50, p99 = percentile(result.latencies, 50) * 1000, percentile(result.latencies, 99) * 1000
    reload_budget = burst_seconds / reload_mean + 2 if reload_mean else float("inf")
    caught_up = next((s.at - burst_end for s in after if s.definitions.startswith("generation")), None)
    launch_p50 = statistics.median(seconds for _, seconds, _ in launches) if launches else 0.0
    failed = five_xx > 0 or launched_ok != len(launches)

    print(installed_versions("dagster", "dagster-webserver", "fastapi", "uvicorn"))
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result.by_kind.items()))
    print(f"{datetime.now(UTC):%Y-%m-%d}; {sum(result.statuses.values())} writes from {args.clients} clients ({kinds})")
    answered = sum(1 for code, _, _ in launches if code == 202)
    ready_after = sum(1 for s in after if s.ready == 200)
    during_max = max((s.code_servers for s in during), default=0)
    rows = [
        ("burst duration", f"{burst_seconds:.1f} s", "", ""),
        (
            "write latency p50 / p99",
            f"{p50:.0f} / {p99:.0f} ms",
            f"p99 <= {TARGET_WRITE_P99_MS:.0f} ms",
            p99 <= TARGET_WRITE_P99_MS,
        ),
        ("responses 5xx (writes + launches)", str(five_xx), "0", five_xx == 0),
        (
            "launches answered 202",
            f"{answered} of {len(launches)} (p50 {launch_p50:.1f} s)",
            "all",
            answered == len(launches),
        ),
        ("launched runs succeeded", f"{launched_ok} of {len(launches)}", "all", launched_ok == len(launches)),
        (
            "reloads (mean duration)",
            f"{reloads:.0f} ({reload_mean:.1f} s)",
            f"<= {reload_budget:.1f}",
            reloads <= reload_budget,
        ),
        (
            f"code server processes, max of {len(samples)} samples",
            f"{max_servers} (during the burst: {during_max})",
            f"<= {TARGET_MAX_CODE_SERVERS}",
            max_servers <= TARGET_MAX_CODE_SERVERS,
        ),
        ("readiness 200 after the burst", f"{ready_after} of {len(after)} samples", "every", ready_after == len(after)),
        (
            "Dagster serves the last change",
            f"{caught_up:.1f} s after the burst" if caught_up is not None else "not within 30 s",
            "",
            caught_up is not None,
        ),
    ]
    print()
    print("| measure | value | target | verdict |")
    print("|---|---:|---|---|")
    for name, value, target, ok in rows:
        print(f"| {name} | {value} | {target} | {verdict(ok) if target else ''} |")
    print()
    print("| write | calls | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for kind, values in sorted(result.by_kind_latency.items()):
        cells = (percentile(values, 50) * 1000, percentile(values, 99) * 1000, max(values) * 1000)
        print(f"| {kind} | {len(values)} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    slow = ", ".join(
        f"{kind} {seconds * 1000:.0f} ms at +{at:.1f} s" for seconds, at, kind in sorted(result.slowest)[-5:]
    )
    print(f"\nSlowest writes: {slow}")
    if not times:
        return 1 if failed else 0
    print()
    columns = ["launch returned", "run start", "step start", "step end", "done"]
    print("| seconds from the trigger (p50 of the runs) | runs | " + " | ".join(columns) + " | done min-max |")
    print("|---|---:|" + "---:|" * len(columns) + "---:|")
    labels = {
        "floor": "(a) trivial Dagster job (floor location, GraphQL launch)",
        "ours": "(b) trivial pipeline, `POST .../run` (connector_sync of 1 row)",
    }
    for leg, label in labels.items():
        runs = times[leg]
        cells = [statistics.median(r[c] for r in runs if c in r) for c in columns]
        done = [r["done"] for r in runs]
        print(
            f"| {label} | {len(runs)} | "
            + " | ".join(f"{c:.2f}" for c in cells)
            + f" | {min(done):.2f}-{max(done):.2f} |"
        )
    ratio = statistics.median(r["done"] for r in times["ours"]) / statistics.median(r["done"] for r in times["floor"])
    print()
    print(
        f"(b) / (a) done p50 = {ratio:.2f}x (target <= {TARGET_START_RATIO}x): {verdict(ratio <= TARGET_START_RATIO)}"
    )
    if result.errors:
        print("\nRefused writes (first 5):\n" + "\n".join(result.errors[:5]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
