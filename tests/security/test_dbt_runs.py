"""Issue 11, item 3 on a real platform: what dbt sees when Dagster's run worker runs it (the run worker holds the
secret key; dbt must not). What each process `rime up` starts holds: tests/test_platform_up.py, on its one boot."""

from __future__ import annotations

import duckdb
import pytest

from tests.dagster.conftest import Webserver, graphql
from tests.dagster.test_dbt import _wait_for_dbt_run

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
