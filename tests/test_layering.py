"""The two packages' layering: rime_dagster is the core, api_shim the thin API over it.

`lint-imports` (make lint) holds the import direction; these tests hold the same line from a test run, and
that the API app starts without dbt: importing it must not cost dagster_dbt's or dbt-core's seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs lint-imports and fresh interpreters

ROOT = Path(__file__).resolve().parent.parent


def _imported(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    probe = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {prefixes!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_api_app_imports_no_dbt():
    assert _imported("import api_shim.main", ("dagster_dbt", "dbt")) == []


def test_the_core_imports_no_api_module():
    statement = "\n".join(
        f"import {path.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}"
        for path in sorted((ROOT / "rime_dagster").rglob("*.py"))
        if "migrations" not in path.parts and path.name != "definitions.py"
    )
    assert _imported(statement, ("api_shim",)) == []


def test_the_import_contract_holds():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
