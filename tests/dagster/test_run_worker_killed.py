"""A sync's run worker killed (SIGKILL) while it writes: the Iceberg table and its incremental cursor are as before,
the daemon's run monitoring marks the run failed, and the next sync lands exactly the rows the killed one did not.

The source is a real PostgreSQL view whose rows pass a gate: the row with id GATE waits for a PostgreSQL advisory
lock that the test holds, so the sync stops there, in the middle of its table, having read (and written to Parquet)
every row before it, until the test kills its worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pyarrow.compute as pc
import pytest
from sqlalchemy.engine import make_url

from rime_dagster.connectors.landing import read_cursor, table_stats
from rime_dagster.platform.run_tags import RUN_WORKER_PID
from rime_dagster.platform.write_leases import LEASE_SECONDS
from tests.dagster.conftest import Webserver, graphql, running_daemon, wait_for_run
from tests.support.postgres import fresh_database

pytestmark = [pytest.mark.dagster, pytest.mark.postgres, pytest.mark.slow]

FIRST = 1_000  # rows of the first sync
# The second sync stops at this row: far enough for 262,144 rows (a Parquet row group) to reach the writer past
# what DuckDB's scan holds back (about 80 k rows), so a data file of the sync is being written.
GATE = 360_000
LAST = 370_000
GATE_LOCK = 7_317  # the advisory lock key
TIMEOUT = 90.0

SOURCE_SQL = f"""
CREATE TABLE events_data (id bigint PRIMARY KEY, payload text NOT NULL);
CREATE FUNCTION gate(i bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF i = {GATE} THEN
        PERFORM pg_advisory_lock_shared({GATE_LOCK});
        PERFORM pg_advisory_unlock_shared({GATE_LOCK});
    END IF;
    RETURN true;
END $$;
CREATE VIEW events AS SELECT id, payload FROM events_data WHERE gate(id);
INSERT INTO events_data SELECT i, 'event ' || i FROM generate_series(1, {FIRST}) AS i;
"""


def _wait(what: str, check, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _worker_pid(settings, dagster_run_id: str) -> int | None:
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value } } } }"
    run = graphql(settings, query, {"id": dagster_run_id})
    tags = {t["key"]: t["value"] for t in run["runOrError"].get("tags", [])}
    return int(tags[RUN_WORKER_PID]) if RUN_WORKER_PID in tags else None


def _gate_waiters(conn: psycopg.Connection) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
    return conn.execute(query).fetchone()[0]


def test_a_sync_whose_worker_is_killed_mid_write_commits_nothing_and_the_next_sync_lands_the_same_rows(
    api, postgres_url, dagster_webserver: Webserver
):
    settings = dagster_webserver.settings
    with (
        fresh_database(postgres_url, "worker_killed_src") as source_url,
        running_daemon(dagster_webserver),  # its run monitoring (every second here) notices the dead worker
    ):
        url = make_url(source_url)
        dsn = f"host={url.host} port={url.port} user={url.username} dbname={url.database}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SOURCE_SQL)

        project = api.post("/api/v1/projects", json={"name": "worker killed"}).json()
        created = api.post(
            f"/api/v1/projects/{project['id']}/connectors",
            json={
                "name": "Events",
                "connector_type": "postgresql",
                "config": {"host": url.host, "port": url.port, "database": url.database, "schema": "public"},
                "credentials": {"username": url.username, "password": "unused"},
                "selected_tables": ["events"],
                "sync_mode": "incremental",
                "cursor_fields": {"events": "id"},
            },
        )
        assert created.status_code == 201, created.text
        base = f"/api/v1/projects/{project['id']}/connectors/{created.json()['id']}"
        catalog = api.app.state.iceberg.catalog()
        identifier = (project["namespace"], "events__events")

        first = wait_for_run(api, base, api.post(f"{base}/sync").json()["run_id"])
        assert first["status"] == "succeeded" and first["rows_synced"] == FIRST, first
        before = table_stats(catalog, identifier)
        assert before["row_count"] == FIRST and read_cursor(catalog, identifier, "id") == FIRST

        with psycopg.connect(dsn, autocommit=True) as gate:
            gate.execute(f"INSERT INTO events_data SELECT i, 'event ' || i FROM generate_series({FIRST + 1}, {LAST}) i")
            gate.execute(f"SELECT pg_advisory_lock({GATE_LOCK})")  # closes the gate for the second sync
            killed = api.post(f"{base}/sync").json()
            dagster_run_id = killed["dagster_run_id"]
            pid = _wait("the run worker's pid", lambda: _worker_pid(settings, dagster_run_id))
            _wait("the sync to reach the gate", lambda: _gate_waiters(gate) == 1)
            # Every row before the gate is read; the worker writes them to a Parquet file of this run.
            data = Path(urlparse(catalog.load_table(identifier).location()).path) / "data"
            written = _wait("the killed sync's data file", lambda: list(data.glob(f"**/{dagster_run_id}-*.parquet")))
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()

            failed = wait_for_run(api, base, killed["run_id"], timeout=TIMEOUT)
            assert failed["status"] == "failed", failed
            assert time.monotonic() - killed_at < 15  # monitoring looks every second here (30 s by default)
            assert f"run worker (process {pid}) exited before the run ended" in (failed["error"] or ""), failed
            # Nothing of it is visible: the same snapshot, rows and cursor as before; its file is an orphan.
            after = table_stats(catalog, identifier)
            assert (after["snapshot_id"], after["row_count"]) == (before["snapshot_id"], FIRST)
            assert read_cursor(catalog, identifier, "id") == FIRST
            assert all(path.exists() for path in written)
            live = {urlparse(f).path for f in catalog.load_table(identifier).inspect.files()["file_path"].to_pylist()}
            assert not live & {str(path) for path in written}
            tables = {t["name"]: t for t in api.get(f"/api/v1/projects/{project['id']}/tables").json()["data"]}
            assert tables["events__events"]["row_count"] == FIRST
        # The gate's connection is closed: the gate is open again for the next sync.

        resynced_at = time.monotonic()
        again = wait_for_run(api, base, api.post(f"{base}/sync").json()["run_id"], timeout=TIMEOUT)
        assert again["status"] == "succeeded", again
        # Neither the pool slot nor the write lease the killed step held made it wait for their expiry (60 s).
        assert time.monotonic() - resynced_at < LEASE_SECONDS / 2
        assert again["rows_synced"] == LAST - FIRST  # picked up from the cursor the killed sync left unchanged
        ids = catalog.load_table(identifier).scan(selected_fields=("id",)).to_arrow()["id"]
        assert len(ids) == LAST and pc.count_distinct(ids).as_py() == LAST  # none lost, none twice
        assert (pc.min(ids).as_py(), pc.max(ids).as_py()) == (1, LAST)
        assert read_cursor(catalog, identifier, "id") == LAST
