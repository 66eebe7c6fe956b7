"""`rime up`'s supervisor on small real processes: a process that dies is restarted after its backoff, a crash
loop gives up with a message naming the process, and a supervisor killed by SIGKILL leaves no process behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from api_shim.supervisor import GaveUp, Supervisor

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_process_that_dies_is_restarted_after_its_backoff(tmp_path, caplog):
    marker = tmp_path / "crashed-once"
    script = tmp_path / "flaky.py"  # exits 3 the first time, then runs until stopped
    script.write_text(
        f"import pathlib, sys, time\nm = pathlib.Path({str(marker)!r})\nif not m.exists():\n"
        "    m.touch()\n    sys.exit(3)\ntime.sleep(60)\n"
    )
    supervisor = Supervisor(cwd=ROOT, backoff_start=0.2)
    restarted = []
    try:
        child = supervisor.start(
            "flaky", [sys.executable, str(script)], dict(os.environ), on_restart=lambda: restarted.append(1)
        )
        first = child.proc
        with caplog.at_level(logging.WARNING, logger="rime"):
            _until(lambda: (supervisor.check(), child.restarts == 1)[1])
        assert child.proc is not first and supervisor.alive("flaky") and restarted == [1]
        assert "flaky exited (exit code 3); restarting it in 0 s" in caplog.text
        assert "restarted flaky" in caplog.text
    finally:
        supervisor.stop()
    assert not supervisor.alive("flaky")


def test_a_crash_loop_gives_up_naming_the_process():
    supervisor = Supervisor(cwd=ROOT, max_crashes=2, window=30, backoff_start=0.01)
    try:
        supervisor.start("broken", [sys.executable, "-c", "raise SystemExit(7)"], dict(os.environ))
        with pytest.raises(GaveUp) as gave_up:
            _until(lambda: supervisor.check() and False, timeout=15)
    finally:
        supervisor.stop()
    assert "broken exited 3 times within 30 s (last: exit code 7)" in str(gave_up.value)


def test_a_killed_supervisor_leaves_nothing_behind(tmp_path):
    """Its processes (and what they start) get SIGTERM from the kernel when it dies, even by SIGKILL."""
    command = tmp_path / "parent.py"  # prints its child's pid, then waits
    command.write_text(
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\ntime.sleep(60)\n"
    )
    program = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from api_shim.supervisor import Supervisor
        supervisor = Supervisor(cwd={str(ROOT)!r})
        supervisor.start("sleeper", [sys.executable, {str(command)!r}], dict(os.environ))
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(proc.stdout.readline())  # the command's own child: started once the command runs
        family = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-g", str(os.getpgid(grandchild))], capture_output=True, text=True
            ).stdout.split()
        ]
        assert grandchild in family and len(family) >= 3  # the guard, the command and its child
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        _until(lambda: not any(_alive(pid) for pid in family), timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
