"""Table retention policies in Dagster: each is a schedule of its project's table maintenance job; a tick's run
request carries the policy's operations with cut-offs counted back from the tick, and executing the job with it
(in process, on a real Iceberg table) compacts, expires snapshots and removes orphan files as the only writer."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from rime_dagster.code_location import build_definitions
from rime_dagster.connectors.names import connector_pool
from rime_dagster.resources import IcebergCatalogResource, MetadataStoreResource
from rime_dagster.specs import PlatformSpecs, ProjectSpec, RetentionPolicySpec
from rime_dagster.tables.jobs import table_maintenance_definitions
from rime_dagster.tables.names import maintenance_job_name
from rime_dagster.tables.retention import maintenance_configs
from tests.tables.conftest import IDENT, NAMESPACE, TABLE, checksum
from tests.tables.test_jobs import PROJECT, output_metadata, shop_connector

SCHEDULE = f"table_retention_{NAMESPACE}__{TABLE}"
ODD_NAME = f"table_retention_other__dbt_model_x_{hashlib.sha256(b'dbt.model-x').hexdigest()[:8]}"
TICK = datetime(2031, 5, 4, 3, 0, tzinfo=UTC)


def policy(**fields) -> RetentionPolicySpec:
    values = {
        "id": "ret_orders",
        "project_id": PROJECT.id,
        "namespace": NAMESPACE,
        "table": TABLE,
        "schedule": "0 3 * * *",
        "enabled": True,
        "retain_last": 2,
        "older_than_seconds": 86_400,
    }
    return RetentionPolicySpec(**(values | fields))


def evaluate(defs: dg.Definitions, at: datetime) -> dg.RunRequest:
    [schedule] = [s for s in defs.schedules or [] if isinstance(s, dg.ScheduleDefinition) and s.name == SCHEDULE]
    with dg.build_schedule_context(scheduled_execution_time=at) as context:
        [request] = schedule.evaluate_tick(context).run_requests or []
    return request


def test_the_code_location_has_a_schedule_per_policy_stopped_while_disabled():
    other = ProjectSpec(id="proj_2", name="Other", namespace="other")
    specs = PlatformSpecs(
        projects=[PROJECT, other],
        retention_policies=[
            policy(),
            policy(id="ret_events", table="web__events", enabled=False, schedule="*/15 * * * *"),
            policy(id="ret_other", project_id=other.id, namespace="other", table="dbt.model-x"),
            policy(id="ret_other_2", project_id=other.id, namespace="other", table="dbt_model_x"),
        ],
    )
    defs = build_definitions(specs, MetadataStoreResource())
    repository = defs.get_repository_def()
    schedules = {s.name: s for s in repository.schedule_defs if s.name.startswith("table_retention_")}
    assert set(schedules) == {
        SCHEDULE,
        f"table_retention_{NAMESPACE}__web__events",
        ODD_NAME,
        "table_retention_other__dbt_model_x",
    }
    orders = schedules[SCHEDULE]
    assert orders.job_name == maintenance_job_name(NAMESPACE) and orders.cron_schedule == "0 3 * * *"
    assert orders.execution_timezone == "UTC" and orders.tags["rime/retention_policy_id"] == "ret_orders"
    assert orders.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedules[f"table_retention_{NAMESPACE}__web__events"].default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedules[ODD_NAME].job_name == "table_maintenance_other"
    assert schedules[ODD_NAME].tags["rime/retention_policy_id"] == "ret_other"  # not dbt_model_x's name


def test_a_tick_requests_the_policys_operations_in_order_with_cutoffs_from_the_tick():
    defs = table_maintenance_definitions(
        PROJECT, [], [policy(compact=True, compact_min_files=3, remove_orphan_files=True)]
    )
    request = evaluate(defs, TICK)
    config = request.run_config["ops"][f"maintain_table_{NAMESPACE}"]["config"]
    assert config == {
        "retention_policy_id": "ret_orders",
        "operations": [
            {"table": TABLE, "operation": "compact", "min_files": 3},
            {
                "table": TABLE,
                "operation": "expire_snapshots",
                "retain_last": 2,
                "older_than": "2031-05-03T03:00:00+00:00",
            },
            {"table": TABLE, "operation": "remove_orphan_files"},  # the operation's own default cut-off
        ],
    }
    assert request.tags == {
        "dagster/schedule_name": SCHEDULE,
        "rime/project_id": PROJECT.id,
        "rime/kind": "table_maintenance",
        "rime/iceberg_table": TABLE,
        "rime/table_operation": "retention",
        "rime/retention_policy_id": "ret_orders",
        "rime/trigger": "schedule",
    }
    # Only the expiry, and only what the policy sets: retain_last alone keeps the operation's default age.
    only_retain = table_maintenance_definitions(PROJECT, [], [policy(older_than_seconds=None)])
    config = evaluate(only_retain, TICK).run_config["ops"]
    assert config[f"maintain_table_{NAMESPACE}"]["config"]["operations"] == [
        {"table": TABLE, "operation": "expire_snapshots", "retain_last": 2}
    ]


@pytest.mark.slow  # a real run: compaction, expiry and orphan removal (~1.5 s)
def test_a_scheduled_run_compacts_expires_and_removes_orphans_as_the_only_writer(small_files, home):
    before = checksum(small_files)
    assert len(small_files.load_table(IDENT).metadata.snapshots) == 5
    spec = policy(retain_last=1, older_than_seconds=60, compact=True, remove_orphan_files=True)
    spec = RetentionPolicySpec(**(spec.__dict__ | {"orphan_older_than_seconds": 3600}))
    maintenance = table_maintenance_definitions(PROJECT, [shop_connector(home)], [spec])
    defs = dg.Definitions.merge(maintenance, dg.Definitions(resources={"iceberg": IcebergCatalogResource()}))
    # A tick an hour from now: every snapshot and every file written so far is older than its cut-offs.
    request = evaluate(maintenance, datetime.now(UTC) + timedelta(hours=1))
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(maintenance_job_name(NAMESPACE)).execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, raise_on_error=False
    )
    assert result.success
    metadata = output_metadata(result)
    assert (metadata["compact.files_before"], metadata["compact.files_after"]) == (5, 1)
    assert metadata["expire_snapshots.expired_snapshots"] == 5  # the five appends; the compaction's is kept
    assert metadata["remove_orphan_files.removed_files"] >= 5  # the small data files, and their manifests
    table = small_files.load_table(IDENT)
    assert [s.snapshot_id for s in table.metadata.snapshots] == [table.current_snapshot().snapshot_id]
    assert checksum(small_files) == before
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert f"Writing as the only writer of pool {connector_pool('conn_shop')}." in messages
    assert f"{TABLE}: expired 5 snapshots" in messages


def test_a_retention_run_keeps_to_one_table():
    assert [c.operation for c in maintenance_configs({"table": TABLE, "operation": "compact"})] == ["compact"]
    mixed = {"operations": [{"table": TABLE, "operation": "compact"}, {"table": "b", "operation": "compact"}]}
    for config in (mixed, {"operations": []}):
        with pytest.raises(ValueError, match="same table"):
            maintenance_configs(config)
