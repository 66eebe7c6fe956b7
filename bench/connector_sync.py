"""Benchmark the PostgreSQL connector sync: rows/s and peak memory against the COPY limit and dlt.

The acceptance targets (issue "connector throughput") are that our sync of one PostgreSQL table
into Iceberg reaches at least 0.5x the rows/s of a bare binary COPY and beats dlt, and that its
peak memory for 10 million rows is within 1.2x of its peak for 2 million rows.

What it does, all in one run:

1. starts a throwaway PostgreSQL 15 (tests/support/postgres.py) unless --database-url is given,
   and generates the table `rime_bench_connector_sync` with SQL (`generate_series`): id bigint
   primary key, amount numeric(12,2) (1% NULL), name text (20-40 chars), created_at timestamptz,
   qty int; then VACUUM (FREEZE, ANALYZE), so that no leg pays for hint bits or a cold cache;
2. runs each leg in its own process, so that the peak RSS (the process's VmHWM) is the leg's
   alone:
   (a) COPY: `psql -c "\\copy ... to '/dev/null' (format binary)"`, i.e. `COPY ... TO STDOUT
       (FORMAT binary)` drained by libpq into /dev/null: the physical limit of one connection;
   (b) ours: `rime_dagster.connectors.sync.sync_table` with the `postgresql` source plug-in into a
       fresh SQLite-catalog Iceberg table (full refresh, one commit);
   (c) dlt: `dlt.sources.sql_database.sql_table(backend="pyarrow")` into the `filesystem`
       destination as Parquet, the peer;
   and checks each leg's row count (COPY's command tag, the Iceberg snapshot's total-records, the
   row counts in dlt's Parquet footers);
3. prints a markdown table per size and the verdict lines (exit code 0 either way).

`--memory-scaling` does the above for 2M and 10M rows and adds the 10M / 2M peak-RSS ratio.
Seconds are measured inside each leg's process around the work only (no interpreter start-up or
imports), with the one exception of psql, which is timed from the outside.

Run with `python bench/connector_sync.py [--rows N] [--memory-scaling] [--repeat N]`
(needs `pip install -e '.[bench]'` for dlt).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `tests.support.postgres` lives in the repo, not in the package
    sys.path.insert(0, str(REPO_ROOT))

TABLE = "rime_bench_connector_sync"
SCALING_SIZES = (2_000_000, 10_000_000)
TARGET_VS_COPY = 0.5
TARGET_VS_DLT = 1.0
TARGET_MEMORY_RATIO = 1.2
DLT_CHUNK_SIZE = 50_000  # dlt's own default for sql_table
LEGS = ("copy", "ours", "dlt")
LABELS = {
    "copy": "(a) COPY binary -> /dev/null (psql)",
    "ours": "(b) our sync -> Iceberg",
    "dlt": "(c) dlt sql_database pyarrow -> Parquet",
}
RESULT_MARKER = "BENCH_RESULT "


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The table ----------------------------------------------------------------------------------

CREATE_SQL = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
    id bigint PRIMARY KEY,
    amount numeric(12,2),
    name text,
    created_at timestamptz,
    qty int
);
"""
# Deterministic values: 1% NULL amounts, names of 20 to 40 characters, one row per second.
INSERT_SQL = f"""
INSERT INTO {TABLE}
SELECT g,
       CASE WHEN g %% 100 = 0 THEN NULL ELSE ((g * 7919) %% 100000000) / 100.0 END,
       'customer ' || substr(md5(g::text), 1, 11 + (g %% 21)::int),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second',
       (g %% 1000)::int
FROM generate_series(1::bigint, %(rows)s::bigint) AS g
"""


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as a plain libpq URL (psql, psycopg)."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_table(database_url: str, rows: int) -> tuple[str, int]:
    """Creates and fills the bench table; returns (table size, rows counted)."""
    import psycopg

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(CREATE_SQL)
        conn.execute(INSERT_SQL, {"rows": rows})
        conn.execute(f"VACUUM (FREEZE, ANALYZE) {TABLE}")
        counted = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        size = conn.execute(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))").fetchone()[0]
    return size, counted


