"""A project's connectors in Dagster: one sync job for the project, a schedule per connector, runs in process."""

from __future__ import annotations

import dagster as dg
import pytest

from rime_dagster.connectors.assets import connector_assets, project_connector_definitions
from rime_dagster.connectors.names import connector_job_name
from rime_dagster.resources import IcebergCatalogResource
from rime_dagster.specs import ConnectorSpec, ProjectSpec
from tests.pipelines.test_jobs import connector

PROJECT = ProjectSpec(id="proj_1", name="Shop", namespace="ns")


def _connector(tmp_path, id: str, *, schedule: str | None = None, paused: bool = False) -> ConnectorSpec:
    spec = connector(tmp_path, id, id)
    return ConnectorSpec(**{**spec.__dict__, "schedule": schedule, "paused": paused})


@pytest.fixture
def two_connectors(home):
    for name in ("crm", "web"):
        (home / name).mkdir()
        (home / name / "orders.csv").write_text("id,amount\n1,2.5\n2,3.5\n")
    return [_connector(home, "crm", schedule="0 2 * * *"), _connector(home, "web", schedule="0 3 * * *", paused=True)]


def test_one_job_per_project_and_a_schedule_per_connector_selecting_its_tables(two_connectors):
    defs = project_connector_definitions(PROJECT, two_connectors)
    assert [j.name for j in defs.jobs] == [connector_job_name("ns")]
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {"ns__crm_schedule", "ns__web_schedule"}
    assert schedules["ns__crm_schedule"].cron_schedule == "0 2 * * *"
    assert schedules["ns__web_schedule"].default_status == dg.DefaultScheduleStatus.STOPPED  # paused

    with dg.build_schedule_context() as context:
        request = schedules["ns__crm_schedule"].evaluate_tick(context).run_requests[0]
    assert request.asset_selection == [dg.AssetKey(["ns", "crm", "orders"])]
    assert request.tags["rime/connector_id"] == "crm"
    assert request.tags["rime/trigger"] == "schedule"


def test_a_run_of_the_project_job_lands_only_the_selected_connector(two_connectors):
    defs = dg.Definitions.merge(
        project_connector_definitions(PROJECT, two_connectors),
        dg.Definitions(resources={"iceberg": IcebergCatalogResource()}),
    )
    job = defs.resolve_job_def(connector_job_name("ns"))
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=[dg.AssetKey(["ns", "crm", "orders"])]
    )
    assert result.success
    landed = {e.asset_key for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}
    assert landed == {dg.AssetKey(["ns", "crm", "orders"])}


def test_a_connector_that_fails_to_build_leaves_the_others_in_the_job(two_connectors):
    def build(spec: ConnectorSpec):
        if spec.id == "web":
            raise ValueError("broken spec")
        return connector_assets(spec)

    defs = project_connector_definitions(PROJECT, two_connectors, build=build)
    job = dg.Definitions.merge(defs, dg.Definitions(resources={"iceberg": IcebergCatalogResource()})).resolve_job_def(
        connector_job_name("ns")
    )
    assert {k.path[1] for k in job.asset_layer.asset_graph.get_all_asset_keys()} == {"crm"}
    assert [s.name for s in defs.schedules] == ["ns__crm_schedule"]


def test_a_plug_in_is_imported_only_when_its_type_is_asked_for():
    """A run of a `files` connector pays for pyarrow, not for the PostgreSQL driver and DuckDB."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from rime_dagster.connectors.sources import known_types, source_class\n"
        "source_class('files')\n"
        "print(sorted(m for m in ('psycopg', 'duckdb') if m in sys.modules))\n"
        "print(known_types())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "['files', 'postgresql', 'sqlite']"]
