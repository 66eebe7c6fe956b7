"""Issue 11, item 3 on a real platform: what the processes `rime up` starts hold in their environment, and what dbt
sees when Dagster's run worker runs it (the code server holds the secret key; dbt must not)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import closed_port
from tests.dagster.conftest import Webserver, graphql
from tests.dagster.conftest import api as api  # the fixtures of the session's real Dagster
from tests.dagster.conftest import dagster_webserver as dagster_webserver
from tests.dagster.test_dbt import _wait_for_dbt_run
from tests.test_platform_up import _descendants

pytestmark = pytest.mark.dagster

LOGS = """query($runId: ID!) { logsForRun(runId: $runId) {
  ... on EventConnection { events { ... on MessageEvent { message } } } } }"""


def test_a_dbt_run_in_dagster_sees_no_platform_secret(api, dagster_webserver: Webserver, tmp_path):
    settings = dagster_webserver.settings
    secret = settings.secret_key  # in the code server's environment, as `rime up` gives it
    probe = "{{ env_var('RIME_SECRET_KEY', 'absent') ~ '|' ~ env_var('RIME_ADMIN_TOKEN', 'absent') }}"
    folder = tmp_path / "probe"
    (folder / "models").mkdir(parents=True)
    (folder / "dbt_project.yml").write_text('name: probe\nversion: "1.0.0"\nprofile: probe\n')
    (folder / "models" / "leak.sql").write_text(
        "{{ config(materialized='table') }}\n"
        "{{ log('probe: ' ~ env_var('RIME_SECRET_KEY', 'absent'), info=True) }}\n"
        f"select '{probe}' as probe\n"
    )
    project = api.post("/api/v1/projects", json={"name": "dbt secrets"}).json()
    created = api.post(
        f"/api/v1/projects/{project['id']}/dbt-projects",
        json={"name": "Probe", "source": {"type": "path", "path": str(folder)}},
    )
    assert created.status_code == 201, created.text
    base = f"/api/v1/projects/{project['id']}/dbt-projects/{created.json()['id']}"
    started = api.post(f"{base}/run", json={"command": "build"})
    assert started.status_code == 202, started.text
    run = _wait_for_dbt_run(api, base, started.json()["run_id"])
    assert run["status"] == "succeeded", run

    with duckdb.connect(str(settings.dbt_home / project["id"] / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("select probe from leak").fetchone() == ("absent|absent",)
    seen = [api.get(f"{base}/runs").text, api.get(f"{base}/models").text]
    events = graphql(settings, LOGS, {"runId": run["dagster_run_id"]})["logsForRun"]["events"]
    seen += [e.get("message") or "" for e in events]
    for root in (settings.dagster_home_path, settings.dbt_home / project["id"]):
        seen += [
            p.read_text(errors="replace")
            for p in root.rglob("*")
            if p.is_file() and p.suffix in ("", ".out", ".err", ".json", ".log", ".sql", ".txt")
        ]
    assert not [text for text in seen if secret in text or settings.admin_token in text]
    assert any("probe: absent" in text for text in seen)  # the log line is there, without the secret


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def _role(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    text = b" ".join(argv)
    if b"code-server" in text or (b"api" in argv and b"grpc" in argv):
        return "code-server"
    if b"dagster-webserver" in text:
        return "webserver"
    if b"dagster-daemon" in text:
        return "daemon"
    if b"uvicorn" in text:
        return "api"
    return "other"


def test_rime_up_gives_each_process_only_the_secrets_it_needs(tmp_path):
    api_port = closed_port()
    token, key, unrelated = "rime_up_env_token_5b8e20c1d4", "rime-up-env-secret-key-73f0", "deploy-token-sentinel-19"
    env = {
        **os.environ,
        "RIME_HOME": str(tmp_path / "home"),
        "RIME_API_PORT": str(api_port),
        "RIME_DAGSTER_PORT": str(closed_port()),
        "RIME_CODE_SERVER_PORT": str(closed_port()),
        "RIME_ADMIN_TOKEN": token,
        "RIME_SECRET_KEY": key,
        "ACME_DEPLOY_TOKEN": unrelated,  # the operator's shell: not for the platform's processes
    }
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api_shim.cli", "up", "--no-demo"],
        env=env,
        stdout=(tmp_path / "up.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, ready = time.monotonic() + 150, False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{api_port}/health/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(1)
        assert ready, "rime up did not become ready:\n" + (tmp_path / "up.log").read_text(errors="replace")[-3000:]
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"http://127.0.0.1:{api_port}/api/v1/projects", headers=headers).status_code == 200

        held: dict[str, list[set[str]]] = {}
        for pid in _descendants(proc.pid):
            values = set(_environ(pid).values())
            held.setdefault(_role(pid), []).append(
                {name for name, v in (("token", token), ("key", key), ("unrelated", unrelated)) if v in values}
            )
        assert {"code-server", "webserver", "daemon", "api"} <= held.keys(), held
        assert not any("token" in s or "unrelated" in s for sets in held.values() for s in sets), held
        # The API signs cursors and encrypts credentials; the run workers that the webserver and the daemon start
        # decrypt them, and the code server builds the jobs from the store.
        assert all(s == {"key"} for role in ("api", "code-server", "webserver", "daemon") for s in held[role]), held
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in _descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
