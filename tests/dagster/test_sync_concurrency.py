"""One sync of a connector's tables at a time, on a real Dagster: concurrent syncs wait for each other in the
connector's pool, and an incremental table gets every source row exactly once."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from rime_dagster.connectors.names import connector_pool
from rime_dagster.platform.iceberg import open_catalog
from rime_dagster.platform.pools import DONE_WRITING, WRITING
from tests.dagster.conftest import Webserver, wait_for_run
from tests.dagster.test_pipeline_jobs import _wait_for_job

pytestmark = pytest.mark.dagster

BLOCKED = "Step blocked by limit for pool"


def _add_events(db, ids: range) -> None:
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, kind TEXT)")
        con.executemany("INSERT INTO events VALUES (?, ?)", [(i, f"kind {i % 7}") for i in ids])


def _sync_concurrently(api, base: str) -> list[dict]:
    """Two `POST .../sync` at the same moment, from two threads."""
    barrier = threading.Barrier(2)
    responses: list = [None, None]

    def sync(i: int) -> None:
        barrier.wait()
        responses[i] = api.post(f"{base}/sync")

    threads = [threading.Thread(target=sync, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in responses] == [202, 202], [r.text for r in responses]
    return [r.json() for r in responses]


@contextmanager
def _pool_held(instance, pool: str):
    """Holds the pool's one slot, as a sync already running would."""
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(pool)
    assert storage.claim_concurrency_slot(pool, "test-holder", "sync").is_claimed
    try:
        yield
    finally:
        storage.free_concurrency_slot_for_step("test-holder", "sync")


def _messages(instance, dagster_run_id: str) -> list[str]:
    return [e.user_message or "" for e in instance.all_logs(dagster_run_id)]


def _wait_until_blocked(instance, runs: list[dict], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(any(BLOCKED in m for m in _messages(instance, r["dagster_run_id"])) for r in runs):
        assert time.monotonic() < deadline, "the runs never waited for the pool"
        time.sleep(0.5)


def _write_window(instance, dagster_run_id: str) -> tuple[float, float]:
    """When the run's sync step began and ended writing the connector's tables (holding its write lease)."""
    entries = instance.all_logs(dagster_run_id)
    began = [e.timestamp for e in entries if (e.user_message or "").startswith(WRITING)]
    ended = [e.timestamp for e in entries if (e.user_message or "").startswith(DONE_WRITING)]
    assert len(began) == len(ended) == 1, [e.user_message for e in entries]
    return began[0], ended[0]


def _landed_ids(settings, namespace: str) -> list[int]:
    table = open_catalog(settings).load_table((namespace, "shop_db__events"))
    return sorted(table.scan(selected_fields=("id",)).to_arrow().column("id").to_pylist())


def test_two_concurrent_incremental_syncs_leave_every_row_exactly_once(api, dagster_webserver: Webserver, tmp_path):
    import dagster as dg

    settings = dagster_webserver.settings
    source = tmp_path / "shop.db"
    _add_events(source, range(1, 5001))
    project = api.post("/api/v1/projects", json={"name": "E2E one sync at a time"}).json()
    created = api.post(
        f"/api/v1/projects/{project['id']}/connectors",
        json={
            "name": "Shop DB",
            "connector_type": "sqlite",
            "config": {"path": str(source)},
            "selected_tables": ["events"],
            "sync_mode": "incremental",
            "cursor_fields": {"events": "id"},
        },
    )
    assert created.status_code == 201, created.text
    connector = created.json()
    base = f"/api/v1/projects/{project['id']}/connectors/{connector['id']}"
    _wait_for_job(settings, f"sync_{project['namespace']}")
    instance = dg.DagsterInstance.from_config(str(settings.dagster_home_path))
    pool = connector_pool(connector["id"])

    def check_round(started: list[dict], new_rows: int, expected_ids: list[int]) -> None:
        runs = [wait_for_run(api, base, s["run_id"]) for s in started]
        assert [r["status"] for r in runs] == ["succeeded", "succeeded"], runs
        # The later sync reads the cursor the earlier one stored: nothing is left for it to append.
        assert sorted(r["rows_synced"] for r in runs) == [0, new_rows]
        assert _landed_ids(settings, project["namespace"]) == expected_ids
        first, second = sorted(_write_window(instance, s["dagster_run_id"]) for s in started)
        assert first[1] <= second[0], "the two syncs wrote at the same time"

    # Round 1: a sync holds the connector's pool, so both new ones wait for it, then for each other.
    with _pool_held(instance, pool):
        started = _sync_concurrently(api, base)
        _wait_until_blocked(instance, started)
        assert [api.get(f"{base}/runs").json()["data"][i]["status"] for i in (0, 1)] == ["running", "running"]
    check_round(started, 5000, list(range(1, 5001)))
    for s in started:
        log = _messages(instance, s["dagster_run_id"])
        assert f"{BLOCKED} {pool}" in log
        assert any(m.startswith("Waited ") and "for another sync of connector 'Shop DB'" in m for m in log), log

    # Round 2: new source rows, two syncs at once with nobody else holding the pool.
    _add_events(source, range(5001, 6001))
    check_round(_sync_concurrently(api, base), 1000, list(range(1, 6001)))
