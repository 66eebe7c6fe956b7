"""Benchmark a large dbt project: `dbt parse` vs loading its assets, `dbt run` bare vs through Dagster.

The acceptance targets are that, for a generated project of 500 models, the code
location loads the project's assets within 1.5x the time of `dbt parse`, and that a `dbt run`
through Dagster takes under 2x the same `dbt run` from the command line.

What it does, all in one run, everything under a temporary RIME_HOME:

1. generates a dbt project of N models (`--models`, default 500) in `--layers` layers (default
   10): the first layer are tables over DuckDB's `range()`, each later model `ref()`s one to three
   models of the layer before (joined on `id`); even layers are tables, odd layers views (so no
   view stack is deeper than one), a tenth of the models set their materialization with an inline
   `config()`, and every tenth model has `unique` + `not_null` tests on `id` in a schema.yml (they
   become asset checks; `dbt run` does not run them);
2. registers it the way the API does (`workspace.fetch`, `profile_output` for the DuckDB target
   with `--threads`, `write_profiles`, `workspace.parse`), then builds every relation once with an
   untimed `dbt run`, so that every timed run replaces existing relations;
3. times, in interleaved rounds (`--repeat`, default 3; the table shows median, min and max):
   (parse)        `dbt parse` from the command line into a fresh target dir (a full parse);
   (load)         in a fresh Python process per round, after importing dagster, dagster-dbt and
                  rime_dagster (timed apart: a fixed cost that does not grow with the project):
                  `dbt_definitions(spec)` on the parsed manifest plus `Definitions.merge` with the
                  location's resources and `get_repository_def()`, what the code location does for
                  the project on load; the repository snapshot the code server then serializes
                  for the webserver (`RepositorySnap.from_def(defer_snapshots=True)`) is reported
                  as an extra row, outside the target;
   (cli-full)     `dbt run` from the command line into a fresh target dir (parses everything);
   (cli)          `dbt run` from the command line into a fresh target dir holding the revision's
                  partial_parse.msgpack: what a user sees on a second run, and what our run gets
                  (assets.py copies that file into each run's target dir), so it is the baseline;
   (dagster)      the project's job with run config `{"command": "run"}` through
                  `JobDefinition.execute_in_process` on a SQLite-backed instance in a temp dir (the
                  deployment keeps Dagster's storage in SQLite), in a fresh process per round,
                  timed from the call to its return (run success); broken down by Dagster's event
                  timestamps and wrappers around dagster-dbt into run creation (to step start),
                  dagster-dbt's `dbt --version` and adapter set-up, the dbt process (spawn to the end
                  of its output, which Dagster consumes and stores event by event as it comes) and
                  the rest;
   extra legs, only when named in `--legs`:
   (dagster-nocopy) as (dagster) without copying partial_parse.msgpack into the run's target dir
                  (assets.py's `shutil` patched in the child), to show what that copy saves;
   (dagster-memory) as (dagster) on `DagsterInstance.ephemeral()`, to show what the SQLite event
                  log costs;
4. checks that every run built all N models (run_results.json; for Dagster also the number of
   materializations) and whether dbt used the partial parse (its log says when it could not);
5. prints a markdown table, the versions and the verdict lines (exit code 0 either way).

Not measured: the run launcher's worker process start-up and code location load (a fixed cost per
run, not per model) and the run queue; `dbt test`/`dbt build`.

Run with `python bench/dbt_load.py [--models N] [--layers N] [--repeat N] [--threads N] [--legs ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TARGET_LOAD_VS_PARSE = 1.5
TARGET_RUN_VS_CLI = 2.0
PROJECT_NAME = "bench_dbt_load"
PROJECT_ID = "proj_bench"
DBT_ID = "dbtbench"
NAMESPACE = "bench"
SLUG = "load"
ROWS_PER_ROOT = 1000
LEGS = ("parse", "load", "cli-full", "cli", "dagster", "dagster-nocopy", "dagster-memory")
DAGSTER_LEGS = ("dagster", "dagster-nocopy", "dagster-memory")
DEFAULT_LEGS = ("parse", "load", "cli-full", "cli", "dagster")
LABELS = {
    "parse": "(parse) `dbt parse`, CLI, fresh target",
    "load": "(load) code location: dbt_definitions + get_repository_def",
    "cli-full": "(cli-full) `dbt run`, CLI, fresh target (full parse)",
    "cli": "(cli) `dbt run`, CLI, with partial_parse.msgpack (baseline)",
    "dagster": "(dagster) `dbt run` through Dagster (execute_in_process, SQLite instance)",
    "dagster-nocopy": "(dagster-nocopy) same, without the partial_parse.msgpack copy",
    "dagster-memory": "(dagster-memory) same as (dagster), in-memory instance (ephemeral)",
}
RESULT_MARKER = "BENCH_RESULT "
NO_PARTIAL_PARSE = ("Unable to do partial parsing", "Partial parse save file not found")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The project ----------------------------------------------------------------------------------


def model_name(layer: int, index: int) -> str:
    return f"m{layer:02d}_{index:03d}"


def layer_sizes(models: int, layers: int) -> list[int]:
    layers = max(1, min(layers, models))
    base, extra = divmod(models, layers)
    return [base + (1 if i < extra else 0) for i in range(layers)]


def generate_project(dest: Path, models: int, layers: int, seed: int = 42) -> dict[str, int]:
    """Writes the dbt project; returns counts (models, tables, views, tests)."""
    import yaml

    rng = random.Random(seed)
    sizes = layer_sizes(models, layers)
    (dest / "models").mkdir(parents=True)
    layer_configs = {}
    counts = {"models": 0, "tables": 0, "views": 0, "tests": 0, "inline_config": 0}
    for layer, size in enumerate(sizes):
        folder = dest / "models" / f"layer_{layer:02d}"
        folder.mkdir()
        materialized = "table" if layer % 2 == 0 else "view"
        layer_configs[f"layer_{layer:02d}"] = {"+materialized": materialized}
        schema_models = []
        for index in range(size):
            name = model_name(layer, index)
            lines = []
            if index % 10 == 5:  # inline config(): dbt renders these with Jinja instead of its static parser
                lines.append(f"{{{{ config(materialized='{materialized}', tags=['inline']) }}}}")
                counts["inline_config"] += 1
            if layer == 0:
                lines += [
                    "select",
                    "    range as id,",
                    "    range % 7 as k,",
                    f"    'root {index}' as label,",
                    f"    (range * {index + 1}) % 1000 as amount",
                    f"from range({ROWS_PER_ROOT})",
                ]
            else:
                parents = rng.sample(range(sizes[layer - 1]), k=min(sizes[layer - 1], rng.randint(1, 3)))
                refs = [model_name(layer - 1, p) for p in parents]
                amount = " + ".join(f"coalesce(p{i}.amount, 0)" for i in range(len(refs)))
                lines += [
                    "select",
                    "    p0.id,",
                    "    p0.k,",
                    f"    '{name}' as label,",
                    f"    {amount} as amount",
                    f"from {{{{ ref('{refs[0]}') }}}} as p0",
                ]
                for i, ref in enumerate(refs[1:], start=1):
                    lines.append(f"left join {{{{ ref('{ref}') }}}} as p{i} on p{i}.id = p0.id")
            (folder / f"{name}.sql").write_text("\n".join(lines) + "\n")
            counts["models"] += 1
            counts["tables" if materialized == "table" else "views"] += 1
            entry: dict[str, Any] = {"name": name, "description": f"Layer {layer} model {index}."}
            if index % 10 == 0:
                entry["columns"] = [
                    {"name": "id", "description": "Row id.", "data_tests": ["unique", "not_null"]},
                    {"name": "amount", "description": "A number."},
                ]
                counts["tests"] += 2
            schema_models.append(entry)
        (folder / "schema.yml").write_text(yaml.safe_dump({"version": 2, "models": schema_models}, sort_keys=False))
    (dest / "dbt_project.yml").write_text(
        yaml.safe_dump(
            {
                "name": PROJECT_NAME,
                "version": "1.0.0",
                "config-version": 2,
                "profile": PROJECT_NAME,
                "model-paths": ["models"],
                "models": {PROJECT_NAME: layer_configs},
            },
            sort_keys=False,
        )
    )
    return counts


# Setup, like the API registers a project -------------------------------------------------------


@dataclass
class Setup:
    home: Path
    source: Path
    threads: int
    models: int

    def spec_dict(self) -> dict[str, Any]:
        from rime_dagster.dbt import workspace

        dbt_home = self.home / "dbt"
        return {
            "id": DBT_ID,
            "project_id": PROJECT_ID,
            "namespace": NAMESPACE,
            "name": "Bench dbt load",
            "slug": SLUG,
            "root": str(workspace.project_root(dbt_home, PROJECT_ID, DBT_ID)),
            "revision": 1,
            "target": {"adapter": "duckdb"},
            "credentials_encrypted": None,
            "vars": {},
            "schedule": None,
            "paused": False,
            "duckdb_file": str(workspace.duckdb_path(dbt_home, PROJECT_ID)),
            "connector_tables": [],
        }


def make_spec(data: dict[str, Any]) -> Any:
    from rime_dagster.specs import DbtProjectSpec

    values = dict(data)
    values["root"] = Path(values["root"])
    values["duckdb_file"] = Path(values["duckdb_file"])
    values["connector_tables"] = tuple(values["connector_tables"])
    return DbtProjectSpec(**values)


def files_of(setup: Setup) -> Any:
    from rime_dagster.dbt.workspace import ProjectFiles

    data = setup.spec_dict()
    return ProjectFiles(Path(data["root"]), data["revision"])


def register(setup: Setup) -> float:
    """fetch + profiles + `workspace.parse`, as the API does on create; returns the parse seconds."""
    from rime_dagster.dbt import workspace

    data = setup.spec_dict()
    files = files_of(setup)
    files.revision_dir.mkdir(parents=True)
    workspace.fetch({"type": "path", "path": str(setup.source)}, files.project_dir, allowed_roots=[], timeout=600)
    project = workspace.read_project_file(files.project_dir)
    output = workspace.profile_output(
        {"adapter": "duckdb"}, duckdb_file=Path(data["duckdb_file"]), namespace=NAMESPACE, threads=setup.threads
    )
    workspace.write_profiles(files, project.profile, output)
    started = time.perf_counter()
    workspace.parse(files, vars={}, timeout=1800, confine=None)
    return time.perf_counter() - started


# Command-line legs -----------------------------------------------------------------------------


def dbt_cli(setup: Setup, command: str, target: Path) -> tuple[float, str]:
    """`dbt <command>` as a user types it (text logs), timed from outside; returns (seconds, stdout)."""
    from rime_dagster.dbt import workspace

    files = files_of(setup)
    args = [
        workspace.dbt_executable(),
        command,
        *("--project-dir", str(files.project_dir), "--profiles-dir", str(files.profiles_dir)),
        *("--target-path", str(target), "--log-path", str(target / "logs")),
    ]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=files.project_dir, env=workspace.dbt_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"dbt {command} exit {done.returncode}: {tail}")
    return seconds, done.stdout


def run_results(target: Path) -> dict[str, Any]:
    data = json.loads((target / "run_results.json").read_text())
    statuses: dict[str, int] = {}
    for result in data["results"]:
        statuses[result["status"]] = statuses.get(result["status"], 0) + 1
    return {"statuses": statuses, "elapsed": data.get("elapsed_time")}


def partial_parse_used(log_dir: Path) -> bool | None:
    """False when dbt's log says it parsed from scratch; None when there is no log."""
    logs = list(log_dir.rglob("dbt.log*"))  # dbt rotates its log at 10 MB: dbt.log.1, ...
    if not logs:
        return None
    text = "".join(path.read_text(errors="replace") for path in logs)
    return not any(marker in text for marker in NO_PARTIAL_PARSE)


