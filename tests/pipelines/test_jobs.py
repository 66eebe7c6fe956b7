"""Pipeline jobs executed in process on an ephemeral Dagster instance: order, skip-on-failure, nesting."""

from __future__ import annotations

import dagster as dg

from rime_dagster.pipelines.jobs import Resources, pipeline_definitions
from rime_dagster.pipelines.names import pipeline_job_name
from rime_dagster.resources import IcebergCatalogResource
from rime_dagster.specs import ConnectorSpec, PipelineSpec


def connector(tmp_path, id: str, folder: str) -> ConnectorSpec:
    return ConnectorSpec(
        id=id,
        project_id="proj_1",
        namespace="ns",
        name=id,
        connector_type="files",
        config={"path": str(tmp_path / folder)},
        credentials_encrypted=None,
        tables=["orders"],
        schedule=None,
        paused=False,
        sync_mode="full_refresh",
        cursor_fields={},
        table_prefix=id,
        upload_dir=tmp_path / "uploads",
    )


def pipeline(id: str, steps: list[dict], **extra) -> PipelineSpec:
    fields = {"variables": {}, "schedule": None, "paused": False, "retries": 0, "timeout_seconds": None, **extra}
    return PipelineSpec(id=id, project_id="proj_1", namespace="ns", name=id, slug=id, steps=steps, **fields)


def with_resources(defs: dg.Definitions) -> dg.Definitions:
    """As rime_dagster.definitions merges them."""
    return dg.Definitions.merge(defs, dg.Definitions(resources={"iceberg": IcebergCatalogResource()}))


def run(defs: dg.Definitions, pipeline_id: str):
    job = defs.resolve_job_def(pipeline_job_name("ns", pipeline_id))
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def started_steps(result) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}


def test_sync_then_maintenance_and_skip_on_failure(home):
    (home / "good").mkdir()
    (home / "good" / "orders.csv").write_text("id,amount\n1,2.5\n2,3.5\n")
    (home / "empty").mkdir()  # the `broken` connector's folder has no orders file: its sync fails
    conns = {"good": connector(home, "good", "good"), "broken": connector(home, "broken", "empty")}
    spec = pipeline(
        "pipe_a",
        [
            {"id": "sync", "type": "connector_sync", "config": {"connector_id": "good"}},
            {
                "id": "tidy",
                "type": "table_maintenance",
                "config": {"table": "good__orders", "operation": "expire_snapshots", "older_than_days": 0},
                "depends_on": ["sync"],
            },
            {"id": "bad-sync", "type": "connector_sync", "config": {"connector_id": "broken"}},
            {
                "id": "after_bad",
                "type": "connector_sync",
                "config": {"connector_id": "good"},
                "depends_on": ["bad-sync"],
            },
        ],
        timeout_seconds=600,
    )
    defs = with_resources(pipeline_definitions(spec, Resources(conns, {}, {spec.id: spec})))
    job = defs.resolve_job_def(pipeline_job_name(spec.namespace, spec.slug))
    assert job.tags["dagster/max_runtime"] == "600" and job.tags["rime/pipeline_id"] == "pipe_a"
    result = run(defs, spec.id)
    assert not result.success
    # after_bad (and the join op) never start: their upstream failed.
    assert started_steps(result) == {"step_sync", "step_tidy", "step_bad_sync"}
    materialized = [m.asset_key.path for m in result.asset_materializations_for_node("step_sync")]
    assert materialized == [["ns", "good", "orders"]]
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["step_bad_sync"]


