"""Alerts' lifecycle, shared by the rule sensors (firing, auto-resolving) and the API (acknowledge, resolve).

Every change to an alert is written in the caller's transaction together with what follows from it: the
alert stream's event (AlertEvent) and the notifications to send (AlertDelivery rows, the outbox). So an alert
never exists without its notifications queued, and a rolled-back tick leaves neither. Functions take the
session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rime_dagster.settings import get_settings
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Alert, AlertDelivery, AlertEvent, AlertRule, Project
from rime_dagster.store.types import utcnow

SEVERITIES = ("critical", "high", "medium", "low", "info")
FIRING, ACKNOWLEDGED, RESOLVED = "firing", "acknowledged", "resolved"
STATUSES = (FIRING, ACKNOWLEDGED, RESOLVED)
OPEN = (FIRING, ACKNOWLEDGED)
FIRED, ACKNOWLEDGED_EVENT, RESOLVED_EVENT = "alert_fired", "alert_acknowledged", "alert_resolved"
# Who resolved an alert whose condition cleared (a later successful run, fresh data).
SYSTEM_ACTOR = "system"
REASON_FIRED = "fired"


class AlertAlreadyResolved(Exception):
    """Resolving an alert that is already resolved (the API answers 409)."""


def open_key(rule_id: str, target: str) -> str:
    return f"{rule_id}|{target}"


def run_id_of(dagster_run_id: str) -> str:
    """The API's run id of a Dagster run (CONTRACT: `run_` + the hex id, no dashes)."""
    return "run_" + dagster_run_id.replace("-", "")


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The alert as the API returns it and the alert stream sends it."""
    dagster_run_id = alert.context.get("dagster_run_id")
    return {
        "id": alert.id,
        "project_id": alert.project_id,
        "rule_id": alert.rule_id,
        "severity": alert.severity,
        "status": alert.status,
        "title": alert.title,
        "message": alert.message,
        "target": alert.target,
        "context": dict(alert.context),
        "occurrences": alert.occurrences,
        "run_id": run_id_of(dagster_run_id) if dagster_run_id else None,
        "dagster_url": f"{get_settings().dagster_ui_base}/runs/{dagster_run_id}" if dagster_run_id else None,
        "fired_at": _rfc3339(alert.fired_at),
        "last_seen_at": _rfc3339(alert.last_seen_at),
        "acknowledged_at": _rfc3339(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": _rfc3339(alert.resolved_at),
        "resolved_by": alert.resolved_by,
    }


def _rfc3339(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def open_alert(session: Session, rule_id: str, target: str) -> Alert | None:
    return session.scalar(select(Alert).where(Alert.open_key == open_key(rule_id, target)))


def fire(
    session: Session,
    rule: AlertRule,
    *,
    target: str,
    title: str,
    message: str,
    context: Mapping[str, Any],
    now: datetime | None = None,
) -> Alert | None:
    """Raises an alert for `target`, unless one is open for this rule and target: then that one counts one
    more occurrence (and keeps its first context). Returns the new alert, or None when it was a repeat."""
    now = now or utcnow()
    existing = open_alert(session, rule.id, target)
    if existing is None:
        alert = Alert(
            id=new_id("alert"),
            project_id=rule.project_id,
            rule_id=rule.id,
            severity=rule.severity,
            status=FIRING,
            target=target,
            open_key=open_key(rule.id, target),
            title=title[:300],
            message=message,
            context=dict(context),
            occurrences=1,
            fired_at=now,
            last_seen_at=now,
            escalation_step=0,
        )
        try:
            with session.begin_nested():  # another evaluator may have opened it a moment ago
                session.add(alert)
        except IntegrityError:
            existing = open_alert(session, rule.id, target)
            if existing is None:
                raise
        else:
            queue_deliveries(session, alert, rule.channel_ids, REASON_FIRED, now=now)
            record_event(session, alert, FIRED, now=now)
            return alert
    existing.occurrences += 1
    existing.last_seen_at = now
    existing.context = {**existing.context, "last": dict(context)}
    return None


def clear(session: Session, rule_id: str, target: str, *, reason: str, now: datetime | None = None) -> Alert | None:
    """The condition cleared (a later run succeeded, the table is fresh again): resolves the open alert, if any."""
    alert = open_alert(session, rule_id, target)
    if alert is None:
        return None
    # The reason first: the alert stream's event carries the alert as it is when resolved.
    alert.context = {**alert.context, "resolution": reason}
    _resolve(session, alert, actor=SYSTEM_ACTOR, now=now or utcnow())
    return alert


def acknowledge(session: Session, alert: Alert, *, actor: str, now: datetime | None = None) -> bool:
    """Acknowledges a firing alert (stops its escalation). Idempotent: False when it was already
    acknowledged or resolved."""
    if alert.status != FIRING:
        return False
    now = now or utcnow()
    alert.status = ACKNOWLEDGED
    alert.acknowledged_at = now
    alert.acknowledged_by = actor
    record_event(session, alert, ACKNOWLEDGED_EVENT, now=now)
    return True


def resolve(session: Session, alert: Alert, *, actor: str, now: datetime | None = None) -> None:
    """Resolves an open alert by hand; AlertAlreadyResolved if it is resolved."""
    if alert.status == RESOLVED:
        raise AlertAlreadyResolved(alert.id)
    _resolve(session, alert, actor=actor, now=now or utcnow())


def resolve_rule_alerts(session: Session, rule_id: str, *, reason: str, now: datetime | None = None) -> int:
    """Resolves every open alert of a rule (the rule was deleted): nothing is left firing with no one to clear it."""
    alerts = session.scalars(select(Alert).where(Alert.rule_id == rule_id, Alert.status.in_(OPEN))).all()
    for alert in alerts:
        alert.context = {**alert.context, "resolution": reason}
        _resolve(session, alert, actor=SYSTEM_ACTOR, now=now or utcnow())
    return len(alerts)


def _resolve(session: Session, alert: Alert, *, actor: str, now: datetime) -> None:
    alert.status = RESOLVED
    alert.open_key = None
    alert.resolved_at = now
    alert.resolved_by = actor
    record_event(session, alert, RESOLVED_EVENT, now=now)


def queue_deliveries(
    session: Session, alert: Alert, channel_ids: Iterable[str], reason: str, *, now: datetime | None = None
) -> list[AlertDelivery]:
    """Adds one pending delivery per channel (the outbox); the senders pick them up."""
    now = now or utcnow()
    deliveries = [
        AlertDelivery(
            id=new_id("delivery"),
            alert_id=alert.id,
            channel_id=channel_id,
            reason=reason,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for channel_id in dict.fromkeys(channel_ids)
    ]
    session.add_all(deliveries)
    return deliveries


def record_event(session: Session, alert: Alert, event_type: str, *, now: datetime | None = None) -> None:
    """Adds the alert stream's event, with the alert as it is now."""
    tenant_id = session.scalar(select(Project.tenant_id).where(Project.id == alert.project_id))
    session.add(
        AlertEvent(
            tenant_id=tenant_id or "",
            project_id=alert.project_id,
            alert_id=alert.id,
            event_type=event_type,
            payload=alert_payload(alert),
            created_at=now or utcnow(),
        )
    )
