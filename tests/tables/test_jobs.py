"""The project's table maintenance job, executed in process on an ephemeral Dagster instance, and the same
operations as pipeline `table_maintenance` steps."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from rime_dagster.code_location import build_definitions
from rime_dagster.connectors.names import connector_pool
from rime_dagster.pipelines.jobs import Resources, pipeline_definitions
from rime_dagster.pipelines.names import pipeline_job_name
from rime_dagster.platform.write_leases import write_lease
from rime_dagster.resources import IcebergCatalogResource, MetadataStoreResource
from rime_dagster.specs import ConnectorSpec, PipelineSpec, PlatformSpecs, ProjectSpec
from rime_dagster.tables.jobs import table_maintenance_definitions
from rime_dagster.tables.names import maintenance_job_name, maintenance_run_config, maintenance_tags
from tests.tables.conftest import IDENT, NAMESPACE, TABLE, checksum

PROJECT = ProjectSpec(id="proj_ops", name="Ops", namespace=NAMESPACE)


def shop_connector(home) -> ConnectorSpec:
    return ConnectorSpec(
        id="conn_shop",
        project_id=PROJECT.id,
        namespace=NAMESPACE,
        name="Shop",
        connector_type="files",
        config={"path": str(home)},
        credentials_encrypted=None,
        tables=["orders"],
        schedule=None,
        paused=False,
        sync_mode="incremental",
        cursor_fields={"orders": "id"},
        table_prefix="shop",
        upload_dir=home / "uploads",
    )


def run_operation(home, instance: dg.DagsterInstance | None = None, **step_config) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions.merge(
        table_maintenance_definitions(PROJECT, [shop_connector(home)]),
        dg.Definitions(resources={"iceberg": IcebergCatalogResource()}),
    )
    job = defs.resolve_job_def(maintenance_job_name(NAMESPACE))
    return job.execute_in_process(
        run_config=maintenance_run_config(NAMESPACE, {"table": TABLE, **step_config}),
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags=maintenance_tags(PROJECT.id, TABLE, step_config["operation"]),
        raise_on_error=False,
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


def test_a_compaction_run_keeps_the_rows_and_writes_as_the_connectors_only_writer(small_files, home):
    before = checksum(small_files)
    instance = dg.DagsterInstance.ephemeral()
    result = run_operation(home, instance, operation="compact")
    assert result.success
    assert output_metadata(result) | {"snapshot_id": None} == {
        "files_before": 5,
        "files_after": 1,
        "rows": 100,
        "snapshot_id": None,
    }
    assert checksum(small_files) == before
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert f"Writing as the only writer of pool {connector_pool('conn_shop')}." in messages
    assert "shop__orders: 5 data files rewritten into 1" in " ".join(messages)


def test_a_run_refuses_a_schema_change_the_table_no_longer_takes(small_files, home):
    result = run_operation(home, operation="drop_column", column="id")  # the incremental cursor
    assert not result.success
    assert "incremental cursor" in str(result.failure_data_for_node(f"maintain_table_{NAMESPACE}").error)


def test_every_project_gets_a_maintenance_job(home):
    other = ProjectSpec(id="proj_2", name="Other", namespace="other")
    defs = build_definitions(PlatformSpecs(projects=[PROJECT, other]), MetadataStoreResource())
    for project in (PROJECT, other):
        job = defs.resolve_job_def(maintenance_job_name(project.namespace))
        assert job.tags["rime/project_id"] == project.id and job.tags["rime/kind"] == "table_maintenance"


def test_the_new_operations_are_pipeline_steps(small_files, home):
    steps = [
        {
            "id": "add",
            "type": "table_maintenance",
            "config": {"table": TABLE, "operation": "add_column", "name": "note", "type": "string"},
        },
        {
            "id": "orphans",
            "type": "table_maintenance",
            "depends_on": ["add"],
            "config": {"table": TABLE, "operation": "remove_orphan_files", "older_than": datetime.now(UTC).isoformat()},
        },
    ]
    spec = PipelineSpec(
        id="pipe_ops",
        project_id=PROJECT.id,
        namespace=NAMESPACE,
        name="ops",
        slug="ops",
        steps=steps,
        variables={},
        schedule=None,
        paused=False,
        retries=0,
        timeout_seconds=None,
    )
    defs = dg.Definitions.merge(
        pipeline_definitions(spec, Resources({"conn_shop": shop_connector(home)}, {}, {spec.id: spec})),
        dg.Definitions(resources={"iceberg": IcebergCatalogResource()}),
    )
    result = defs.resolve_job_def(pipeline_job_name(NAMESPACE, "ops")).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert result.success
    assert "note" in small_files.load_table(IDENT).schema().column_names


@pytest.mark.slow
def test_a_compaction_waits_while_a_sync_of_its_connector_writes(small_files, home):
    before = small_files.load_table(IDENT).current_snapshot().snapshot_id
    finished = threading.Event()
    results = []

    def compact() -> None:
        results.append(run_operation(home, operation="compact"))
        finished.set()

    with write_lease(connector_pool("conn_shop"), "a-sync-run"):
        worker = threading.Thread(target=compact)
        worker.start()
        time.sleep(1.5)
        assert not finished.is_set()
        assert small_files.load_table(IDENT).current_snapshot().snapshot_id == before
    worker.join(60)
    assert results and results[0].success
    assert small_files.load_table(IDENT).current_snapshot().snapshot_id != before
