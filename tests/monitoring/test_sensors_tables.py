"""Table and dbt test conditions (freshness, row_count, dbt_test_failed) evaluated against a real Iceberg SQL
catalog on tmp_path (tables landed by the platform's own landing code) and a Dagster instance of each test's own
(in memory: nothing here reads it from a second instance, and it opens in a fraction of an on-disk one's time)."""

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest

from rime_dagster.connectors.landing import compact_table, land_table
from rime_dagster.monitoring.alerts import FIRING, RESOLVED
from rime_dagster.monitoring.sensors import evaluate_rule, rule_sensor
from rime_dagster.platform import run_tags
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.specs import AlertRuleSpec
from rime_dagster.store.types import utcnow
from tests.monitoring.rule_support import Store, make_store

# Each test lands Iceberg tables and writes to a Dagster instance of its own: a second or more.
pytestmark = pytest.mark.slow

SCHEMA = pa.schema([pa.field("id", pa.int64())])
TABLE = "crm__orders"


@pytest.fixture
def store(db_url) -> Store:
    return make_store(db_url)


@pytest.fixture
def catalog(tmp_path):
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("test", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=f"file://{tmp_path}/wh")
    catalog.create_namespace("sales")
    return catalog


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """The test's own instance: the tests' assets (and their materializations and checks) have the same keys."""
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def land(catalog, ids: list[int], *, mode: str = "incremental", connector: bool = False, name: str = TABLE):
    """Lands rows as a connector sync does (one snapshot; an incremental sync of nothing commits none)."""
    batch = pa.record_batch([pa.array(ids, pa.int64())], schema=SCHEMA)
    properties = {"rime.connector_id": "conn_crm", "rime.source_table": "orders"} if connector else None
    return land_table(
        catalog,
        ("sales", name),
        SCHEMA,
        [batch] if ids else [],
        mode=mode,  # type: ignore[arg-type]
        cursor_field="id" if mode == "incremental" else None,
        run_id=str(uuid.uuid4()),
        properties=properties,
    )


def snapshot_time(catalog, name: str = TABLE) -> datetime:
    snapshot = catalog.load_table(("sales", name)).current_snapshot()
    return datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC)


def evaluate(store, rule_id, instance, catalog, now):
    return evaluate_rule(store.url, rule_id, instance, lambda: catalog, now=now)


