"""A pipeline's on_upload trigger end to end (issue 13 item 7), on the session's real webserver with a daemon: a file
uploaded through the API starts the pipeline exactly once, the run history says a sensor started it and for which
file, and the run's sync step landed that file's rows."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import pytest

from tests.dagster.conftest import Webserver, running_daemon
from tests.dagster.test_monitoring_e2e import _sensors
from tests.dagster.test_pipeline_runs import wait_for_pipeline_run

pytestmark = pytest.mark.dagster


def _eventually(probe: Callable[[], object], *, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.5)
    return value


def test_an_upload_starts_the_pipeline_once_and_its_run_syncs_the_file(api, dagster_webserver: Webserver):
    with running_daemon(dagster_webserver):
        project = api.post("/api/v1/projects", json={"name": "upload trigger end to end"}).json()
        base = f"/api/v1/projects/{project['id']}"
        # A connector that syncs whatever its upload area holds: the upload's discovery adds the table.
        connector = api.post(
            f"{base}/connectors", json={"name": "Drop zone", "connector_type": "files", "config": {}}
        ).json()
        pipeline = api.post(
            f"{base}/pipelines",
            json={
                "name": "on drop",
                "steps": [{"id": "sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}}],
                "triggers": [{"type": "on_upload", "connector_id": connector["id"]}],
            },
        )
        assert pipeline.status_code == 201, pipeline.text
        pipeline = pipeline.json()
        sensor = pipeline["triggers"][0]["sensor_name"]
        assert sensor == f"{project['namespace']}__on_drop__on_upload"
        _eventually(lambda: _sensors(dagster_webserver).get(sensor) == "RUNNING", timeout=120, what=f"sensor {sensor}")

        rows = b"id,amount\n1,2.5\n2,4.0\n3,1.0\n"
        uploaded = api.post(
            f"{base}/connectors/{connector['id']}/files", files={"files": ("orders.csv", io.BytesIO(rows))}
        )
        assert uploaded.status_code == 201, uploaded.text

        runs_url = f"{base}/pipelines/{pipeline['id']}/runs"
        [started] = _eventually(lambda: api.get(runs_url).json()["data"], timeout=120, what="a triggered run")
        assert started["trigger"] == "sensor" and started["triggered_by"] is None
        assert started["trigger_event"]["type"] == "on_upload"
        assert (started["trigger_event"]["connector_id"], started["trigger_event"]["file"]) == (
            connector["id"],
            "orders.csv",
        )
        run = wait_for_pipeline_run(api, f"{base}/pipelines/{pipeline['id']}", started["run_id"])
        assert run["status"] == "succeeded", run
        assert [(s["step_id"], s["status"], s["rows"]) for s in run["steps"]] == [("sync", "completed", 3)]
        tables = api.get(f"{base}/tables").json()["data"]
        assert [(t["name"], t["row_count"]) for t in tables] == [("drop_zone__orders", 3)]

        # Later evaluations of the sensor start nothing more for that file.
        time.sleep(3 * dagster_webserver.settings.alert_sensor_interval_seconds)
        assert [r["run_id"] for r in api.get(runs_url).json()["data"]] == [started["run_id"]]
