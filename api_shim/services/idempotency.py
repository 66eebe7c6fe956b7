"""`Idempotency-Key` bookkeeping: claim a key, store the first response, replay it on repeats.

Each call runs in its own short transaction so the claim is visible to a concurrent
repeat before the work starts, and survives the request's own rollback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.db.models import IdempotencyKey
from api_shim.errors import Conflict, Unprocessable, ValidationFailed

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class KeyRef:
    tenant_id: str
    principal_id: str
    key: str


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str


def validate_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationFailed.field("Idempotency-Key", f"Must be 1 to {MAX_KEY_LENGTH} printable characters.")
    return key


def claim(
    sessions: sessionmaker[Session], ref: KeyRef, *, method: str, path: str, fingerprint: str, ttl: timedelta
) -> StoredResponse | None:
    """None when the caller now owns the key and should do the work; otherwise the first response."""
    try:
        return _claim(sessions, ref, method=method, path=path, fingerprint=fingerprint, ttl=ttl)
    except IntegrityError:  # a concurrent repeat claimed it between our read and insert
        raise Conflict("A request with this Idempotency-Key is still being processed; retry shortly.") from None


def _claim(
    sessions: sessionmaker[Session], ref: KeyRef, *, method: str, path: str, fingerprint: str, ttl: timedelta
) -> StoredResponse | None:
    with sessions.begin() as session:
        row = session.get(IdempotencyKey, (ref.tenant_id, ref.principal_id, ref.key))
        if row is not None and row.created_at < datetime.now(UTC) - ttl:
            session.delete(row)
            session.flush()
            row = None
        if row is not None:
            if row.method != method or row.path != path or row.fingerprint != fingerprint:
                raise Unprocessable("This Idempotency-Key was already used with a different request.")
            if row.state != "done":
                raise Conflict("A request with this Idempotency-Key is still being processed; retry shortly.")
            return StoredResponse(status=row.response_status, body=row.response_body)
        session.add(
            IdempotencyKey(
                tenant_id=ref.tenant_id,
                principal_id=ref.principal_id,
                key=ref.key,
                method=method,
                path=path,
                fingerprint=fingerprint,
                state="in_progress",
            )
        )
    return None


def complete(sessions: sessionmaker[Session], ref: KeyRef, response: StoredResponse) -> None:
    with sessions.begin() as session:
        row = session.get(IdempotencyKey, (ref.tenant_id, ref.principal_id, ref.key))
        if row is not None:
            row.state = "done"
            row.response_status = response.status
            row.response_body = response.body


def release(sessions: sessionmaker[Session], ref: KeyRef) -> None:
    """Forget a claim whose request failed, so the client can retry with the same key."""
    with sessions.begin() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == ref.tenant_id,
                IdempotencyKey.principal_id == ref.principal_id,
                IdempotencyKey.key == ref.key,
            )
        )


def purge_expired(session: Session, *, ttl: timedelta) -> int:
    cutoff = datetime.now(UTC) - ttl
    ids = session.execute(select(IdempotencyKey.key).where(IdempotencyKey.created_at < cutoff)).all()
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return len(ids)