class TestFreshness:
    def test_fires_for_a_stale_table_and_clears_after_the_next_sync(self, store, instance, catalog):
        land(catalog, [1, 2])
        rule_id = store.add_rule({"type": "freshness", "table": TABLE, "max_age_minutes": 10}, name="Orders fresh")
        landed = snapshot_time(catalog)
        assert evaluate(store, rule_id, instance, catalog, landed + timedelta(minutes=9)).fired == []

        stale = evaluate(store, rule_id, instance, catalog, landed + timedelta(minutes=11))
        assert len(stale.fired) == 1
        [alert] = store.alerts(rule_id)
        assert alert.target == f"table:{TABLE}" and alert.status == FIRING
        assert alert.context["table"] == TABLE and alert.context["max_age_minutes"] == 10
        assert evaluate(store, rule_id, instance, catalog, landed + timedelta(minutes=12)).fired == []
        assert store.alerts(rule_id)[0].occurrences == 1

        land(catalog, [3])
        fresh = evaluate(store, rule_id, instance, catalog, snapshot_time(catalog) + timedelta(minutes=1))
        assert fresh.resolved == [alert.id]
        assert store.alerts(rule_id)[0].status == RESOLVED

    def test_a_table_that_never_landed_is_stale_from_the_rule_creation(self, store, instance, catalog):
        created = utcnow()
        rule_id = store.add_rule(
            {"type": "freshness", "table": "crm__missing", "max_age_minutes": 10}, name="Missing", created_at=created
        )
        assert evaluate(store, rule_id, instance, catalog, created + timedelta(minutes=5)).fired == []
        assert len(evaluate(store, rule_id, instance, catalog, created + timedelta(minutes=11)).fired) == 1
        [alert] = store.alerts(rule_id)
        assert "never landed" in alert.message and alert.context["updated_at"] is None

    def test_a_sync_that_found_nothing_new_keeps_a_connector_table_fresh(self, store, instance, catalog):
        """An incremental sync with no new rows commits no snapshot, but its asset is materialized."""
        land(catalog, [1], connector=True)
        rule_id = store.add_rule({"type": "freshness", "table": TABLE, "max_age_minutes": 10}, name="Orders fresh")
        assert len(evaluate(store, rule_id, instance, catalog, snapshot_time(catalog) + timedelta(minutes=11)).fired)
        before = catalog.load_table(("sales", TABLE)).current_snapshot().snapshot_id
        assert land(catalog, [], connector=True).rows_written == 0
        assert catalog.load_table(("sales", TABLE)).current_snapshot().snapshot_id == before
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["sales", "crm", "orders"])))
        fresh = evaluate(store, rule_id, instance, catalog, utcnow() + timedelta(minutes=1))
        assert len(fresh.resolved) == 1

    def test_a_compaction_is_not_an_update(self, store, instance, catalog):
        land(catalog, [1])
        land(catalog, [2])  # two files: something to compact
        data_changed = snapshot_time(catalog)
        # Half a second: a snapshot's time is the wall clock's, so the compaction must come that much later.
        rule_id = store.add_rule({"type": "freshness", "table": TABLE, "max_age_minutes": 0.5 / 60}, name="Fresh")
        time.sleep(0.8)
        assert compact_table(catalog, ("sales", TABLE), run_id="run_compact").snapshot_id is not None
        compacted = snapshot_time(catalog)
        assert compacted - data_changed > timedelta(seconds=0.5)
        # A quarter of a second after the compaction, a second or more after the last data change: stale.
        outcome = evaluate(store, rule_id, instance, catalog, compacted + timedelta(seconds=0.25))
        assert len(outcome.fired) == 1


class TestRowCount:
    def test_outside_bounds_fires_after_a_sync_and_inside_clears(self, store, instance, catalog):
        land(catalog, [1, 2, 3])
        rule_id = store.add_rule({"type": "row_count", "table": TABLE, "min": 5, "max": 10}, name="Orders rows")
        now = utcnow()
        outcome = evaluate(store, rule_id, instance, catalog, now)
        assert len(outcome.fired) == 1
        [alert] = store.alerts(rule_id)
        assert alert.context["row_count"] == 3 and alert.context["min"] == 5
        assert evaluate(store, rule_id, instance, catalog, now).fired == []  # same snapshot: nothing new

        land(catalog, [4, 5, 6])
        assert evaluate(store, rule_id, instance, catalog, now).resolved == [alert.id]

        land(catalog, list(range(7, 20)))  # 19 rows > max
        assert len(evaluate(store, rule_id, instance, catalog, now).fired) == 1
        alerts = store.alerts(rule_id)
        assert [a.status for a in alerts] == [RESOLVED, FIRING] and alerts[1].context["row_count"] == 19

    def test_a_table_not_landed_yet_raises_nothing(self, store, instance, catalog):
        rule_id = store.add_rule({"type": "row_count", "table": TABLE, "min": 1}, name="Orders rows")
        assert evaluate(store, rule_id, instance, catalog, utcnow()).fired == []

    def test_the_sensor_opens_the_deployments_catalog(self, store, instance, home):
        """Through the sensor: the catalog is the deployment's (RIME_HOME), opened once per process."""
        from rime_dagster.monitoring.sensors import deployment_catalog

        catalog = deployment_catalog()
        assert deployment_catalog() is catalog
        catalog.create_namespace("sales")
        land(catalog, [1])
        rule_id = store.add_rule({"type": "row_count", "table": TABLE, "min": 2}, name="Orders rows")
        sensor = rule_sensor(
            AlertRuleSpec(rule_id, store.project_id, "sales", "Orders rows", "orders_rows", "row_count", True)
        )
        context = dg.build_sensor_context(
            instance=instance, resources={"metadata_store": MetadataStoreResource(database_url=store.url)}
        )
        assert sensor(context).skip_message.startswith("1 fired")