def leg_parse(setup: Setup, scratch: Path) -> dict[str, Any]:
    target = Path(tempfile.mkdtemp(prefix="parse-", dir=scratch))
    try:
        seconds, _ = dbt_cli(setup, "parse", target)
        manifest = json.loads((target / "manifest.json").read_text())
        models = sum(1 for n in manifest["nodes"].values() if n["resource_type"] == "model")
        return {"seconds": seconds, "models": models, "partial_parse": partial_parse_used(target / "logs")}
    finally:
        shutil.rmtree(target, ignore_errors=True)


def leg_cli_run(setup: Setup, scratch: Path, *, with_partial: bool) -> dict[str, Any]:
    target = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    try:
        if with_partial:
            shutil.copy2(files_of(setup).target_dir / "partial_parse.msgpack", target / "partial_parse.msgpack")
        seconds, _ = dbt_cli(setup, "run", target)
        results = run_results(target)
        return {
            "seconds": seconds,
            "models": results["statuses"].get("success", 0),
            "statuses": results["statuses"],
            "dbt_elapsed": results["elapsed"],
            "partial_parse": partial_parse_used(target / "logs"),
        }
    finally:
        shutil.rmtree(target, ignore_errors=True)


# Python legs, each in a fresh process ----------------------------------------------------------


