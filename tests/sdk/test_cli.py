"""The `rime` client commands against the real API (uvicorn on loopback, tests/sdk/conftest.py), called as users call
them: `main([...])` in process (exit code, stdout, stderr), and once the installed `rime` entry point in a process of
its own, following a run that really executes."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from api_shim.cli import main
from rime_client import Client, Pipeline, Project
from rime_client.cli.display import RunProgress
from tests.sdk import test_client  # its TestWait's helpers (a module import: pytest collects no test twice)
from tests.sdk.conftest import Served
from tests.sdk.test_client import ROOT, unique, with_pipeline

RIME = ROOT / ".venv" / "bin" / "rime"


@pytest.fixture
def env(api: Served, monkeypatch, tmp_path) -> dict[str, str]:
    """The API and the admin's token from the environment; a credentials directory of the test's own."""
    values = {"RIME_URL": api.url, "RIME_TOKEN": api.admin_token, "RIME_CONFIG_DIR": str(tmp_path / "config" / "rime")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RIME_PROJECT", raising=False)
    return values


@pytest.fixture
def client(api: Served):
    with Client(api.url, api.admin_token) as admin:
        yield admin


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`rime ARGV...` in process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class TestLogin:
    def test_login_checks_and_stores_the_token_privately_then_commands_use_it(
        self, api: Served, env, monkeypatch, capsys
    ):
        monkeypatch.delenv("RIME_URL")
        monkeypatch.delenv("RIME_TOKEN")
        config = Path(env["RIME_CONFIG_DIR"])

        monkeypatch.setattr(sys, "stdin", io.StringIO("not-a-token\n"))
        code, out, err = run_cli(capsys, "login", "--url", api.url, "--token-stdin")
        assert code == 3 and "code: unauthorized  request id: req_" in err
        assert not config.exists()  # a refused token is not stored

        monkeypatch.setattr(sys, "stdin", io.StringIO(api.admin_token + "\n"))  # piped: read without --token-stdin
        code, out, err = run_cli(capsys, "login", "--url", api.url + "/")
        assert code == 0 and f"Logged in to {api.url} " in out
        assert api.admin_token not in out + err
        stored = config / "credentials.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o700 and stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert json.loads(stored.read_text()) == {"url": api.url, "token": api.admin_token}

        name = unique("after-login")
        assert run_cli(capsys, "projects", "create", name)[0] == 0  # the stored URL and token
        assert name in run_cli(capsys, "projects", "list")[1]
        # The stored token goes to the stored URL only: the same server under another name gets no token.
        other = api.url.replace("127.0.0.1", "localhost")
        code, _, err = run_cli(capsys, "projects", "list", "--url", other)
        assert code == 3 and "code: unauthorized" in err
        # Flags come first, then the environment.
        monkeypatch.setenv("RIME_TOKEN", api.viewer_token)
        code, _, err = run_cli(capsys, "projects", "create", unique("as-viewer"))
        assert code == 3 and "code: forbidden" in err
        assert run_cli(capsys, "projects", "create", unique("as-admin"), "--token", api.admin_token)[0] == 0

        monkeypatch.delenv("RIME_TOKEN")
        assert run_cli(capsys, "logout")[:2] == (0, f"Logged out (removed {stored}).\n")
        assert not stored.exists()
        code, _, err = run_cli(capsys, "projects", "list")
        assert code == 2 and "rime login --url URL" in err
        assert run_cli(capsys, "logout")[1] == "Not logged in: no stored credentials.\n"


class TestReads:
    def test_projects(self, env, capsys):
        name = unique("cli-projects")
        code, out, _ = run_cli(capsys, "projects", "create", name, "--description", "from the CLI")
        assert code == 0 and out.startswith(f"Created project {name} (proj_")
        code, out, _ = run_cli(capsys, "projects", "list", "--output", "json")
        [created] = [p for p in json.loads(out) if p["name"] == name]
        code, out, _ = run_cli(capsys, "projects", "get", created["namespace"])  # the slug
        assert code == 0 and f"id:          {created['id']}" in out and "from the CLI" in out

        code, _, err = run_cli(capsys, "projects", "delete", name)  # stdin is no terminal: --yes is needed
        assert code == 2 and "--yes" in err
        assert run_cli(capsys, "projects", "delete", name, "--yes")[:2] == (
            0,
            f"Deleted project {name} ({created['id']}).\n",
        )
        code, out, err = run_cli(capsys, "projects", "get", created["id"])
        assert (code, out) == (3, "") and f"error: No project with id, name or slug '{created['id']}'" in err
        assert "code: resource_not_found" in err

    def test_connectors_and_pipelines(self, api: Served, env, client: Client, monkeypatch, capsys):
        project, pipeline = with_pipeline(client, unique("cli-reads"))
        code, out, _ = run_cli(capsys, "connectors", "list", "--project", project.name)
        header, row = out.splitlines()
        assert header.split() == ["ID", "NAME", "TYPE", "STATUS", "SCHEDULE", "LAST", "SYNC"]
        assert row.split()[1:3] == ["Shop", "files"]
        code, out, _ = run_cli(capsys, "connectors", "get", "Shop", "-p", project.namespace, "-o", "json")
        assert code == 0 and json.loads(out)["selected_tables"] == ["orders"]

        monkeypatch.setenv("RIME_PROJECT", project.id)  # the default project
        code, out, _ = run_cli(capsys, "pipelines", "list")
        assert code == 0 and out.splitlines()[1].split()[:3] == [pipeline.id, "nightly", "active"]
        code, out, _ = run_cli(capsys, "pipelines", "get", "nightly")
        assert "execution_order: sync" in out and out.splitlines()[-1].split() == ["sync", "connector_sync", "-"]
        assert run_cli(capsys, "pipelines", "runs", "nightly", "-o", "json")[1] == "[]\n"
        code, out, _ = run_cli(capsys, "pipelines", "export", pipeline.id)
        assert yaml.safe_load(out) == client.pipelines.export(pipeline.id, project=project.id)
        assert out.startswith("format_version: 1\nkind: pipeline\n")

        code, _, err = run_cli(capsys, "pipelines", "get", "weekly")
        assert code == 3 and "'weekly' in project" in err
        monkeypatch.delenv("RIME_PROJECT")
        code, _, err = run_cli(capsys, "pipelines", "list")
        assert code == 2 and "--project" in err
        with pytest.raises(SystemExit) as usage:  # argparse's own usage errors exit 2
            main(["pipelines", "run"])
        assert usage.value.code == 2

    def test_run_options_reach_the_api_and_refusals_are_api_errors(
        self, api: Served, env, client: Client, monkeypatch, capsys
    ):
        project, _ = with_pipeline(client, unique("cli-refused"))
        monkeypatch.setenv("RIME_TOKEN", api.viewer_token)
        for argv in (("pipelines", "run", "nightly", "--wait"), ("connectors", "sync", "Shop", "--wait")):
            code, out, err = run_cli(capsys, *argv, "--project", project.name)
            assert (code, out) == (3, ""), argv
            assert err.startswith("error: ") and "code: forbidden  request id: req_" in err
        monkeypatch.setenv("RIME_TOKEN", api.admin_token)
        # The run's environment and variables reach the API: production has no version yet (nothing was promoted).
        argv = ("pipelines", "run", "nightly", "-p", project.id, "--environment", "production", "--var", "min=10")
        code, _, err = run_cli(capsys, *argv)
        assert code == 3 and "production" in err and "code: conflict" in err, err
        argv = (
            "pipelines",
            "run",
            "nightly",
            "-p",
            project.name,
            "--dry-run",
            "--var",
            "min=10",
            "--var",
            "tags=[a, b]",
        )
        code, out, _ = run_cli(capsys, *argv, "-o", "json")
        plan = json.loads(out)
        assert (
            code == 0 and plan["variables"] == {"min": 10, "tags": ["a", "b"]} and plan["execution_order"] == ["sync"]
        )
        code, out, _ = run_cli(capsys, *argv)
        assert 'variables:       {"min": 10, "tags": ["a", "b"]}' in out and "1      sync  connector_sync" in out
        assert out.endswith("Dry run: validated, nothing started.\n")
        code, _, err = run_cli(capsys, "pipelines", "run", "nightly", "-p", project.id, "--var", "no-value")
        assert code == 2 and "--var no-value: expected KEY=VALUE" in err


class TestApply:
    def test_created_unchanged_updated(self, env, client: Client, tmp_path, monkeypatch, capsys):
        project, pipeline = with_pipeline(client, unique("cli-apply"))
        document = client.pipelines.export(pipeline.id, project=project.id)
        document["pipeline"]["name"] = "copy"
        path = tmp_path / "copy.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))

        code, out, _ = run_cli(capsys, "apply", "-f", str(path), "-p", project.name)
        copy = client.pipelines.get("copy", project=project.id)
        assert (code, out) == (0, f"pipeline copy ({copy.id}) created (version 1)\n")
        again = run_cli(capsys, "apply", "-f", str(path), "-p", project.name)[1]
        assert again == f"pipeline copy ({copy.id}) unchanged (version 1)\n"
        assert client.pipelines.get(copy.id, project=project.id).updated_at == copy.updated_at  # nothing was sent

        document["pipeline"]["schedule"] = "0 3 * * *"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        code, out, _ = run_cli(capsys, "apply", "-f", str(path), "-p", project.name)
        assert out == f"pipeline copy ({copy.id}) updated: schedule (version 2)\n"
        assert client.pipelines.get("copy", project=project.id).schedule == "0 3 * * *"

        # A document leaving out fields: they take their defaults (the schedule goes); sent again, it changes nothing.
        short = {"format_version": 1, "pipeline": {"name": "copy", "steps": document["pipeline"]["steps"]}}
        monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(short)))
        code, out, _ = run_cli(capsys, "apply", "-f", "-", "-p", project.id, "-o", "json")
        result = json.loads(out)
        updated = {"action": "updated", "name": "copy", "id": copy.id, "version": 3, "changed": ["schedule"]}
        assert result == {"project_id": project.id, "results": [updated]}
        path.write_text(
            json.dumps(short)
            + "\n---\n"
            + yaml.safe_dump({**document, "pipeline": {**document["pipeline"], "name": "third"}})
        )
        code, out, _ = run_cli(capsys, "apply", "-f", str(path), "-p", project.id)
        first, second = out.splitlines()
        assert first == f"pipeline copy ({copy.id}) unchanged (version 3)" and second.endswith(") created (version 1)")

    def test_refusals_print_their_details(self, env, client: Client, tmp_path, capsys):
        project, pipeline = with_pipeline(client, unique("cli-apply-bad"))
        other, _ = with_pipeline(client, unique("cli-apply-other"))
        document = client.pipelines.export(pipeline.id, project=project.id)
        path = tmp_path / "p.yaml"

        path.write_text(yaml.safe_dump({**document, "format_version": 99}))
        code, out, err = run_cli(capsys, "apply", "-f", str(path), "-p", project.id)
        assert (code, out) == (3, "") and "format_version: " in err and "upgrade Rime" in err
        assert "code: validation_error  request id: req_" in err

        path.write_text(yaml.safe_dump({**document, "pipeline": {**document["pipeline"], "name": "", "retries": -1}}))
        code, _, err = run_cli(capsys, "apply", "-f", str(path), "-p", project.id)
        fields = {line.split(":")[0].strip() for line in err.splitlines() if line.startswith("  ")}
        assert code == 3 and {"pipeline.name", "pipeline.retries"} <= fields, err

        # The steps name a connector of this project: in another project that is a 422 naming the step.
        path.write_text(yaml.safe_dump({**document, "pipeline": {**document["pipeline"], "name": "moved"}}))
        code, _, err = run_cli(capsys, "apply", "-f", str(path), "-p", other.id)
        assert code == 3 and "sync" in err and "code: unprocessable_entity" in err

        path.write_text("pipeline: [unclosed\n")
        code, _, err = run_cli(capsys, "apply", "-f", str(path), "-p", project.id)
        assert code == 2 and str(path) in err
        assert run_cli(capsys, "apply", "-f", str(tmp_path / "missing.yaml"), "-p", project.id)[0] == 2
        assert [p.name for p in client.pipelines.list(project=other.id)] == ["nightly"]  # nothing half-applied


# A run of the pipeline's job executed on the app's DAGSTER_HOME, tagged as the API tags it (as tests/sdk/test_client.py
# TestWait does: Dagster is not running in this fixture, so launches answer 503). `pass`: its step waits for the gate
# file; `fail`: its step raises at once.
RUN_SCRIPT = """
import json, sys, time
from pathlib import Path
import dagster as dg

