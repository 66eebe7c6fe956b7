"""POST .../query p50 for an aggregate over a 1 M-row Iceberg table, against DuckDB reading the same table directly.

Both sides run the same GROUP BY on the same table in this process. The baseline is one DuckDB connection with
the iceberg extension already loaded, running `iceberg_scan(<metadata>)`. The endpoint is the real app, served by
uvicorn on loopback in a thread and called over one keep-alive HTTP connection (httpx, a data_engineer's token; a
masking policy on a column the query does not read). Per request it checks the token, looks up the project and
policies, takes a fresh DuckDB database (one opened ahead of it, unless `--spare-databases 0`), checks the SQL,
creates the view and locks the database down. (FastAPI's TestClient, which this used before, starts an event loop
in a new thread per request when not entered: ~5 ms of the client's own, not the server's.)

    .venv/bin/python bench/query_latency.py [--rows 1000000] [--runs 15] [--spare-databases 2] [--pause 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SQL = "SELECT region, count(*) AS n, sum(amount) AS total, avg(score) AS score FROM {table} GROUP BY region ORDER BY 1"


@contextlib.contextmanager
def _served(app: object) -> Iterator[str]:
    """The app (already started) served by uvicorn on loopback, in a thread of this process, as `rime up` serves it;
    yields its base URL."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--spare-databases", type=int, default=2, help="RIME_QUERY_SPARE_DATABASES (0: none)")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.1,
        help="seconds between two timed queries: the endpoint's background work (closing the read's database, "
        "opening a spare) ends before the next query, so that it slows neither side",
    )
    args = parser.parse_args()

    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    from api_shim.services.auth import Role
    from bench._common import log
    from rime_dagster.connectors.sources._duckdb import extension_directory
    from tests.support.governed import governed, land_customers

    tmp = Path(tempfile.mkdtemp(prefix="rime-query-bench-"))
    with (
        contextlib.ExitStack() as stack,
        governed(tmp, query_threads=2, query_spare_databases=args.spare_databases) as world,
    ):
        n = args.rows
        ids = pa.array(range(n), pa.int64())
        data = {
            "id": ids,
            "region": pc.cast(pc.bit_wise_and(ids, pa.scalar(15, pa.int64())), pa.string()),
            "amount": pc.cast(pc.multiply(ids, pa.scalar(3, pa.int64())), pa.float64()),
            "score": pc.cast(pc.bit_wise_and(ids, pa.scalar(255, pa.int64())), pa.float64()),
            "email": pc.binary_join_element_wise(pc.cast(ids, pa.string()), "@example.com", ""),
        }
        land_customers(world.clients.app, world.project["namespace"], table="bench__events", data=data)
        world.policy({"name": "e", "columns": [{"table": "bench__events", "column": "email"}], "strategy": "hash"})
        table = world.clients.app.state.iceberg.catalog().load_table((world.project["namespace"], "bench__events"))
        metadata = table.metadata_location.removeprefix("file://")
        log(f"landed {n:,} rows")

        con = duckdb.connect(
            config={"extension_directory": extension_directory(), "autoinstall_known_extensions": False, "threads": 2}
        )
        con.execute("LOAD avro")
        con.execute("LOAD iceberg")
        direct_sql = SQL.format(table=f"iceberg_scan('{metadata}')")
        base = stack.enter_context(_served(world.clients.app))
        client = stack.enter_context(
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {world.clients.tokens[Role.data_engineer]}"})
        )
        url = f"{world.base}/query"

        def direct() -> list:
            return con.execute(direct_sql).fetchall()

        def endpoint() -> list:
            response = client.post(url, json={"sql": SQL.format(table="bench__events")})
            assert response.status_code == 200, response.text
            return response.json()["rows"]

        assert [list(r) for r in direct()] == [[r[0], r[1], r[2], r[3]] for r in endpoint()]
        timings: dict[str, list[float]] = {"direct": [], "endpoint": []}
        for _ in range(args.runs):  # interleaved, so both see the same machine
            for name, run in (("direct", direct), ("endpoint", endpoint)):
                time.sleep(args.pause)
                start = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - start)

    p50 = {name: statistics.median(values) for name, values in timings.items()}
    print("| path | p50 | min | max | x direct |\n|---|---|---|---|---|")
    for name, values in timings.items():
        print(
            f"| {name} | {p50[name] * 1000:.0f} ms | {min(values) * 1000:.0f} ms | {max(values) * 1000:.0f} ms "
            f"| {p50[name] / p50['direct']:.2f} |"
        )


if __name__ == "__main__":
    main()
