"""Alerts: what the rules' sensors raised, listed and filtered; acknowledged and resolved by hand through
rime_dagster.monitoring.alerts, which writes the alert stream's event in the same transaction."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, NotFound
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.monitoring import AlertDeliveryResponse, AlertDetail, AlertList, AlertResponse
from rime_dagster.monitoring import alerts as lifecycle
from rime_dagster.store.models import Alert, AlertDelivery, Project

ALERTS = Listing(
    "alerts",
    {"fired_at": Alert.fired_at, "last_seen_at": Alert.last_seen_at},
    Alert.id,
    default_sort="fired_at",
)


def get_alert(session: Session, project: Project, alert_id: str) -> Alert:
    row = session.get(Alert, alert_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Alert", alert_id, " in this project")
    return row


def alert_response(alert: Alert) -> AlertResponse:
    return AlertResponse.model_validate(lifecycle.alert_payload(alert))


def list_page(
    session: Session,
    codec: CursorCodec,
    project: Project,
    page: PageRequest,
    *,
    status: str | None = None,
    severity: str | None = None,
    rule_id: str | None = None,
) -> AlertList:
    """Newest first by default; filters narrow the list (and bind its cursors)."""
    stmt = select(Alert).where(Alert.project_id == project.id)
    if status is not None:
        stmt = stmt.where(Alert.status == status)
    if severity is not None:
        stmt = stmt.where(Alert.severity == severity)
    if rule_id is not None:
        stmt = stmt.where(Alert.rule_id == rule_id)
    filters = {"project": project.id, "status": status, "severity": severity, "rule_id": rule_id}
    return ALERTS.page(session, stmt, page, codec, filters).as_page(AlertList, alert_response)


def describe(session: Session, project: Project, alert_id: str) -> AlertDetail:
    """The alert with its deliveries (the outbox's rows: attempts, outcome, the last error)."""
    alert = get_alert(session, project, alert_id)
    deliveries = session.scalars(
        select(AlertDelivery)
        .where(AlertDelivery.alert_id == alert.id)
        .order_by(AlertDelivery.created_at, AlertDelivery.id)
    )
    return AlertDetail(
        **alert_response(alert).model_dump(),
        deliveries=[
            AlertDeliveryResponse(
                id=d.id,
                channel_id=d.channel_id,
                reason=d.reason,
                status=d.status,  # type: ignore[arg-type]  # the outbox writes only these three
                attempts=d.attempts,
                last_error=d.last_error,
                next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                delivered_at=d.delivered_at,
                created_at=d.created_at,
            )
            for d in deliveries
        ],
    )


def acknowledge(session: Session, project: Project, alert_id: str, *, actor: str) -> AlertResponse:
    """Acknowledges a firing alert (its escalation stops). Idempotent: an alert already acknowledged or
    resolved comes back as it is."""
    alert = get_alert(session, project, alert_id)
    lifecycle.acknowledge(session, alert, actor=actor)
    session.flush()
    return alert_response(alert)


def resolve(session: Session, project: Project, alert_id: str, *, actor: str) -> AlertResponse:
    """Resolves an open alert (firing or acknowledged); Conflict when it is resolved already."""
    alert = get_alert(session, project, alert_id)
    try:
        lifecycle.resolve(session, alert, actor=actor)
    except lifecycle.AlertAlreadyResolved:
        raise Conflict(f"Alert {alert.id} is already resolved.") from None
    session.flush()
    return alert_response(alert)