gate, tags, outcome = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]

@dg.op(name="step_sync")
def step_sync() -> None:
    if outcome == "fail":
        raise RuntimeError("the source went away")
    deadline = time.monotonic() + 60
    while not gate.exists():
        assert time.monotonic() < deadline, "the test never opened the gate"
        time.sleep(0.05)

@dg.job(name="cli_wait")
def job() -> None:
    step_sync()

job.execute_in_process(instance=dg.DagsterInstance.get(), tags=tags, raise_on_error=False)
"""


def start_run(api: Served, project: Project, pipeline: Pipeline, gate: Path, outcome: str) -> subprocess.Popen:
    from rime_dagster.pipelines.names import pipeline_tags

    tags = {**pipeline_tags(project.id, pipeline.id), "rime/triggered_by": "cli@example.com"}
    env = {**os.environ, "DAGSTER_HOME": str(api.settings.dagster_home_path)}
    argv = [sys.executable, "-c", RUN_SCRIPT, str(gate), json.dumps(tags), outcome]
    return subprocess.Popen(argv, env=env, cwd=ROOT)


@pytest.mark.slow  # two Dagster runs in processes of their own, and `rime` in another: a few seconds
def test_waiting_for_runs_shows_the_steps_and_exits_by_the_outcome(api: Served, env, client: Client, tmp_path, capsys):
    gate = tmp_path / "gate"
    passing_project, passing = with_pipeline(client, unique("cli-wait"))
    failing_project, failing = with_pipeline(client, unique("cli-fail"))
    workers = [
        start_run(api, passing_project, passing, gate, "pass"),
        start_run(api, failing_project, failing, gate, "fail"),
    ]
    passing_run = test_client.TestWait.run_of(client, passing_project, passing)

    # Not over before the timeout: exit 4, and the run keeps going.
    code, _, err = run_cli(
        capsys, "runs", "wait", passing_run, "--pipeline", "nightly", "-p", passing_project.id, "--timeout", "0.3"
    )
    assert code == 4 and f"run {passing_run} is still" in err and "keeps going" in err

    # The installed entry point, as in CI: not a terminal, so one line per change; the gate opens once the step runs.
    argv = [str(RIME), "runs", "wait", passing_run, "--pipeline", "nightly", "--project", passing_project.name]
    rime, interrupted = (
        subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    )
    assert rime.stdout is not None and interrupted.stdout is not None and interrupted.stderr is not None
    interrupted.stdout.readline()  # it follows the run; Ctrl-C stops the waiting, not the run
    interrupted.send_signal(signal.SIGINT)
    assert (
        interrupted.wait(30) == 130 and f"Stopped waiting; run {passing_run} keeps going" in interrupted.stderr.read()
    )
    lines = []
    for line in rime.stdout:
        lines.append(line.split(maxsplit=1)[1].split() if line[:2].isdigit() else line.split())
        if lines[-1][:2] == ["sync", "running"]:
            gate.touch()
    assert rime.wait(30) == 0, rime.stderr.read() if rime.stderr else ""
    assert ["sync", "running"] in lines and lines[-3][:2] == ["sync", "completed"]
    assert lines[-2][:2] == ["run", "succeeded"] and lines[-1][:3] == ["Run", passing_run, "succeeded"]

    failing_run = test_client.TestWait.run_of(client, failing_project, failing)
    code, out, _ = run_cli(capsys, "runs", "wait", failing_run, "--pipeline", failing.id, "-p", failing_project.name)
    assert code == 1 and f"Run {failing_run} failed" in out and "sync: " in out and "the source went away" in out
    code, out, _ = run_cli(capsys, "runs", "get", failing_run, "--pipeline", "nightly", "-p", failing_project.id)
    assert code == 0 and out.splitlines()[-1].split()[:3] == ["sync", "connector_sync", "failed"]
    code, out, _ = run_cli(capsys, "pipelines", "runs", "nightly", "-p", passing_project.id, "-o", "json")
    assert [(r["run_id"], r["status"]) for r in json.loads(out)] == [(passing_run, "succeeded")]
    assert [worker.wait(30) for worker in workers] == [0, 0]


def screen_of(written: str) -> list[str]:
    """What a terminal shows after `written`: text, newlines, ESC[nF (n lines up, to column 0), ESC[2K (clear)."""
    lines, row = [""], 0
    parts = re.split(r"\x1b\[(\d+)([FK])", written)  # text, (number, command, text)...
    for i in range(0, len(parts), 3):
        if i:
            number, command = int(parts[i - 2]), parts[i - 1]
            row = row - number if command == "F" else row
            lines[row] = "" if command == "K" else lines[row]
        for j, text in enumerate(parts[i].split("\n")):
            if j:
                row += 1
                lines.extend([""] * (row + 1 - len(lines)))
            lines[row] += text
    return lines


def test_on_a_terminal_the_steps_are_redrawn_in_place():
    written = io.StringIO()
    progress = RunProgress(written, "run_1", live=True)
    for message in (
        {"type": "step_update", "step_id": "sync", "step_name": "sync", "status": "running"},
        {"type": "step_update", "step_id": "dbt_build", "step_name": "dbt", "status": "pending"},
        {"type": "run_update", "status": "running"},
        {"type": "run_update", "status": "running"},  # no change: nothing redrawn
        {"type": "step_update", "step_id": "sync", "status": "completed", "duration_seconds": 1.25},
    ):
        progress(message)
    assert written.getvalue().count("\x1b[2K") == 2 + 3 + 3 + 3  # four frames, each over the last
    assert screen_of(written.getvalue()) == [
        "run run_1: running",
        "  sync       completed  1.2s",
        "  dbt_build  pending",
        "",
    ]


def test_versions_promotion_and_approvals_from_the_command_line(api: Served, env, client: Client, monkeypatch, capsys):
    project, pipeline = with_pipeline(client, unique("cli-lifecycle"))
    client.pipelines.update(pipeline.id, {"description": "second"}, project=project.id)
    approver = client.users.create(f"{unique('approver')}@example.com", "approver", "lead_data_engineer")
    approver_token = client.tokens.create(approver.id, "cli").token
    monkeypatch.setenv("RIME_PROJECT", project.name)

    code, out, _ = run_cli(capsys, "pipelines", "versions", "nightly")
    assert code == 0 and [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["2", "development"],
        ["1", "superseded"],
    ]
    assert run_cli(capsys, "pipelines", "promote", "nightly", "2")[:2] == (0, "Version 2 promoted: it stands in qa.\n")
    code, out, _ = run_cli(capsys, "pipelines", "promote", "nightly", "2")
    request = re.search(r"request (apr_\w+)", out).group(1)
    code, out, err = run_cli(capsys, "approvals", "approve", request)  # the admin asked: another lead approves
    assert code == 3 and "another lead" in err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage error
        run_cli(capsys, "approvals", "reject", request)
    assert usage.value.code == 2 and "--reason" in capsys.readouterr().err
    code, out, _ = run_cli(capsys, "approvals", "list", "--status", "pending")
    assert code == 0 and request in out and "qa -> uat" in out
    monkeypatch.setenv("RIME_TOKEN", approver_token)
    code, out, _ = run_cli(capsys, "approvals", "approve", request, "--reason", "ok")
    assert (code, out) == (0, f"Request {request} approved: version 2 of nightly moves to uat.\n")
    code, out, _ = run_cli(capsys, "pipelines", "environments", "nightly", "-o", "json")
    assert code == 0 and json.loads(out)["uat"]["version"] == 2
