"""Benchmark GET /api/v1/projects keyset pagination: page 1 vs page 100 with 10,000 projects.

The acceptance target is that the deep page (page 100, limit 100) answers within 1.2x of
page 1 at p50, which holds only if pagination is keyset rather than OFFSET.

What it does, all in one run:

1. seeds 10,000 projects straight into a fresh metadata store (SQLite in a temporary
   RIME_HOME, or the PostgreSQL database given with --database-url);
2. starts the real API (`uvicorn --factory api_shim.main:app_from_env`) on a free
   loopback port and walks the list page by page, keeping the cursor of page 100;
3. times page 1 and page 100 through the API, interleaved, over one keep-alive client;
4. times the same page 100 as direct SQL, keyset versus the OFFSET 9900 baseline;
5. prints a markdown table and the page 100 / page 1 verdict (exit code 0 either way).

Run with `make bench` or `python bench/projects_pagination.py [--requests N] [--explain]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import Connection, Engine, Select, and_, func, insert, or_, select

from rime_dagster.settings import Settings
from rime_dagster.store.ids import new_id
from rime_dagster.store.migrate import upgrade_to_head
from rime_dagster.store.models import Project
from rime_dagster.store.session import make_engine

PROJECTS = 10_000
PAGE_SIZE = 100
DEEP_PAGE = 100
TARGET_RATIO = 1.2
TENANT = "default"
ADMIN_TOKEN = "rime_bench_admin_token_0123456789abcdef"
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parent.parent
LIST_PATH = "/api/v1/projects"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Seeding ---------------------------------------------------------------------------------


def seed_projects(engine: Engine) -> None:
    """Insert PROJECTS rows in one executemany, created_at 1 ms apart (all distinct)."""
    with engine.connect() as conn:
        existing = conn.scalar(select(func.count()).select_from(Project).where(Project.tenant_id == TENANT))
    if existing:
        sys.exit(f"tenant {TENANT!r} already has {existing} projects; use an empty database")
    rows = []
    for i in range(PROJECTS):
        at = BASE_TIME + timedelta(milliseconds=i)
        rows.append(
            {
                "id": new_id("project"),
                "tenant_id": TENANT,
                "name": f"bench-project-{i:05d}",
                "namespace": f"bench_project_{i:05d}",
                "description": f"Benchmark project number {i}.",
                "created_at": at,
                "updated_at": at,
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(Project), rows)
        if conn.dialect.name == "postgresql":
            # Fresh planner statistics, as autovacuum would gather soon after a bulk load;
            # without them PostgreSQL guesses ~10 rows and sorts instead of using the index.
            conn.exec_driver_sql("ANALYZE projects")


# The API server --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(home: Path, database_url: str | None) -> dict[str, str]:
    # Drop any RIME_* of the caller's shell so the server sees exactly the bench settings.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RIME_")}
    env.update(
        RIME_HOME=str(home),
        RIME_TENANT=TENANT,
        RIME_ADMIN_TOKEN=ADMIN_TOKEN,
        RIME_RATE_LIMIT_DEFAULT="1000000/minute",
        RIME_LOG_LEVEL="WARNING",
    )
    if database_url:
        env["RIME_DATABASE_URL"] = database_url
    return env


def start_server(env: dict[str, str], port: int, log_file) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api_shim.main:app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log_file, stderr=log_file)


def wait_healthy(base_url: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"API server exited with code {server.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"API server not healthy after {timeout:.0f}s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# Measurements ----------------------------------------------------------------------------


def get_page(client: httpx.Client, cursor: str | None) -> dict:
    params: dict[str, str | int] = {"limit": PAGE_SIZE}
    if cursor:
        params["cursor"] = cursor
    response = client.get(LIST_PATH, params=params)
    response.raise_for_status()
    return response.json()


def walk_pages(client: httpx.Client) -> tuple[str, list[dict]]:
    """Follow next_cursor from page 1 to DEEP_PAGE; return page DEEP_PAGE's cursor and items."""
    seen: list[str] = []
    cursor: str | None = None
    deep_cursor: str | None = None
    deep_items: list[dict] = []
    for number in range(1, DEEP_PAGE + 1):
        page = get_page(client, cursor)
        seen.extend(item["id"] for item in page["data"])
        if number == DEEP_PAGE:
            deep_cursor, deep_items = cursor, page["data"]
        elif not page["has_more"]:
            raise RuntimeError(f"list ended at page {number}, expected {DEEP_PAGE} pages")
        cursor = page["next_cursor"]
    if len(seen) != PROJECTS or len(set(seen)) != PROJECTS:
        raise RuntimeError(f"walk saw {len(seen)} ids, {len(set(seen))} distinct; want {PROJECTS}")
    if deep_cursor is None:
        raise RuntimeError("no cursor for the deep page")
    return deep_cursor, deep_items


