"""The run launcher's view of its workers (rime_dagster/platform/run_launcher.py), with real processes.

The daemon's run monitoring asks it whether a run's worker lives; a wrong "running" leaves a dead run running
forever, a wrong "failed" fails a live one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

from rime_dagster.platform.run_launcher import ProcessRunLauncher
from rime_dagster.platform.run_tags import RUN_WORKER_HOST, RUN_WORKER_PID, RUN_WORKER_STARTED
from rime_dagster.platform.run_worker_template import WorkerTemplate, process_start_time


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


def test_a_pid_given_to_a_later_process_is_not_the_worker():
    """Workers are known by pid and start time: a live process with the pid but another start time is not it."""
    launcher = ProcessRunLauncher()
    with DagsterInstance.ephemeral() as instance:
        launcher.register_instance(instance)
        run_id = "5b1f6a1e-0000-4000-8000-00000000beef"
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            started = process_start_time(worker.pid)
            assert started is not None
            tags = {RUN_WORKER_PID: str(worker.pid), RUN_WORKER_HOST: socket.gethostname()}
            same = DagsterRun(job_name="j", run_id=run_id, tags={**tags, RUN_WORKER_STARTED: started})
            later = DagsterRun(job_name="j", run_id=run_id, tags={**tags, RUN_WORKER_STARTED: str(int(started) + 1)})
            assert launcher.check_run_worker_health(same).status == WorkerStatus.RUNNING
            assert launcher.check_run_worker_health(later).status == WorkerStatus.FAILED
            worker.kill()
            worker.wait()
            assert launcher.check_run_worker_health(same).status == WorkerStatus.FAILED
        finally:
            worker.kill()
            worker.wait()


LOCATION = """
import os
from pathlib import Path

mark, niceness = os.environ["RIME_TEST_MARK"], os.getpriority(os.PRIO_PROCESS, 0)
Path(os.environ["RIME_TEST_WORKER_OUT"]).write_text(f"{mark} {niceness}")
"""


def test_workers_fork_from_the_template_with_the_launch_environment_and_priority(tmp_path):
    """The template answers None until it is ready (the launcher then starts the worker from scratch), then forks
    workers that run the Dagster command asked for, with the environment and niceness sent, and leave no zombie.
    A Dagster code server stands in for a run worker here: it runs the file below and stays up to be looked at."""
    (tmp_path / "location.py").write_text(LOCATION)
    template = WorkerTemplate()
    out = tmp_path / "out.txt"
    env = {**os.environ, "RIME_TEST_MARK": "sent by the launcher", "RIME_TEST_WORKER_OUT": str(out)}
    argv = ["dagster", "api", "grpc", "-f", str(tmp_path / "location.py"), "-s", str(tmp_path / "grpc.sock")]
    niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
    try:
        assert template.fork(argv, env, niceness) is None  # starts the template
        deadline = time.monotonic() + 120
        while (forked := template.fork(argv, env, niceness)) is None:
            assert time.monotonic() < deadline, "the template never became ready"
            time.sleep(0.1)
        assert forked.started == process_start_time(forked.pid)
        while not out.exists() or not out.read_text():
            assert time.monotonic() < deadline, "the forked worker never ran the file"
            time.sleep(0.05)
        assert out.read_text() == f"sent by the launcher {niceness}"
        assert "RIME_TEST_MARK" not in os.environ  # the launcher's own environment is untouched
        os.kill(forked.pid, signal.SIGTERM)
        while process_start_time(forked.pid) == forked.started:  # gone, reaped: no zombie either
            assert time.monotonic() < deadline, "the worker did not exit (or was left a zombie)"
            time.sleep(0.05)
    finally:
        template.close()


def test_a_template_that_died_is_replaced(tmp_path):
    """A template killed (say, by the OOM killer) answers nothing: the launch starts its worker from scratch, and a
    new template takes over."""
    template = WorkerTemplate()
    argv = ["dagster", "--version"]
    try:
        assert template.fork(argv, os.environ, 0) is None
        deadline = time.monotonic() + 120
        while template.fork(argv, os.environ, 0) is None:
            assert time.monotonic() < deadline, "the template never became ready"
            time.sleep(0.1)
        first = template._process
        assert first is not None
        first.kill()
        first.wait()
        assert template.fork(argv, os.environ, 0) is None  # dead: the caller starts this worker itself
        while (forked := template.fork(argv, os.environ, 0)) is None:
            assert time.monotonic() < deadline, "no new template"
            time.sleep(0.1)
        assert template._process is not first and forked.pid > 0
    finally:
        template.close()
