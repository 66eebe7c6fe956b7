"""Benchmark how long the `rime` code location takes to load, against a floor measured in the same run.

Every code server and every run worker imports `rime_dagster.definitions`, which reads the metadata
store and builds `defs` at import. The acceptance targets (issue 10) are that, with the demo loaded,
this takes at most 1.5 s more than the floor, a code location module that imports only dagster and
builds a trivial `dg.Definitions`; and that with 1,000 connectors of 5 tables each (5,000 assets) it
takes at most 10 s.

What it does, all in one run, everything under a temporary directory:

1. builds three RIME_HOMEs, each migrated with `rime_dagster.store.migrate.upgrade_to_head`:
   (a) `empty`: no project at all;
   (b) `demo`: what `make up` loads (`api_shim.demo.ensure_demo`): one project, the `files`
       connector "Demo Shop" over demo/data (customers, orders), the dbt project
       dbt_projects/demo_shop (copied and parsed by `dbt parse`, a few seconds) and the pipeline
       "Shop nightly";
   (c) `5,000 assets`: one project and 1,000 `files` connectors of 5 selected tables each, inserted
       straight into the `connectors` table with one executemany (each with an hourly schedule, as
       the demo's connector has);
2. the floor is `bench/floor_location.py`: `import dagster`, one trivial asset and one trivial job;
3. times, in rounds that interleave the legs so machine noise spreads over all of them, three
   fresh-process measurements per leg, each the wall time of a whole `python -c` process:
   load = `import <module>` (what the targets are about: the import builds the definitions);
   run worker = the same, then `defs.get_repository_def()` and the one job a run executes (a
   pipeline's, else a connector's); code server = the import, then the `RepositorySnap` of the
   repository (`defer_snapshots=True`, as `dagster api grpc` builds it for the webserver), which
   resolves every job. The floor leg imports `floor_location`; the others `rime_dagster.definitions`
   with RIME_HOME set to that leg's home. Each child also reports which of dagster_dbt, dbt, duckdb,
   pyiceberg, pyarrow, psycopg, fastapi it imported;
4. prints the medians (min-max, and the difference to the floor's median) as a markdown table, and
   the verdicts. It exits 0 whatever the verdicts (it is a benchmark, not a test), 1 if a child
   failed.

Run with `make bench` or `python bench/code_location_load.py [--rounds N] [--connectors N] [--tables N]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `bench._common` when run as `python bench/code_location_load.py`
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import installed_versions  # noqa: E402

LOCATION = "rime_dagster.definitions"
FLOOR = "floor_location"
TARGET_DEMO_OVER_FLOOR = 1.5
TARGET_MANY_SECONDS = 10.0
HEAVY = ("dagster_dbt", "dbt", "duckdb", "pyiceberg", "pyarrow", "psycopg", "fastapi")
SECRET_KEY = "rime-bench-secret-key-0123456789abcdef0123456789"
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)

# The child: import the module, then (run worker) resolve the one job a run needs, or (code server) build the
# repository snapshot the webserver asks for; print which heavy modules came in.
CHILD = """
import sys
import {module} as location
if {phase!r} == "run worker":
    repository = location.defs.get_repository_def()
    names = sorted(repository.job_names)
    job = next((n for prefix in ("pipeline_", "sync_", "dbt_run_") for n in names if n.startswith(prefix)), names[0])
    repository.get_job(job)
elif {phase!r} == "code server":
    from dagster._core.remote_representation.external_data import RepositorySnap

    RepositorySnap.from_def(location.defs.get_repository_def(), defer_snapshots=True)
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""
PHASES = ("load", "run worker", "code server")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The three homes -------------------------------------------------------------------------------


def migrated_settings(home: Path):
    from rime_dagster.settings import Settings
    from rime_dagster.store.migrate import upgrade_to_head

    settings = Settings(home=home, secret_key=SECRET_KEY)
    upgrade_to_head(settings.metadata_url)
    return settings


def load_demo(settings) -> None:
    from api_shim.demo import ensure_demo

    ensure_demo(settings)


def load_connectors(settings, connectors: int, tables: int) -> None:
    """One project and `connectors` files connectors of `tables` selected tables each, in one executemany."""
    from sqlalchemy import insert

    from rime_dagster.store.ids import new_id
    from rime_dagster.store.models import Connector, Project
    from rime_dagster.store.session import make_engine

    engine = make_engine(settings.metadata_url)
    project_id = new_id("project")
    rows = []
    for i in range(connectors):
        at = BASE_TIME + timedelta(milliseconds=i)
        rows.append(
            {
                "id": new_id("connector"),
                "project_id": project_id,
                "name": f"Source {i:04d}",
                "connector_type": "files",
                "config": {"path": f"/srv/bench/source_{i:04d}"},
                "credentials_encrypted": None,
                "selected_tables": [f"table_{t}" for t in range(tables)],
                "schedule": "0 * * * *",
                "sync_mode": "full_refresh",
                "cursor_fields": {},
                "paused": False,
                "table_prefix": f"source_{i:04d}",
                "known_tables": [],
                "created_at": at,
                "updated_at": at,
            }
        )
    with engine.begin() as conn:
        conn.execute(
            insert(Project),
            [
                {
                    "id": project_id,
                    "tenant_id": "default",
                    "name": "bench",
                    "namespace": "bench",
                    "created_at": BASE_TIME,
                    "updated_at": BASE_TIME,
                }
            ],
        )
        conn.execute(insert(Connector), rows)
    engine.dispose()


