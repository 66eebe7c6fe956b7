"""The metadata store locked or down: the API answers 503 `service_unavailable` with Retry-After (never 500), within
its busy timeout, stores nothing of the refused request, and answers reads where it can; it recovers by itself."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api_shim import metrics
from api_shim.main import create_app
from rime_dagster.settings import Settings
from rime_dagster.store.models import AuditLog, Project
from rime_dagster.store.session import engine_for, session_scope
from tests.conftest import ADMIN_TOKEN, make_settings, migrated_sqlite
from tests.support.postgres import throwaway_postgres_server

BUSY_TIMEOUT = 0.3
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=AUTH) as client:
        yield client
    for options in ({}, {"read_only": True}, {"deferred": True}):
        engine_for(settings.metadata_url, busy_timeout=BUSY_TIMEOUT, **options).dispose()


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory) -> Iterator[tuple[TestClient, Settings]]:
    tmp = tmp_path_factory.mktemp("locked")
    sqlite = migrated_sqlite(tmp / "rime" / "rime.db")  # SQLite's lock, whatever backend the suite runs on
    settings = make_settings(tmp, sqlite, metadata_busy_timeout_seconds=BUSY_TIMEOUT)
    with serving(settings) as client:
        assert client.post("/api/v1/projects", json={"name": "before"}).status_code == 201
        yield client, settings


@contextmanager
def write_locked(settings: Settings) -> Iterator[None]:
    """Another connection (as another process would) holds SQLite's write lock for the block."""
    database = Path(settings.metadata_url.removeprefix("sqlite:///"))
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _assert_503(response, *, within: float, started: float) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert "locked" in response.json()["error"]["message"]
    assert "sqlite" not in response.text.lower() and "BEGIN" not in response.text
    assert time.monotonic() - started < within


def _count(settings: Settings, model: type, **where: str) -> int:
    with session_scope(settings.metadata_url) as session:
        return session.scalar(select(func.count()).select_from(model).filter_by(**where)) or 0


class TestSqliteLocked:
    def test_a_write_answers_503_within_the_busy_timeout_and_stores_nothing(self, sqlite_api, caplog):
        client, settings = sqlite_api
        audited = _count(settings, AuditLog)
        key = {"Idempotency-Key": "create-refused"}
        with write_locked(settings):
            started = time.monotonic()
            response = client.post("/api/v1/projects", json={"name": "refused"}, headers=key)
            _assert_503(response, within=BUSY_TIMEOUT + 1.0, started=started)
        # No audit entry was attempted (it would wait out the lock a second time): the refused call changed nothing.
        assert "no audit entry for POST /api/v1/projects: the metadata store is unavailable" in caplog.text
        assert _count(settings, Project, name="refused") == 0
        assert _count(settings, AuditLog) == audited
        # Once the lock is gone the same request goes through, without a restart; its Idempotency-Key was not
        # kept (neither the 503 replayed nor "in progress").
        retried = client.post("/api/v1/projects", json={"name": "refused"}, headers=key)
        assert retried.status_code == 201, retried.text
        assert "Idempotent-Replayed" not in retried.headers

    def test_reads_answer_while_another_writer_holds_the_lock(self, sqlite_api):
        client, settings = sqlite_api
        with write_locked(settings):
            started = time.monotonic()
            listing = client.get("/api/v1/projects")
            assert listing.status_code == 200
            assert "before" in {p["name"] for p in listing.json()["data"]}
            assert time.monotonic() - started < BUSY_TIMEOUT  # it did not wait for the lock
            ready = client.get("/health/ready").json()["dependencies"]
            assert ready["metadata_db"]["status"] == "ok"  # locked for writes is not down

    def test_the_audit_write_failing_does_not_turn_the_answer_into_a_500(self, sqlite_api):
        client, settings = sqlite_api
        failures = metrics.AUDIT_WRITE_FAILURES._value.get()
        with write_locked(settings):
            # A mutating call the route refuses without touching the store (a 400 is audited): only the audit
            # middleware's own write meets the lock.
            response = client.post("/api/v1/projects", json={"name": ""})
        assert response.status_code == 400, response.text
        assert metrics.AUDIT_WRITE_FAILURES._value.get() == failures + 1


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_stopped_under_a_running_api_answers_503_then_recovers(tmp_path):
    with throwaway_postgres_server() as (url, server):
        settings = make_settings(tmp_path, url, metadata_busy_timeout_seconds=2)
        with serving(settings) as client:
            assert client.post("/api/v1/projects", json={"name": "kept"}).status_code == 201
            server.stop()
            try:
                started = time.monotonic()
                _assert_down(client.post("/api/v1/projects", json={"name": "lost"}), started)
                started = time.monotonic()
                _assert_down(client.get("/api/v1/projects"), started)
                report = client.get("/health/ready")
                assert report.status_code == 503
                assert report.json()["dependencies"]["metadata_db"]["status"] == "error"
            finally:
                server.start()
            # The pooled connections died with the server: pre-ping replaces them, no restart needed.
            listing = client.get("/api/v1/projects")
            assert listing.status_code == 200, listing.text
            assert {p["name"] for p in listing.json()["data"]} == {"kept"}
            assert client.get("/health/ready").json()["dependencies"]["metadata_db"]["status"] == "ok"
            assert client.post("/api/v1/projects", json={"name": "after"}).status_code == 201


def _assert_down(response, started: float) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert "psycopg" not in response.text and "127.0.0.1" not in response.text
    assert time.monotonic() - started < 5
