"""Benchmark compaction (issue 14): a table written by many small appends, before and after `compact`.

What it does, everything under a temporary directory:

1. opens the platform's Iceberg catalog (`rime_dagster/platform/iceberg.py`, `open_catalog`, with RIME_HOME set
   to the temporary directory: a SQLite catalog and a file warehouse where the platform puts them), creates the
   table with the first append through `land_table` (the path every connector sync takes: the platform's table
   properties and cursor), then writes the other `--appends` - 1 appends (default 1,000 in all) of `--rows` rows
   each (default 100) with pyiceberg directly (`table.append` of a small Arrow table: one data file, one
   manifest and one snapshot each, as a sync commits); landing 1,000 appends through the sync path takes about
   20 minutes on the 2-core machine, pyiceberg's own append a few minutes (both are timed and printed);
2. measures, before: the live data files and their bytes (manifests only), and the full scan to Arrow
   (`table.scan().to_arrow()`, median of `--scans` runs) with a row checksum;
3. compacts with `run_maintenance(operation="compact")`, what a run of the table maintenance job and a pipeline's
   `table_maintenance` step execute (target: the table's target file size), and times it;
4. measures the same after, and the minimum file count for the target size (ceil(bytes / target));
5. prints a markdown table and the verdicts: files within 1.1x of the minimum, scan at least 5x faster, rows
   identical by checksum. It exits 0 whatever the verdicts (a benchmark, not a test).

Run with `python bench/compaction.py [--appends N] [--rows N] [--scans N]`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pyarrow as pa  # noqa: E402

from bench._common import installed_versions, log  # noqa: E402
from rime_dagster.connectors.landing import ensure_namespace, land_table  # noqa: E402
from rime_dagster.pipelines.spec import TableMaintenanceConfig  # noqa: E402
from rime_dagster.platform.iceberg import open_catalog  # noqa: E402
from rime_dagster.settings import Settings  # noqa: E402
from rime_dagster.tables.operations import live_files, run_maintenance, target_file_size  # noqa: E402

IDENT = ("bench", "events__clicks")
SCHEMA = pa.schema([("id", pa.int64()), ("user", pa.string()), ("amount", pa.float64()), ("at", pa.timestamp("us"))])


def batch(start: int, rows: int) -> pa.RecordBatch:
    ids = list(range(start, start + rows))
    return pa.record_batch(
        [
            pa.array(ids, pa.int64()),
            pa.array([f"user-{i % 997}" for i in ids]),
            pa.array([i * 0.25 for i in ids]),
            pa.array([1_700_000_000_000_000 + i * 1_000_000 for i in ids], pa.timestamp("us")),
        ],
        schema=SCHEMA,
    )


def measure(catalog, scans: int) -> dict:
    table = catalog.load_table(IDENT)
    files = list(live_files(table))
    times = []
    data = None
    for _ in range(scans):
        started = time.perf_counter()
        data = catalog.load_table(IDENT).scan().to_arrow()
        times.append(time.perf_counter() - started)
    assert data is not None
    ordered = data.sort_by("id")
    digest = hashlib.sha256()
    for column in ordered.columns:
        digest.update(str(column.to_pylist()).encode())
    return {
        "files": len(files),
        "bytes": sum(f.file_size_in_bytes for f in files),
        "scan": statistics.median(times),
        "rows": data.num_rows,
        "checksum": digest.hexdigest()[:16],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--scans", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rime-bench-compaction-") as tmp:
        catalog = open_catalog(Settings(home=Path(tmp)))
        ensure_namespace(catalog, IDENT[0])
        started = time.perf_counter()
        land_table(
            catalog, IDENT, SCHEMA, [batch(0, args.rows)], mode="incremental", cursor_field="id", run_id="sync-0"
        )
        table = catalog.load_table(IDENT)
        for i in range(1, args.appends):
            table.append(pa.Table.from_batches([batch(i * args.rows, args.rows)]))
            if (i + 1) % 100 == 0:
                log(f"{i + 1} appends written ({time.perf_counter() - started:.0f} s)")
        appending = time.perf_counter() - started
        before = measure(catalog, args.scans)
        config = TableMaintenanceConfig(table=IDENT[1], operation="compact")
        started = time.perf_counter()
        message, _ = run_maintenance(catalog, IDENT[0], config, run_id="bench-compact")
        compaction = time.perf_counter() - started
        log(message)
        after = measure(catalog, args.scans)
        target = target_file_size(catalog.load_table(IDENT))
    minimum = max(1, math.ceil(after["bytes"] / target))
    print(f"\n{installed_versions('pyiceberg', 'pyarrow')}; {args.appends} appends of {args.rows} rows\n")
    print("| | data files | total bytes | full scan to Arrow (median) | rows | checksum |")
    print("|---|---:|---:|---:|---:|---|")
    for name, m in (("before", before), ("after", after)):
        scan = f"{m['scan'] * 1000:.1f} ms"
        print(f"| {name} | {m['files']:,} | {m['bytes']:,} | {scan} | {m['rows']:,} | {m['checksum']} |")
    print(f"\nwriting the {args.appends:,} appends: {appending:.1f} s")
    print(f"compaction: {compaction:.2f} s; minimum files for the {target:,}-byte target: {minimum}")
    print(f"- files after / minimum: {after['files'] / minimum:.2f}x (target <= 1.1x)")
    print(f"- scan speed-up: {before['scan'] / after['scan']:.1f}x (target >= 5x)")
    print(f"- rows identical: {before['checksum'] == after['checksum'] and before['rows'] == after['rows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
