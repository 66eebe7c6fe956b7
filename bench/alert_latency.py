"""Benchmark alert latency (issue 13): from a pipeline run's failure to (a) the alert in the API, (b) the webhook
received, (c) the alert stream's WebSocket message; against a baseline measured in the same run.

Target: the webhook is received within 10 s of the run's failure at p99. Dagster's default sensor interval alone
is 30 s.

What it does, everything under a temporary directory:

1. prepares a deployment as `rime up --no-demo` does and starts its processes as `rime up` does (the `rime` code
   server, `dagster-webserver`, `dagster-daemon run`, the API under uvicorn), plus a second code location,
   bench/_alert_baseline.py: Dagster's own `run_failure_sensor`, POSTing to a webhook, at the same interval as
   Rime's rule sensors (RIME_ALERT_SENSOR_INTERVAL_SECONDS, default 1 s), watching every location. That is the
   baseline: what a Dagster user writes by hand to be told of failed runs;
2. through the API: a project, a `files` connector whose selected table has no file (every sync fails), a
   one-step pipeline syncing it, a webhook notification channel to a local receiver, and the rule
   "pipeline failed" with that channel; waits until Dagster serves the rule's sensor;
3. opens the alert stream (`/api/v1/ws/alerts`) and, N times (`--failures`, default 10), one after another:
   launches the pipeline through the API, waits for the run's failure, then records, from the failure's time
   (the RUN_FAILURE event's timestamp in Dagster's event log, read from the instance):
   (a) when `GET .../alerts?status=firing` first lists the alert (polled every 50 ms),
   (b) when the receiver got Rime's webhook for it,
   (c) when the WebSocket client got its `alert_fired`,
   (d) when the receiver got the baseline sensor's webhook for the same run;
   then resolves the alert through the API (a second failure while it is open would only count an occurrence:
   one open alert per rule and target);
4. prints the table (p50, p99 and max per path) and the verdict; exits 1 if a failure was not reported on every
   path within the timeout, 0 otherwise, whatever the verdict.

Every process leads its own process group; each group is killed at the end, also on Ctrl-C, SIGTERM or an error.

Run with `python bench/alert_latency.py [--failures N] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `bench._common` when run as `python bench/alert_latency.py`
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import Processes, log, wait_http  # noqa: E402
from bench.run_latency import (  # noqa: E402
    ADMIN_TOKEN,
    BIN,
    START_TIMEOUT,
    child_env,
    percentile,
    prepare_deployment,
    wait_location,
)

REPORT_TIMEOUT = 90.0  # per failure and path
RUN_TIMEOUT = 180.0
BASELINE = REPO_ROOT / "bench" / "_alert_baseline.py"
PATHS = {
    "api": "(a) alert listed by `GET .../alerts`",
    "webhook": "(b) Rime's webhook received",
    "websocket": "(c) `alert_fired` on `/api/v1/ws/alerts`",
    "baseline": "(d) baseline: Dagster `run_failure_sensor` -> webhook",
}


@dataclass
class Receiver:
    """A local HTTP server recording (wall time, JSON body) of every POST, per path."""

    port: int = 0
    got: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's hook name
                at = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.got.setdefault(self.path, []).append((at, json.loads(body or b"{}")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, path: str, match) -> float | None:
        with self.lock:
            return next((at for at, body in self.got.get(path, []) if match(body)), None)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@dataclass
class Stream:
    """The alert stream, read in a thread: (wall time, message) of every message."""

    url: str
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    connected: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._read, name="alert-stream", daemon=True).start()
        if not self.connected.wait(30):
            raise RuntimeError(f"the alert stream did not connect: {self.error}")

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=10, close_timeout=5) as ws:
                self.connected.set()
                while not self.stop.is_set():
                    try:
                        raw = ws.recv(timeout=0.5)
                    except TimeoutError:
                        continue
                    except ConnectionClosed:
                        break
                    self.messages.append((time.time(), json.loads(raw)))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.connected.set()

    def first(self, match) -> float | None:
        return next((at for at, message in list(self.messages) if match(message)), None)


@dataclass
class Failure:
    run_id: str
    failed_at: float  # the RUN_FAILURE event's timestamp
    delays: dict[str, float | None] = field(default_factory=dict)


def ok(response: httpx.Response, expected: int) -> dict:
    if response.status_code != expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()


def write_workspace(settings, dagster_home: Path) -> Path:
    """The `rime` location served by its code server (as `rime up` writes it), plus the baseline's file."""
    from api_shim.cli import write_workspace as rime_workspace

    path = rime_workspace(settings)
    path.write_text(
        path.read_text() + f"  - python_file:\n      relative_path: {BASELINE}\n      location_name: baseline\n"
    )
    return path