# Timing ----------------------------------------------------------------------------------------


def time_child(module: str, *, phase: str, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one fresh `python -c` process, and the heavy modules it imported."""
    code = CHILD.format(module=module, phase=phase, heavy=HEAVY)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed to load:\n{done.stderr[-3000:]}")
    return seconds, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def child_env(home: Path | None, floor_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "DAGSTER_"))}
    # bench/ for the floor, bench/floor_location.py (shared with bench/definitions_churn.py).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "bench"), str(REPO_ROOT)])
    env["RIME_SECRET_KEY"] = SECRET_KEY
    if home is not None:
        env["RIME_HOME"] = str(home)
    # The location logs nothing on a clean load; keep Dagster's own start-up chatter out of the timing.
    env["DAGSTER_HOME"] = str(floor_dir / "dagster_home")
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per leg and measurement (median)")
    parser.add_argument("--connectors", type=int, default=1000)
    parser.add_argument("--tables", type=int, default=5, help="selected tables per connector")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rime-bench-load-"))
    floor_dir = workdir / "floor"
    floor_dir.mkdir()
    (floor_dir / "dagster_home").mkdir()
    many_label = f"{args.connectors * args.tables:,} assets"
    log(f"building the homes under {workdir} ...")
    homes = {"empty": workdir / "empty", "demo": workdir / "demo", many_label: workdir / "many"}
    migrated_settings(homes["empty"])
    started = time.perf_counter()
    load_demo(migrated_settings(homes["demo"]))
    log(f"  demo loaded ({time.perf_counter() - started:.1f}s, dbt parse included)")
    load_connectors(migrated_settings(homes[many_label]), args.connectors, args.tables)
    log(f"  {args.connectors:,} connectors x {args.tables} tables inserted")

    legs: dict[str, tuple[str, dict[str, str]]] = {"floor": (FLOOR, child_env(None, floor_dir))}
    legs.update({name: (LOCATION, child_env(home, floor_dir)) for name, home in homes.items()})
    seconds: dict[tuple[str, str], list[float]] = {(name, phase): [] for name in legs for phase in PHASES}
    heavy: dict[str, set[str]] = {name: set() for name in legs}
    try:
        for module, env in legs.values():  # one untimed warm-up each (page cache, .pyc files)
            time_child(module, phase="code server", env=env)
        for round_no in range(args.rounds):
            order = list(legs) if round_no % 2 == 0 else list(reversed(legs))
            for name in order:
                module, env = legs[name]
                for phase in PHASES:
                    wall, imported = time_child(module, phase=phase, env=env)
                    seconds[(name, phase)].append(wall)
                    heavy[name].update(filter(None, imported.split(",")))
            log(f"  round {round_no + 1}/{args.rounds} done")
    except RuntimeError as exc:
        log(str(exc))
        return 1
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def median(name: str, phase: str) -> float:
        return statistics.median(seconds[(name, phase)])

    print(installed_versions("dagster", "dagster-dbt", "dbt-core", "pyiceberg", "sqlalchemy"))
    print(
        f"{datetime.now(UTC):%Y-%m-%d}; median (min-max) of {args.rounds} fresh processes per cell, legs "
        "interleaved after one warm-up each; wall time of a whole `python -c` process (interpreter start-up "
        "included); (+x.xx) = over the floor's median in the same column"
    )
    print()
    print(
        "| leg | load: `import <module>` s | run worker: + `get_repository_def()`, one job s "
        "| code server: + `RepositorySnap` of every job s | heavy modules imported |"
    )
    print("|---|---:|---:|---:|---|")
    labels = {
        "floor": f"floor: `{FLOOR}` (dagster + a trivial Definitions)",
        "empty": f"`{LOCATION}`, empty store",
        "demo": f"`{LOCATION}`, demo (1 connector x 2 tables, dbt demo_shop, 1 pipeline)",
        many_label: f"`{LOCATION}`, {args.connectors:,} connectors x {args.tables} tables ({many_label})",
    }
    for name in legs:
        cells = []
        for phase in PHASES:
            values = seconds[(name, phase)]
            cell = f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            if name != "floor":
                cell += f" ({median(name, phase) - median('floor', phase):+.2f})"
            cells.append(cell)
        print(f"| {labels[name]} | {' | '.join(cells)} | {', '.join(sorted(heavy[name])) or 'none'} |")
    print()
    demo_over = median("demo", "load") - median("floor", "load")
    many = median(many_label, "load")
    print(
        f"demo load - floor = {demo_over:+.2f}s (target <= {TARGET_DEMO_OVER_FLOOR:.1f}s): "
        f"{'PASS' if demo_over <= TARGET_DEMO_OVER_FLOOR else 'FAIL'}"
    )
    print(
        f"{many_label} load = {many:.2f}s (target <= {TARGET_MANY_SECONDS:.0f}s): "
        f"{'PASS' if many <= TARGET_MANY_SECONDS else 'FAIL'}"
    )
    forbidden = sorted(set().union(*(heavy[name] for name in legs if name != "floor")))
    print(f"heavy modules imported by the location: {', '.join(forbidden) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
