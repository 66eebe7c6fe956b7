"""Retention of the metadata store's short-lived records (run by the housekeeping job)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from rime_dagster.store.models import AlertEvent, IdempotencyKey


def purge_expired(session: Session, *, ttl: timedelta) -> int:
    cutoff = datetime.now(UTC) - ttl
    ids = session.execute(select(IdempotencyKey.key).where(IdempotencyKey.created_at < cutoff)).all()
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return len(ids)


def purge_alert_events(session: Session, *, ttl: timedelta, now: datetime | None = None) -> int:
    """Deletes the alert stream's events older than `ttl`, except the newest event: on SQLite a row's id is the
    largest id + 1, so an emptied table would hand out ids again from 1, below the cursor of a stream reader that
    has been running since before the purge, and that reader would never see them."""
    cutoff = (now or datetime.now(UTC)) - ttl
    newest = session.scalar(select(func.max(AlertEvent.id)))
    if newest is None:
        return 0
    doomed = (AlertEvent.created_at < cutoff) & (AlertEvent.id < newest)
    count = session.scalar(select(func.count()).select_from(AlertEvent).where(doomed)) or 0
    session.execute(delete(AlertEvent).where(doomed))
    return count
