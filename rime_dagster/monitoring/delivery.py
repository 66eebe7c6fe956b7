"""Sends the notification outbox (AlertDelivery rows queued by rime_dagster.monitoring.alerts) and retries it.

Two dispatchers send: a rule's sensor, right after the tick that fired an alert (its own alerts only), and the
delivery sensor every few seconds (whatever is due). A dispatcher first claims a row: one UPDATE that sets
`claimed_until` only where no live claim is (`claimed_until` NULL or past), checked by its row count, so two
dispatchers never send one row at the same time, on SQLite and PostgreSQL alike. A claim outlives the longest
send; a dispatcher that dies mid-send leaves a claim that expires, and the row is sent again (at least once:
receivers dedupe on the delivery id, which is the same on every attempt).

Each claimed row is sent on a thread of its own (up to `max_workers` at once) and its outcome is written as soon
as it is known, so a channel that hangs costs only its own timeout: the others are sent and recorded meanwhile.
A failed attempt waits `min(cap, base * 2**(attempts - 1))` seconds, with jitter, before the next; after
RIME_ALERT_DELIVERY_MAX_ATTEMPTS the delivery is `failed`.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from rime_dagster.monitoring.alerts import REASON_FIRED, alert_payload
from rime_dagster.monitoring.names import DELIVERY_SENSOR
from rime_dagster.monitoring.notify import DeliveryFailed, Notification, decrypt_secrets, scrub, send
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import Settings, get_settings
from rime_dagster.store.crypto import CredentialsUnreadable
from rime_dagster.store.models import Alert, AlertDelivery, AlertRule, NotificationChannel, Project
from rime_dagster.store.session import session_factory, unit_of_work
from rime_dagster.store.types import utcnow

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ColumnElement

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ESCALATION_PREFIX = "escalation:"
# Rows claimed by one pass at most: a backlog is worked off over several passes, each of bounded length.
BATCH = 200
# A pass starts no send after this long; the rows it claimed but did not start are released for the next pass.
# It keeps a sensor tick (a rule's, which sends right after evaluating, or the delivery sensor's) well inside
# Dagster's 60 s limit on one evaluation even when many channels hang at once.
PASS_SECONDS = 20.0
RELEASED = "released"
CHANNEL_DELETED = "The notification channel was deleted."


@dataclass(frozen=True)
class DeliveryReport:
    sent: int = 0  # delivered in this pass
    failed: int = 0  # gave up in this pass (RIME_ALERT_DELIVERY_MAX_ATTEMPTS, or the channel is gone)
    retrying: int = 0  # failed in this pass, to be tried again later
    waiting: int = 0  # still pending after this pass (not due yet, or claimed by another dispatcher)
    delivered_ids: tuple[str, ...] = field(default=(), repr=False)

    def summary(self) -> str:
        """What the delivery sensor's tick says, e.g. "sent 3, 1 failed, 2 waiting"."""
        parts = [f"sent {self.sent}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.retrying:
            parts.append(f"{self.retrying} to retry")
        parts.append(f"{self.waiting} waiting")
        return ", ".join(parts)


@dataclass(frozen=True)
class _Job:
    """One claimed row, with what sending it needs (loaded before the threads start)."""

    delivery_id: str
    claimed_until: datetime
    attempts: int
    channel_type: str | None  # None: the channel was deleted (the delivery fails at once)
    config: dict[str, Any]
    secrets: dict[str, Any]
    notification: Notification
    problem: str | None = None  # why it cannot be sent at all (counts as a failed attempt)


def lease(settings: Settings) -> timedelta:
    """How long a claim lasts: well past the longest send (notify's deadlines end a webhook after 3 timeouts and
    an SMTP exchange after its connection plus 4), so a live dispatcher's claim never expires under it."""
    return timedelta(seconds=30 + 12 * settings.alert_delivery_timeout_seconds)


def backoff(attempts: int, settings: Settings, *, rng: random.Random | None = None) -> timedelta:
    """The wait after the `attempts`-th failed attempt: `min(cap, base * 2**(attempts-1))`, with equal jitter
    (between half of it and all of it), so channels that failed together do not retry in lockstep."""
    base = settings.alert_delivery_backoff_seconds
    delay = min(settings.alert_delivery_backoff_max_seconds, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=delay / 2 + (rng or random).uniform(0, delay / 2))


def notification_kind(reason: str) -> tuple[str, int | None]:
    """(Notification.kind, escalation step) of a delivery's reason."""
    if reason == REASON_FIRED:
        return "alert_fired", None
    if reason.startswith(ESCALATION_PREFIX):
        step = reason[len(ESCALATION_PREFIX) :]
        return "alert_escalated", int(step) if step.isdigit() else None
    return f"alert_{reason}", None  # acknowledged, resolved


def deliver_due(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    alert_ids: Collection[str] | None = None,
    now: datetime | None = None,
    max_workers: int = 8,
    budget_seconds: float = PASS_SECONDS,
) -> DeliveryReport:
    """Claims the due pending deliveries (of `alert_ids` only, when given), sends each on its own thread and
    records attempts, outcome, last_error and next_attempt_at. `now`: the clock (tests inject it);
    `budget_seconds`: no send starts after this long (the rest waits for the next pass)."""
    deadline = time.monotonic() + budget_seconds
    clock = now or utcnow()
    if alert_ids is not None and not alert_ids:
        return DeliveryReport()
    claimed = _claim(sessions, settings, alert_ids, clock)
    jobs = _load(sessions, settings, claimed)
    outcomes: list[str] = []
    if jobs:
        with ThreadPoolExecutor(
            max_workers=max(1, min(max_workers, len(jobs))), thread_name_prefix="rime-notify"
        ) as pool:
            outcomes = list(pool.map(lambda job: _attempt(sessions, settings, job, now, deadline), jobs))
    waiting = _count_pending(sessions, alert_ids)
    return DeliveryReport(
        sent=outcomes.count(DELIVERED),
        failed=outcomes.count(FAILED),
        retrying=outcomes.count(PENDING),
        waiting=waiting,
        delivered_ids=tuple(
            job.delivery_id for job, outcome in zip(jobs, outcomes, strict=True) if outcome == DELIVERED
        ),
    )


def _scope(alert_ids: Collection[str] | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [AlertDelivery.status == PENDING]
    if alert_ids is not None:
        conditions.append(AlertDelivery.alert_id.in_(list(alert_ids)))
    return conditions


def _claim(
    sessions: sessionmaker[Session], settings: Settings, alert_ids: Collection[str] | None, now: datetime
) -> dict[str, datetime]:
    """The ids this pass claimed, with the claim's end (which the outcome's write checks: still ours)."""
    until = now + lease(settings)
    free = or_(AlertDelivery.claimed_until.is_(None), AlertDelivery.claimed_until < now)
    claimed: dict[str, datetime] = {}
    with unit_of_work(sessions) as session:
        due = session.scalars(
            select(AlertDelivery.id)
            .where(*_scope(alert_ids), AlertDelivery.next_attempt_at <= now, free)
            .order_by(AlertDelivery.next_attempt_at, AlertDelivery.id)
            .limit(BATCH)
        ).all()
        for delivery_id in due:
            # The row count says whether this UPDATE took the row: on PostgreSQL a concurrent claimer that
            # committed first makes the WHERE false when re-checked; on SQLite writers are serialized anyway.
            result = session.execute(
                update(AlertDelivery)
                .where(AlertDelivery.id == delivery_id, AlertDelivery.status == PENDING, free)
                .values(claimed_until=until)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                claimed[delivery_id] = until
    return claimed


def _load(sessions: sessionmaker[Session], settings: Settings, claimed: dict[str, datetime]) -> list[_Job]:
    if not claimed:
        return []
    with unit_of_work(sessions) as session:
        rows = session.execute(
            select(AlertDelivery, Alert, NotificationChannel, AlertRule.name, Project.name)
            .join(Alert, Alert.id == AlertDelivery.alert_id)
            .join(Project, Project.id == Alert.project_id)
            .outerjoin(NotificationChannel, NotificationChannel.id == AlertDelivery.channel_id)
            .outerjoin(AlertRule, AlertRule.id == Alert.rule_id)
            .where(AlertDelivery.id.in_(list(claimed)))
            .order_by(AlertDelivery.next_attempt_at, AlertDelivery.id)
        ).all()
        return [
            _job(settings, delivery, alert, channel, rule_name, project_name, claimed[delivery.id])
            for delivery, alert, channel, rule_name, project_name in rows
        ]


def _job(
    settings: Settings,
    delivery: AlertDelivery,
    alert: Alert,
    channel: NotificationChannel | None,
    rule_name: str | None,
    project_name: str,
    claimed_until: datetime,
) -> _Job:
    kind, step = notification_kind(delivery.reason)
    notification = Notification(
        kind=kind,
        alert=alert_payload(alert),
        project={"id": alert.project_id, "name": project_name},
        rule={"id": alert.rule_id, "name": rule_name or ""},
        delivery_id=delivery.id,
        escalation_step=step,
    )
    channel_type: str | None = None
    config: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    problem: str | None = CHANNEL_DELETED
    if channel is not None and channel.project_id == alert.project_id:
        channel_type, config, problem = channel.channel_type, dict(channel.config), None
        try:
            secrets = decrypt_secrets(channel, settings)
        except CredentialsUnreadable as exc:
            problem = str(exc)
    return _Job(delivery.id, claimed_until, delivery.attempts, channel_type, config, secrets, notification, problem)


def _attempt(
    sessions: sessionmaker[Session], settings: Settings, job: _Job, now: datetime | None, deadline: float
) -> str:
    """Sends one claimed row and writes its outcome at once; returns the row's new status (RELEASED: the pass
    ran out of time before this row's turn, so it is left for the next pass, unattempted)."""
    if time.monotonic() > deadline:
        _release(sessions, job)
        return RELEASED
    error: str | None = job.problem
    if error is None and job.channel_type is not None:
        try:
            outcome = send(job.channel_type, job.config, job.secrets, job.notification, settings=settings)
            log.info("notification %s delivered: %s", job.delivery_id, outcome)
        except DeliveryFailed as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not leave the row claimed and unexplained
            error = scrub(f"Unexpected error: {type(exc).__name__}: {exc}", map(str, job.secrets.values()))
            # The frames, not the exception's text: that could quote a secret (the message is scrubbed).
            trace = "".join(traceback.format_tb(exc.__traceback__))
            log.error("notification %s: %s\n%s", job.delivery_id, error, trace)
    return _record(sessions, settings, job, error, now or utcnow())


def _release(sessions: sessionmaker[Session], job: _Job) -> None:
    with unit_of_work(sessions) as session:
        session.execute(
            update(AlertDelivery)
            .where(AlertDelivery.id == job.delivery_id, AlertDelivery.claimed_until == job.claimed_until)
            .values(claimed_until=None)
            .execution_options(synchronize_session=False)
        )


def _record(sessions: sessionmaker[Session], settings: Settings, job: _Job, error: str | None, now: datetime) -> str:
    attempts = job.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "claimed_until": None}
    if error is None:
        status = DELIVERED
        values.update(status=DELIVERED, delivered_at=now, last_error=None)
    elif job.channel_type is None or attempts >= settings.alert_delivery_max_attempts:
        status = FAILED
        values.update(status=FAILED, last_error=error[:2000])
        log.warning("notification %s failed for good after %d attempts: %s", job.delivery_id, attempts, error)
    else:
        status = PENDING
        values.update(last_error=error[:2000], next_attempt_at=now + backoff(attempts, settings))
        log.info("notification %s failed (attempt %d), will retry: %s", job.delivery_id, attempts, error)
    with unit_of_work(sessions) as session:
        result = session.execute(
            update(AlertDelivery)
            .where(AlertDelivery.id == job.delivery_id, AlertDelivery.claimed_until == job.claimed_until)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("notification %s: claim lost before its outcome was written", job.delivery_id)
    return status


def _count_pending(sessions: sessionmaker[Session], alert_ids: Collection[str] | None) -> int:
    with unit_of_work(sessions) as session:
        return session.scalar(select(func.count()).select_from(AlertDelivery).where(*_scope(alert_ids))) or 0


def delivery_sensor() -> dg.SensorDefinition:
    """The sensor that sends what is due (retries, and anything a rule's sensor did not send at once)."""
    settings = get_settings()

    @dg.sensor(
        name=DELIVERY_SENSOR,
        minimum_interval_seconds=settings.alert_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends queued alert notifications (webhook, Slack, email) and retries failed ones with "
        "backoff. Never starts runs.",
    )
    def rime_alert_notifications(metadata_store: MetadataStoreResource) -> dg.SkipReason:
        report = deliver_due(session_factory(metadata_store.url()), settings=get_settings())
        return dg.SkipReason(report.summary())

    return rime_alert_notifications
