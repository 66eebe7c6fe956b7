"""The benchmark's baseline code location (bench/alert_latency.py): what a Dagster user writes by hand to be told
of failed runs, Dagster's own `run_failure_sensor` POSTing to a webhook, at the same evaluation interval as
Rime's rule sensors. It watches every code location, so it sees the `rime` location's pipeline runs."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import dagster as dg


@dg.run_failure_sensor(
    name="baseline_run_failure_webhook",
    monitor_all_code_locations=True,
    minimum_interval_seconds=int(os.environ.get("BENCH_BASELINE_INTERVAL_SECONDS", "5")),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def baseline_run_failure_webhook(context: dg.RunFailureSensorContext) -> None:
    body = json.dumps({"dagster_run_id": context.dagster_run.run_id, "sent_at": time.time()}).encode()
    request = urllib.request.Request(
        os.environ["BENCH_BASELINE_URL"], data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


defs = dg.Definitions(sensors=[baseline_run_failure_webhook])
