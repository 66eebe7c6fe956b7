"""The alert stream: one reader of `alert_events` per API process, shared by every `/ws/alerts` client.

Each change to an alert is written with an AlertEvent row, in the same transaction, by whichever process made it
(a rule sensor in the Dagster daemon, any API process: rime_dagster.monitoring.alerts). So the stream reads that
table, not an in-process channel, and the clients of every API process see every change. The first client starts
the reader: it notes the newest event's id, then every RIME_ALERT_STREAM_POLL_SECONDS reads the rows after it, in
one query whatever the number of clients, on a read-only session (on SQLite it never takes the write lock a writer
would wait for), and hands each event to the queues of its tenant's clients. The last client leaving stops it.

Ids that commit out of order (PostgreSQL): a sequence hands ids out at insert, so a transaction holding id 10 may
commit after one holding id 11 was read. Ids the reader moves past without having read them are kept as gaps and
asked for again by every read for GAP_SECONDS (`EventCursor`): they are either still in flight (they arrive in a
later read and are sent then) or were rolled back (they never will). Every id is sent at most once.

A client too slow to take its events (QUEUE_LIMIT behind) is dropped with an error message, as run_watch drops
its clients: the reader never waits for anyone. The stream outlives the check made when it opened, so the reader
also checks its clients' tokens again every RECHECK_SECONDS (one query for all) and ends the feed of a revoked or
expired token or a disabled user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, Row, func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from api_shim import metrics
from api_shim.services.auth import still_valid
from rime_dagster.store.models import AlertEvent

if TYPE_CHECKING:
    from api_shim.services.auth import Principal

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000  # events a client may fall behind before it is dropped
PAGE = 500  # rows per read; a full page is followed by another read as soon as the clients have taken it
ROOM_CHECK_SECONDS = 0.005
# How long an id the reader moved past is looked for: longer than any transaction that writes alert events
# (a sensor tick, an API request) stays open after taking its id.
GAP_SECONDS = 30.0
MAX_GAPS = 256  # beyond this many gaps (a burst of rolled-back writes), the oldest is given up
# At its start the reader also looks for gaps among this many ids below the newest: a transaction may hold one.
START_WINDOW = 200
RECHECK_SECONDS = 30.0
RETRY_MAX_SECONDS = 5.0
KEEPALIVE_SECONDS = 30.0  # a `ping` after this long without a message keeps proxies from closing the socket

FELL_BEHIND = "The client fell too far behind; reconnect to resume."
TOKEN_GONE = "The token no longer authenticates (revoked, expired, or its user disabled)."
READ_FAILED = "Reading alert events failed; reconnect to retry."

T = TypeVar("T")


@dataclass(eq=False)  # hashed by identity: kept in a set
class Subscription:
    """What one client receives: ("event", the message as JSON text) while it is fed, then at most one of
    ("error", why the feed stopped) or ("unauthorized", why) as its last item."""

    tenant_id: str
    token_id: str
    queue: asyncio.Queue[tuple[str, str]]
    ended: bool = False

    def offer(self, message: str) -> None:
        if self.ended:
            return
        try:
            self.queue.put_nowait(("event", message))
        except asyncio.QueueFull:
            metrics.ALERT_STREAM_DROPPED.inc()
            self.end("error", FELL_BEHIND)

    def take_queued(self) -> list[tuple[str, str]]:
        """What else is queued, without waiting: a relay sends a whole read's events in one go."""
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    def end(self, kind: str, reason: str) -> None:
        """Stops the feed: what is queued is dropped (the client is told at once), `reason` is the last item."""
        if self.ended:
            return
        self.ended = True
        self.take_queued()
        self.queue.put_nowait((kind, reason))


@dataclass
class _Gap:
    low: int
    high: int
    since: float


@dataclass
class EventCursor:
    """Which alert_events ids are still to be read: every id above `position`, and the gaps below it (ids read
    past that may still commit). Reading an id takes it out of its gap, so no id is read twice."""

    position: int
    gaps: list[_Gap] = field(default_factory=list)

    @classmethod
    def starting_at(cls, position: int, present: Iterable[int], *, floor: int, now: float) -> EventCursor:
        """At the newest id, `position`, with the ids in (floor, position] that are not `present` as gaps."""
        cursor = cls(position)
        previous = floor
        for event_id in sorted(present):
            cursor._skip(previous + 1, event_id - 1, now)
            previous = event_id
        cursor._skip(previous + 1, position, now)
        return cursor

    def condition(self) -> ColumnElement[bool]:
        return or_(AlertEvent.id > self.position, *(AlertEvent.id.between(g.low, g.high) for g in self.gaps))

    def take(self, event_id: int, now: float) -> bool:
        """Records that `event_id` was read; False if it was read before (or given up as rolled back)."""
        if event_id > self.position:
            self._skip(self.position + 1, event_id - 1, now)
            self.position = event_id
            return True
        for index, gap in enumerate(self.gaps):
            if gap.low <= event_id <= gap.high:
                rest = [_Gap(gap.low, event_id - 1, gap.since), _Gap(event_id + 1, gap.high, gap.since)]
                self.gaps[index : index + 1] = [g for g in rest if g.low <= g.high]
                return True
        return False

    def expire(self, now: float) -> None:
        self.gaps = [g for g in self.gaps if now - g.since < GAP_SECONDS]

    def _skip(self, low: int, high: int, now: float) -> None:
        if low > high:
            return
        self.gaps.append(_Gap(low, high, now))
        if len(self.gaps) > MAX_GAPS:
            oldest = min(range(len(self.gaps)), key=lambda i: self.gaps[i].since)
            given_up = self.gaps.pop(oldest)
            log.warning("alert stream: gave up waiting for alert event ids %d-%d", given_up.low, given_up.high)


