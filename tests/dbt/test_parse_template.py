"""The warm dbt template that `dbt parse` is forked from (rime_dagster/dbt/parse_template.py): a parse from it
writes the manifest a new dbt process would, a parse past its timeout is killed, and a template that died is
replaced while the parse asked for runs as a new process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from rime_dagster.dbt import parse_template, workspace

pytestmark = pytest.mark.slow

MODEL = "select 1 as id\n"
# dbt's Jinja is sandboxed (ranges of at most 100,000), so the parse lasts 10^10 iterations: past any timeout.
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\nselect 1 as id\n"


def _project(root: Path, model: str) -> tuple[list[str], Path]:
    (root / "models").mkdir(parents=True)
    (root / "dbt_project.yml").write_text("name: probe\nversion: '1.0.0'\nconfig-version: 2\nprofile: probe\n")
    (root / "models" / "one.sql").write_text(model)
    (root / "profiles.yml").write_text(
        f"probe:\n  target: t\n  outputs:\n    t:\n      type: duckdb\n      path: {root / 'w.duckdb'}\n"
    )
    target = root / "target"
    args = ["--log-format", "json", "--no-use-colors", "parse", "--project-dir", str(root),
            "--profiles-dir", str(root), "--target-path", str(target), "--log-path", str(target / "logs")]  # fmt: skip
    return args, target


@pytest.fixture
def template():
    template = parse_template.ParseTemplate()
    assert template.wait_ready(workspace.dbt_env()), "the dbt parse template did not start"
    yield template
    template.close()


def _parse(template, root: Path, model: str = MODEL, timeout: float = 60):
    args, target = _project(root, model)
    env = workspace.dbt_env()
    return template.run(args, cwd=root, env=env, policy_json=None, timeout=timeout, template_env=env), target


def test_a_forked_parse_writes_the_manifest_and_reports_dbts_errors(template, tmp_path):
    done, target = _parse(template, tmp_path / "good")
    assert done is not None and done.returncode == 0, done
    assert (target / "manifest.json").is_file()
    failed, _ = _parse(template, tmp_path / "bad", "select {{ ref('nowhere') }}\n")
    assert failed is not None and failed.returncode == 2  # as the dbt command exits on a compilation error
    assert "nowhere" in workspace.dbt_errors(failed.output)
    assert template.forks == 2


def test_a_parse_past_its_timeout_is_killed(template, tmp_path):
    with pytest.raises(parse_template.ParseTimeout):
        _parse(template, tmp_path / "endless", ENDLESS, timeout=3)
    done, _ = _parse(template, tmp_path / "after")  # the template still serves
    assert done is not None and done.returncode == 0


def test_a_dead_template_is_replaced_and_the_parse_runs_as_a_process(template, tmp_path):
    pid = template.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done, _ = _parse(template, tmp_path / "while-dead")
    assert done is None  # the caller starts dbt as a process
    assert template.wait_ready(workspace.dbt_env())
    assert template.pid not in (None, pid)
    again, _ = _parse(template, tmp_path / "replaced")
    assert again is not None and again.returncode == 0
