"""A `limits` storage in the metadata store (`rime-store://`): rate limits shared by every API process.

With one API process the limits live in its memory (memory://). With several (RIME_API_WORKERS > 1) each would
count only the requests it served, and a client spread over N workers would get N times its quota; no redis runs
beside Rime by default, but the metadata store is shared by all of them already. This storage keeps one row per
(limit, caller, window) in `rate_limit_counters`.

The strategy is the sliding-window counter (limits' SlidingWindowCounterRateLimiter): two fixed windows, the
previous one's count weighted by how much of it still overlaps the moving window. A SQL row per window is what a
database can count atomically in one statement; the moving window (the in-memory default) needs every hit's
timestamp, a row per request. A hit is one short write transaction: an upsert that adds to the current window's
row and returns its new count, a read of the previous window's row, and a rollback when the weighted sum is over
the limit, so a refused hit counts for nothing and two processes can never both take the last unit (PostgreSQL
holds the row's lock until the transaction ends, SQLite the database's write lock). Rows live two windows and are
purged, at most once every PURGE_SECONDS per process, by whichever process counts next.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Any

from limits.storage import SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow
from sqlalchemy import Connection, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from rime_dagster.store.models import RateLimitCounter
from rime_dagster.store.session import engine_for

SCHEME = "rime-store"
PURGE_SECONDS = 60.0
_counters = RateLimitCounter.__table__


class _OverLimit(Exception):
    """Rolls the hit's transaction back: the increment it made is undone."""


def _row_key(key: str) -> str:
    """The key as stored: limits' own when it fits the column, else its digest (a long IPv6 caller's)."""
    return key if len(key) <= 255 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class StoreRateLimitStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """`storage_from_string("rime-store://", metadata_url=...)`: counters in the metadata store of that URL."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        metadata_url = options.get("metadata_url")
        if not isinstance(metadata_url, str):
            raise ValueError(f"{SCHEME}:// needs the metadata store's URL (metadata_url=...)")
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self.engine = engine_for(metadata_url)
        self.readers = engine_for(metadata_url, read_only=True)
        upsert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        self._upsert = upsert
        self._purged_at = 0.0
        self._purge_lock = threading.Lock()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    # Counting -------------------------------------------------------------------------------------------
    def _add(self, conn: Connection, key: str, amount: int, expires_at: float, now: float) -> int:
        """Adds `amount` to the row of `key` (a fresh row when there is none or it expired); its new count."""
        statement = self._upsert(_counters).values(key=_row_key(key), count=amount, expires_at=expires_at)
        live = _counters.c.expires_at > now
        counted = statement.on_conflict_do_update(
            index_elements=[_counters.c.key],
            set_={
                "count": case((live, _counters.c.count + amount), else_=amount),
                "expires_at": case((live, _counters.c.expires_at), else_=expires_at),
            },
        ).returning(_counters.c.count)
        return int(conn.execute(counted).scalar_one())

    def _counts(self, conn: Connection, keys: list[str], now: float) -> dict[str, tuple[int, float]]:
        stored = {_row_key(key): key for key in keys}
        rows = conn.execute(
            select(_counters.c.key, _counters.c.count, _counters.c.expires_at).where(
                _counters.c.key.in_(list(stored)), _counters.c.expires_at > now
            )
        ).all()
        return {stored[row[0]]: (int(row[1]), float(row[2])) for row in rows}

    def _purge(self, now: float) -> None:
        if now - self._purged_at < PURGE_SECONDS or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._purged_at = now
            with self.engine.begin() as conn:
                conn.execute(delete(_counters).where(_counters.c.expires_at <= now))
        finally:
            self._purge_lock.release()

    # The sliding-window counter (what the API's limiter uses) ---------------------------------------------
    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        self._purge(now)
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        try:
            with self.engine.begin() as conn:
                # The current window's row first: from here this transaction holds it (and on SQLite the
                # database), so the previous window's count read next cannot move under the decision.
                current = self._add(conn, current_key, amount, now + 2 * expiry, now)
                previous = self._counts(conn, [previous_key], now).get(previous_key, (0, 0.0))[0]
                weighted = previous * self._previous_ttl(previous, expiry, now) / expiry + current
                if math.floor(weighted) > limit:
                    raise _OverLimit
        except _OverLimit:
            return False
        return True

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        with self.readers.connect() as conn:
            counts = self._counts(conn, [previous_key, current_key], now)
        previous = counts.get(previous_key, (0, 0.0))[0]
        current = counts.get(current_key, (0, 0.0))[0]
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, self._previous_ttl(previous, expiry, now), current, current_ttl

    @staticmethod
    def _previous_ttl(previous: int, expiry: int, now: float) -> float:
        """How much of the previous window the moving window still covers, in seconds (as limits' own storages)."""
        return 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, time.time())
        with self.engine.begin() as conn:
            conn.execute(delete(_counters).where(_counters.c.key.in_([_row_key(previous_key), _row_key(current_key)])))

    # The fixed window (limits' base interface) -------------------------------------------------------------
    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        with self.engine.begin() as conn:
            return self._add(conn, key, amount, now + expiry, now)

    def get(self, key: str) -> int:
        now = time.time()
        with self.readers.connect() as conn:
            return self._counts(conn, [key], now).get(key, (0, 0.0))[0]

    def get_expiry(self, key: str) -> float:
        now = time.time()
        with self.readers.connect() as conn:
            return self._counts(conn, [key], now).get(key, (0, now))[1]

    def check(self) -> bool:
        try:
            with self.readers.connect() as conn:
                conn.execute(select(_counters.c.key).limit(1))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        with self.engine.begin() as conn:
            return conn.execute(delete(_counters)).rowcount

    def clear(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(_counters).where(_counters.c.key == _row_key(key)))
