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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
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


@contextmanager
def _listening() -> Iterator[int]:
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
    try:
        yield server.getsockname()[1]
    finally:
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


def _lay_out_platform() -> dict[str, Path]:
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


@pytest.fixture
def platform(home) -> dict[str, Path]:
    return _lay_out_platform()


# What SQL models try to read: one model per file, `leak_<target>`.
SQL_TARGETS = ["secret_key", "admin_token", "other_warehouse", "api_environ"]


@dataclass(frozen=True)
class ProbeRun:
    spec: DbtProjectSpec
    result: dg.ExecuteInProcessResult
    platform: dict[str, Path]
    signing_key: str
    node_results: dict[str, dict]  # run_results.json by model name


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Iterator[ProbeRun]:
    """One project of Rime project `proj_mine` (RIME_HOME under a module temp folder, beside the platform's secrets
    and another project's data) whose models each try their way out: a Python model tries every file and a TCP
    connection, and a SQL model per file tries `read_text` on it. Parsed in the sandbox and run once, as one dbt
    process: each model's outcome is its own (dbt runs the others when one fails), and each test reads its own."""
    tmp = tmp_path_factory.mktemp("sandbox")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RIME_HOME", str(tmp / "home"))
        patch.setenv("RIME_CONNECTOR_PATH_ROOTS", str(tmp))
        get_settings.cache_clear()
        try:
            platform = _lay_out_platform()
            own = get_settings().dbt_home / "proj_mine" / "dbt_probe" / "rev-1" / "project" / "dbt_project.yml"
            with _listening() as port:
                targets = {k: str(v) for k, v in platform.items()}
                probe = f"TARGETS = {targets!r}\nPORT = {port}\nOWN = {str(own)!r}\n"
                models = {"probe.py": probe + PYTHON_PROBE}
                for target in SQL_TARGETS:
                    models[f"leak_{target}.sql"] = (
                        f"{{{{ config(materialized='table') }}}}\nselect content from read_text('{platform[target]}')\n"
                    )
                spec = _spec(tmp, "proj_mine", models)
                result = _materialize(spec)
            [run_results] = spec.root.glob("runs/*/run_results.json")
            nodes = {r["unique_id"].rsplit(".", 1)[1]: r for r in json.loads(run_results.read_text())["results"]}
            yield ProbeRun(spec, result, platform, get_settings().signing_key(), nodes)
        finally:
            get_settings.cache_clear()


def test_a_python_model_reaches_no_secret_and_no_other_project(probe_run):
    assert probe_run.node_results["probe"]["status"] == "success", probe_run.node_results["probe"]
    materialized = {e.asset_key.path[-1] for e in probe_run.result.get_asset_materialization_events()}
    assert materialized == {"probe"}  # and no SQL probe
    with duckdb.connect(str(probe_run.spec.duckdb_file), read_only=True) as conn:
        outcomes = dict(conn.execute("select target, outcome from probe").fetchall())
    assert outcomes == {
        **{name: "PermissionError" for name in probe_run.platform},
        "tcp": "PermissionError",
        "own_project": "read",
    }


@pytest.mark.parametrize("target", SQL_TARGETS)
def test_sql_cannot_read_files_outside_the_project(probe_run, target):
    node = probe_run.node_results[f"leak_{target}"]
    assert node["status"] == "error", node
    assert "Permission denied" in node["message"] or "permission" in node["message"].lower(), node["message"]
    assert not probe_run.result.success
    failure = "\n".join(str(e) for e in probe_run.result.all_events if e.is_failure)
    assert f"leak_{target}" in failure, failure[-2000:]  # the run's failure names it
    text = failure + "".join(
        p.read_text(errors="replace") for p in probe_run.spec.root.rglob("*") if p.suffix in (".log", ".json")
    )
    for value in ("sentinel", probe_run.signing_key):
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
