"""A template process that run workers are forked from, with Dagster and the code location's modules loaded.

Every run is a `dagster api execute_run` process (rime_dagster/platform/run_launcher.py). Started from scratch,
each one spends its first seconds importing Dagster, the `rime` code location's modules and, for a dbt run,
dagster-dbt and dbt-core: about 2 s of CPU, 4.5 s for dbt, before the run's first step, on every run. The
launcher instead starts this template once; the template imports all of that, then forks a worker per run. A
forked worker builds the code location's definitions from the metadata store as a fresh worker does (the
template never imports `rime_dagster.definitions`, which builds them at import), and runs Dagster's own
`execute_run` command with the arguments and environment the launcher sends.

The template is single-threaded and opens no file, socket or database before it forks (imports only), which
is what makes forking it safe. It leaves when the launcher's end of its socket closes; workers it forked run
on, as workers started by `subprocess` do. The kernel reaps its exited workers (SIGCHLD ignored); a worker
restores SIGCHLD first, so that its own subprocesses (dbt) report their exit codes.

Protocol, one JSON line each way over a socket pair: request `{"argv": [...], "env": {...}, "niceness": n}`;
answer `{"pid": p, "started": s}` (`started`: the process's start time, field 22 of /proc/<pid>/stat, which
tells a live worker from a later process given the same pid), or `{"error": "..."}`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# What a run worker imports before its first step. Import errors end the template: the launcher then starts
# workers from scratch, as Dagster does.
PRELOAD = (
    "dagster._cli",
    "rime_dagster.code_location",
    "rime_dagster.platform.run_launcher",
    "dagster_dbt.core.dbt_cli_invocation",
)
READY = b"ready\n"
START_TIMEOUT_SECONDS = 120.0  # the imports, on a busy machine
ANSWER_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Forked:
    pid: int
    started: str | None


class WorkerTemplate:
    """The launching process's side: starts the template in the background at the first fork asked for, and
    forks workers from it once it is ready. `fork` answers None whenever it cannot fork (not ready yet, not
    startable, gone): the caller then starts the worker from scratch, so a run never waits for the template."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channel: socket.socket | None = None
        self._answers: BinaryIO | None = None
        self._process: subprocess.Popen | None = None
        self._starting = False
        self._failures = 0

    def fork(self, argv: Sequence[str], env: Mapping[str, str], niceness: int) -> Forked | None:
        with self._lock:
            if self._channel is None:
                self._start_in_background()
                return None
            request = {"argv": list(argv), "env": dict(env), "niceness": niceness}
            try:
                self._channel.sendall(json.dumps(request).encode() + b"\n")
                line = self._answers.readline() if self._answers else b""
                if not line:
                    raise EOFError("it has exited")
                answer = json.loads(line)
            except (OSError, ValueError, EOFError) as exc:
                log.warning("the run worker template stopped answering (%s); starting a new one", exc)
                self._close()
                self._start_in_background()
                return None
            if not isinstance(answer, dict) or "pid" not in answer:
                log.warning("the run worker template could not fork: %s", answer)
                return None
            return Forked(int(answer["pid"]), answer.get("started"))

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._channel is not None:
            self._channel.close()  # the template leaves at end of file
            self._channel = None

    def _start_in_background(self) -> None:
        # Three failed starts (an import that fails, say) and the launcher stops trying: every run then starts
        # from scratch, as it would without a template.
        if self._starting or self._failures >= 3:
            return
        self._starting = True
        threading.Thread(target=self._start, name="rime-run-worker-template", daemon=True).start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            log.exception("could not start the run worker template")
            ours.close()
            self._started(None, None)
            return
        finally:
            theirs.close()
        threading.Thread(target=process.wait, name="rime-run-worker-template-reaper", daemon=True).start()
        ours.settimeout(START_TIMEOUT_SECONDS)
        answers = ours.makefile("rb")
        try:
            ready = answers.readline() == READY
        except OSError:
            ready = False
        if not ready:
            log.warning("the run worker template did not start (exit code %s); runs start from scratch", process.poll())
            process.kill()
            answers.close()
            ours.close()
            self._started(None, None)
            return
        ours.settimeout(ANSWER_TIMEOUT_SECONDS)
        self._started(ours, answers, process)

    def _started(
        self, channel: socket.socket | None, answers: BinaryIO | None, process: subprocess.Popen | None = None
    ) -> None:
        with self._lock:
            self._starting = False
            if channel is None:
                self._failures += 1
                return
            self._channel, self._answers, self._process = channel, answers, process


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot), or None when there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def main() -> None:
    """`python -m rime_dagster.platform.run_worker_template FD`: serves fork requests on socket FD."""
    channel = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of `rime up` is for the workers; EOF ends the template
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for module in PRELOAD:
        importlib.import_module(module)
    channel.sendall(READY)
    requests = channel.makefile("rb")
    for line in requests:
        try:
            request = json.loads(line)
            pid = os.fork()
        except (OSError, ValueError) as exc:
            channel.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
            continue
        if pid == 0:
            requests.close()
            channel.close()
            _worker(request)  # never returns
        channel.sendall(json.dumps({"pid": pid, "started": process_start_time(pid)}).encode() + b"\n")


def _worker(request: dict) -> None:
    """In the forked child: become the run worker the request describes, then exit with its code."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        random.seed()  # not the template's sequence, shared by every worker
        os.environ.clear()
        os.environ.update(request["env"])
        try:
            os.setpriority(os.PRIO_PROCESS, 0, int(request["niceness"]))
        except OSError:  # not allowed here: the run goes on at the template's priority
            pass
        sys.argv = list(request["argv"])
        from dagster._cli import main as dagster_main

        try:
            dagster_main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


if __name__ == "__main__":
    main()
