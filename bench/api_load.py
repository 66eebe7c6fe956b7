"""Benchmark the API under load: one worker, then two (RIME_API_WORKERS=2), on list and trigger endpoints.

Targets (issue 17): two workers give >= 1.6x the requests/s of one; page 100 of a run history answers within 1.2x
of page 1.

What it does, in one run:

1. seeds a fresh RIME_HOME: 10,000 projects in the metadata store (bench/projects_pagination.py's seeding), one
   project with a files connector and a pipeline made through the API, and 100,000 runs in Dagster's run storage
   (SQLite) written in batches with the run storage's own insertion values and tags: 20,000 carry the benchmark
   connector's id (its run history), the other 80,000 99 other connectors';
2. for each configuration starts the real API (`uvicorn --factory api_shim.main:app_from_env`, `--workers N`), and
   load processes (separate from the server, --clients of them, each with --connections keep-alive
   `http.client` connections in threads) drive each endpoint for --seconds:
   - `GET /api/v1/projects?limit=20` (the store),
   - `GET .../connectors/{id}/runs?limit=20` (Dagster's run storage, filtered by the connector's tag),
   - `POST .../pipelines/{id}/run {"dry_run": true}` (a trigger: validates and plans the run; nothing launches,
     since a real launch is Dagster's webserver planning the run and a run worker starting, seconds of CPU each
     on this machine, whatever the number of API workers);
3. walks the run history with limit=100 following next_cursor to page 100, then times page 1 and page 100 on
   one connection, interleaved;
4. prints a markdown table (requests/s, p50, p99 per endpoint and configuration) and the verdicts; exit 0.

The load generator runs on the same machine: on 2 cores it takes CPU the workers would use. Run with
`python bench/api_load.py [--seconds 10] [--clients 2] [--connections 4]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Processes, free_port, installed_versions, log, wait_http
from projects_pagination import seed_projects

ADMIN_TOKEN = "rime_bench_admin_token_0123456789abcdef"
RUNS = 100_000
CONNECTOR_RUNS = 20_000
OTHER_CONNECTORS = 99
DEEP_PAGE = 100
BATCH = 5_000
DEMO_DATA = REPO_ROOT / "demo" / "data"


# Seeding ---------------------------------------------------------------------------------------------------------


def seed_store(home: Path) -> None:
    from rime_dagster.store.migrate import upgrade_to_head
    from rime_dagster.store.session import make_engine

    url = f"sqlite:///{home / 'rime.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    seed_projects(engine)
    engine.dispose()


def seed_runs(dagster_home: Path, connector_id: str, project_id: str) -> None:
    """RUNS finished runs in Dagster's run storage, as `add_run` writes them, in batches of BATCH per transaction."""
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
    from dagster._core.storage.runs.schema import RunsTable, RunTagsTable

    from rime_dagster.platform import run_tags

    instance = DagsterInstance.from_config(str(dagster_home))
    storage = instance.run_storage
    started = time.monotonic()
    others = [f"con_other{n:03d}" for n in range(OTHER_CONNECTORS)]
    ours: list[str] = []
    connector_runs: set[str] = set()
    for first in range(0, RUNS, BATCH):
        runs, tags = [], []
        for n in range(first, min(RUNS, first + BATCH)):
            # Every fifth run is the benchmark connector's, spread through the history as real syncs would be.
            ours_run = n % (RUNS // CONNECTOR_RUNS) == 0
            run = DagsterRun(
                job_name="connector_sync",
                run_id=str(uuid.uuid4()),
                status=DagsterRunStatus.SUCCESS,
                tags={
                    run_tags.PROJECT_ID: project_id if ours_run else "prj_other",
                    run_tags.CONNECTOR_ID: connector_id if ours_run else others[n % OTHER_CONNECTORS],
                    run_tags.TRIGGERED_BY: "bench@example.com",
                    run_tags.FULL_REFRESH: "false",
                },
            )
            runs.append(_insertion_values(storage, run))
            if ours_run:
                connector_runs.add(run.run_id)
            tags += [{"run_id": run.run_id, "key": k, "value": v} for k, v in run.tags_for_storage().items()]
        with storage.connect() as conn:
            conn.execute(RunsTable.insert(), runs)
            conn.execute(RunTagsTable.insert(), tags)
        ours += [r["run_id"] for r in runs if r["run_id"] in connector_runs]
    link_event_logs(instance, ours)
    instance.dispose()
    log(f"  seeded {RUNS:,} runs in {time.monotonic() - started:.1f} s")


def _insertion_values(storage, run) -> dict:
    """What `add_run` inserts for `run` (SqlRunStorage._get_run_insertion_values, which also asks the database
    whether it has a backfill_id column: once here, not once per run)."""
    from dagster._serdes import serialize_value

    global _backfill_column
    if _backfill_column is None:
        _backfill_column = storage.has_backfill_id_column()
    values = {
        "run_id": run.run_id,
        "pipeline_name": run.job_name,
        "status": run.status.value,
        "run_body": serialize_value(run),
        "snapshot_id": run.job_snapshot_id,
        "partition": None,
        "partition_set": None,
    }
    if _backfill_column:
        values["backfill_id"] = None
    return values


_backfill_column: bool | None = None


def link_event_logs(instance, run_ids: list[str]) -> None:
    """Gives each of `run_ids` its event log: on SQLite, Dagster keeps one database file per run (made when the run
    starts), and reading a run that has none makes it (tables and indexes, about 70 ms here), which a run that ran
    never pays. One empty event log, hard-linked under each run's name: the reads the API makes find a run's file
    as they would after a real run (with no events in it)."""
    template = str(uuid.uuid4())
    instance.get_records_for_run(template)  # makes history/runs/<template>.db
    folder = Path(instance.root_directory) / "history" / "runs"
    source = folder / f"{template}.db"
    for run_id in run_ids:
        os.link(source, folder / f"{run_id}.db")
    log(f"  linked {len(run_ids):,} event logs")


# The server ------------------------------------------------------------------------------------------------------


def server_env(home: Path, *, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "DAGSTER_"))}
    env.update(
        RIME_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        RIME_ADMIN_TOKEN=ADMIN_TOKEN,
        RIME_SECRET_KEY="bench-secret-key",
        RIME_API_WORKERS=str(workers),
        RIME_RATE_LIMIT_DEFAULT="100000000/minute",
        RIME_LOG_LEVEL="WARNING",
        RIME_CONNECTOR_PATH_ROOTS=json.dumps([str(DEMO_DATA)]),
        # No Dagster runs here: the API's probes fail at once, and its definitions sync backs off.
        RIME_DAGSTER_PORT=str(free_port()),
        DAGSTER_DISABLE_TELEMETRY="1",
    )
    return env


