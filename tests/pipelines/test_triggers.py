"""Pipeline triggers' sensors evaluated with `build_sensor_context` on ephemeral Dagster instances: upload areas,
upstream pipeline runs and Iceberg snapshots are real (files on tmp_path, runs executed in process, a SQL catalog
under RIME_HOME)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from rime_dagster.pipelines.jobs import Resources, pipeline_definitions
from rime_dagster.pipelines.names import pipeline_job_name
from rime_dagster.pipelines.trigger_spec import (
    OnUploadTrigger,
    format_since,
    since_ns,
    stored_triggers,
    trigger_clock_ns,
)
from rime_dagster.platform import run_tags
from rime_dagster.platform.iceberg import open_catalog
from rime_dagster.resources import IcebergCatalogResource, settings
from rime_dagster.specs import ConnectorSpec, PipelineSpec
from tests.pipelines import test_jobs as jobs_test


def files_connector(
    upload_dir: Path, id: str = "conn_shop", prefix: str = "shop", tables: tuple[str, ...] = ("orders",)
) -> ConnectorSpec:
    """A `files` connector reading its upload area, syncing `tables`."""
    connector = jobs_test.connector(upload_dir, id, ".")
    return replace(connector, config={}, table_prefix=prefix, upload_dir=upload_dir, tables=list(tables))


def pipeline(id: str, connector_id: str, triggers: list[dict], paused: bool = False) -> PipelineSpec:
    """A pipeline syncing the connector, with these triggers."""
    sync = {"id": "sync", "type": "connector_sync", "config": {"connector_id": connector_id}}
    return jobs_test.pipeline(id, [sync], paused=paused, triggers=triggers)


def trigger(type: str, target: str, since: str | None = None, **extra) -> dict:
    field = {"on_upload": "connector_id", "on_success": "pipeline_id", "on_table_update": "table"}[type]
    return {"type": type, field: target, "since": since or format_since(trigger_clock_ns()), **extra}


def definitions(*pipelines: PipelineSpec, connectors: list[ConnectorSpec]) -> dg.Definitions:
    resources = Resources({c.id: c for c in connectors}, {}, {p.id: p for p in pipelines})
    return dg.Definitions.merge(
        *(pipeline_definitions(p, resources) for p in pipelines),
        dg.Definitions(resources={"iceberg": IcebergCatalogResource()}),
    )


def evaluate(defs: dg.Definitions, name: str, instance: dg.DagsterInstance, cursor: str | None = None):
    sensor = defs.resolve_sensor_def(name)
    return sensor.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"iceberg": IcebergCatalogResource()})
    )


def write(path: Path, text: str, *, mtime_ns: int | None = None) -> Path:
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


# on_upload -----------------------------------------------------------------------------------------------------


def test_one_file_one_run_once(home, instance):
    uploads = home / "uploads"
    uploads.mkdir()
    shop = files_connector(uploads)
    spec = pipeline("nightly", shop.id, [trigger("on_upload", shop.id, sensor="on_upload")])
    defs = definitions(spec, connectors=[shop])
    sensor = defs.resolve_sensor_def("ns__nightly__on_upload")
    assert sensor.job_name == pipeline_job_name("ns", "nightly")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == settings().alert_sensor_interval_seconds

    first = evaluate(defs, "ns__nightly__on_upload", instance)
    assert first.run_requests == [] and first.skip_message
    orders = write(uploads / "orders.csv", "id,amount\n1,2.5\n")
    write(uploads / ".upload-k2j3h4", "half a file")  # the upload service's temp file, not yet renamed
    write(uploads / "_SUCCESS", "")
    (uploads / "archive").mkdir()

    result = evaluate(defs, "ns__nightly__on_upload", instance, first.cursor)
    stat = orders.stat()
    assert [r.run_key for r in result.run_requests] == [
        f"upload:{shop.id}:orders.csv:{stat.st_mtime_ns}:{stat.st_size}"
    ]
    tags = result.run_requests[0].tags
    assert tags[run_tags.TRIGGER] == run_tags.TRIGGER_SENSOR
    assert tags[run_tags.PIPELINE_ID] == "nightly" and tags[run_tags.PROJECT_ID] == "proj_1"
    assert json.loads(tags[run_tags.TRIGGER_EVENT]) == {
        "type": "on_upload",
        "connector_id": shop.id,
        "file": "orders.csv",
    }

    # The next evaluation, from the cursor just stored: nothing new.
    again = evaluate(defs, "ns__nightly__on_upload", instance, result.cursor)
    assert again.run_requests == []
    # A daemon restarted before it stored that cursor evaluates from the old one: the same run key, which the
    # daemon has already used for this sensor (test_triggers_daemon.py shows it launching nothing for it).
    replay = evaluate(defs, "ns__nightly__on_upload", instance, first.cursor)
    assert [r.run_key for r in replay.run_requests] == [r.run_key for r in result.run_requests]

    # The file uploaded again (changed): one more run, under a new key.
    write(orders, "id,amount\n1,2.5\n2,4.0\n", mtime_ns=stat.st_mtime_ns + 1_000_000)
    changed = evaluate(defs, "ns__nightly__on_upload", instance, again.cursor)
    assert len(changed.run_requests) == 1 and changed.run_requests[0].run_key != result.run_requests[0].run_key


def test_files_before_since_start_nothing(home, instance):
    uploads = home / "uploads"
    uploads.mkdir()
    since = trigger_clock_ns()
    write(uploads / "old.csv", "id\n1\n", mtime_ns=since - 1_000_000)  # a millisecond before the trigger
    write(uploads / "new.csv", "id\n2\n", mtime_ns=since + 1_000_000)  # a millisecond after
    shop = files_connector(uploads, tables=("old", "new"))
    spec = pipeline("p", shop.id, [trigger("on_upload", shop.id, since=format_since(since))])
    result = evaluate(definitions(spec, connectors=[shop]), "ns__p__on_upload", instance)
    assert [json.loads(r.tags[run_tags.TRIGGER_EVENT])["file"] for r in result.run_requests] == ["new.csv"]


def test_a_file_written_right_after_the_trigger_counts(home, instance):
    """`since` is read from the clock file times come from: a file written just after is never older."""
    uploads = home / "uploads"
    uploads.mkdir()
    shop = files_connector(uploads)
    for n in range(50):
        [stored] = stored_triggers([OnUploadTrigger(type="on_upload", connector_id=shop.id)], [])
        write(uploads / f"f{n}.csv", "id\n1\n")
        assert (uploads / f"f{n}.csv").stat().st_mtime_ns >= since_ns(stored)


def test_several_files_start_one_run_each(home, instance):
    uploads = home / "uploads"
    uploads.mkdir()
    shop = files_connector(uploads, tables=("a", "b", "c"))
    spec = pipeline("p", shop.id, [trigger("on_upload", shop.id)])
    defs = definitions(spec, connectors=[shop])
    for name in ("a.csv", "b.csv", "c.csv"):
        write(uploads / name, "id\n1\n")
    result = evaluate(defs, "ns__p__on_upload", instance)
    assert sorted(json.loads(r.tags[run_tags.TRIGGER_EVENT])["file"] for r in result.run_requests) == [
        "a.csv",
        "b.csv",
        "c.csv",
    ]
    assert len({r.run_key for r in result.run_requests}) == 3


def test_a_cursor_of_another_trigger_starts_afresh(home, instance):
    """A sensor name passes to another trigger when the trigger holding it is removed: its cursor is not reused."""
    uploads, other_uploads = home / "uploads", home / "other"
    uploads.mkdir(), other_uploads.mkdir()
    shop, other = (
        files_connector(uploads),
        files_connector(other_uploads, id="conn_other", prefix="other", tables=("x",)),
    )
    write(other_uploads / "x.csv", "id\n1\n")
    old = evaluate(
        definitions(pipeline("p", shop.id, [trigger("on_upload", shop.id)]), connectors=[shop, other]),
        "ns__p__on_upload",
        instance,
    )
    spec = pipeline("p", other.id, [trigger("on_upload", other.id, since=format_since(0))])
    result = evaluate(definitions(spec, connectors=[shop, other]), "ns__p__on_upload", instance, old.cursor)
    assert [json.loads(r.tags[run_tags.TRIGGER_EVENT])["file"] for r in result.run_requests] == ["x.csv"]


def test_a_file_waits_until_the_specs_know_its_table(home, instance):
    """The upload of a new table's file stores the table and reloads the location: until the sensor's specs have
    it, a run could load specs without it and not sync the file. A file no table takes never starts a run."""
    uploads = home / "uploads"
    uploads.mkdir()
    write(uploads / "refunds.csv", "id\n1\n")
    write(uploads / "notes.txt", "not data")  # no reader for it: no table
    before = files_connector(uploads)  # built before the upload's discovery stored `refunds`
    spec = pipeline("p", before.id, [trigger("on_upload", before.id, since=format_since(0))])
    waiting = evaluate(definitions(spec, connectors=[before]), "ns__p__on_upload", instance)
    assert waiting.run_requests == [] and "wait until the connector syncs their table" in waiting.skip_message

    reloaded = replace(before, tables=["orders", "refunds"])
    result = evaluate(definitions(spec, connectors=[reloaded]), "ns__p__on_upload", instance, waiting.cursor)
    assert [json.loads(r.tags[run_tags.TRIGGER_EVENT])["file"] for r in result.run_requests] == ["refunds.csv"]
    assert (
        evaluate(definitions(spec, connectors=[reloaded]), "ns__p__on_upload", instance, result.cursor).run_requests
        == []
    )


def test_sensor_names_paused_and_orphaned_triggers(home):
    uploads = home / "uploads"
    uploads.mkdir()
    shop, other = files_connector(uploads), files_connector(uploads, id="conn_b", prefix="b")
    spec = pipeline(
        "p",
        shop.id,
        [
            trigger("on_upload", shop.id),
            trigger("on_upload", other.id),
            trigger("on_upload", "conn_deleted"),  # its connector was deleted since: no sensor
            trigger("on_table_update", "shop__orders"),
        ],
        paused=True,
    )
    defs = definitions(spec, connectors=[shop, other])
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"ns__p__on_upload", "ns__p__on_upload_2", "ns__p__on_table_update"}
    assert all(s.default_status == dg.DefaultSensorStatus.STOPPED for s in sensors.values())


# on_success ----------------------------------------------------------------------------------------------------


def test_on_success_after_a_successful_upstream_run(home, instance):
    source = home / "source"
    source.mkdir()
    write(source / "orders.csv", "id,amount\n1,2.5\n")
    upstream_connector = replace(files_connector(source), config={"path": str(source)})
    upstream = pipeline("upstream", upstream_connector.id, [])
    failing = pipeline("failing", "conn_gone", [])  # its step's connector does not exist: its runs fail
    defs = definitions(upstream, failing, connectors=[upstream_connector])

    def run(job: str) -> dg.ExecuteInProcessResult:
        return defs.resolve_job_def(pipeline_job_name("ns", job)).execute_in_process(
            instance=instance, raise_on_error=False
        )

    assert run("upstream").success  # before the trigger was added: starts nothing
    time.sleep(0.01)
    downstream = pipeline("downstream", upstream_connector.id, [trigger("on_success", "upstream")])
    defs = definitions(upstream, failing, downstream, connectors=[upstream_connector])
    name = "ns__downstream__on_success"
    first = evaluate(defs, name, instance)
    assert first.run_requests == []

    succeeded = run("upstream")
    assert succeeded.success and not run("failing").success
    result = evaluate(defs, name, instance, first.cursor)
    assert [r.run_key for r in result.run_requests] == [succeeded.run_id]
    assert json.loads(result.run_requests[0].tags[run_tags.TRIGGER_EVENT]) == {
        "type": "on_success",
        "pipeline_id": "upstream",
        "run_id": succeeded.run_id,
    }
    assert evaluate(defs, name, instance, result.cursor).run_requests == []
    replay = evaluate(defs, name, instance, first.cursor)
    assert [r.run_key for r in replay.run_requests] == [succeeded.run_id]


# on_table_update -----------------------------------------------------------------------------------------------


def append_rows(table_name: str, rows: list[int]) -> int:
    catalog = open_catalog(settings())
    catalog.create_namespace_if_not_exists("ns")
    data = pa.table({"id": pa.array(rows, pa.int64())})
    table = catalog.create_table_if_not_exists(("ns", table_name), schema=data.schema)
    table.append(data)
    return table.refresh().current_snapshot().snapshot_id


def test_on_table_update_after_an_iceberg_append(home, instance):
    older = append_rows("shop__orders", [1, 2])  # before the trigger: where the sensor starts from
    time.sleep(0.01)
    uploads = home / "uploads"
    spec = pipeline("p", "conn_shop", [trigger("on_table_update", "shop__orders")])
    defs = definitions(spec, connectors=[files_connector(uploads)])
    name = "ns__p__on_table_update"
    first = evaluate(defs, name, instance)
    assert first.run_requests == [] and json.loads(first.cursor)["snapshot_id"] == older

    newer = append_rows("shop__orders", [3])
    result = evaluate(defs, name, instance, first.cursor)
    assert [r.run_key for r in result.run_requests] == [f"shop__orders:{newer}"]
    assert json.loads(result.run_requests[0].tags[run_tags.TRIGGER_EVENT]) == {
        "type": "on_table_update",
        "table": "shop__orders",
        "snapshot_id": str(newer),
    }
    assert evaluate(defs, name, instance, result.cursor).run_requests == []
    assert [r.run_key for r in evaluate(defs, name, instance, first.cursor).run_requests] == [f"shop__orders:{newer}"]


def test_on_table_update_first_look_at_a_snapshot_newer_than_the_trigger(home, instance):
    spec = pipeline("p", "conn_shop", [trigger("on_table_update", "shop__customers")])
    defs = definitions(spec, connectors=[files_connector(home / "uploads")])
    name = "ns__p__on_table_update"
    missing = evaluate(defs, name, instance)  # no such table yet
    assert missing.run_requests == [] and "no snapshot" in missing.skip_message
    snapshot = append_rows("shop__customers", [1])
    result = evaluate(defs, name, instance, missing.cursor)
    assert [r.run_key for r in result.run_requests] == [f"shop__customers:{snapshot}"]
