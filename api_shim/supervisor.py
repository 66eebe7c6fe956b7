"""`rime up`'s supervisor: starts the platform's processes, restarts one that dies, stops them all.

Each process runs under api_shim/child_guard.py, as the leader of its own process group: stopping it stops its
own children too (the code server's child, run workers), and the kernel stops it if `rime up` is killed, even by
SIGKILL. A process that exits while the platform runs is restarted after a backoff (1 s, doubling up to 30 s; back
to 1 s once it has stayed up a minute), and the restart is logged. Only repeated crashes give up: more than
`max_crashes` exits of one process within `window` seconds stop the platform, saying which process and why.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rime")
GUARD = Path(__file__).with_name("child_guard.py")
GRACE_SECONDS = 10.0


class GaveUp(Exception):
    """A process crashed too often: the platform stops."""


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    nice: int = 0
    # Called after each restart once the process runs (e.g. the code server's: the webserver reloads it).
    on_restart: Callable[[], None] | None = None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    exits: deque[float] = field(default_factory=deque)  # time.monotonic() of recent exits
    restart_at: float | None = None
    restarts: int = 0


def describe_exit(code: int) -> str:
    if code < 0 or code > 128:
        number = -code if code < 0 else code - 128
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


class Supervisor:
    def __init__(
        self,
        *,
        cwd: Path,
        max_crashes: int = 5,
        window: float = 120.0,
        backoff_start: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
    ) -> None:
        self.cwd = cwd
        self.max_crashes, self.window = max_crashes, window
        self.backoff_start, self.backoff_max, self.stable_after = backoff_start, backoff_max, stable_after
        self.children: dict[str, Child] = {}
        self.groups: set[int] = set()  # every process group started: stop() ends them all
        self.stopping = False

    # Starting ----------------------------------------------------------------------------------------------
    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        nice: int = 0,
        on_restart: Callable[[], None] | None = None,
    ) -> Child:
        child = Child(name, argv, env, nice, on_restart)
        self.children[name] = child
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        nice = child.nice
        child.proc = subprocess.Popen(
            [sys.executable, str(GUARD), *child.argv],
            env={**child.env, "RIME_GUARD_PARENT": str(os.getpid())},
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self.groups.add(child.proc.pid)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.debug("started %s (pid %d)", child.name, child.proc.pid)

    def alive(self, name: str) -> bool:
        child = self.children.get(name)
        return child is not None and child.proc is not None and child.proc.poll() is None

    # Watching ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Notices exits and makes the restarts that are due; raises GaveUp after too many crashes."""
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            if now - child.started_at >= self.stable_after:
                child.exits.clear()  # it had been up a while: a fresh start, not a crash loop
            child.exits.append(now)
            while child.exits and now - child.exits[0] > self.window:
                child.exits.popleft()
            if len(child.exits) > self.max_crashes:
                raise GaveUp(
                    f"{child.name} exited {len(child.exits)} times within {self.window:.0f} s (last: "
                    f"{describe_exit(code)}); giving up and stopping the platform. Its output is above."
                )
            delay = min(self.backoff_max, self.backoff_start * 2 ** (len(child.exits) - 1))
            child.restart_at = now + delay
            log.warning("%s exited (%s); restarting it in %.0f s", child.name, describe_exit(code), delay)

    def _restart(self, child: Child) -> None:
        self._spawn(child)
        child.restarts += 1
        pid = child.proc.pid if child.proc else 0
        log.warning("restarted %s (pid %d, restart %d)", child.name, pid, child.restarts)
        if child.on_restart is not None:
            try:
                child.on_restart()
            except Exception:
                log.exception("after restarting %s", child.name)

    # Stopping ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for pgid in self.groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS + 2  # the guards give their commands GRACE_SECONDS
        for child in self.children.values():
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.name, GRACE_SECONDS)
        # Kill every group, even those whose leader exited: stragglers must not survive.
        for pgid in self.groups:
            _signal_group(pgid, signal.SIGKILL)
        for child in self.children.values():
            if child.proc is not None:
                try:
                    child.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
