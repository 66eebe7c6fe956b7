"""The iceberg_namespace and iceberg_table providers against a real SQL catalog and file warehouse on tmp_path:
declarations validated per field, actual state read back in the declaration's shape (a no-op compares equal),
changes made for real (a column added is a schema change, the data stays), drift behind the platform's back seen."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from rime_dagster.infrastructure.providers import ConfigInvalid, Declared, ProviderError, Target, provider
from tests.conftest import make_settings

TABLE = {
    "schema": [
        {"name": "id", "type": "LONG", "required": True},
        {"name": "placed_at", "type": "timestamptz"},
        {"name": "amount", "type": "decimal(12,2)", "doc": "In the order's currency."},
        {"name": "region", "type": "string"},
    ],
    "partition_spec": [{"source": "placed_at", "transform": "day"}, {"source": "region", "transform": "bucket[8]"}],
    "sort_order": [{"source": "id", "direction": "desc"}],
    "properties": {"write.parquet.compression-codec": "zstd"},
}


@pytest.fixture
def target(tmp_path) -> Target:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{warehouse}")
    catalog.create_namespace("proj")
    return Target(project_id="proj_1", namespace="proj", settings=make_settings(tmp_path), catalog=lambda: catalog)


def declared(resource_type: str, name: str, config: dict) -> Declared:
    stored, secrets = provider(resource_type).validate(config)
    return Declared("res_1", resource_type, provider(resource_type).validate_name(name), stored, secrets)


def plan(target: Target, resource: Declared) -> tuple[str, dict | None, dict]:
    p = provider(resource.resource_type)
    actual, desired = p.read_actual(target, resource), p.desired(resource)
    return p.diff(desired, actual), actual, desired


def test_a_namespace_is_created_under_the_projects_and_its_declared_properties_compared(target):
    marts = declared("iceberg_namespace", "marts", {"properties": {"owner": "analytics"}})
    assert plan(target, marts)[0] == "create"
    provider("iceberg_namespace").create(target, marts)
    assert ("proj", "marts") in target.catalog().list_namespaces("proj")
    assert plan(target, marts)[0] == "no-op"  # Iceberg's own properties (location, exists) are not compared
    target.catalog().update_namespace_properties(("proj", "marts"), updates={"owner": "someone-else"})
    action, actual, desired = plan(target, marts)
    assert action == "update" and actual == {"properties": {"owner": "someone-else"}} and desired != actual
    provider("iceberg_namespace").update(target, marts, actual)
    assert plan(target, marts)[0] == "no-op"
    provider("iceberg_namespace").delete(target, marts)
    assert plan(target, marts)[0] == "create"


def test_a_partitioned_sorted_table_is_created_as_declared_then_a_no_op(target):
    orders = declared("iceberg_table", "orders", TABLE)
    assert orders.config["schema"][0]["type"] == "long" and orders.config["schema"][2]["type"] == "decimal(12, 2)"
    assert plan(target, orders)[0] == "create"
    provider("iceberg_table").create(target, orders)
    table = target.catalog().load_table(("proj", "orders"))
    assert [str(f.transform) for f in table.spec().fields] == ["day", "bucket[8]"]
    assert table.sort_order().fields[0].direction.value == "desc"
    assert table.properties["write.parquet.compression-codec"] == "zstd"
    assert table.schema().find_field("id").required
    action, actual, desired = plan(target, orders)
    assert action == "no-op" and actual == desired


def test_a_column_added_to_the_declaration_is_one_update_applied_as_a_schema_change(target):
    # Partitioned by identity only: pyiceberg writes day or bucket[N] partitions only with pyiceberg-core (not a
    # dependency here); the declaration, plan and schema change are the same.
    daily = {**TABLE, "partition_spec": [{"source": "region", "transform": "identity"}]}
    orders = declared("iceberg_table", "orders", daily)
    provider("iceberg_table").create(target, orders)
    table = target.catalog().load_table(("proj", "orders"))
    table.append(
        pa.Table.from_pylist(
            [{"id": 1, "placed_at": None, "amount": None, "region": "eu"}], schema=table.schema().as_arrow()
        )
    )
    wider = declared(
        "iceberg_table", "orders", {**daily, "schema": [*TABLE["schema"], {"name": "channel", "type": "string"}]}
    )
    action, actual, desired = plan(target, wider)
    assert action == "update"
    assert [c["name"] for c in desired["schema"] if c not in actual["schema"]] == ["channel"]
    provider("iceberg_table").update(target, wider, actual)
    assert plan(target, wider)[0] == "no-op"
    rows = target.catalog().load_table(("proj", "orders")).scan().to_arrow().to_pylist()
    assert rows == [{"id": 1, "placed_at": None, "amount": None, "region": "eu", "channel": None}]


def test_a_table_dropped_behind_the_platforms_back_plans_as_create(target):
    orders = declared("iceberg_table", "orders", TABLE)
    provider("iceberg_table").create(target, orders)
    target.catalog().drop_table(("proj", "orders"))
    assert plan(target, orders)[0] == "create"


def test_what_iceberg_refuses_is_a_provider_error_and_changes_nothing(target):
    orders = declared("iceberg_table", "orders", TABLE)
    provider("iceberg_table").create(target, orders)
    narrower = {**TABLE, "schema": [{"name": "id", "type": "int", "required": True}, *TABLE["schema"][1:]]}
    resource = declared("iceberg_table", "orders", narrower)
    action, actual, _ = plan(target, resource)
    assert action == "update"
    with pytest.raises(ProviderError, match="Iceberg refused"):
        provider("iceberg_table").update(target, resource, actual)
    assert plan(target, orders)[0] == "no-op"  # the table is as it was


def test_a_table_in_a_declared_namespace_depends_on_it(target):
    events = declared("iceberg_table", "events", {**TABLE, "namespace": "marts"})
    assert provider("iceberg_table").depends_on(events) == [("iceberg_namespace", "marts")]
    with pytest.raises(ProviderError, match="Namespace 'marts' does not exist"):
        provider("iceberg_table").create(target, events)
    provider("iceberg_namespace").create(target, declared("iceberg_namespace", "marts", {}))
    provider("iceberg_table").create(target, events)
    assert target.catalog().load_table(("proj", "marts", "events")).name() == ("proj", "marts", "events")
    assert ("proj", "events") not in target.catalog().list_tables("proj")


@pytest.mark.parametrize(
    ("resource_type", "name", "config", "fields"),
    [
        ("iceberg_table", "orders", {**TABLE, "schema": []}, ["config.schema"]),
        ("iceberg_table", "orders", {**TABLE, "schema": [{"name": "id", "type": "bigint"}]}, ["config.schema.0.type"]),
        (
            "iceberg_table",
            "orders",
            {**TABLE, "partition_spec": [{"source": "nope"}]},
            ["config.partition_spec.0.source"],
        ),
        (
            "iceberg_table",
            "orders",
            {**TABLE, "partition_spec": [{"source": "id", "transform": "bucket[0]"}]},
            ["config.partition_spec.0.transform"],
        ),
        (
            "iceberg_table",
            "orders",
            {**TABLE, "sort_order": [{"source": "id", "direction": "up"}]},
            ["config.sort_order.0.direction"],
        ),
        (
            "iceberg_table",
            "orders",
            {**TABLE, "schema": [*TABLE["schema"], {"name": "id", "type": "long"}]},
            ["config.schema.4.name"],
        ),
        ("iceberg_table", "orders", {**TABLE, "colour": "blue"}, ["config.colour"]),
        ("iceberg_table", "shop__orders", TABLE, ["name"]),
        ("iceberg_table", "Orders", TABLE, ["name"]),
        ("iceberg_namespace", "marts", {"properties": {"a": 1}}, ["config.properties.a"]),
    ],
)
def test_bad_declarations_are_refused_per_field(resource_type, name, config, fields):
    p = provider(resource_type)
    with pytest.raises(ConfigInvalid) as refused:
        p.validate_name(name)
        p.validate(config)
    assert sorted(d["field"] for d in refused.value.details) == fields