# dbt tests are asset checks of the dbt project's multi-asset, whose op is tagged with the dbt project's id
# (rime_dagster/dbt/assets.py): the same shape here, without running dbt.
MODEL = dg.AssetKey(["sales", "shop", "stg_orders"])
ELSEWHERE = dg.AssetKey(["elsewhere", "shop", "stg_orders"])  # another project's model


class DbtRun(dg.Config):
    passed: bool = True


def dbt_assets(dbt_project_id: str, name: str) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name=name,
        specs=[dg.AssetSpec(MODEL), dg.AssetSpec(ELSEWHERE)],
        check_specs=[
            dg.AssetCheckSpec("not_null_stg_orders_id", asset=MODEL),
            dg.AssetCheckSpec("unique_id", asset=ELSEWHERE),
        ],
        op_tags={run_tags.DBT_PROJECT_ID: dbt_project_id},
    )
    def run(config: DbtRun) -> Iterator[object]:
        yield dg.Output(None, output_name="sales__shop__stg_orders")
        yield dg.Output(None, output_name="elsewhere__shop__stg_orders")
        yield dg.AssetCheckResult(asset_key=MODEL, check_name="not_null_stg_orders_id", passed=config.passed)
        yield dg.AssetCheckResult(asset_key=ELSEWHERE, check_name="unique_id", passed=config.passed)

    return run


SHOP = dbt_assets("dbt_shop", "sales__shop")
REPOSITORY = dg.Definitions(assets=[SHOP]).get_repository_def()


def run_dbt(instance, store: Store, *, passed: bool) -> None:
    result = dg.materialize(
        [SHOP],
        instance=instance,
        run_config=dg.RunConfig({"sales__shop": DbtRun(passed=passed)}),
        tags={run_tags.PROJECT_ID: store.project_id, run_tags.DBT_PROJECT_ID: "dbt_shop"},
        raise_on_error=False,
    )
    assert result.success


def evaluate_dbt(store, rule_id, instance):
    return evaluate_rule(store.url, rule_id, instance, lambda: pytest.fail("no catalog"), repository=REPOSITORY)


class TestDbtTestFailed:
    @pytest.mark.parametrize("condition", [{}, {"dbt_project_id": "dbt_shop"}], ids=["project", "dbt_project"])
    def test_a_failed_test_fires_and_a_later_pass_clears(self, store, instance, condition):
        rule_id = store.add_rule({"type": "dbt_test_failed", **condition}, name="dbt tests")
        run_dbt(instance, store, passed=False)
        outcome = evaluate_dbt(store, rule_id, instance)
        assert len(outcome.fired) == 1  # the other project's failed check is not this rule's
        [alert] = store.alerts(rule_id)
        assert alert.target == "check:sales/shop/stg_orders:not_null_stg_orders_id"
        assert alert.context["check"] == "not_null_stg_orders_id" and alert.context["dagster_run_id"]
        assert evaluate_dbt(store, rule_id, instance).fired == []
        assert list(store.cursor(rule_id)["seen"]) == ["sales/shop/stg_orders:not_null_stg_orders_id"]

        run_dbt(instance, store, passed=True)
        assert evaluate_dbt(store, rule_id, instance).resolved == [alert.id]

    def test_another_dbt_projects_tests_are_not_watched(self, store, instance):
        rule_id = store.add_rule({"type": "dbt_test_failed", "dbt_project_id": "dbt_other"}, name="dbt tests")
        run_dbt(instance, store, passed=False)
        assert evaluate_dbt(store, rule_id, instance).fired == []

    def test_results_from_before_the_rule_raise_nothing(self, store, instance):
        run_dbt(instance, store, passed=False)
        rule_id = store.add_rule({"type": "dbt_test_failed"}, name="dbt tests", created_at=utcnow())
        assert evaluate_dbt(store, rule_id, instance).fired == []
        run_dbt(instance, store, passed=False)
        assert len(evaluate_dbt(store, rule_id, instance).fired) == 1
