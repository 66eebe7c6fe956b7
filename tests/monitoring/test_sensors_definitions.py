"""The monitoring definitions: a sensor per alert rule with a readable name and its status, the escalation and
delivery sensors, in `monitoring_definitions` and in the whole `rime` code location built from a store."""

from __future__ import annotations

import importlib

import dagster as dg
import pytest

from rime_dagster.monitoring.definitions import monitoring_definitions
from rime_dagster.monitoring.names import DELIVERY_SENSOR, ESCALATION_SENSOR
from rime_dagster.platform import run_tags
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import get_settings
from rime_dagster.specs import AlertRuleSpec, PlatformSpecs, load_specs
from tests.conftest import migrated_sqlite
from tests.monitoring.rule_support import make_store


@pytest.fixture
def location(home):
    """The `rime` code location's module: importing it builds the definitions of RIME_HOME's store."""
    migrated_sqlite(home / "home" / "rime.db")
    return importlib.import_module("rime_dagster.definitions")


def spec(slug: str, *, enabled: bool = True, namespace: str = "sales") -> AlertRuleSpec:
    return AlertRuleSpec(f"rule_{slug}", "project_1", namespace, slug.replace("_", " "), slug, "run_failed", enabled)


def test_a_sensor_per_rule_with_its_name_status_and_interval():
    defs = monitoring_definitions(PlatformSpecs(alert_rules=[spec("orders_failed"), spec("stale", enabled=False)]))
    sensors = {s.name: s for s in defs.sensors or []}
    assert set(sensors) == {ESCALATION_SENSOR, DELIVERY_SENSOR, "sales__orders_failed__alert", "sales__stale__alert"}
    assert sensors["sales__orders_failed__alert"].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["sales__stale__alert"].default_status == dg.DefaultSensorStatus.STOPPED
    assert sensors[ESCALATION_SENSOR].default_status == dg.DefaultSensorStatus.RUNNING
    interval = get_settings().alert_sensor_interval_seconds
    assert interval == 1  # every daemon loop (rime_dagster/settings.py says why)
    assert {s.minimum_interval_seconds for s in sensors.values()} == {interval}
    rule = sensors["sales__orders_failed__alert"]
    assert rule.tags[run_tags.ALERT_RULE_ID] == "rule_orders_failed"
    assert "orders failed" in (rule.description or "") and "run_failed" in (rule.description or "")


def test_one_broken_rule_leaves_the_others():
    broken = spec("fine", namespace="not a valid name!")  # Dagster refuses the sensor's name
    defs = monitoring_definitions(PlatformSpecs(alert_rules=[broken, spec("orders_failed")]))
    assert {s.name for s in defs.sensors or []} == {ESCALATION_SENSOR, DELIVERY_SENSOR, "sales__orders_failed__alert"}


def test_the_code_location_has_the_rules_sensors(db_url, location):
    store = make_store(db_url)
    store.add_rule({"type": "run_failed"}, name="Any failure")
    store.add_rule({"type": "freshness", "table": "crm__orders", "max_age_minutes": 60}, name="Orders fresh")
    resource = MetadataStoreResource(database_url=db_url)
    defs = location.build_definitions(load_specs(resource), resource)
    repository = defs.get_repository_def()
    names = {s.name for s in repository.sensor_defs}
    assert {ESCALATION_SENSOR, DELIVERY_SENSOR, "sales__any_failure__alert", "sales__orders_fresh__alert"} <= names
    # The sensors' resources resolve from the location's own (metadata_store).
    sensor = repository.get_sensor_def("sales__any_failure__alert")
    assert "metadata_store" in sensor.required_resource_keys


@pytest.mark.slow
def test_a_rule_sensor_ticks_in_the_code_location(db_url, location):
    from tests.monitoring.rule_support import pipeline_tags, run_job

    store = make_store(db_url)
    rule_id = store.add_rule({"type": "run_failed"}, name="Any failure")
    resource = MetadataStoreResource(database_url=db_url)
    defs = location.build_definitions(load_specs(resource), resource)
    with dg.DagsterInstance.ephemeral() as instance:  # in memory: nothing reads it through a second instance
        run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        # As the code server evaluates it: with the location's top-level resources.
        repository = defs.get_repository_def()
        context = dg.build_sensor_context(
            instance=instance, repository_def=repository, resources=repository.get_top_level_resources()
        )
        result = defs.get_sensor_def("sales__any_failure__alert")(context)
    assert result.skip_message.startswith("1 fired")
    [alert] = store.alerts(rule_id)
    assert alert.target == "pipeline:pipe_orders"