def time_interleaved(cases: dict[str, Callable[[], object]], requests: int, warmup: int) -> dict[str, list[float]]:
    """Run each case `requests` times (ms), alternating the order every round."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(requests):
        for name in names if round_no % 2 == 0 else reversed(names):
            start = time.perf_counter()
            cases[name]()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100)
    return ordered[int(rank) - 1]


# Direct SQL ------------------------------------------------------------------------------


def ordered_projects() -> Select:
    table = Project.__table__
    return (
        select(table)
        .where(table.c.tenant_id == TENANT)
        .order_by(table.c.created_at.desc(), table.c.id.desc())
        .limit(PAGE_SIZE)
    )


def keyset_statement(last_created_at: datetime, last_id: str) -> Select:
    """The same predicate api_shim.pagination builds for a descending created_at cursor."""
    c = Project.__table__.c
    return ordered_projects().where(
        and_(
            c.created_at <= last_created_at,
            or_(c.created_at < last_created_at, c.id < last_id),
        )
    )


def offset_statement() -> Select:
    return ordered_projects().offset((DEEP_PAGE - 1) * PAGE_SIZE)


def explain(conn: Connection, stmt: Select) -> list[str]:
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return [f"{row[3]}" for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    return [row[0] for row in conn.exec_driver_sql(f"EXPLAIN ANALYZE {sql}")]


# Report ----------------------------------------------------------------------------------


def table_row(label: str, samples: list[float]) -> str:
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    return f"| {label} | {p50:.2f} | {p99:.2f} | {statistics.fmean(samples):.2f} |"


def backend_label(engine: Engine) -> str:
    if engine.dialect.name == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SHOW server_version").scalar()
    return f"PostgreSQL {version}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"Target: page {DEEP_PAGE} p50 <= {TARGET_RATIO}x page 1 p50. Always exits 0.",
    )
    parser.add_argument("--requests", type=int, default=200, help="timed requests per row (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per row first (default 20)")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL of an empty database, passed to the API as RIME_DATABASE_URL "
        "(default: SQLite in a temporary RIME_HOME)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print the query plans of the two SQL page-100 queries",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0:
        parser.error("--requests must be >= 1 and --warmup >= 0")
    return args


def run(args: argparse.Namespace, home: Path) -> None:
    settings = Settings(home=home, database_url=args.database_url)
    url = settings.metadata_url
    log(f"migrating {url.split('@')[-1]}")
    upgrade_to_head(url)
    engine = make_engine(url)
    started = time.perf_counter()
    seed_projects(engine)
    log(f"seeded {PROJECTS:,} projects in {time.perf_counter() - started:.2f}s")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server_log = home / "server.log"
    with server_log.open("wb") as log_file:
        server = start_server(server_env(home, args.database_url), port, log_file)
    try:
        try:
            wait_healthy(base_url, server)
        except RuntimeError:
            log(server_log.read_text(errors="replace"))
            raise
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
            deep_cursor, deep_items = walk_pages(client)
            log(f"walked {DEEP_PAGE} pages: {PROJECTS:,} distinct ids, no duplicates")
            log(f"timing API: {args.requests} requests per page after {args.warmup} warm-up")
            api = time_interleaved(
                {
                    "first": lambda: get_page(client, None),
                    "deep": lambda: get_page(client, deep_cursor),
                },
                args.requests,
                args.warmup,
            )
    finally:
        stop_server(server)

    # Page 100 starts right after the last row of page 99: the 9,900th newest project.
    with engine.connect() as conn:
        boundary = conn.execute(
            ordered_projects()
            .with_only_columns(Project.created_at, Project.id)
            .offset((DEEP_PAGE - 1) * PAGE_SIZE - 1)
            .limit(1)
        ).one()
        keyset = keyset_statement(boundary.created_at, boundary.id)
        offset = offset_statement()
        keyset_ids = [row.id for row in conn.execute(keyset)]
        offset_ids = [row.id for row in conn.execute(offset)]
        if not keyset_ids == offset_ids == [item["id"] for item in deep_items]:
            raise RuntimeError("SQL keyset, SQL OFFSET and API page 100 disagree")
        if args.explain:
            for label, stmt in (("keyset", keyset), ("OFFSET (baseline)", offset)):
                print(f"Query plan, SQL page {DEEP_PAGE} {label}:")
                for line in explain(conn, stmt):
                    print(f"    {line}")
            print()
        log(f"timing SQL: {args.requests} queries per statement after {args.warmup} warm-up")
        sql = time_interleaved(
            {
                "keyset": lambda: conn.execute(keyset).all(),
                "offset": lambda: conn.execute(offset).all(),
            },
            args.requests,
            args.warmup,
        )
    backend = backend_label(engine)
    engine.dispose()

    print(
        f"{PROJECTS:,} projects, limit {PAGE_SIZE}; {args.requests} timed requests per row "
        f"({args.warmup} warm-up), interleaved; {backend}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs"
    )
    print()
    print("| | p50 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|")
    print(table_row("API page 1 (keyset)", api["first"]))
    print(table_row(f"API page {DEEP_PAGE} (keyset)", api["deep"]))
    print(table_row(f"SQL page {DEEP_PAGE} keyset", sql["keyset"]))
    offset_rows = (DEEP_PAGE - 1) * PAGE_SIZE
    print(table_row(f"SQL page {DEEP_PAGE} OFFSET {offset_rows} (baseline)", sql["offset"]))
    print()
    ratio = percentile(api["deep"], 50) / percentile(api["first"], 50)
    sql_ratio = percentile(sql["offset"], 50) / percentile(sql["keyset"], 50)
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"page {DEEP_PAGE} / page 1 p50 ratio: {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    print(f"SQL page {DEEP_PAGE} OFFSET / keyset p50 ratio: {sql_ratio:.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rime-bench-") as tmp:
        run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
