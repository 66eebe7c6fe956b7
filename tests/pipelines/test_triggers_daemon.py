"""A file uploaded through the API starts its pipeline once, through Dagster's own sensor daemon: the daemon's
iteration (`execute_sensor_iteration`, what `dagster-daemon` runs every few seconds) evaluates the `rime` code
location built from the store, launches the run, and the run syncs the file into Iceberg. A daemon restart that
lost the cursor evaluates again from the old one and launches nothing more: Dagster skips a run key the sensor
already used.

The location is loaded in process and runs execute in this process (Dagster's SyncInMemoryRunLauncher), so the
run is finished when the iteration returns; the real webserver and daemon are the end-to-end tests' business.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import InstigatorType, SensorInstigatorData, TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time, instance_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

from api_shim.services.pipeline_runs import trigger_event, trigger_of
from rime_dagster.platform.iceberg import open_catalog
from rime_dagster.resources import get_settings
from tests.conftest import use_settings

pytestmark = pytest.mark.slow
LOCATION = "from rime_dagster.definitions import load_definitions\n\ndefs = load_definitions()\n"
log = logging.getLogger(__name__)


@pytest.fixture
def platform(settings, monkeypatch):
    """The code location reads the API's store: the same RIME_HOME."""
    use_settings(monkeypatch, settings)
    yield settings
    get_settings.cache_clear()


def tick(workspace, at: float) -> None:
    with freeze_time(at):  # past the sensor's minimum interval since the previous tick
        list(execute_sensor_iteration(workspace, log, None, None))


def test_an_upload_starts_the_pipeline_once_and_the_run_syncs_it(clients, platform, tmp_path: Path):
    admin = clients.admin
    project = admin.post("/api/v1/projects", json={"name": "uploads"}).json()
    base = f"/api/v1/projects/{project['id']}"
    shop = admin.post(
        f"{base}/connectors",
        # The table is selected up front: the location loaded in this process keeps the specs it was built from,
        # where a real run worker loads them anew, with the tables the upload made the API discover.
        json={"name": "Shop", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
    ).json()
    pipeline = admin.post(
        f"{base}/pipelines",
        json={
            "name": "on upload",
            "steps": [{"id": "sync", "type": "connector_sync", "config": {"connector_id": shop["id"]}}],
            "triggers": [{"type": "on_upload", "connector_id": shop["id"]}],
        },
    ).json()
    sensor_name = pipeline["triggers"][0]["sensor_name"]
    location = tmp_path / "location.py"
    location.write_text(LOCATION)
    overrides = {
        "run_launcher": {
            "module": "dagster._core.launcher.sync_in_memory_run_launcher",
            "class": "SyncInMemoryRunLauncher",
        },
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    }
    with instance_for_test(overrides=overrides) as instance:
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(python_file=str(location), attribute="defs"), location_name="rime"
        )
        now = time.time()
        with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as workspace:
            tick(workspace, now)
            assert instance.get_runs() == []  # nothing uploaded yet

            rows = b"id,amount\n1,2.5\n2,4.0\n3,1.0\n"
            uploaded = admin.post(
                f"{base}/connectors/{shop['id']}/files", files={"files": ("orders.csv", io.BytesIO(rows))}
            )
            assert uploaded.status_code == 201, uploaded.text
            [state] = [
                s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == sensor_name
            ]
            cursor_before_upload = state.instigator_data.cursor
            tick(workspace, now + 60)

            [run] = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
            assert run.job_name == f"{project['namespace']}__on_upload"
            assert trigger_of(run.tags) == "sensor" and run.tags["dagster/sensor_name"] == sensor_name
            event = trigger_event(run.tags)
            assert event is not None and (event.type, event.connector_id, event.file) == (
                "on_upload",
                shop["id"],
                "orders.csv",
            )
            # The run's sync step landed the file's rows.
            catalog = open_catalog(get_settings())
            [landed] = catalog.list_tables(project["namespace"])
            assert landed[-1].endswith("__orders")
            assert catalog.load_table(landed).scan().to_arrow().num_rows == 3

            # The daemon restarts having lost the cursor it stored: the same file again, the same run key, no run.
            [state] = [
                s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == sensor_name
            ]
            data = state.instigator_data
            assert isinstance(data, SensorInstigatorData)
            instance.update_instigator_state(state.with_data(data._replace(cursor=cursor_before_upload)))
            tick(workspace, now + 120)
            assert [r.run_id for r in instance.get_runs()] == [run.run_id]
            last = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)[0]
            assert last.status == TickStatus.SKIPPED and last.run_keys == [run.tags["dagster/run_key"]]
            assert json.loads(run.tags["rime/trigger_event"])["file"] == "orders.csv"