def test_a_pipeline_step_embeds_the_other_pipeline(home):
    (home / "good").mkdir()
    (home / "good" / "orders.csv").write_text("id\n1\n")
    conns = {"good": connector(home, "good", "good")}
    inner = pipeline("pipe_inner", [{"id": "sync", "type": "connector_sync", "config": {"connector_id": "good"}}])
    outer = pipeline(
        "pipe_outer",
        [
            {"id": "first", "type": "connector_sync", "config": {"connector_id": "good"}},
            {"id": "nested", "type": "pipeline", "config": {"pipeline_id": "pipe_inner"}, "depends_on": ["first"]},
            {"id": "last", "type": "connector_sync", "config": {"connector_id": "good"}, "depends_on": ["nested"]},
        ],
        schedule="0 4 * * *",
    )
    resources = Resources(conns, {}, {inner.id: inner, outer.id: outer})
    defs = with_resources(pipeline_definitions(outer, resources))
    assert (
        defs.resolve_schedule_def(f"{pipeline_job_name(outer.namespace, outer.slug)}_schedule").cron_schedule
        == "0 4 * * *"
    )
    result = run(defs, outer.id)
    assert result.success
    order = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert order.index("step_first") < order.index("step_nested.step_sync") < order.index("step_last")


def test_compact_step_rewrites_the_table(home):
    (home / "good").mkdir()
    (home / "good" / "orders.csv").write_text("id\n1\n2\n")
    conns = {"good": connector(home, "good", "good")}
    spec = pipeline(
        "pipe_c",
        [
            {"id": "sync", "type": "connector_sync", "config": {"connector_id": "good"}},
            {
                "id": "compact",
                "type": "table_maintenance",
                "config": {"table": "good__orders", "operation": "compact", "min_files": 2},
                "depends_on": ["sync"],
            },
        ],
    )
    defs = with_resources(pipeline_definitions(spec, Resources(conns, {}, {spec.id: spec})))
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(pipeline_job_name(spec.namespace, spec.slug)).execute_in_process(instance=instance)
    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.step_key == "step_compact"]
    assert any("good__orders: 1 data file(s), nothing to compact" in m for m in messages), messages


def test_steps_writing_tables_share_their_pools(home):
    """A connector's syncs and the maintenance of its tables share its pool; a dbt table's maintenance has its own."""
    conns = {"good": connector(home, "good", "good")}
    spec = pipeline(
        "pipe_p",
        [
            {"id": "sync", "type": "connector_sync", "config": {"connector_id": "good"}},
            {"id": "tidy", "type": "table_maintenance", "config": {"table": "good__orders", "operation": "compact"}},
            {
                "id": "tidy_dbt",
                "type": "table_maintenance",
                "config": {"table": "shop__revenue", "operation": "compact"},
            },
        ],
    )
    defs = with_resources(pipeline_definitions(spec, Resources(conns, {}, {spec.id: spec})))
    job = defs.resolve_job_def(pipeline_job_name(spec.namespace, spec.slug))
    pools = {node: job.graph.node_named(node).definition.pool for node in ("step_sync", "step_tidy", "step_tidy_dbt")}
    assert pools == {
        "step_sync": "connector-sync:good",
        "step_tidy": "connector-sync:good",
        "step_tidy_dbt": "table-maintenance:ns.shop__revenue",
    }
    assert job.graph.node_named("done").definition.pool is None


def test_a_sync_never_lands_two_source_tables_in_one_iceberg_table(home):
    """Whatever the caller passes (the API refuses such selections), colliding tables fail, the others sync."""
    from dataclasses import replace

    (home / "good").mkdir()
    (home / "good" / "people.csv").write_text("id\n1\n")
    conns = {"good": replace(connector(home, "good", "good"), tables=["Orders", "people", "orders"])}
    spec = pipeline("pipe_n", [{"id": "sync", "type": "connector_sync", "config": {"connector_id": "good"}}])
    defs = with_resources(pipeline_definitions(spec, Resources(conns, {}, {spec.id: spec})))
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(pipeline_job_name(spec.namespace, spec.slug)).execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not result.success
    materialized = [m.asset_key.path for m in result.asset_materializations_for_node("step_sync")]
    assert materialized == [["ns", "good", "people"]]
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "'Orders' and 'orders' would both land in Iceberg table 'good__orders'" in failure
    catalog = IcebergCatalogResource().catalog()
    assert [t[-1] for t in catalog.list_tables("ns")] == ["good__people"]
