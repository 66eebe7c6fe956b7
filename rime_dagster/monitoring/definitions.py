"""Monitoring -> Dagster definitions: a sensor per alert rule, the escalation sensor and the delivery sensor."""

from __future__ import annotations

import logging

import dagster as dg

from rime_dagster.monitoring.delivery import delivery_sensor
from rime_dagster.monitoring.escalation import escalation_sensor
from rime_dagster.monitoring.sensors import rule_sensor
from rime_dagster.specs import PlatformSpecs

log = logging.getLogger(__name__)


def monitoring_definitions(specs: PlatformSpecs) -> dg.Definitions:
    """One sensor per alert rule (rime_dagster.monitoring.names.rule_sensor_name), the escalation sensor and
    the delivery sensor. A rule whose sensor fails to build is left out and logged; the others are not affected."""
    sensors = [escalation_sensor(), delivery_sensor()]
    for spec in specs.alert_rules:
        try:
            sensors.append(rule_sensor(spec))
        except Exception:
            log.exception("skipping alert rule %s: its sensor failed to build", spec.id)
    return dg.Definitions(sensors=sensors)
