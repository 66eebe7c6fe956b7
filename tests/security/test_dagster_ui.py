"""Issue 11, item 16: the Dagster UI has no authentication of its own. It listens on loopback by default (see
test_dbt_and_platform), and viewers get a webserver started with `--read-only`: it shows runs, assets and logs but
refuses launches, reloads and every other mutation, whoever reaches it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from api_shim.cli import webserver_command, write_workspace
from tests.conftest import closed_port
from tests.dagster.conftest import BIN, Webserver, _start, _stop

pytestmark = pytest.mark.dagster

RELOAD = """mutation { reloadRepositoryLocation(repositoryLocationName: "rime") { __typename } }"""
LAUNCH = """mutation($selector: JobOrPipelineSelector!) {
  launchPipelineExecution(executionParams: {selector: $selector}) { __typename } }"""
RUNS = "{ runsOrError(limit: 1) { __typename } }"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def test_the_viewers_webserver_refuses_every_mutation(dagster_webserver: Webserver, tmp_path):
    settings = dagster_webserver.settings.model_copy(update={"dagster_viewer_port": closed_port()})
    argv = webserver_command(settings, BIN, write_workspace(settings), read_only=True)
    assert "--read-only" in argv and argv[argv.index("-h") + 1] == "127.0.0.1"
    # The same instance and workspace as the session's webserver, and a mark to find this process by.
    env = {**_environ(dagster_webserver.process.pid), "RIME_TEST_VIEWER": str(settings.dagster_viewer_port)}
    viewer = _start(argv, env, tmp_path / "viewer.log")
    url = f"http://127.0.0.1:{settings.dagster_viewer_port}/graphql"

    def ask(query: str, variables: dict | None = None) -> dict:
        response = httpx.post(url, json={"query": query, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        return response.json()["data"]

    try:
        deadline = time.monotonic() + 120
        while True:
            assert viewer.poll() is None, (tmp_path / "viewer.log").read_text(errors="replace")[-3000:]
            try:
                if ask(RUNS)["runsOrError"]["__typename"] == "Runs":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the read-only webserver did not start"
            time.sleep(0.5)
        assert ask(RELOAD)["reloadRepositoryLocation"]["__typename"] == "UnauthorizedError"
        selector = {
            "repositoryLocationName": "rime",
            "repositoryName": "__repository__",
            "jobName": "rime_housekeeping",
        }
        launched = ask(LAUNCH, {"selector": selector})["launchPipelineExecution"]["__typename"]
        assert launched == "UnauthorizedError"
    finally:
        _stop(viewer, f"RIME_TEST_VIEWER={settings.dagster_viewer_port}")
