"""Escalation: an alert still firing (nobody acknowledged it) after a step's delay goes to that step's channels.

Steps are `[{after_minutes, channel_ids}]`, counted from when the alert fired. `Alert.escalation_step` is how
many steps were sent; each step is queued once (and the outbox's unique (alert, channel, reason) key makes a
second queueing of it fail rather than send twice). Acknowledging or resolving an alert stops it: only
`firing` alerts escalate. The escalation sensor runs `escalate_due` every tick, then sends what it queued.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
from sqlalchemy import select
from sqlalchemy.orm import Session

from rime_dagster.monitoring import alerts
from rime_dagster.monitoring.delivery import ESCALATION_PREFIX, deliver_due
from rime_dagster.monitoring.names import ESCALATION_SENSOR
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import get_settings
from rime_dagster.store.models import Alert, AlertDelivery, AlertRule, EscalationPolicy, Project
from rime_dagster.store.session import read_scope, session_factory, unit_of_work
from rime_dagster.store.types import utcnow


def escalation_reason(step: int) -> str:
    """The delivery reason of escalation step `step` (1-based): `escalation:1`."""
    return f"{ESCALATION_PREFIX}{step}"


def due_alerts(session: Session, now: datetime, *, tenant_id: str | None = None) -> list[tuple[Alert, list]]:
    """Firing alerts (of `tenant_id`'s projects, when given) whose policy's next step is due, with the steps."""
    query = (
        select(Alert, EscalationPolicy.steps)
        .join(AlertRule, AlertRule.id == Alert.rule_id)
        .join(EscalationPolicy, EscalationPolicy.id == AlertRule.escalation_policy_id)
        .where(Alert.status == alerts.FIRING)
        .order_by(Alert.fired_at, Alert.id)
    )
    if tenant_id is not None:
        query = query.join(Project, Project.id == Alert.project_id).where(Project.tenant_id == tenant_id)
    return [(alert, steps) for alert, steps in session.execute(query).tuples() if _next_step_due(alert, steps, now)]


def _next_step_due(alert: Alert, steps: list, now: datetime) -> bool:
    if alert.escalation_step >= len(steps):
        return False
    delay = timedelta(minutes=float(steps[alert.escalation_step].get("after_minutes", 0)))
    return now >= alert.fired_at + delay


def escalate_due(session: Session, now: datetime, *, tenant_id: str | None = None) -> list[AlertDelivery]:
    """Queues the escalation steps that are due, once each, for every firing alert whose rule has a policy
    (of `tenant_id`'s projects, when given); returns the deliveries queued. `now` is the clock. Every step
    whose delay has passed is sent, in order: a sensor that was stopped for a while catches up."""
    queued: list[AlertDelivery] = []
    for alert, steps in due_alerts(session, now, tenant_id=tenant_id):
        while _next_step_due(alert, steps, now):
            step = steps[alert.escalation_step]
            alert.escalation_step += 1
            queued += alerts.queue_deliveries(
                session, alert, step.get("channel_ids") or [], escalation_reason(alert.escalation_step), now=now
            )
    return queued


def escalation_sensor() -> dg.SensorDefinition:
    """Escalates firing alerts whose policy's next step is due, and sends those notifications at once."""

    @dg.sensor(
        name=ESCALATION_SENSOR,
        minimum_interval_seconds=get_settings().alert_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends unacknowledged alerts to their escalation policy's next channels once each step's "
        "delay has passed. Never starts runs.",
    )
    def rime_alert_escalations(metadata_store: MetadataStoreResource) -> dg.SkipReason:
        settings = get_settings()
        now = utcnow()
        with read_scope(metadata_store.url()) as session:  # most ticks find nothing: no write lock for them
            if not due_alerts(session, now, tenant_id=settings.tenant):
                return dg.SkipReason("nothing to escalate")
        sessions = session_factory(metadata_store.url())
        with unit_of_work(sessions) as session:
            queued = escalate_due(session, now, tenant_id=settings.tenant)
            alert_ids = sorted({d.alert_id for d in queued})
        if not alert_ids:
            return dg.SkipReason("nothing to escalate")
        report = deliver_due(sessions, settings=settings, alert_ids=alert_ids)
        return dg.SkipReason(f"escalated {len(queued)} notifications of {len(alert_ids)} alerts; {report.summary()}")

    return rime_alert_escalations
