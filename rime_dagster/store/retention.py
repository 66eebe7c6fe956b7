"""Retention of the metadata store's short-lived records (run by the housekeeping job)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rime_dagster.store.models import IdempotencyKey


def purge_expired(session: Session, *, ttl: timedelta) -> int:
    cutoff = datetime.now(UTC) - ttl
    ids = session.execute(select(IdempotencyKey.key).where(IdempotencyKey.created_at < cutoff)).all()
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return len(ids)
