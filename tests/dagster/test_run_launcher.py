"""The run launcher's view of its workers (rime_dagster/platform/run_launcher.py), with real processes.

The daemon's run monitoring asks it whether a run's worker lives; a wrong "running" leaves a dead run running
forever, a wrong "failed" fails a live one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

from rime_dagster.platform.run_launcher import ProcessRunLauncher
from rime_dagster.platform.run_tags import RUN_WORKER_HOST, RUN_WORKER_PID


def _run(run_id: str, pid: int, host: str | None = None) -> DagsterRun:
    return DagsterRun(
        job_name="j", run_id=run_id, tags={RUN_WORKER_PID: str(pid), RUN_WORKER_HOST: host or socket.gethostname()}
    )


def test_worker_health_follows_the_process_that_runs_the_run():
    launcher = ProcessRunLauncher()
    with DagsterInstance.ephemeral() as instance:
        launcher.register_instance(instance)
        run_id = "5b1f6a1e-0000-4000-8000-00000000abcd"
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", run_id])
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            # Until the child has exec'd, its /proc cmdline is still the forking test's (a busy machine shows it).
            deadline = time.monotonic() + 30
            while run_id not in Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode(errors="replace"):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert launcher.check_run_worker_health(_run(run_id, worker.pid)).status == WorkerStatus.RUNNING
            # A pid that another process holds now (the number was reused) is not this run's worker.
            assert launcher.check_run_worker_health(_run(run_id, other.pid)).status == WorkerStatus.FAILED
            # A worker on another host: the launcher cannot tell.
            elsewhere = launcher.check_run_worker_health(_run(run_id, worker.pid, host="elsewhere.invalid"))
            assert elsewhere.status == WorkerStatus.UNKNOWN
            worker.kill()
            worker.wait()
            assert launcher.check_run_worker_health(_run(run_id, worker.pid)).status == WorkerStatus.FAILED
        finally:
            for proc in (worker, other):
                proc.kill()
                proc.wait()


def test_an_unreaped_worker_counts_as_exited():
    launcher = ProcessRunLauncher()
    with DagsterInstance.ephemeral() as instance:
        launcher.register_instance(instance)
        run_id = "5b1f6a1e-0000-4000-8000-00000000dcba"
        worker = subprocess.Popen([sys.executable, "-c", "pass", run_id])
        try:
            # Exited but not waited for: a zombie still answers kill(pid, 0).
            deadline = time.monotonic() + 30
            while Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert launcher.check_run_worker_health(_run(run_id, worker.pid)).status == WorkerStatus.FAILED
        finally:
            worker.wait()


def test_a_run_worker_runs_below_the_launching_process():
    from rime_dagster.platform.run_launcher import RUN_WORKER_NICENESS, _lower_priority

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _lower_priority(worker.pid)
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + RUN_WORKER_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == expected
    finally:
        worker.kill()
        worker.wait()
