"""Helpers shared by the benchmark scripts (run as `python bench/<name>.py` from the repo root)."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def installed_versions(*dists: str) -> str:
    """`Python 3.11.7; duckdb 1.4.4; ...; 2 CPUs` for the report header."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    parts = [f"Python {platform.python_version()}", *(f"{d} {version(d)}" for d in dists), f"{os.cpu_count()} CPUs"]
    return "; ".join(parts)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pids_with_env(entry: str) -> list[int]:
    """Processes whose environment holds `entry` (only ours carry a bench's temporary DAGSTER_HOME)."""
    needle = entry.encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes() + b"\0":
                found.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return found


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Processes:
    """Started children, each leading its own process group (its code server and run workers too).

    `stop()` stops every group, then kills any straggler that left its group but still carries the
    DAGSTER_HOME one of the children was started with.
    """

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen, Path]] = []
        self.markers: set[str] = set()

    def start(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.append((name, proc, log_path))
        if "DAGSTER_HOME" in env:
            self.markers.add(f"DAGSTER_HOME={env['DAGSTER_HOME']}")
        log(f"  started {name} (pid {proc.pid})")
        return proc

    def check_alive(self) -> None:
        for name, proc, log_path in self.children:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for _, proc, _ in self.children:
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, proc, _ in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # Every group, even those whose leader exited: a code server or run worker may linger.
        for _, proc, _ in self.children:
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while (pids := [p for m in self.markers for p in pids_with_env(m)]) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.2)
        self.children.clear()


def wait_http(url: str, procs: Processes, timeout: float = 240.0) -> None:
    """Until `url` answers 200; fails early when one of `procs` exited."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")
