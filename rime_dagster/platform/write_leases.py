"""One writer of a pool's Iceberg tables at a time, held in the metadata store.

Dagster's pools queue a second sync behind the first (rime_dagster/platform/pools.py), and the Dagster UI shows it
waiting. But on Dagster's SQLite storage, the embedded default, two runs that ask for a pool's one slot at the same
moment can both get it: the claim reads a free slot, then takes it with an update that does not check it is still
free, and SQLite ignores the `FOR UPDATE` meant to keep the second reader out. Seen here: two syncs of one connector
started together, and the later one's step started 1.8 s before the earlier one's ended
(tests/dagster/test_sync_concurrency.py, on a busy machine). Two incremental syncs that both read the old cursor
would land the new rows twice.

So a step that writes a pool's tables also holds the pool's write lease: a row of the metadata store, taken by one
insert or one conditional update (atomic on SQLite, whose transactions begin IMMEDIATE here, and on PostgreSQL),
renewed by a thread while the step runs, released at its end, and taken over by another run only once it has
expired: its holder died without releasing it. A waiter that can tell its holder is gone (`holder_gone`: its run
ended and its worker process no longer lives, as after a SIGKILL) takes it over at once instead of waiting for the
expiry; a run that ended while its worker still writes (a forced termination) keeps it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from rime_dagster.settings import get_settings
from rime_dagster.store.models import WriteLease
from rime_dagster.store.session import session_scope
from rime_dagster.store.types import utcnow

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # a holder that stopped renewing for this long has died: another run may take over
RENEW_SECONDS = 15.0
POLL_SECONDS = 0.5


@contextmanager
def write_lease(
    pool: str,
    holder: str,
    *,
    url: str | None = None,
    on_wait: Callable[[str], None] | None = None,
    holder_gone: Callable[[str], bool] | None = None,
) -> Iterator[None]:
    """Holds `pool`'s write lease for the block, waiting for it first if another holder has it; `on_wait` is called
    once, with that holder, when the wait begins. `holder_gone(holder)`: True when that holder can no longer be
    writing (its run ended and its process died): its lease is then taken over without waiting for the expiry."""
    url = url or get_settings().metadata_url
    waiting = False
    while not claim(url, pool, holder):
        other = current_holder(url, pool)
        if not waiting and on_wait is not None:
            on_wait(other or "another run")
        waiting = True
        if (
            other is not None
            and holder_gone is not None
            and holder_gone(other)
            and _take_over(url, pool, other, holder)
        ):
            log.warning("took over the write lease of %s from %s: its run ended and its process is gone", pool, other)
            break
        time.sleep(POLL_SECONDS)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(url, pool, holder, stop), name="rime-write-lease-renewer", daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with session_scope(url) as session:
            session.execute(delete(WriteLease).where(WriteLease.pool == pool, WriteLease.holder == holder))


def claim(url: str, pool: str, holder: str) -> bool:
    """Takes the lease if nobody holds it, this holder already does, or its holder let it expire."""
    now = utcnow()
    until = now + timedelta(seconds=LEASE_SECONDS)
    try:
        with session_scope(url) as session:
            session.add(WriteLease(pool=pool, holder=holder, expires_at=until))
        return True
    except IntegrityError:  # held, or held once and not released: take it only from this holder or a dead one
        pass
    with session_scope(url) as session:
        taken = session.execute(
            update(WriteLease)
            .where(WriteLease.pool == pool, or_(WriteLease.holder == holder, WriteLease.expires_at < now))
            .values(holder=holder, expires_at=until)
        )
        return bool(getattr(taken, "rowcount", 0))


def _take_over(url: str, pool: str, gone: str, holder: str) -> bool:
    """Takes the lease from `gone` if it still holds it (one conditional update: one taker wins)."""
    with session_scope(url) as session:
        taken = session.execute(
            update(WriteLease)
            .where(WriteLease.pool == pool, WriteLease.holder == gone)
            .values(holder=holder, expires_at=utcnow() + timedelta(seconds=LEASE_SECONDS))
        )
        return bool(getattr(taken, "rowcount", 0))


def current_holder(url: str, pool: str) -> str | None:
    with session_scope(url) as session:
        return session.scalar(select(WriteLease.holder).where(WriteLease.pool == pool))


def _renew(url: str, pool: str, holder: str, stop: threading.Event) -> None:
    while not stop.wait(RENEW_SECONDS):
        try:
            with session_scope(url) as session:
                session.execute(
                    update(WriteLease)
                    .where(WriteLease.pool == pool, WriteLease.holder == holder)
                    .values(expires_at=utcnow() + timedelta(seconds=LEASE_SECONDS))
                )
        except Exception:  # the store is briefly unreachable: the next renewal tries again, well before expiry
            log.warning("could not renew the write lease of %s", pool, exc_info=True)