class AlertStreamHub:
    """The app's alert stream: its clients by tenant and the one reader that feeds them while there are any."""

    def __init__(
        self,
        readers: sessionmaker[Session],
        interval: float,
        *,
        queue_limit: int = QUEUE_LIMIT,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ):
        self.readers = readers
        self.interval = interval
        self.queue_limit = queue_limit
        self.keepalive_seconds = keepalive_seconds
        self.subscribers: dict[str, set[Subscription]] = {}
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self.cursor: EventCursor | None = None
        self.reads = 0  # reads of alert_events made by this hub's readers
        self._waiting = 0  # clients waiting for the reader's start

    @property
    def clients(self) -> int:
        return sum(len(subs) for subs in self.subscribers.values())

    @asynccontextmanager
    async def subscribe(self, principal: Principal) -> AsyncIterator[Subscription]:
        """Feeds the events of the principal's tenant written from now on (from the reader's start, for the
        client that starts it) into the subscription's queue, until the block ends."""
        if self.task is None or self.task.done():
            self.ready, self.failure = asyncio.Event(), None
            self.task = asyncio.create_task(self._run(), name="alert-stream")
        task, ready = self.task, self.ready
        sub = Subscription(principal.tenant_id, principal.token_id, asyncio.Queue(self.queue_limit))
        self._waiting += 1
        try:
            try:
                await ready.wait()
            finally:
                self._waiting -= 1
            if task.done():  # the reader failed before it could start
                sub.end("error", READ_FAILED)
            else:
                self.subscribers.setdefault(sub.tenant_id, set()).add(sub)
                metrics.ALERT_STREAM_CLIENTS.inc()
            yield sub
        finally:
            tenant = self.subscribers.get(sub.tenant_id, set())
            if sub in tenant:
                tenant.discard(sub)
                metrics.ALERT_STREAM_CLIENTS.dec()
                if not tenant:
                    del self.subscribers[sub.tenant_id]
            if not self.subscribers and not self._waiting and self.task is task:
                task.cancel()
                self.task = None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    # The reader ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            cursor = self.cursor = await self._in_thread(self._start)
            self.ready.set()
            checked = time.monotonic()
            while True:
                rows = await self._in_thread(self._read, cursor)
                self._fan_out(cursor, rows)
                if time.monotonic() - checked >= RECHECK_SECONDS:
                    checked = time.monotonic()
                    await self._recheck_tokens()
                if len(rows) < PAGE:
                    await asyncio.sleep(self.interval)
                else:
                    await self._room_for_a_page()
        except Exception:  # never let the reader die silently: its clients would wait forever
            log.exception("the alert stream reader failed")
            self.failure = READ_FAILED
            self.ready.set()
            for sub in self._all():
                sub.end("error", READ_FAILED)

    async def _room_for_a_page(self) -> None:
        """Before the next page of a burst: waits until every client's relay has taken the page before (a send may
        yield to the loop, so a relay can be slower than reads of a local store), at most one interval. A client
        still short of room then is slow: the next page drops it, and it holds the others up no more."""
        deadline = time.monotonic() + self.interval
        while time.monotonic() < deadline and any(
            sub.queue.qsize() > self.queue_limit - PAGE for sub in self._all() if not sub.ended
        ):
            await asyncio.sleep(ROOM_CHECK_SECONDS)

    async def _in_thread(self, read: Callable[..., T], *args: Any) -> T:
        """`read` in a worker thread, retried while the store is unreachable: the clients stay connected and
        get what was written meanwhile once it answers again, as the cursor did not move."""
        delay = self.interval
        while True:
            try:
                return await asyncio.to_thread(read, *args)
            except OperationalError as exc:
                log.warning("alert stream: reading alert events failed (%s); retrying in %.1f s", exc.orig, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _start(self) -> EventCursor:
        with self.readers() as session:
            newest = session.scalar(select(func.max(AlertEvent.id))) or 0
            floor = max(newest - START_WINDOW, 0)
            present = session.scalars(select(AlertEvent.id).where(AlertEvent.id > floor)).all()
        return EventCursor.starting_at(newest, present, floor=floor, now=time.monotonic())

    def _read(self, cursor: EventCursor) -> list[Row[int, str, str, dict]]:
        metrics.ALERT_STREAM_READS.inc()
        self.reads += 1
        query = (
            select(AlertEvent.id, AlertEvent.tenant_id, AlertEvent.event_type, AlertEvent.payload)
            .where(cursor.condition())
            .order_by(AlertEvent.id)
            .limit(PAGE)
        )
        with self.readers() as session:
            return list(session.execute(query).all())

    def _fan_out(self, cursor: EventCursor, rows: list[Row[int, str, str, dict]]) -> None:
        now = time.monotonic()
        for event_id, tenant_id, event_type, payload in rows:
            if not cursor.take(event_id, now):
                continue
            metrics.ALERT_STREAM_EVENTS.inc()
            subscribers = self.subscribers.get(tenant_id)
            if subscribers:
                message = json.dumps({"type": event_type, "alert": payload}, separators=(",", ":"))
                for sub in list(subscribers):
                    sub.offer(message)
        cursor.expire(now)

    async def _recheck_tokens(self) -> None:
        subs = [sub for sub in self._all() if not sub.ended]
        if not subs:
            return
        valid = await self._in_thread(self._valid_tokens, {sub.token_id for sub in subs})
        for sub in subs:
            if sub.token_id not in valid:
                sub.end("unauthorized", TOKEN_GONE)

    def _valid_tokens(self, token_ids: set[str]) -> set[str]:
        with self.readers() as session:
            return still_valid(session, token_ids)

    def _all(self) -> list[Subscription]:
        return [sub for subs in self.subscribers.values() for sub in subs]