def failure_time(instance, dagster_run_id: str) -> float:
    from dagster import DagsterEventType

    records = instance.get_records_for_run(dagster_run_id, of_type=DagsterEventType.RUN_FAILURE).records
    if not records:
        raise RuntimeError(f"run {dagster_run_id} has no RUN_FAILURE event")
    return records[-1].event_log_entry.timestamp


def set_up(api: httpx.Client, receiver: Receiver) -> tuple[str, str, str]:
    """(the alerts URL, the pipeline's run URL, the rule's sensor name)."""
    project = ok(api.post("/api/v1/projects", json={"name": "alert latency"}), 201)
    base = f"/api/v1/projects/{project['id']}"
    connector = ok(
        api.post(
            f"{base}/connectors",
            json={"name": "Inbox", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
        ),
        201,
    )
    steps = [{"id": "sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}}]
    pipeline = ok(api.post(f"{base}/pipelines", json={"name": "fragile", "steps": steps}), 201)
    channel = ok(
        api.post(
            f"{base}/notification-channels",
            json={"name": "hook", "type": "webhook", "config": {"url": f"http://127.0.0.1:{receiver.port}/rime"}},
        ),
        201,
    )
    rule = ok(
        api.post(
            f"{base}/alert-rules",
            json={
                "name": "Fragile failed",
                "severity": "high",
                "condition": {"type": "run_failed", "pipeline_id": pipeline["id"]},
                "channel_ids": [channel["id"]],
            },
        ),
        201,
    )
    return f"{base}/alerts", f"{base}/pipelines/{pipeline['id']}", rule["sensor_name"]


def wait_sensor(dagster_port: int, name: str, timeout: float = START_TIMEOUT) -> None:
    from bench.run_latency import graphql

    query = (
        '{ sensorsOrError(repositorySelector: {repositoryLocationName: "rime", repositoryName: "__repository__"}) '
        "{ ... on Sensors { results { name sensorState { status } } } } }"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = graphql(dagster_port, query)["sensorsOrError"].get("results") or []
        if any(s["name"] == name and s["sensorState"]["status"] == "RUNNING" for s in results):
            return
        time.sleep(0.5)
    raise RuntimeError(f"sensor {name} is not running in Dagster after {timeout:.0f}s")


def measure_one(api, instance, receiver: Receiver, stream: Stream, alerts_url: str, pipeline_url: str) -> Failure:
    launched = ok(api.post(f"{pipeline_url}/run"), 202)
    run_id = launched["run_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while (run := ok(api.get(f"{pipeline_url}/runs/{run_id}"), 200))["status"] not in ("failed", "succeeded"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not end in {RUN_TIMEOUT:.0f}s")
        time.sleep(0.05)
    if run["status"] != "failed":
        raise RuntimeError(f"run {run_id} succeeded; the benchmark needs it to fail")
    failure = Failure(run_id, failure_time(instance, run["dagster_run_id"]))
    seen: dict[str, float | None] = {path: None for path in PATHS}
    alert_id = None
    deadline = time.monotonic() + REPORT_TIMEOUT
    while time.monotonic() < deadline and any(v is None for v in seen.values()):
        if seen["api"] is None:
            listed = ok(api.get(alerts_url, params={"status": "firing"}), 200)["data"]
            match = next((a for a in listed if a["run_id"] == run_id), None)
            if match is not None:
                seen["api"], alert_id = time.time(), match["id"]
        if seen["webhook"] is None:
            seen["webhook"] = receiver.first("/rime", lambda b: (b.get("alert") or {}).get("run_id") == run_id)
        if seen["websocket"] is None:
            seen["websocket"] = stream.first(
                lambda m: m.get("type") == "alert_fired" and m["alert"].get("run_id") == run_id
            )
        if seen["baseline"] is None:
            seen["baseline"] = receiver.first("/baseline", lambda b: b.get("dagster_run_id") == run["dagster_run_id"])
        time.sleep(0.05)
    failure.delays = {path: (at - failure.failed_at if at is not None else None) for path, at in seen.items()}
    if alert_id is not None:
        ok(api.post(f"{alerts_url}/{alert_id}/resolve"), 200)
    return failure


def run(args: argparse.Namespace, scratch: Path) -> list[Failure]:
    from dagster import DagsterInstance

    from api_shim.cli import code_server_command, wait_for_code_server

    settings, dagster_home = prepare_deployment(scratch)
    home, api_port, dagster_port = settings.home, settings.api_port, settings.dagster_port
    receiver = Receiver()
    receiver.start()
    env = child_env(
        home,
        dagster_home,
        RIME_API_PORT=str(api_port),
        RIME_DAGSTER_PORT=str(dagster_port),
        BENCH_BASELINE_URL=f"http://127.0.0.1:{receiver.port}/baseline",
        BENCH_BASELINE_INTERVAL_SECONDS=str(settings.alert_sensor_interval_seconds),
    )
    procs = Processes()
    instance = None
    stream = None
    try:
        procs.start("code-server", code_server_command(settings, BIN), env, scratch / "code-server.log")
        if not wait_for_code_server(settings, START_TIMEOUT):
            procs.check_alive()
            raise RuntimeError("the rime code server did not start")
        workspace = write_workspace(settings, dagster_home)
        webserver = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(dagster_port), "-w", str(workspace)]
        procs.start("dagster-webserver", webserver, env, scratch / "webserver.log")
        procs.start(
            "dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, scratch / "daemon.log"
        )
        uvicorn = [
            str(BIN / "uvicorn"),
            *("--factory", "api_shim.main:app_from_env", "--host", "127.0.0.1", "--port", str(api_port)),
            *("--no-access-log", "--log-level", "warning"),
        ]
        procs.start("api", uvicorn, env, scratch / "api.log")
        wait_location(procs, dagster_port)
        wait_http(f"http://127.0.0.1:{api_port}/health/ready", procs, START_TIMEOUT)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=60) as api:
            alerts_url, pipeline_url, sensor = set_up(api, receiver)
            wait_sensor(dagster_port, sensor)
            log(f"  rule sensor {sensor} is running; the baseline sensor watches every location")
            stream = Stream(f"ws://127.0.0.1:{api_port}/api/v1/ws/alerts?token={ADMIN_TOKEN}")
            stream.start()
            instance = DagsterInstance.from_config(str(dagster_home))
            failures = []
            for index in range(args.failures):
                procs.check_alive()
                failure = measure_one(api, instance, receiver, stream, alerts_url, pipeline_url)
                shown = ", ".join(f"{k} {v:.2f}s" if v is not None else f"{k} -" for k, v in failure.delays.items())
                log(f"  failure {index + 1}/{args.failures} ({failure.run_id}): {shown}")
                failures.append(failure)
            return failures
    finally:
        if stream is not None:
            stream.stop.set()
        if instance is not None:
            instance.dispose()
        log("stopping the deployment")
        procs.stop()
        receiver.stop()


def table(failures: list[Failure], interval: int) -> list[str]:
    lines = [
        "| from the run's failure event to | p50 | p99 | max | reported |",
        "|---|---|---|---|---|",
    ]
    for path, label in PATHS.items():
        delays = [f.delays[path] for f in failures if f.delays.get(path) is not None]
        if delays:
            p50, p99, top = percentile(delays, 50), percentile(delays, 99), max(delays)
            lines.append(f"| {label} | {p50:.2f} s | {p99:.2f} s | {top:.2f} s | {len(delays)}/{len(failures)} |")
        else:
            lines.append(f"| {label} | - | - | - | 0/{len(failures)} |")
    lines.append("| Dagster's default sensor interval (not measured) | up to 30 s | | | |")
    lines.append("")
    lines.append(
        f"Rule sensors and the baseline sensor evaluate every {interval} s (RIME_ALERT_SENSOR_INTERVAL_SECONDS);"
    )
    lines.append("the daemon's sensor loop itself runs at most every 5 s.")
    return lines


def verdict(failures: list[Failure]) -> str:
    delays = [f.delays["webhook"] for f in failures if f.delays.get("webhook") is not None]
    if len(delays) < len(failures) or not delays:
        return "Verdict: FAIL (a webhook never arrived)"
    p99 = percentile(delays, 99)
    return f"Verdict: webhook p99 {p99:.2f} s: {'PASS' if p99 <= 10 else 'FAIL'} (target <= 10 s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failures", type=int, default=10, help="failing runs to time (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the servers' logs")
    args = parser.parse_args(argv)
    if args.failures < 1:
        parser.error("--failures must be >= 1")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    scratch = Path(tempfile.mkdtemp(prefix="rime-bench-alerts-"))
    failures: list[Failure] = []
    aborted = None
    try:
        failures = run(args, scratch)
    except KeyboardInterrupt:
        aborted = "interrupted"
    except Exception as exc:
        aborted = f"{type(exc).__name__}: {exc}"
    finally:
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    from bench._common import installed_versions
    from rime_dagster.settings import Settings

    interval = Settings.model_fields["alert_sensor_interval_seconds"].default
    print(f"\n{installed_versions('dagster', 'dagster-webserver', 'fastapi')}")
    print(f"{datetime.now(UTC).date().isoformat()}; {len(failures)} failing pipeline run(s), one after another\n")
    print("\n".join(table(failures, interval)))
    print()
    print(verdict(failures))
    if aborted:
        print(f"\nbenchmark aborted: {aborted}")
        return 1
    missing = [f.run_id for f in failures if any(v is None for v in f.delays.values())]
    if missing:
        print(f"\nNot reported on every path within {REPORT_TIMEOUT:.0f}s: {', '.join(missing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