def start_api(procs: Processes, home: Path, *, workers: int, limits_setting: int | None = None) -> str:
    port = free_port()
    argv = [str(Path(sys.executable).parent / "uvicorn"), "--factory", "api_shim.main:app_from_env"]
    argv += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    env = server_env(home, workers=limits_setting or workers)
    procs.start(f"api x{workers}", argv, env, home / f"api-{workers}-{port}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", procs, timeout=120)
    return url


def make_fixtures(url: str) -> tuple[str, str, str]:
    """A project with a files connector and a pipeline syncing it, through the API: (project, connector, pipeline)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60) as api:
        project = api.post("/api/v1/projects", json={"name": "load bench"}).json()["id"]
        connector = api.post(
            f"/api/v1/projects/{project}/connectors",
            json={
                "name": "shop",
                "connector_type": "files",
                "config": {"path": str(DEMO_DATA)},
                "selected_tables": ["customers", "orders"],
            },
        )
        assert connector.status_code == 201, connector.text
        sync = {"connector_id": connector.json()["id"]}
        step = {"id": "sync", "name": "Sync", "type": "connector_sync", "config": sync}
        pipeline = api.post(f"/api/v1/projects/{project}/pipelines", json={"name": "nightly", "steps": [step]})
        assert pipeline.status_code == 201, pipeline.text
    return project, connector.json()["id"], pipeline.json()["id"]


# The load --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    body: bytes | None = None
    status: int = 200


def _connection_loop(port: int, endpoint: Endpoint, until: float, start: float, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    while time.time() < start:
        time.sleep(0.001)
    while (now := time.perf_counter()) and time.time() < until:
        conn.request(endpoint.method, endpoint.path, body=endpoint.body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != endpoint.status:
            raise RuntimeError(f"{endpoint.name}: {response.status}")
        latencies.append(time.perf_counter() - now)
    conn.close()


def _client_process(port: int, endpoint: Endpoint, connections: int, start: float, until: float, out) -> None:
    latencies: list[float] = []
    threads = [
        threading.Thread(target=_connection_loop, args=(port, endpoint, until, start, latencies))
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(latencies)


def drive(url: str, endpoint: Endpoint, *, seconds: float, clients: int, connections: int) -> dict[str, float]:
    """`clients` processes x `connections` keep-alive connections on `endpoint` for `seconds`: requests/s, p50, p99."""
    port = int(url.rsplit(":", 1)[1])
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 1.0  # every connection begins together
    procs = [
        ctx.Process(target=_client_process, args=(port, endpoint, connections, start, start + seconds, out))
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    latencies = [value for _ in procs for value in out.get(timeout=seconds + 120)]
    for proc in procs:
        proc.join()
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def page_depth(url: str, history: str, *, requests: int) -> tuple[list[float], list[float]]:
    """p50-able latencies of page 1 and page DEEP_PAGE (limit=100, reached by following next_cursor)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120) as api:
        cursor, seen = None, set()
        for _ in range(DEEP_PAGE - 1):
            page = api.get(history, params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
            seen.update(r["run_id"] for r in page["data"])
            cursor = page["next_cursor"]
        assert len(seen) == (DEEP_PAGE - 1) * 100, len(seen)
        first, deep = [], []
        for n in range(requests + 5):
            order = [(first, None), (deep, cursor)] if n % 2 else [(deep, cursor), (first, None)]
            for sink, page_cursor in order:
                started = time.perf_counter()
                response = api.get(history, params={"limit": 100, **({"cursor": page_cursor} if page_cursor else {})})
                elapsed = time.perf_counter() - started
                assert response.status_code == 200 and len(response.json()["data"]) == 100
                if n >= 5:  # warm-up
                    sink.append(elapsed * 1000)
    return first, deep


# Main ------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load per endpoint and configuration")
    parser.add_argument("--clients", type=int, default=2, help="load processes")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections per load process")
    parser.add_argument("--page-requests", type=int, default=30)
    parser.add_argument(
        "--per-process-limits",
        action="store_true",
        help="also run two workers counting rate limits each in its own memory (not shared): the store's cost",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="rime-api-load-"))
    procs = Processes()
    try:
        log(f"seeding {home}")
        seed_store(home)
        url = start_api(procs, home, workers=1)
        project, connector, pipeline = make_fixtures(url)
        procs.stop()
        seed_runs(home / "dagster", connector, project)
        history = f"/api/v1/projects/{project}/connectors/{connector}/runs"
        endpoints = [
            Endpoint("GET /projects?limit=20", "GET", "/api/v1/projects?limit=20"),
            Endpoint("GET connector runs?limit=20", "GET", f"{history}?limit=20"),
            Endpoint(
                "POST pipeline run (dry run)",
                "POST",
                f"/api/v1/projects/{project}/pipelines/{pipeline}/run",
                json.dumps({"dry_run": True}).encode(),
            ),
        ]
        configurations = [("1 worker", 1, None), ("2 workers", 2, None)]
        if args.per_process_limits:
            configurations.append(("2 workers, limits per process", 2, 1))
        results: dict[tuple[str, str], dict[str, float]] = {}
        pages: dict[str, tuple[list[float], list[float]]] = {}
        for label, workers, limits_setting in configurations:
            url = start_api(procs, home, workers=workers, limits_setting=limits_setting)
            for endpoint in endpoints:  # warm every worker's caches and imports
                drive(url, endpoint, seconds=2, clients=args.clients, connections=args.connections)
            for endpoint in endpoints:
                log(f"  {label}: {endpoint.name}")
                results[(label, endpoint.name)] = drive(
                    url, endpoint, seconds=args.seconds, clients=args.clients, connections=args.connections
                )
            pages[label] = page_depth(url, history, requests=args.page_requests)
            procs.stop()
        report(args, endpoints, configurations, results, pages)
    finally:
        procs.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def report(args, endpoints, configurations, results, pages) -> None:
    print(
        f"\n10,000 projects, {RUNS:,} runs ({CONNECTOR_RUNS:,} of the connector); {args.clients} load processes x "
        f"{args.connections} keep-alive connections, {args.seconds:g} s per row; {installed_versions('uvicorn')}\n"
    )
    print("| endpoint | configuration | requests/s | p50 ms | p99 ms | x 1 worker |")
    print("|---|---|---:|---:|---:|---:|")
    for endpoint in endpoints:
        base = results[("1 worker", endpoint.name)]["rps"]
        for label, _, _ in configurations:
            row = results[(label, endpoint.name)]
            print(
                f"| {endpoint.name} | {label} | {row['rps']:.0f} | {row['p50']:.1f} | {row['p99']:.1f} | "
                f"{row['rps'] / base:.2f}x |"
            )
    print("\n| run history, limit=100 | configuration | p50 ms | p99 ms |")
    print("|---|---|---:|---:|")
    for label, (first, deep) in pages.items():
        for name, values in (("page 1", first), (f"page {DEEP_PAGE}", deep)):
            values = sorted(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(f"| {name} | {label} | {statistics.median(values):.1f} | {p99:.1f} |")
    print()
    for endpoint in endpoints:
        ratio = results[("2 workers", endpoint.name)]["rps"] / results[("1 worker", endpoint.name)]["rps"]
        verdict = "PASS" if ratio >= 1.6 else "MISS"
        print(f"{endpoint.name}: 2 workers / 1 worker = {ratio:.2f}x (target >= 1.6x): {verdict}")
    for label, (first, deep) in pages.items():
        ratio = statistics.median(deep) / statistics.median(first)
        verdict = "PASS" if ratio <= 1.2 else "MISS"
        print(f"run history page {DEEP_PAGE} / page 1 p50, {label}: {ratio:.2f}x (target <= 1.2x): {verdict}")


if __name__ == "__main__":
    main()