def drop_table(database_url: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def server_version(database_url: str) -> str:
    import psycopg

    with psycopg.connect(libpq_url(database_url)) as conn:
        return conn.execute("SHOW server_version").fetchone()[0].split()[0]


@contextmanager
def postgres(database_url: str | None) -> Iterator[str]:
    if database_url:
        yield database_url
        return
    from tests.support.postgres import throwaway_postgres

    log("starting a throwaway PostgreSQL")
    with throwaway_postgres() as url:
        yield url


# Legs, each run in its own process ---------------------------------------------------------------


def find_psql() -> str:
    """The real psql binary: Debian's /usr/bin/psql is a Perl wrapper (start-up time and RSS of its own)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), key=lambda p: int(p.split("/")[4]))
    psql = candidates[-1] if candidates else shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql not found (Debian's postgresql-client)")
    return psql


def copy_command(database_url: str) -> list[str]:
    """psql's `\\copy ... to '/dev/null'`: `COPY ... TO STDOUT (FORMAT binary)`, drained by libpq, no Python."""
    return [
        find_psql(),
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        libpq_url(database_url),
        "-c",
        f"\\copy {TABLE} to '/dev/null' (format binary)",
    ]


class _TimedSource:
    """Delegates to the real source and adds up the time spent inside its batch iterator."""

    def __init__(self, source: Any):
        self._source = source
        self.schema_seconds = 0.0
        self.read_seconds = 0.0
        self.read_started: float | None = None
        self.read_finished: float | None = None
        self.batches = 0

    def arrow_schema(self, table: str) -> Any:
        started = time.perf_counter()
        try:
            return self._source.arrow_schema(table)
        finally:
            self.schema_seconds += time.perf_counter() - started

    def read(self, table: str, **kwargs: Any) -> Iterator[Any]:
        self.read_started = time.perf_counter()
        batches = self._source.read(table, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                self.read_seconds += time.perf_counter() - started
                self.read_finished = time.perf_counter()
                return
            self.read_seconds += time.perf_counter() - started
            self.batches += 1
            yield batch


def leg_ours(database_url: str, workdir: Path) -> dict[str, Any]:
    """`sync_table` with the postgresql plug-in into a fresh Iceberg table (SQLite catalog, local files)."""
    from pyiceberg.catalog.sql import SqlCatalog
    from sqlalchemy.engine import make_url

    from rime_dagster.connectors.landing import table_stats
    from rime_dagster.connectors.sources import source_class
    from rime_dagster.connectors.sync import TableSync, sync_table

    url = make_url(database_url)
    source = source_class("postgresql").from_dicts(
        {"host": url.host or "127.0.0.1", "port": url.port or 5432, "database": url.database, "schema": "public"},
        {"username": url.username, "password": url.password or "x"},
    )
    timed = _TimedSource(source)
    catalog = SqlCatalog("bench", uri=f"sqlite:///{workdir}/cat.db", warehouse=(workdir / "wh").as_uri())
    spec = TableSync(
        table=TABLE,
        namespace="bench",
        iceberg_table=TABLE,
        mode="full_refresh",
        cursor_field=None,
        properties={},
    )
    started = time.perf_counter()
    result = sync_table(timed, catalog, spec, run_id="bench", full_refresh=True)  # type: ignore[arg-type]
    finished = time.perf_counter()
    stats = table_stats(catalog, ("bench", TABLE))
    if stats["row_count"] != result.rows_written:
        raise RuntimeError(f"snapshot says {stats['row_count']} rows, land_table wrote {result.rows_written}")
    assert timed.read_started is not None and timed.read_finished is not None
    streaming = timed.read_finished - timed.read_started
    return {
        "rows": stats["row_count"],
        "seconds": finished - started,
        "files": result.files,
        "batches": timed.batches,
        # The source is read ahead in a thread (rime_dagster/connectors/prefetch.py): its scan time
        # overlaps the Parquet writes, so "read" is part of "stream", not added to it.
        "breakdown": {
            "arrow_schema": timed.schema_seconds,
            "stream (scan || projection + Parquet)": streaming,
            "of which scan (read-ahead thread)": timed.read_seconds,
            "finish (last file, footers, commit)": finished - timed.read_finished,
            "other (catalog, table setup)": (timed.read_started - started) - timed.schema_seconds,
        },
    }


def leg_dlt(database_url: str, workdir: Path, chunk_size: int = DLT_CHUNK_SIZE) -> dict[str, Any]:
    """dlt's `sql_table` (pyarrow backend) into the `filesystem` destination as Parquet, all local."""
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    os.environ["DLT_DATA_DIR"] = str(workdir / "dlt_data")
    import dlt
    import pyarrow.parquet as pq
    from dlt.sources.sql_database import sql_table

    out = workdir / "out"
    started = time.perf_counter()
    pipeline = dlt.pipeline(
        pipeline_name="bench_connector_sync",
        pipelines_dir=str(workdir / "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=out.as_uri()),
        dataset_name="bench",
    )
    resource = sql_table(
        credentials=database_url, table=TABLE, schema="public", backend="pyarrow", chunk_size=chunk_size
    )
    pipeline.run(resource, loader_file_format="parquet", write_disposition="replace")
    seconds = time.perf_counter() - started
    files = sorted((out / "bench" / TABLE).rglob("*.parquet"))
    rows = sum(pq.read_metadata(path).num_rows for path in files)
    steps = {}
    trace = pipeline.last_trace
    if trace is not None:
        for step in trace.steps:
            if step.step != "run" and step.started_at and step.finished_at:  # "run" is the three others
                steps[step.step] = (step.finished_at - step.started_at).total_seconds()
    return {"rows": rows, "seconds": seconds, "files": len(files), "breakdown": steps}


def run_child(args: argparse.Namespace) -> int:
    """The --child entry point: one Python leg, its result as JSON on the last stdout line."""
    workdir = Path(args.workdir)
    if args.child == "ours":
        result = leg_ours(args.database_url, workdir)
    else:
        result = leg_dlt(args.database_url, workdir, args.dlt_chunk_size)
    result["peak_kb"] = vm_hwm_kb()
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


@dataclass
class LegRuns:
    leg: str
    seconds: list[float] = field(default_factory=list)
    peaks_kb: list[int] = field(default_factory=list)
    rows: int | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_mb(self) -> float:
        return max(self.peaks_kb) / 1024


def vm_hwm_kb(pid: int | str = "self") -> int:
    """The process's peak RSS since its exec (VmHWM, KB); 0 once it has exited.

    Not ru_maxrss: for a forked child that counts the parent's RSS at fork time as well.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_leg(leg: str, database_url: str, dlt_chunk_size: int) -> tuple[dict[str, Any], int]:
    """Runs one leg in a fresh process; returns its result and the peak RSS (KB) of that process.

    COPY is psql itself, timed from here; the Python legs are this script with --child, timed inside
    and reporting their own VmHWM at the end. The parent also polls VmHWM every 10 ms.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"rime-bench-{leg}-"))
    if leg == "copy":
        command = copy_command(database_url)
    else:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--child", leg, "--database-url", database_url, "--workdir", str(workdir)),
            *("--dlt-chunk-size", str(dlt_chunk_size)),
        ]
    try:
        # cwd = the work dir: dlt must not pick up a `.dlt/` config from wherever the bench was started.
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=err)
            peak_kb = 0
            while process.poll() is None:
                peak_kb = max(peak_kb, vm_hwm_kb(process.pid))
                time.sleep(0.01)
            seconds = time.perf_counter() - started
        stdout = (workdir / "stdout").read_text(errors="replace")
        if process.returncode != 0:
            stderr = (workdir / "stderr").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"exit {process.returncode}: " + " | ".join(stderr[-5:]))
        if leg == "copy":
            tag = stdout.strip().splitlines()[-1]  # "COPY 5000000"
            return {"rows": int(tag.split()[1]), "seconds": seconds}, peak_kb
        line = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)][-1]
        result = json.loads(line.removeprefix(RESULT_MARKER))
        return result, max(peak_kb, result["peak_kb"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_size(rows: int, args: argparse.Namespace, database_url: str) -> dict[str, LegRuns]:
    log(f"generating {rows:,} rows in {TABLE}")
    started = time.perf_counter()
    size, counted = create_table(database_url, rows)
    log(f"  {counted:,} rows, {size} with its index, in {time.perf_counter() - started:.1f}s")
    results = {leg: LegRuns(leg) for leg in args.legs}
    try:
        for round_ in range(args.repeat):
            # Interleaved rounds: machine noise spreads over every leg instead of hitting one.
            for leg in args.legs:
                runs = results[leg]
                if runs.error:
                    continue
                log(f"  round {round_ + 1}/{args.repeat}: {LABELS[leg]} ...")
                try:
                    result, peak_kb = run_leg(leg, database_url, args.dlt_chunk_size)
                except Exception as exc:
                    runs.error = str(exc)
                    log(f"    FAILED: {exc}")
                    continue
                if result["rows"] != counted:
                    runs.error = f"{result['rows']:,} rows, expected {counted:,}"
                    log(f"    FAILED: {runs.error}")
                    continue
                runs.rows = result["rows"]
                runs.seconds.append(result["seconds"])
                runs.peaks_kb.append(peak_kb)
                runs.details.append(result)
                log(f"    {result['seconds']:.2f}s, {result['rows']:,} rows, peak {peak_kb / 1024:.0f} MB")
    finally:
        drop_table(database_url)
    return results


# Report ---------------------------------------------------------------------------------------


def speed_table(rows: int, results: dict[str, LegRuns]) -> list[str]:
    copy = results.get("copy")
    copy_rate = rows / copy.median_seconds if copy and copy.seconds else None
    lines = ["| leg | rows | seconds | rows/s | x COPY | peak RSS MB |", "|---|---:|---:|---:|---:|---:|"]
    for leg, runs in results.items():
        if runs.error or not runs.seconds:
            lines.append(f"| {LABELS[leg]} | failed: {runs.error} | | | | |")
            continue
        rate = rows / runs.median_seconds
        versus = f"{rate / copy_rate:.2f}x" if copy_rate else "n/a"
        cells = [LABELS[leg], f"{runs.rows:,}", f"{runs.median_seconds:.2f}", f"{rate:,.0f}", versus]
        lines.append("| " + " | ".join([*cells, f"{runs.peak_mb:.0f}"]) + " |")
    return lines


def breakdowns(results: dict[str, LegRuns]) -> list[str]:
    lines = []
    for leg in ("ours", "dlt"):
        runs = results.get(leg)
        if not runs or runs.error or not runs.details:
            continue
        # The run whose seconds are the median (the upper one for an even count).
        detail = sorted(runs.details, key=lambda d: d["seconds"])[len(runs.details) // 2]
        parts = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in detail["breakdown"].items())
        extra = f"; {detail['batches']:,} batches" if "batches" in detail else ""
        lines.append(f"{LABELS[leg]} ({detail['seconds']:.2f}s run, {detail['files']} files{extra}): {parts}")
    return lines


def verdict(label: str, value: float | None, target: str, ok: bool | None, digits: int = 2) -> str:
    if value is None or ok is None:
        return f"{label} = n/a (target {target}): n/a"
    return f"{label} = {value:.{digits}f}x (target {target}): {'PASS' if ok else 'FAIL'}"


def speed_verdicts(results: dict[str, LegRuns]) -> list[str]:
    def seconds(leg: str) -> float | None:
        runs = results.get(leg)
        return runs.median_seconds if runs and not runs.error and runs.seconds else None

    ours, copy, dlt = seconds("ours"), seconds("copy"), seconds("dlt")
    vs_copy = copy / ours if ours and copy else None
    vs_dlt = dlt / ours if ours and dlt else None
    return [
        verdict(
            "our sync / COPY",
            vs_copy,
            f">= {TARGET_VS_COPY}x",
            None if vs_copy is None else vs_copy >= TARGET_VS_COPY,
        ),
        verdict(
            "our sync / dlt",
            vs_dlt,
            f"> {TARGET_VS_DLT:g}x",
            None if vs_dlt is None else vs_dlt > TARGET_VS_DLT,
            digits=1,
        ),
    ]


def memory_report(by_size: dict[int, dict[str, LegRuns]]) -> list[str]:
    small, large = SCALING_SIZES
    lines = [
        f"| leg | peak RSS MB {small // 1_000_000}M | peak RSS MB {large // 1_000_000}M | ratio |",
        "|---|---:|---:|---:|",
    ]
    ratios: dict[str, float] = {}
    for leg in by_size[small]:
        a, b = by_size[small][leg], by_size[large][leg]
        if a.error or b.error or not a.peaks_kb or not b.peaks_kb:
            lines.append(f"| {LABELS[leg]} | failed | failed | |")
            continue
        ratios[leg] = b.peak_mb / a.peak_mb
        lines.append(f"| {LABELS[leg]} | {a.peak_mb:.0f} | {b.peak_mb:.0f} | {ratios[leg]:.2f}x |")
    ours = ratios.get("ours")
    lines += [
        "",
        verdict(
            f"peak {large // 1_000_000}M / {small // 1_000_000}M (our sync)",
            ours,
            f"<= {TARGET_MEMORY_RATIO}x",
            None if ours is None else ours <= TARGET_MEMORY_RATIO,
        ),
    ]
    return lines


def versions(database_url: str) -> str:
    from bench._common import installed_versions

    return f"PostgreSQL {server_version(database_url)}; " + installed_versions("duckdb", "pyarrow", "pyiceberg", "dlt")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=(
            f"Targets: our sync >= {TARGET_VS_COPY}x the COPY rows/s and faster than dlt; with --memory-scaling, "
            f"our peak RSS at 10M rows <= {TARGET_MEMORY_RATIO}x that at 2M. Always exits 0."
        ),
    )
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows in the source table (default 5,000,000)")
    parser.add_argument(
        "--memory-scaling",
        action="store_true",
        help="run every leg at 2M and at 10M rows and report the 10M / 2M peak-RSS ratio (ignores --rows)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved rounds per size; the table shows median seconds (default 3)"
    )
    parser.add_argument(
        "--legs",
        default=",".join(LEGS),
        help=f"comma-separated subset of {','.join(LEGS)} (default: all)",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (postgresql+psycopg://user:pw@host:port/db) of an existing server; the table "
        f"public.{TABLE} is created there and dropped afterwards (default: a throwaway local PostgreSQL 15)",
    )
    parser.add_argument(
        "--dlt-chunk-size",
        type=int,
        default=DLT_CHUNK_SIZE,
        help=f"dlt's sql_table chunk_size (default {DLT_CHUNK_SIZE:,}, dlt's own default)",
    )
    parser.add_argument("--child", choices=("ours", "dlt"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    args.legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    if not args.legs or set(args.legs) - set(LEGS):
        parser.error(f"--legs must be a subset of {','.join(LEGS)}")
    args.legs = [leg for leg in LEGS if leg in args.legs]
    if args.rows < 1 or args.repeat < 1 or args.dlt_chunk_size < 1:
        parser.error("--rows, --repeat and --dlt-chunk-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    sizes = SCALING_SIZES if args.memory_scaling else (args.rows,)
    by_size: dict[int, dict[str, LegRuns]] = {}
    try:
        with postgres(args.database_url) as database_url:
            header = versions(database_url)
            for rows in sizes:
                by_size[rows] = run_size(rows, args, database_url)
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        log(f"benchmark aborted: {type(exc).__name__}: {exc}")
        if not by_size:
            return 0
        header = "(aborted part-way)"

    columns = "int8, numeric(12,2), text 20-40 chars, timestamptz, int4"
    print(f"\n{header}; {args.repeat} round(s) per leg, median seconds, max peak RSS; columns: {columns}")
    for rows, results in by_size.items():
        print(f"\n{rows:,} rows:\n")
        print("\n".join(speed_table(rows, results)))
        print()
        print("\n".join(breakdowns(results)))
        print()
        print("\n".join(speed_verdicts(results)))
    if args.memory_scaling and len(by_size) == len(SCALING_SIZES):
        print("\nPeak RSS scaling:\n")
        print("\n".join(memory_report(by_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
