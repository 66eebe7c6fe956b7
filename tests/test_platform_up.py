"""`rime up` end to end: the whole platform becomes ready, and SIGINT/SIGTERM leave no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import closed_port

pytestmark = pytest.mark.dagster


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_ready_then_stops_everything(tmp_path, stop_signal):
    api_port, dagster_port, code_server_port = closed_port(), closed_port(), closed_port()
    env = {
        **os.environ,
        "RIME_HOME": str(tmp_path / "home"),
        "RIME_API_PORT": str(api_port),
        "RIME_DAGSTER_PORT": str(dagster_port),
        "RIME_CODE_SERVER_PORT": str(code_server_port),
        "RIME_ADMIN_TOKEN": "rime_up_test_token_0123456789",
    }
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api_shim.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{api_port}/health/ready", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert ready is not None and ready.status_code == 200, ready.text if ready else "API never answered"
        assert {d["status"] for d in ready.json()["dependencies"].values()} == {"ok"}
        headers = {"Authorization": "Bearer rime_up_test_token_0123456789"}
        api = f"http://127.0.0.1:{api_port}/api/v1"
        projects = httpx.get(f"{api}/projects", headers=headers).json()["data"]
        demo = next(p for p in projects if p["name"] == "demo")
        connectors = httpx.get(f"{api}/projects/{demo['id']}/connectors", headers=headers).json()["data"]
        assert [(c["name"], c["connector_type"]) for c in connectors] == [("Demo Shop", "files")]
        dbt_projects = httpx.get(f"{api}/projects/{demo['id']}/dbt-projects", headers=headers).json()["data"]
        assert [(d["name"], d["dbt_project_name"], d["models_count"]) for d in dbt_projects] == [
            ("Shop Models", "demo_shop", 4)
        ]
        pipelines = httpx.get(f"{api}/projects/{demo['id']}/pipelines", headers=headers).json()["data"]
        assert [(p["name"], [s["type"] for s in p["steps"]]) for p in pipelines] == [
            ("Shop nightly", ["connector_sync", "dbt"])
        ]
        family = _descendants(proc.pid)
        assert len(family) >= 4  # code server (+ its child), webserver, daemon, API
        proc.send_signal(stop_signal)
        proc.wait(timeout=30)
        time.sleep(0.5)
        survivors = [pid for pid in family if _alive(pid)]
        assert survivors == [], f"left behind: {survivors}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
