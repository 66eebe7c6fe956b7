"""A template process that `dbt parse` processes are forked from, with dbt-core loaded and warmed up.

Registering or updating a dbt project runs `dbt parse` (rime_dagster/dbt/workspace.py). Started from scratch,
each one spends most of its CPU before it reads the project: importing dbt-core and its adapters (about 3 s) and
building the JSON schemas dbt validates its files against (1-2 s), about 7.5 s of CPU in all for a small
project. This template pays that once: it imports dbt and parses a throwaway project of its own, then forks a
child per parse, which starts at the project's files: about 3 s of CPU.

What keeps a child exactly as confined as a `dbt` process started in the sandbox:

- The template is started with `dbt_env()` (no platform secret, no RIME_* setting) and never learns anything
  about a parse: the API hands it two file descriptors (a socket pair's end and an unnamed output file) and the
  child reads the request (arguments, environment, sandbox policy) from that socket itself. So no child
  inherits another project's password or paths from the template's memory.
- The child confines itself with the same Landlock policy (rime_dagster/dbt/sandbox.py), replaces its whole
  environment with the request's, and only then runs dbt.
- The warm-up parse runs with dbt's static parser off: that parser is native code whose first use starts
  threads, and a fork of a process with threads other than the forking one can deadlock. The template checks it
  has a single thread before it reports ready; a child's own first use of the static parser is its own.

Protocol. Control socket (the API's end of a socket pair), in: one byte `f` with two descriptors (the child's
end of the job socket, the output file); out, once: `ready` or `error: <why>`. Job socket, one JSON line each
way: request `{"args": [...], "cwd": ..., "env": {...}, "policy": <policy JSON or null>}`; answers
`{"pid": p}` at once, then `{"exit": code}` when dbt is done (dbt's own exit codes: 0, 1 failed, 2 crashed).

Any failure to use the template (not started yet, starting, gone) makes `run` answer None, and the caller
starts `dbt` as a process, as before: a parse never waits for the template.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

READY = b"ready\n"
START_TIMEOUT_SECONDS = 120.0  # imports and the warm-up parse, on a busy machine
ANSWER_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Completed:
    returncode: int
    output: str  # dbt's stdout and stderr, interleaved as written


class ParseTimeout(Exception):
    pass


class ParseTemplate:
    """The API's side: starts the template in the background at the first parse asked for; forks parses from it
    once it is ready. `run` answers None whenever it cannot fork (the caller then starts dbt as a process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._starting = False
        self._failed = False
        self.forks = 0  # parses forked so far (tests and metrics read it)

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        policy_json: str | None,
        timeout: float,
        template_env: Mapping[str, str],
    ) -> Completed | None:
        with self._lock:
            if self._control is None:
                self._start_in_background(template_env)
                return None
            job, child_end = socket.socketpair()
            output = tempfile.TemporaryFile()  # noqa: SIM115  (closed by the `with` below)
            try:
                socket.send_fds(self._control, [b"f"], [child_end.fileno(), output.fileno()])
            except OSError as exc:
                log.warning("dbt parse template unreachable (%s); parsing in a new process", exc)
                self._forget()
                job.close()
                output.close()
                return None
            finally:
                child_end.close()
            self.forks += 1
        with job, output:
            return self._follow(job, output, args, cwd, env, policy_json, timeout)

    def _follow(
        self,
        job: socket.socket,
        output: BinaryIO,
        args: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        policy_json: str | None,
        timeout: float,
    ) -> Completed | None:
        request = {"args": list(args), "cwd": str(cwd), "env": dict(env), "policy": policy_json}
        answers = job.makefile("rb")
        try:
            job.settimeout(ANSWER_TIMEOUT_SECONDS)
            job.sendall(json.dumps(request).encode() + b"\n")
            started = answers.readline()
        except OSError:
            started = b""
        if not started:  # the template died before its child ran anything: start dbt as a process instead
            log.warning("dbt parse template did not fork; parsing in a new process")
            with self._lock:
                self._forget()
            return None
        pid = int(json.loads(started)["pid"])
        job.settimeout(timeout)
        try:
            ended = answers.readline()
        except TimeoutError:
            _kill(pid)
            raise ParseTimeout from None
        except OSError:
            ended = b""
        output.seek(0)
        text = output.read().decode(errors="replace")
        code = int(json.loads(ended)["exit"]) if ended else -signal.SIGKILL
        return Completed(returncode=code, output=text)

    def _start_in_background(self, template_env: Mapping[str, str]) -> None:
        if self._starting or self._failed:
            return
        self._starting = True
        threading.Thread(target=self._start, args=(dict(template_env),), name="rime-dbt-template", daemon=True).start()

    def _start(self, template_env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "rime_dagster.dbt.parse_template", str(theirs.fileno())],
                env=template_env,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # it reports a failed start over the socket
                # In the API's process group, as its children are: Ctrl-C and `rime up`'s stop reach it and the
                # parses it forked.
            )
        except OSError as exc:
            log.warning("dbt parse template could not start: %s", exc)
            ours.close()
            self._finish_start(None, None, failed=True)
            return
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT_SECONDS)
        try:
            answer = ours.makefile("rb").readline()
        except OSError:
            answer = b""
        ours.settimeout(None)
        if answer != READY:
            why = answer.decode(errors="replace").strip()
            log.warning("dbt parse template did not start (%s); dbt parses run as new processes", why or "no answer")
            process.kill()
            ours.close()
            self._finish_start(None, None, failed=True)
            return
        self._finish_start(ours, process, failed=False)

    def _finish_start(self, control: socket.socket | None, process: subprocess.Popen | None, *, failed: bool) -> None:
        with self._lock:
            self._control, self._process = control, process
            self._starting, self._failed = False, failed

    def _forget(self) -> None:
        """Drops a template that stopped answering (called with the lock held); the next parse starts a new one."""
        if self._control is not None:
            self._control.close()
        if self._process is not None:
            self._process.kill()
            try:
                self._process.wait(timeout=5)  # reaped now, not left a zombie until the Popen is collected
            except subprocess.TimeoutExpired:
                pass
        self._control = self._process = None

    def wait_ready(self, template_env: Mapping[str, str], timeout: float = START_TIMEOUT_SECONDS) -> bool:
        """Starts the template if it is not running and waits until it is ready; whether it is (tests, warm-ups)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._control is not None:
                    return True
                if self._failed:
                    return False
                self._start_in_background(template_env)
            time.sleep(0.05)
        return False

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None and self._control is not None else None

    def close(self) -> None:
        with self._lock:
            self._forget()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)  # dbt parse starts no process of its own
    except (ProcessLookupError, PermissionError):
        pass


TEMPLATE = ParseTemplate()


# The template's side ----------------------------------------------------------------------------------------


def _warm_up() -> None:
    """Imports dbt and its adapters and parses a throwaway project (static parser off: see the module's doc)."""
    import dbt.adapters.duckdb
    import dbt.adapters.postgres  # noqa: F401
    from dbt.cli.main import dbtRunner

    import rime_dagster.dbt.duckdb_plugin  # noqa: F401  (the profiles' plugin)

    with tempfile.TemporaryDirectory(prefix="rime-dbt-warm-up-") as folder:
        root = Path(folder)
        (root / "models").mkdir()
        (root / "dbt_project.yml").write_text("name: warm_up\nversion: '1.0.0'\nconfig-version: 2\nprofile: warm_up\n")
        (root / "models" / "one.sql").write_text("select 1 as id\n")
        (root / "profiles.yml").write_text(
            f"warm_up:\n  target: t\n  outputs:\n    t:\n      type: duckdb\n      path: {root / 'w.duckdb'}\n"
        )
        result = dbtRunner().invoke(
            ["--log-format", "json", "--no-use-colors", "--quiet", "parse", "--no-static-parser",
             "--project-dir", str(root), "--profiles-dir", str(root),
             "--target-path", str(root / "target"), "--log-path", str(root / "logs")]
        )  # fmt: skip
        if not result.success:
            raise RuntimeError(f"the warm-up parse failed: {result.exception}")


def _child(job_fd: int, output_fd: int) -> None:
    """A forked child: reads its request, confines itself, runs dbt; never returns."""
    code = 2
    job = socket.socket(fileno=job_fd)
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request = json.loads(job.makefile("rb").readline())
        job.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(output_fd)
        env = dict(request["env"])
        if request["policy"]:
            from rime_dagster.dbt import sandbox

            policy = sandbox.Policy.from_json(request["policy"])
            policy.read.append(f"/proc/{os.getpid()}")  # as the sandbox's launcher does
            try:
                sandbox.restrict(policy)
            except (sandbox.SandboxUnavailable, OSError) as exc:
                print(f"Rime could not start dbt in its sandbox: {exc}", file=sys.stderr, flush=True)
                code = 126
                return
            env.update(policy.env)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(request["cwd"])
        from dbt.cli.main import dbtRunner

        result = dbtRunner().invoke(request["args"])
        code = 0 if result.success else (1 if result.exception is None else 2)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            job.sendall(json.dumps({"exit": code}).encode() + b"\n")
        finally:
            os._exit(code)


def main(control_fd: int) -> None:
    control = socket.socket(fileno=control_fd)
    try:
        _warm_up()
        if threading.active_count() != 1:
            raise RuntimeError(f"{threading.active_count()} threads after the warm-up; forking would not be safe")
    except Exception as exc:
        control.sendall(f"error: {exc}".replace("\n", " ").encode() + b"\n")
        return
    # Exited children are reaped by the kernel; the API learns their exit codes over their job sockets.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    control.sendall(READY)
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(control, 16, 2)
        except OSError:
            return
        if not message:  # the API closed its end: leave (children run on)
            return
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            control.close()
            _child(*fds)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main(int(sys.argv[1]))
