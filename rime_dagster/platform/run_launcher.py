"""Runs in their own process, not in the code server: a reload never waits for a run to end.

Dagster's DefaultRunLauncher asks the code server to start a run, and the code server's current child
process runs it as its own subprocess. A reload (`dagster code-server start` starts a new child and
shuts the old one down) then leaves the old child alive, definitions and all, until every run it
started has ended: one more code server per reload during a run's life, so a sync of an hour and a
definitions change a minute kept 60 of them. Measured here: four code servers after two reloads
while one twelve-second sync ran (tests/dagster/test_definitions_sync.py).

This launcher runs `dagster api execute_run` (Dagster's own run worker entry point, the one the
Kubernetes and Docker launchers run in their containers) in a process of its own, on this host, for
the process that launches the run: the webserver, or the daemon for schedules and sensors. The worker
is forked from a template process that has Dagster and the code location's modules imported already
(rime_dagster/platform/run_worker_template.py), which spares each run seconds of imports; until the
template is ready (it starts at the first launch), or if it cannot start, a worker starts from scratch
as a child of the launching process. The worker loads the job from the
code pointer the code server reported, in the same Python environment, and inherits the launching
process's environment at launch (`rime up` gives the webserver and the daemon the store's settings for this).

It also tells the daemon's run monitoring whether a worker still lives (the run fails if it died
without a word), and cancels a run by an interrupt, as Ctrl-C would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import MetadataValue
from dagster import _check as check
from dagster._core.events import EngineEventData
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.origin import get_python_environment_entry_point
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value
from typing_extensions import override

from rime_dagster.platform.run_tags import RUN_WORKER_HOST, RUN_WORKER_PID, RUN_WORKER_STARTED
from rime_dagster.platform.run_worker_template import WorkerTemplate, process_start_time


class ProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Each run in a new `dagster api execute_run` process on this host."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._workers: dict[str, subprocess.Popen] = {}
        self._forked: dict[str, tuple[int, str | None]] = {}
        self._template = WorkerTemplate()
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    @override
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> ProcessRunLauncher:
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = check.not_none(run.job_code_origin, "the run has no job code origin to load its job from")
        args = ExecuteRunArgs(
            job_origin=origin,
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        # The worker stays in the launching process's group: stopping `rime up` stops its runs too.
        forked = None
        if origin.executable_path == sys.executable:  # the template runs this Python (and its packages)
            argv = ["dagster", "api", "execute_run", serialize_value(args)]
            forked = self._template.fork(argv, os.environ, _worker_niceness())
        if forked is not None:
            pid, started, how = forked.pid, forked.started, "forked from the run worker template"
            with self._lock:
                # Forget the workers that have exited (the launcher of a long-lived daemon sees thousands).
                self._forked = {r: w for r, w in self._forked.items() if process_start_time(w[0]) == w[1]}
                self._forked[run.run_id] = (pid, started)
        else:
            pid, how = self._start_from_scratch(run.run_id, args), "started"
            started = process_start_time(pid)
        tags = {RUN_WORKER_PID: str(pid), RUN_WORKER_HOST: socket.gethostname()}
        if started:
            tags[RUN_WORKER_STARTED] = started
        self._instance.add_run_tags(run.run_id, tags)
        self._instance.report_engine_event(
            f"Run worker {how} (process {pid} on {socket.gethostname()}).",
            run,
            EngineEventData(metadata={"pid": MetadataValue.text(str(pid))}),
            cls=self.__class__,
        )

    def _start_from_scratch(self, run_id: str, args: ExecuteRunArgs) -> int:
        # The Python that serves the code location, by path: its `dagster` script need not be on PATH.
        command = [*get_python_environment_entry_point(args.job_origin.executable_path), "api", "execute_run"]
        worker = subprocess.Popen([*command, serialize_value(args)], stdin=subprocess.DEVNULL)
        _lower_priority(worker.pid)
        with self._lock:
            self._workers[run_id] = worker
        # Reaped as soon as it exits, so a dead worker never lingers as a zombie that looks alive.
        threading.Thread(target=self._reap, args=(run_id, worker), name="rime-run-reaper", daemon=True).start()
        return worker.pid

    def _reap(self, run_id: str, worker: subprocess.Popen) -> None:
        worker.wait()
        with self._lock:
            if self._workers.get(run_id) is worker:
                del self._workers[run_id]

    def dispose(self) -> None:
        self._template.close()

    def _worker_alive(self, run: DagsterRun) -> bool | None:
        """Whether the run's worker process lives: None when it runs on another host, or never started."""
        pid, host = run.tags.get(RUN_WORKER_PID), run.tags.get(RUN_WORKER_HOST)
        if not pid or not pid.isdigit() or host != socket.gethostname():
            return None
        started = run.tags.get(RUN_WORKER_STARTED)
        if started and Path("/proc/self/stat").exists():
            # Linux: the pid must still be this run's worker (same start time), not a process that reused it.
            return process_start_time(int(pid)) == started and not _is_zombie(int(pid))
        if Path("/proc/self/cmdline").exists():
            # A worker started before start times were tagged: its command line names the run.
            try:
                return run.run_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and not _is_zombie(int(pid))
            except OSError:
                return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        alive = self._worker_alive(run)
        if alive is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run worker runs on another host")
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run worker (process {run.tags.get(RUN_WORKER_PID)}) exited before the run ended (killed or crashed)",
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        alive = self._worker_alive(run)
        if alive is None:
            self._instance.report_engine_event(
                "Cannot stop the run worker: it runs on another host or never started.", run, cls=self.__class__
            )
            return False
        if not alive:
            # Nothing runs it any more: it cannot end by itself.
            self._instance.report_run_canceled(run, message="The run worker had already exited.")
            return True
        # Dagster's run worker turns SIGINT (and SIGTERM) into an interrupt of the running step.
        os.kill(int(run.tags[RUN_WORKER_PID]), signal.SIGINT)
        return True

    def join(self, timeout: float = 30) -> None:
        """Waits for every worker this launcher started to exit."""
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers.values())
            forked = list(self._forked.values())
        for worker in workers:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"run workers still running after {timeout} s") from None
        # The template's workers are the template's children (the kernel reaps them): watched by start time.
        while any(process_start_time(pid) == started and not _is_zombie(pid) for pid, started in forked):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run workers still running after {timeout} s")
            time.sleep(0.05)


def _worker_niceness() -> int:
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + RUN_WORKER_NICENESS)


# Runs are background work: on a busy machine the API's requests and the UI come first (as for the code server,
# which `rime up` starts at niceness 10).
RUN_WORKER_NICENESS = 10


def _lower_priority(pid: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, pid, _worker_niceness())
    except OSError:  # already gone, or not allowed here: the run goes on at normal priority
        pass


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
