"""`Idempotency-Key` bookkeeping: claim a key, store the first response, replay it on repeats.

Each call runs in its own short transaction so the claim is visible to a concurrent
repeat before the work starts, and survives the request's own rollback.

A key moves from `in_progress` to `done` (its 2xx stored), or is deleted when the request fails, so that
the client can retry. Except once Dagster has accepted a run launched under it: the key is then
`launched`, with the Dagster run id in `response_body`, and survives a failure; a retry does the request
again, and its launch returns that run instead of launching another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.errors import Conflict, Unprocessable, ValidationFailed
from rime_dagster.store.models import IdempotencyKey

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


@dataclass(frozen=True)
class Claimed:
    """The caller owns the key and does the work; `dagster_run_id`: the run an earlier attempt launched."""

    dagster_run_id: str | None = None


def validate_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationFailed.field("Idempotency-Key", f"Must be 1 to {MAX_KEY_LENGTH} printable characters.")
    return key


def in_progress() -> Conflict:
    """The 409 of a repeat that arrives while the first request with its key is still being served. Its `details`
    name the header, so that a client can tell it from a 409 of the request itself (a name taken, a stale plan):
    this one is worth retrying, under the same key, once the first request has had time to finish."""
    message = "A request with this Idempotency-Key is still being processed; retry shortly."
    return Conflict(message, details=[{"field": "Idempotency-Key", "message": "Still being processed."}])


def claim(
    sessions: sessionmaker[Session], ref: KeyRef, *, method: str, path: str, fingerprint: str, ttl: timedelta
) -> StoredResponse | Claimed:
    """The first response to replay, or Claimed: the caller now owns the key and does the work."""
    try:
        return _claim(sessions, ref, method=method, path=path, fingerprint=fingerprint, ttl=ttl)
    except IntegrityError:  # a concurrent repeat claimed it between our read and insert
        raise in_progress() from None


def _claim(
    sessions: sessionmaker[Session], ref: KeyRef, *, method: str, path: str, fingerprint: str, ttl: timedelta
) -> StoredResponse | Claimed:
    with sessions.begin() as session:
        row = session.get(IdempotencyKey, (ref.tenant_id, ref.principal_id, ref.key))
        if row is not None and row.created_at < datetime.now(UTC) - ttl:
            session.delete(row)
            session.flush()
            row = None
        if row is not None:
            if row.method != method or row.path != path or row.fingerprint != fingerprint:
                raise Unprocessable("This Idempotency-Key was already used with a different request.")
            if row.state == "launched":  # a request that failed after its launch: do it again, without launching
                return Claimed(dagster_run_id=row.response_body)
            status, body = row.response_status, row.response_body
            # A done key holds its response (`complete` stores both with the state).
            if row.state != "done" or status is None or body is None:
                raise in_progress()
            return StoredResponse(status=status, body=body)
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
    return Claimed()


def complete(sessions: sessionmaker[Session], ref: KeyRef, response: StoredResponse) -> None:
    with sessions.begin() as session:
        row = session.get(IdempotencyKey, (ref.tenant_id, ref.principal_id, ref.key))
        if row is not None:
            row.state = "done"
            row.response_status = response.status
            row.response_body = response.body


def release(sessions: sessionmaker[Session], ref: KeyRef) -> None:
    """Forget a claim whose request failed, so the client can retry with the same key; a key whose launch
    Dagster accepted stays, so that the retry returns that run."""
    with sessions.begin() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == ref.tenant_id,
                IdempotencyKey.principal_id == ref.principal_id,
                IdempotencyKey.key == ref.key,
                IdempotencyKey.state == "in_progress",
            )
        )


@dataclass
class _Launch:
    sessions: sessionmaker[Session]
    ref: KeyRef
    dagster_run_id: str | None


# The key of the request being served, for DagsterClient.launch_run (the route code in between need not know).
_launch: ContextVar[_Launch | None] = ContextVar("rime_idempotent_launch", default=None)


@contextmanager
def launches_under(sessions: sessionmaker[Session], ref: KeyRef, claimed: Claimed) -> Iterator[None]:
    """Run launches made in this block (in this context, worker threads included) belong to `ref`."""
    token = _launch.set(_Launch(sessions, ref, claimed.dagster_run_id))
    try:
        yield
    finally:
        _launch.reset(token)


def launched_before() -> str | None:
    """The Dagster run an earlier attempt with this request's key launched, if any: return it, launch nothing."""
    launch = _launch.get()
    return launch.dagster_run_id if launch else None


def record_launch(dagster_run_id: str) -> None:
    """Dagster accepted a run launched under the request's key (if it has one): tie the run to the key at once,
    in a transaction of its own, so that the key outlives whatever fails next."""
    launch = _launch.get()
    if launch is None:
        return
    with launch.sessions.begin() as session:
        row = session.get(IdempotencyKey, (launch.ref.tenant_id, launch.ref.principal_id, launch.ref.key))
        if row is not None and row.state == "in_progress":
            row.state, row.response_body = "launched", dagster_run_id
    launch.dagster_run_id = dagster_run_id
