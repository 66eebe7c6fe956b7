"""Keeps Dagster's `rime` code location in step with the metadata store, without making writes wait.

Writes only commit: each one that changes what Dagster builds bumps the definitions generation
(rime_dagster.store.generation). One background thread per API process compares the stored generation
with the one the webserver serves (api_shim.dagster_client.loaded_definitions) and, when Dagster is
behind, asks it to reload. However fast writes come:

* at most one reload is in flight: the thread makes one at a time, and a lease row in the
  metadata store lets one API process at a time make it, however many share the store;
* at most one is pending: being behind is a comparison of two integers, not a queue, so a burst of
  writes during a reload costs exactly one more reload.

Launches call `wait_for(generation)`: they wait until Dagster serves the generation their job needs
(up to RIME_DEFINITIONS_WAIT_SECONDS), then launch. A Dagster that does not answer is reported at
once (503), not waited for.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, update
from sqlalchemy.orm import Session, sessionmaker

from api_shim import metrics
from api_shim.dagster_client import DagsterClient
from api_shim.errors import RimeError, ServiceUnavailable
from rime_dagster.settings import Settings
from rime_dagster.store.generation import STATE_ID, current_generation, on_commit
from rime_dagster.store.models import DefinitionsState
from rime_dagster.store.session import session_factory
from rime_dagster.store.types import utcnow

log = logging.getLogger(__name__)

# After a reload that failed or did not catch up, wait this long (doubling up to the cap) before the next.
BACKOFF_START_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 60.0
# How often to look while behind, or while another process holds the reload lease.
BEHIND_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class SyncStatus:
    stored: int | None
    loaded: int | None
    reloads: int
    reloading: bool
    problem: str | None


class DefinitionsSync:
    def __init__(self, settings: Settings, dagster: DagsterClient, sessions: sessionmaker[Session]):
        self.settings = settings
        self.dagster = dagster
        self.sessions = sessions
        bind_url = sessions.kw["bind"].url
        self.url = bind_url.render_as_string(hide_password=True)
        # Polling reads take no lock a writer would wait for.
        self.readers = session_factory(bind_url.render_as_string(hide_password=False), read_only=True)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._remove_listener: Callable[[], None] | None = None
        self.stored: int | None = None
        self.loaded: int | None = None
        self.problem: str | None = None
        self.unreachable = False  # the last look at Dagster got no answer
        self.observed_at = 0.0  # time.monotonic() of that look
        self.reloads = 0
        self.reloading = False
        self._failures = 0
        self._backoff_until = 0.0

    # Lifecycle ----------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._remove_listener = on_commit(self._committed)
            self._thread = threading.Thread(target=self._run, name="rime-definitions-sync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        thread, self._thread = self._thread, None
        if thread is not None:
            # A reload in flight is a blocking HTTP call: don't hold shutdown for it.
            thread.join(timeout=2)
            # ...but don't keep the reload lease either: left to expire (the reload timeout + 10 s), it kept every
            # other API process from reloading that long after this one stopped, and their launches answered 503.
            self._release_lease()

    def _committed(self, url: str, generation: int) -> None:
        if url == self.url:
            with self._lock:
                self.stored = max(self.stored or 0, generation)
            self._wake.set()

    # What launches call --------------------------------------------------
    def wait_for(self, generation: int, timeout: float | None = None) -> None:
        """Returns once Dagster serves `generation` or later; ServiceUnavailable when it does not answer,
        or has not caught up within `timeout` (RIME_DEFINITIONS_WAIT_SECONDS)."""
        if self.loaded is not None and self.loaded >= generation:
            return
        self.start()
        timeout = self.settings.definitions_wait_seconds if timeout is None else timeout
        asked = time.monotonic()
        deadline = asked + timeout
        with self._lock:
            self.stored = max(self.stored or 0, generation)
            self._wake.set()
            while self.loaded is None or self.loaded < generation:
                if self.unreachable and self.observed_at > asked:
                    raise ServiceUnavailable("Dagster is unavailable; retry shortly.", headers={"Retry-After": "5"})
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceUnavailable(
                        f"Dagster has not loaded this change yet (it serves definitions generation {self.loaded}, "
                        f"this launch needs {generation}) after {timeout:g} s"
                        + (f": {self.problem}" if self.problem else "; retry shortly."),
                        headers={"Retry-After": "10"},
                    )
                self._lock.wait(min(remaining, 1.0))

    def status(self) -> SyncStatus:
        with self._lock:
            return SyncStatus(self.stored, self.loaded, self.reloads, self.reloading, self.problem)

    # The loop --------------------------------------------------------------
    def _run(self) -> None:
        last_pass = 0.0
        while not self._stop.is_set():
            behind = self.loaded is None or self.stored is None or self.loaded < self.stored
            self._wake.wait(BEHIND_POLL_SECONDS if behind else self.settings.definitions_poll_seconds)
            # A burst of commits wakes the loop once per commit: one pass per BEHIND_POLL_SECONDS is enough,
            # since a pass handles every change committed before it.
            self._stop.wait(max(0.0, last_pass + BEHIND_POLL_SECONDS - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            last_pass = time.monotonic()
            try:
                self.step()
            except Exception:  # the loop must survive anything; the next pass retries
                log.exception("definitions sync pass failed")

    def step(self) -> None:
        """One pass: read the stored generation, look at Dagster's, reload if Dagster is behind."""
        with self.readers() as session:
            stored = current_generation(session)
        with self._lock:
            self.stored = max(self.stored or 0, stored)
            stored = self.stored
        if self.loaded is None or self.loaded < stored:
            self._observe()
        if self.unreachable or (self.loaded is not None and self.loaded >= stored):
            return
        if time.monotonic() < self._backoff_until or not self._take_lease():
            return  # backing off, or another process is reloading: the next passes look again
        before = self.loaded
        try:
            with self._lock:
                self.reloading = True
            started = time.monotonic()
            self.dagster.reload_location()
            metrics.DEFINITIONS_RELOADS.inc()
            metrics.DEFINITIONS_RELOAD_SECONDS.observe(time.monotonic() - started)
            with self._lock:
                self.reloads += 1
            failure = None
        except RimeError as exc:
            failure = exc.message
        finally:
            with self._lock:
                self.reloading = False
            self._release_lease()
        self._observe()
        if failure is not None or self.loaded is None or (before is not None and self.loaded <= before):
            self._failures += 1
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_START_SECONDS * 2 ** (self._failures - 1))
            self._backoff_until = time.monotonic() + delay
            log.warning("Dagster reload did not catch up (%s); next try in %.0f s", failure or self.problem, delay)
        else:
            self._failures = 0
            self._wake.set()  # writes made during the reload: look again at once

    def _observe(self) -> None:
        seen_generation: int | None
        problem: str | None
        try:
            seen = self.dagster.loaded_definitions()
        except ServiceUnavailable as exc:
            with self._lock:
                self.unreachable, self.problem, self.observed_at = True, exc.message, time.monotonic()
                self._lock.notify_all()
            return
        except RimeError as exc:
            seen_generation, problem = None, exc.message
        else:
            seen_generation, problem = seen.generation, seen.problem
        with self._lock:
            self.unreachable, self.problem, self.observed_at = False, problem, time.monotonic()
            if seen_generation is not None:
                self.loaded = seen_generation
            metrics.DEFINITIONS_LAG.set(max(0, (self.stored or 0) - (self.loaded or 0)))
            self._lock.notify_all()

    # The reload lease ----------------------------------------------------------
    def _take_lease(self) -> bool:
        state = DefinitionsState.__table__
        now = utcnow()
        lease = timedelta(seconds=self.settings.dagster_reload_timeout_seconds + 10)
        with self.sessions.begin() as session:
            taken = session.execute(
                update(state)
                .where(
                    state.c.id == STATE_ID,
                    or_(
                        state.c.reload_lease_until.is_(None),
                        state.c.reload_lease_until < now,
                        state.c.reload_owner == self.owner,
                    ),
                )
                .values(reload_owner=self.owner, reload_lease_until=now + lease)
            )
            return cast(CursorResult[Any], taken).rowcount == 1  # an UPDATE's result is a CursorResult

    def _release_lease(self) -> None:
        state = DefinitionsState.__table__
        try:
            with self.sessions.begin() as session:
                session.execute(
                    update(state)
                    .where(state.c.id == STATE_ID, state.c.reload_owner == self.owner)
                    .values(reload_owner=None, reload_lease_until=None)
                )
        except Exception:  # it expires on its own
            log.warning("could not release the Dagster reload lease", exc_info=True)
