"""Live pipeline runs: one reader of a run's event log, shared by every client watching it.

The first client to watch a run starts a reader task; it polls Dagster's event log for records
after its cursor (every `run_watch_interval_seconds`), folds them into step states
(`rime_dagster.pipelines.run_fold.RunFold`) and fans the transitions and log lines out to each
subscriber's queue. A client joining later gets the current state from the same fold, then
the live feed. The reader stops when the run ends or its last subscriber leaves.

Polling, not Dagster's own `watch_event_logs`: it works the same on SQLite and PostgreSQL
run storage, and one cursor query per interval is cheap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from api_shim import metrics
from api_shim.dagster_client import RUN_STATUS, DagsterClient
from api_shim.errors import ServiceUnavailable
from api_shim.services.pipeline_runs import log_line, run_message, step_message
from api_shim.services.runs import when
from rime_dagster.pipelines.run_fold import TERMINAL_RUN, RunFold
from rime_dagster.pipelines.spec import StepBody

if TYPE_CHECKING:
    from dagster import EventLogRecord
    from dagster._core.storage.dagster_run import RunRecord

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
# How often the reader also asks the run record for the status (a run canceled before it
# started, or a worker that died, logs no run event).
RECORD_CHECK_SECONDS = 1.0
PAGE = 1000
# After the run's end: stop once the event log was quiet this long (at most TAIL_MAX_SECONDS).
TAIL_QUIET_SECONDS = 1.0
TAIL_MAX_SECONDS = 5.0


@dataclass(eq=False)  # hashed by identity: kept in a set
class Subscription:
    """What one client receives: ("step", msg), ("run", msg), ("log", line), ("end", None), ("error", text)."""

    logs: bool
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    lost: bool = False  # fell QUEUE_LIMIT items behind: the feed to it stopped
    log_cursor: int = 0  # log lines up to this storage id are not sent live (the client reads them itself)

    def offer(self, item: tuple[str, Any]) -> None:
        if self.lost:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lost = True
            with suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(("error", "The client fell too far behind; reconnect to resume."))


class RunWatch:
    def __init__(
        self,
        client: DagsterClient,
        dagster_run_id: str,
        run_id: str,
        steps: Sequence[StepBody],
        reused: frozenset[str] = frozenset(),
    ):
        self.client = client
        self.dagster_run_id = dagster_run_id
        self.run_id = run_id
        self.fold = RunFold(steps, reused=reused)
        self.subscribers: set[Subscription] = set()
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self.finished = False
        self.task: asyncio.Task | None = None
        self.waiting = 0  # clients waiting for the first read
        self.reads = 0
        self._last_record_check: float | None = None
        self._run_status_sent: str | None = None

    @property
    def over(self) -> bool:
        """The reader is done: the run ended and its last log lines were read, or reading failed."""
        return self.finished or self.failure is not None

    def snapshot(self) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = [("step", step_message(s)) for s in self.fold.states()]
        items.append(("run", run_message(self.fold, self.run_id)))
        if self.over:
            items.append(("error", self.failure) if self.failure else ("end", None))
        return items

    def _broadcast(self, item: tuple[str, Any], *, log_id: int | None = None) -> None:
        for sub in list(self.subscribers):
            if item[0] == "log" and (not sub.logs or (log_id is not None and log_id <= sub.log_cursor)):
                continue
            sub.offer(item)

    def _read(self) -> tuple[list[EventLogRecord], bool, RunRecord | None]:
        metrics.RUN_WATCH_READS.inc()
        self.reads += 1
        records, more = self.client.run_event_records(self.dagster_run_id, after=self.fold.cursor, limit=PAGE)
        record = None
        now = time.monotonic()
        if not more and (self._last_record_check is None or now - self._last_record_check >= RECORD_CHECK_SECONDS):
            self._last_record_check = now
            record = self.client.run_record(self.dagster_run_id)
        return records, more, record

    def _fold(self, records: list[EventLogRecord], record: RunRecord | None) -> None:
        for transition in self.fold.apply(records):
            self._broadcast(("step", step_message(transition)))
        if self.subscribers and any(s.logs for s in self.subscribers):
            for r in records:
                self._broadcast(("log", log_line(r, self.fold)), log_id=r.storage_id)
        if record is not None:
            status = RUN_STATUS.get(record.dagster_run.status.value, "running")
            # The record may be ahead of the event log (a run that is over logs its last
            # events first): only take a terminal status once no more records came.
            if status not in TERMINAL_RUN or not records:
                before = {s.step_id: s.status for s in self.fold.states()}
                self.fold.set_run_status(status, when(record.start_time), when(record.end_time))
                for state in self.fold.states():
                    if before.get(state.step_id) != state.status:
                        self._broadcast(("step", step_message(state)))
        if self.fold.status != self._run_status_sent:
            self._run_status_sent = self.fold.status
            self._broadcast(("run", run_message(self.fold, self.run_id)))

    async def run(self, interval: float) -> None:
        metrics.RUN_WATCH_READERS.inc()
        ended_at = last_record_at = 0.0
        try:
            while True:
                records, more, record = await asyncio.to_thread(self._read)
                self._fold(records, record)
                if not more and not self.ready.is_set():
                    self.ready.set()  # caught up: clients may take the snapshot
                if self.fold.status in TERMINAL_RUN and not more:
                    # Dagster logs a few lines after the run's end (the worker exiting): follow the
                    # log until it has been quiet for a moment, so log streams get them too.
                    now = time.monotonic()
                    ended_at = ended_at or now
                    if records:
                        last_record_at = now
                    if now - max(ended_at, last_record_at) >= TAIL_QUIET_SECONDS or now - ended_at >= TAIL_MAX_SECONDS:
                        self.finished = True
                        self._broadcast(("end", None))
                        return
                if not more:
                    await asyncio.sleep(interval)
        except ServiceUnavailable as exc:
            self.failure = exc.message
        except Exception:  # never let a reader die silently: its clients would wait forever
            log.exception("watching run %s failed", self.dagster_run_id)
            self.failure = "Reading the run's events failed; reconnect to retry."
        finally:
            metrics.RUN_WATCH_READERS.dec()
        self.ready.set()
        self._broadcast(("error", self.failure))


class RunWatchHub:
    """The app's readers, one per watched run."""

    def __init__(self, client: DagsterClient, interval: float):
        self.client = client
        self.interval = interval
        self.watches: dict[str, RunWatch] = {}

    @asynccontextmanager
    async def watch(
        self,
        dagster_run_id: str,
        run_id: str,
        steps: Sequence[StepBody],
        *,
        logs: bool = False,
        reused: frozenset[str] = frozenset(),
    ) -> AsyncIterator[tuple[Subscription, RunWatch]]:
        """Subscribes to a run: the queue starts with the current state of every step and the run. `reused`: the
        steps a re-execution takes from its parent run (`run_fold.reused_steps`)."""
        watch = self.watches.get(dagster_run_id)
        if watch is None or (watch.task is not None and watch.task.done()):
            watch = RunWatch(self.client, dagster_run_id, run_id, steps, reused)
            self.watches[dagster_run_id] = watch
            watch.task = asyncio.create_task(watch.run(self.interval), name=f"watch-{dagster_run_id}")
        sub = Subscription(logs=logs)
        watch.waiting += 1
        try:
            try:
                await watch.ready.wait()
            finally:
                watch.waiting -= 1
            # No await between the snapshot and joining the live feed: nothing falls in between.
            sub.log_cursor = watch.fold.cursor
            for item in watch.snapshot():
                sub.offer(item)
            watch.subscribers.add(sub)
            metrics.RUN_WATCH_CLIENTS.inc()
            yield sub, watch
        finally:
            if sub in watch.subscribers:
                metrics.RUN_WATCH_CLIENTS.dec()
            watch.subscribers.discard(sub)
            if not watch.subscribers and not watch.waiting:
                if watch.task is not None and not watch.task.done():
                    watch.task.cancel()
                if self.watches.get(dagster_run_id) is watch:
                    del self.watches[dagster_run_id]

    async def close(self) -> None:
        for watch in list(self.watches.values()):
            if watch.task is not None:
                watch.task.cancel()
        self.watches.clear()