def child_load(spec_data: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import dagster as dg
    import dagster_dbt  # noqa: F401
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster_shared.serdes import serialize_value

    from rime_dagster.dbt.assets import dbt_definitions
    from rime_dagster.resources import IcebergCatalogResource

    imports = time.perf_counter() - started
    spec = make_spec(spec_data)

    t0 = time.perf_counter()
    project_defs = dbt_definitions(spec)
    t1 = time.perf_counter()
    defs = dg.Definitions.merge(project_defs, dg.Definitions(resources={"iceberg": IcebergCatalogResource()}))
    repo = defs.get_repository_def()
    jobs = repo.get_all_jobs()
    t2 = time.perf_counter()
    payload = serialize_value(RepositorySnap.from_def(repo, defer_snapshots=True))
    t3 = time.perf_counter()
    assets = [a for a in project_defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    return {
        "seconds": t2 - t0,
        "imports": imports,
        "definitions": t1 - t0,
        "resolve": t2 - t1,
        "snapshot": t3 - t2,
        "snapshot_bytes": len(payload),
        "models": sum(len(a.keys) for a in assets),
        "checks": sum(len(a.check_keys) for a in assets),
        "jobs": len(jobs),
    }


class _Stopwatch:
    """Wraps dagster-dbt's internals to time them; behaviour unchanged."""

    def __init__(self) -> None:
        self.version = 0.0
        self.adapter = 0.0
        self.spawned: float | None = None
        self.eof: float | None = None
        self.events = 0

    def install(self) -> None:
        import dagster_dbt.core.resource as resource_module
        from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation
        from dagster_dbt.core.resource import DbtCliResource

        watch = self
        check_output = resource_module.check_output

        def timed_check_output(*args: Any, **kwargs: Any) -> Any:  # only `dbt --version` uses it
            started = time.perf_counter()
            try:
                return check_output(*args, **kwargs)
            finally:
                watch.version += time.perf_counter() - started

        resource_module.check_output = timed_check_output

        init_adapter = DbtCliResource._initialize_dbt_core_adapter

        def timed_init_adapter(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return init_adapter(self, *args, **kwargs)
            finally:
                watch.adapter += time.perf_counter() - started

        DbtCliResource._initialize_dbt_core_adapter = timed_init_adapter

        run = DbtCliInvocation.run.__func__

        def timed_run(cls: Any, *args: Any, **kwargs: Any) -> Any:
            watch.spawned = time.time()  # wall clock, like Dagster's event timestamps
            return run(cls, *args, **kwargs)

        DbtCliInvocation.run = classmethod(timed_run)

        stream_stdout = DbtCliInvocation._stream_stdout

        def timed_stream_stdout(self: Any) -> Any:
            for event in stream_stdout(self):
                watch.events += 1
                yield event
            watch.eof = time.time()

        DbtCliInvocation._stream_stdout = timed_stream_stdout


def child_dagster(spec_data: dict[str, Any], workdir: Path, *, copy_partial: bool, memory: bool) -> dict[str, Any]:
    import dagster as dg

    import rime_dagster.dbt.assets as assets_module
    from rime_dagster.dbt.names import dbt_job_name, dbt_op_name
    from rime_dagster.resources import IcebergCatalogResource

    watch = _Stopwatch()
    watch.install()
    if not copy_partial:  # the counterfactual: each run's target dir starts empty

        class _NoPartialCopy:
            def __getattr__(self, name: str) -> Any:
                return getattr(shutil, name)

            @staticmethod
            def copy2(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                if Path(src).name == "partial_parse.msgpack":
                    return dst
                return shutil.copy2(src, dst, *args, **kwargs)

        assets_module.shutil = _NoPartialCopy()  # type: ignore[assignment]

    spec = make_spec(spec_data)
    defs = dg.Definitions.merge(
        assets_module.dbt_definitions(spec), dg.Definitions(resources={"iceberg": IcebergCatalogResource()})
    )
    job = defs.resolve_job_def(dbt_job_name(spec.namespace, spec.slug))
    (workdir / "dagster_home").mkdir()
    if memory:
        instance = dg.DagsterInstance.ephemeral(tempdir=str(workdir / "dagster_home"))
    else:
        instance = dg.DagsterInstance.local_temp(tempdir=str(workdir / "dagster_home"))
    run_config = {"ops": {dbt_op_name(spec.namespace, spec.slug): {"config": {"command": "run"}}}}

    called = time.time()
    started = time.perf_counter()
    result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
    seconds = time.perf_counter() - started
    returned = called + seconds

    records = instance.all_logs(result.run_id)
    by_type: dict[str, list[float]] = {}
    for record in records:
        if record.dagster_event is not None:
            by_type.setdefault(record.dagster_event.event_type_value, []).append(record.timestamp)
    step_start = min(by_type.get("STEP_START", [called]))
    step_end = max(by_type.get("STEP_SUCCESS", by_type.get("STEP_FAILURE", [returned])))
    spawned = watch.spawned or step_start
    eof = watch.eof or spawned
    run_dir = spec.files.run_dir(result.run_id)
    results = run_results(run_dir) if (run_dir / "run_results.json").is_file() else {"statuses": {}}
    errors = [
        event.event_specific_data.error.message.strip().splitlines()[-1]
        for event in result.all_events
        if event.is_step_failure and event.event_specific_data and event.event_specific_data.error
    ]
    # Consecutive segments of the run, adding up to `seconds`; the two dagster-dbt set-up calls are
    # part of "step start -> dbt spawned".
    breakdown = {
        "call -> step start (run creation)": step_start - called,
        "step start -> dbt spawned": spawned - step_start,
        "of which `dbt --version`": watch.version,
        "of which dbt adapter set-up": watch.adapter,
        "dbt process (spawn -> end of output)": eof - spawned,
        "dbt exit -> step success": step_end - eof,
        "step success -> run returned": returned - step_end,
    }
    return {
        "seconds": seconds,
        "success": result.success,
        "errors": errors,
        "models": results["statuses"].get("success", 0),
        "statuses": results["statuses"],
        "dbt_elapsed": results.get("elapsed"),
        "materializations": len(by_type.get("ASSET_MATERIALIZATION", [])),
        "dagster_events": len(records),
        "dbt_log_lines": watch.events,
        "partial_parse": partial_parse_used(run_dir),
        "breakdown": breakdown,
    }


def run_child(args: argparse.Namespace) -> int:
    spec_data = json.loads(args.spec_json)
    workdir = Path(args.workdir)
    # dagster-dbt echoes every dbt log line to stdout: keep the result line apart from them.
    marker_out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    devnull = os.open(str(workdir / "child.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(devnull, 1)
    if args.child == "load":
        result = child_load(spec_data)
    else:
        result = child_dagster(
            spec_data, workdir, copy_partial=args.child != "dagster-nocopy", memory=args.child == "dagster-memory"
        )
    sys.stdout.flush()
    marker_out.write(RESULT_MARKER + json.dumps(result) + "\n")
    marker_out.flush()
    return 0


def leg_child(setup: Setup, scratch: Path, leg: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{leg}-", dir=scratch))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--child", leg, "--workdir", str(workdir), "--spec-json", json.dumps(setup.spec_dict())),
    ]
    try:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - started
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
        if done.returncode != 0 or not lines:
            tail = " | ".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"child {leg} exit {done.returncode}: {tail}")
        result = json.loads(lines[-1].removeprefix(RESULT_MARKER))
        result["process_wall"] = wall
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# Rounds ---------------------------------------------------------------------------------------


@dataclass
class LegRuns:
    leg: str
    seconds: list[float] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def median_of(self, key: str) -> float | None:
        values = [d[key] for d in self.details if d.get(key) is not None]
        return statistics.median(values) if values else None

    def breakdown_median(self, key: str) -> float | None:
        values = [d["breakdown"][key] for d in self.details if d.get("breakdown", {}).get(key) is not None]
        return statistics.median(values) if values else None


def run_leg(leg: str, setup: Setup, scratch: Path) -> dict[str, Any]:
    if leg == "parse":
        return leg_parse(setup, scratch)
    if leg == "cli-full":
        return leg_cli_run(setup, scratch, with_partial=False)
    if leg == "cli":
        return leg_cli_run(setup, scratch, with_partial=True)
    return leg_child(setup, scratch, leg)


def check(leg: str, result: dict[str, Any], models: int) -> str | None:
    if leg in DAGSTER_LEGS:
        if not result["success"]:
            return "run failed: " + "; ".join(result["errors"])[:300]
        if result["materializations"] != models:
            return f"{result['materializations']} materializations, expected {models}"
    if result["models"] != models:
        return f"{result['models']} models, expected {models} ({result.get('statuses')})"
    return None


def run_rounds(args: argparse.Namespace, setup: Setup, scratch: Path) -> dict[str, LegRuns]:
    results = {leg: LegRuns(leg) for leg in args.legs}
    for round_ in range(args.repeat):
        # Interleaved rounds: machine noise spreads over every leg instead of hitting one.
        for leg in args.legs:
            runs = results[leg]
            if runs.error:
                continue
            log(f"  round {round_ + 1}/{args.repeat}: {LABELS[leg]} ...")
            try:
                result = run_leg(leg, setup, scratch)
            except Exception as exc:
                runs.error = f"{type(exc).__name__}: {exc}"
                log(f"    FAILED: {runs.error}")
                continue
            problem = check(leg, result, setup.models)
            if problem:
                runs.error = problem
                log(f"    FAILED: {problem}")
                continue
            runs.seconds.append(result["seconds"])
            runs.details.append(result)
            extra = {k: result[k] for k in ("partial_parse", "imports", "process_wall") if k in result}
            log(f"    {result['seconds']:.2f}s {extra}")
    return results


# Report ---------------------------------------------------------------------------------------


def row(label: str, values: list[float], note: str = "") -> str:
    if not values:
        return f"| {label} | n/a | | | {note} |"
    median = statistics.median(values)
    return f"| {label} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {note} |"


def pp(runs: LegRuns) -> str:
    used = {d.get("partial_parse") for d in runs.details}
    if used == {True}:
        return "partial parse used"
    if used == {False}:
        return "full parse"
    return "partial parse: " + ", ".join(sorted(str(u) for u in used))


def report(results: dict[str, LegRuns], models: int) -> list[str]:
    lines = ["| leg | median s | min s | max s | notes |", "|---|---:|---:|---:|---|"]
    for leg, runs in results.items():
        if not runs.ok:
            lines.append(f"| {LABELS[leg]} | failed: {runs.error} | | | |")
            continue
        if leg == "load":
            d = runs.details[0]
            note = f"{d['models']} assets, {d['checks']} checks, {d['jobs']} job(s)"
            lines.append(row(LABELS[leg], runs.seconds, note))
            lines.append(row("&nbsp;&nbsp;of which dbt_definitions(spec)", [x["definitions"] for x in runs.details]))
            lines.append(row("&nbsp;&nbsp;of which merge + get_repository_def", [x["resolve"] for x in runs.details]))
            size = statistics.median(x["snapshot_bytes"] for x in runs.details) / 1e6
            lines.append(
                row(
                    "(load, extra) RepositorySnap (deferred) + serialize",
                    [x["snapshot"] for x in runs.details],
                    f"{size:.1f} MB; not in the target",
                )
            )
            lines.append(
                row(
                    "(load, fixed) import dagster, dagster_dbt, rime_dagster",
                    [x["imports"] for x in runs.details],
                    "not in the target",
                )
            )
            lines.append(
                row("(load, fixed) whole child process, start to exit", [x["process_wall"] for x in runs.details])
            )
            continue
        note = pp(runs) if leg != "load" else ""
        if leg.startswith("dagster"):
            d = runs.details[0]
            note += (
                f"; {d['materializations']} materializations, {d['dagster_events']} Dagster events, "
                f"{d['dbt_log_lines']} dbt log lines"
            )
        elif leg != "parse":
            note += f"; {runs.details[0]['models']} models built"
        lines.append(row(LABELS[leg], runs.seconds, note))
        if leg.startswith("dagster"):
            for key in runs.details[0]["breakdown"]:
                values = [x["breakdown"][key] for x in runs.details]
                indent = "&nbsp;" * (8 if key.startswith("of which") else 4)
                lines.append(row(f"{indent}{key}", values))
        if "dbt_elapsed" in runs.details[0]:
            lines.append(
                row(
                    "&nbsp;&nbsp;dbt's own elapsed_time (run_results.json)",
                    [x["dbt_elapsed"] for x in runs.details if x.get("dbt_elapsed") is not None],
                )
            )
    return lines


def verdict(label: str, value: float | None, target: str, ok: bool | None) -> str:
    if value is None or ok is None:
        return f"{label} = n/a (target {target}): n/a"
    return f"{label} = {value:.2f}x (target {target}): {'PASS' if ok else 'FAIL'}"


def verdicts(results: dict[str, LegRuns], models: int) -> list[str]:
    def median(leg: str) -> float | None:
        runs = results.get(leg)
        return runs.median if runs and runs.ok else None

    parse, load, cli, cli_full, dagster = (median(x) for x in ("parse", "load", "cli", "cli-full", "dagster"))
    lines = []
    ratio = load / parse if load and parse else None
    lines.append(
        verdict("load / dbt parse", ratio, f"<= {TARGET_LOAD_VS_PARSE}x", None if ratio is None else ratio <= 1.5)
    )
    if load and parse and results["load"].details:
        snap = statistics.median(x["snapshot"] for x in results["load"].details)
        lines.append(f"(load + repository snapshot) / dbt parse = {(load + snap) / parse:.2f}x (informational)")
    ratio = dagster / cli if dagster and cli else None
    lines.append(
        verdict(
            "Dagster dbt run / CLI dbt run (partial parse)",
            ratio,
            f"< {TARGET_RUN_VS_CLI}x",
            None if ratio is None else ratio < TARGET_RUN_VS_CLI,
        )
    )
    if dagster and cli:
        lines.append(
            f"per-model overhead, all of it = ({dagster:.2f}s - {cli:.2f}s) / {models} = "
            f"{(dagster - cli) / models * 1000:.1f} ms"
        )
        runs = results["dagster"]

        def part(key: str) -> float:
            return statistics.median(d["breakdown"][key] for d in runs.details)

        creation, setup = part("call -> step start (run creation)"), part("step start -> dbt spawned")
        process = part("dbt process (spawn -> end of output)")
        version, adapter = part("of which `dbt --version`"), part("of which dbt adapter set-up")
        lines.append(
            f"  run creation to step start {creation:.2f}s (one ASSET_MATERIALIZATION_PLANNED event per asset: "
            f"grows with N) + dagster-dbt set-up {setup:.2f}s (`dbt --version` {version:.2f}s, "
            f"adapter {adapter:.2f}s: fixed)"
        )
        lines.append(
            f"  + the dbt process under Dagster {process:.2f}s vs the CLI run {cli:.2f}s: {process - cli:+.2f}s = "
            f"{(process - cli) / models * 1000:.1f} ms/model (Dagster stores each event while dbt runs, same CPUs)"
        )
        inside, outside = runs.median_of("dbt_elapsed"), results["cli"].median_of("dbt_elapsed")
        if inside and outside:
            lines.append(
                f"  dbt's own elapsed_time: {inside:.2f}s under Dagster vs {outside:.2f}s from the CLI "
                f"({inside / outside:.2f}x)"
            )
    if dagster and cli_full:
        lines.append(
            f"Dagster dbt run / CLI dbt run (fresh target, full parse) = {dagster / cli_full:.2f}x (informational)"
        )
    memory = median("dagster-memory")
    if memory and cli:
        lines.append(
            f"in-memory instance: {memory:.2f}s = {memory / cli:.2f}x the CLI baseline "
            f"(the SQLite event log costs {(dagster or memory) - memory:+.2f}s)"
        )
    nocopy = median("dagster-nocopy")
    if nocopy and dagster:
        lines.append(
            f"without the partial_parse.msgpack copy: {nocopy:.2f}s vs {dagster:.2f}s "
            f"({nocopy - dagster:+.2f}s; {nocopy / cli:.2f}x the CLI baseline)"
            if cli
            else f"without the partial_parse.msgpack copy: {nocopy:.2f}s vs {dagster:.2f}s"
        )
    return lines


def versions(threads: int) -> str:
    from bench._common import installed_versions

    dists = ("dbt-core", "dbt-duckdb", "duckdb", "dagster", "dagster-dbt")
    return f"{installed_versions(*dists)}; dbt threads {threads}"


# Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=(
            f"Targets: load <= {TARGET_LOAD_VS_PARSE}x `dbt parse`; `dbt run` through Dagster < "
            f"{TARGET_RUN_VS_CLI}x the bare `dbt run`. Always exits 0."
        ),
    )
    parser.add_argument("--models", type=int, default=500, help="models in the generated project (default 500)")
    parser.add_argument("--layers", type=int, default=10, help="layers of the model DAG (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds per leg (default 3)")
    parser.add_argument("--threads", type=int, default=4, help="dbt threads in the profile (default 4, as deployed)")
    parser.add_argument(
        "--legs",
        default=",".join(DEFAULT_LEGS),
        help=f"comma-separated subset of {','.join(LEGS)} (default: {','.join(DEFAULT_LEGS)})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    parser.add_argument("--child", choices=("load", *DAGSTER_LEGS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--spec-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    if not legs or set(legs) - set(LEGS):
        parser.error(f"--legs must be a subset of {','.join(LEGS)}")
    args.legs = [leg for leg in LEGS if leg in legs]
    if args.models < 1 or args.layers < 1 or args.repeat < 1 or args.threads < 1:
        parser.error("--models, --layers, --repeat and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    scratch = Path(tempfile.mkdtemp(prefix="rime-bench-dbt-"))
    home = scratch / "home"
    os.environ["RIME_HOME"] = str(home)  # before any rime import reads the settings
    os.environ["DAGSTER_HOME"] = str(scratch / "dagster_home")
    (scratch / "dagster_home").mkdir()
    setup = Setup(home=home, source=scratch / "source", threads=args.threads, models=args.models)
    results: dict[str, LegRuns] = {}
    try:
        counts = generate_project(setup.source, args.models, args.layers)
        log(f"generated {counts} in {setup.source}")
        seconds = register(setup)
        log(f"registered (workspace.parse {seconds:.1f}s); building every relation once (untimed dbt run)")
        warm = Path(tempfile.mkdtemp(prefix="warmup-", dir=scratch))
        seconds, _ = dbt_cli(setup, "run", warm)
        log(f"  warm-up dbt run {seconds:.1f}s, {run_results(warm)['statuses']}")
        results = run_rounds(args, setup, scratch)
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        log(f"benchmark aborted: {type(exc).__name__}: {exc}")
        if not results:
            counts = {}
    finally:
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if not results:
        return 0
    shape = (
        f"{counts.get('models')} models in {min(args.layers, args.models)} layers "
        f"({counts.get('tables')} tables, {counts.get('views')} views, {counts.get('tests')} tests)"
    )
    print(f"\n{versions(args.threads)}\n{shape}; {args.repeat} round(s) per leg, seconds (median, min, max)\n")
    print("\n".join(report(results, args.models)))
    print()
    print("\n".join(verdicts(results, args.models)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
