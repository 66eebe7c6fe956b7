"""How monitoring objects are named in Dagster: one place, used by the API and the code location (no Dagster import)."""

from __future__ import annotations

from rime_dagster.platform.names import dagster_name

# The platform's own sensors (one per code location): they send queued notifications and escalate alerts.
DELIVERY_SENSOR = "rime_alert_notifications"
ESCALATION_SENSOR = "rime_alert_escalations"


def rule_sensor_name(namespace: str, rule_slug: str) -> str:
    """An alert rule's sensor: `demo__orders_failed__alert` (project namespace, the rule's slug)."""
    return dagster_name(namespace, rule_slug, "alert")
