"""Runs one command of `rime up` so that it never outlives `rime up` (standard library only: run as a script).

`rime up` starts `python child_guard.py <command...>` as the leader of a new process group. The guard asks the
kernel for SIGTERM when its parent dies (Linux `PR_SET_PDEATHSIG`), starts the command in its group, and exits
with the command's status. On SIGTERM, SIGINT or SIGHUP, whether from `rime up` stopping the platform or from the
kernel because `rime up` was killed (even by SIGKILL), it stops the whole group: SIGTERM to every process in it,
then SIGKILL to those left after the grace period. So a killed `rime up` leaves no process holding its ports.
With RIME_GUARD_REAP=1, the group is also stopped when the command exits by itself (its children die with it);
without, they live on (a run worker outlives a webserver that crashed, and finishes its run).
"""

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1
GRACE_SECONDS = float(os.environ.get("RIME_STOP_GRACE_SECONDS", "10"))
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def _reap(pid: int, deadline: float) -> None:
    """Waits for `pid` to end, until `deadline`. Not Popen.wait: the interrupted wait in main() holds its lock."""
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)


def main() -> int:
    parent = int(os.environ.pop("RIME_GUARD_PARENT", str(os.getppid())))
    _die_with_parent(parent)
    child = subprocess.Popen(sys.argv[1:])

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            os.killpg(0, signal.SIGTERM)  # the command and whatever it started in this group (not this guard)
            _reap(child.pid, time.monotonic() + GRACE_SECONDS)
        finally:
            os.killpg(0, signal.SIGKILL)  # stragglers, and this guard with them

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    code = child.wait()
    if os.environ.get("RIME_GUARD_REAP") == "1":
        # What the command left behind in its group (the code server's `dagster api grpc`) goes with it.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
