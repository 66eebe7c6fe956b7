"""Trust model: data engineers run code through dbt (SQL that DuckDB executes, Python models), yet reach no platform
secret and no other project's data. dbt runs as the platform's OS user, so only the sandbox stands in the way
(rime_dagster/dbt/sandbox.py, Linux Landlock).

Each probe runs in a real dbt process, started the way the run worker and the API start it, in a project laid out as
under RIME_HOME/dbt/<project id>. Before the sandbox every probe read what it targeted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from rime_dagster.dbt import sandbox, workspace
from rime_dagster.settings import get_settings
from rime_dagster.specs import DbtProjectSpec
from tests.security.test_dbt_and_platform import _dbt_project, _materialize
from tests.support.dbt import parsed_spec

pytestmark = [
    pytest.mark.skipif(sandbox.abi_version() < 1, reason="this kernel has no Landlock"),
    pytest.mark.slow,  # dbt parses and runs
]

# What a Python model tries; each line of its table is (target, outcome).
PYTHON_PROBE = """
import os, socket

def model(dbt, session):
    dbt.config(materialized="table")
    outcomes = []

    def attempt(name, action):
        try:
            action()
            outcomes.append((name, "read"))
        except Exception as exc:
            outcomes.append((name, type(exc).__name__))

    for name, path in TARGETS.items():
        attempt(name, lambda path=path: open(path, "rb").read())
    attempt("tcp", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=5).close())
    attempt("own_project", lambda: open(OWN, "rb").read())
    import pyarrow
    return pyarrow.table({"target": [t for t, _ in outcomes], "outcome": [o for _, o in outcomes]})
"""


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on loopback (where Dagster's unauthenticated GraphQL listens) that accepts connections."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def _spec(
    home: Path, project_id: str, models: dict[str, str], *, model_paths: list[str] | None = None
) -> DbtProjectSpec:
    """A dbt project of Rime project `project_id` where the platform keeps it: RIME_HOME/dbt/<project id>/<dbt id>."""
    settings = get_settings()
    root = settings.dbt_home / project_id / "dbt_probe"
    source = _dbt_project(home / f"{project_id}-source", models, name="probe")
    if model_paths:
        (source / "dbt_project.yml").write_text(
            f'name: probe\nversion: "1.0.0"\nprofile: probe\nmodel-paths: {json.dumps(model_paths)}\n'
        )
    files = workspace.ProjectFiles(root, 1)
    duckdb_file = workspace.duckdb_path(settings.dbt_home, project_id)
    return parsed_spec(
        source,
        files,
        name="probe",
        profile="probe",
        duckdb_file=duckdb_file,
        project_id=project_id,
        namespace=project_id,
        slug="probe",
        sandboxed=True,
    )


@pytest.fixture
def platform(home) -> dict[str, Path]:
    """The platform's secrets and another project's warehouse, as the platform keeps them."""
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.signing_key()  # RIME_HOME/secret.key
    (settings.home / "admin-token").write_text("rime_admin_token_sentinel")
    (settings.home / "rime.db").write_bytes(b"SQLite format 3\x00metadata-store-sentinel")
    other = workspace.duckdb_path(settings.dbt_home, "proj_other")
    other.parent.mkdir(parents=True)
    with duckdb.connect(str(other)) as conn:
        conn.execute("create table customers as select 'other-project-row-sentinel' as name")
    iceberg = Path(settings.iceberg_properties["warehouse"].removeprefix("file://")) / "proj_other.db"
    iceberg.mkdir(parents=True)
    (iceberg / "data.parquet").write_bytes(b"PAR1 other-project-iceberg-sentinel")
    return {
        "secret_key": settings.home / "secret.key",
        "admin_token": settings.home / "admin-token",
        "metadata_store": settings.home / "rime.db",
        "other_warehouse": other,
        "other_iceberg": iceberg / "data.parquet",
        "api_environ": Path(f"/proc/{os.getpid()}/environ"),  # this process stands in for the API
    }


def test_a_python_model_reaches_no_secret_and_no_other_project(home, platform, listener):
    own = get_settings().dbt_home / "proj_mine" / "dbt_probe" / "rev-1" / "project" / "dbt_project.yml"
    probe = f"TARGETS = { ({k: str(v) for k, v in platform.items()})!r}\nPORT = {listener}\nOWN = {str(own)!r}\n"
    spec = _spec(home, "proj_mine", {"probe.py": probe + PYTHON_PROBE})
    result = _materialize(spec)
    assert result.success
    with duckdb.connect(str(spec.duckdb_file), read_only=True) as conn:
        outcomes = dict(conn.execute("select target, outcome from probe").fetchall())
    assert outcomes == {
        **{name: "PermissionError" for name in platform},
        "tcp": "PermissionError",
        "own_project": "read",
    }


@pytest.mark.parametrize("target", ["secret_key", "admin_token", "other_warehouse", "api_environ"])
def test_sql_cannot_read_files_outside_the_project(home, platform, target):
    sql = f"{{{{ config(materialized='table') }}}}\nselect content from read_text('{platform[target]}')\n"
    spec = _spec(home, "proj_mine", {"leak.sql": sql})
    result = _materialize(spec)
    assert not result.success
    failure = "\n".join(str(e) for e in result.all_events if e.is_failure)
    assert "Permission denied" in failure or "permission" in failure.lower(), failure[-2000:]
    text = failure + "".join(p.read_text(errors="replace") for p in spec.root.rglob("*.log"))
    for value in ("sentinel", get_settings().signing_key()):
        assert value not in text


def test_parse_cannot_read_another_projects_models(home, platform):
    """`dbt parse` (run by the API at registration) reads whatever `model-paths` names: another project's models
    would land in this project's manifest, which viewers read through `/models`."""
    other = get_settings().dbt_home / "proj_other" / "dbt_x" / "rev-1" / "project" / "models"
    other.mkdir(parents=True)
    (other / "secret_model.sql").write_text("select 'other-project-code-sentinel' as x\n")
    try:
        spec = _spec(home, "proj_mine", {"own.sql": "select 1 as id\n"}, model_paths=["models", str(other)])
    except workspace.DbtProjectError as refused:
        assert "sentinel" not in str(refused)
    else:  # dbt skips folders it cannot list
        manifest = spec.files.manifest_path.read_text()
        assert "own" in json.loads(manifest)["nodes"].get("model.probe.own", {}).get("name", "")
        assert "sentinel" not in manifest and "secret_model" not in manifest


def test_rime_home_inside_a_sandbox_folder_is_refused(home, tmp_path):
    settings = get_settings()
    files = workspace.ProjectFiles(settings.home.parent / "dbt-outside", 1)  # beside RIME_HOME...
    with pytest.raises(workspace.DbtProjectError, match="RIME_HOME"):
        # ...with its warehouse in RIME_HOME's parent: the sandbox would hand RIME_HOME out.
        workspace.sandbox_policy(settings, files, duckdb_file=settings.home.parent / "w.duckdb", target={})


def test_the_wrapper_confines_the_program_it_starts(tmp_path):
    """The restriction holds across the exec: under an empty policy the program cannot even load."""
    policy = sandbox.Policy(read=[], write=[str(tmp_path)], tcp_connect=[])
    done = subprocess.run(
        sandbox.command(policy, ["/bin/cat", "/etc/hostname"]), capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0  # not even the system is readable under an empty policy: cat cannot start
