"""Retention of the alert stream's events (alert_events): housekeeping deletes those older than
RIME_ALERT_EVENTS_RETENTION_HOURS, except the newest, whose id SQLite would otherwise hand out again."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from rime_dagster.platform.housekeeping import housekeeping_definitions
from rime_dagster.platform.names import HOUSEKEEPING_JOB
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import get_settings
from rime_dagster.store.models import AlertEvent
from rime_dagster.store.retention import purge_alert_events
from rime_dagster.store.session import session_scope
from tests.conftest import make_settings, use_settings

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def add_events(url: str, ages_hours: list[float]) -> list[int]:
    with session_scope(url) as session:
        rows = [
            AlertEvent(
                tenant_id="default",
                project_id="proj_x",
                alert_id=f"alert_{n}",
                event_type="alert_fired",
                payload={"id": f"alert_{n}"},
                created_at=NOW - timedelta(hours=age),
            )
            for n, age in enumerate(ages_hours)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def event_ids(url: str) -> list[int]:
    with session_scope(url) as session:
        return list(session.scalars(select(AlertEvent.id).order_by(AlertEvent.id)))


def purge(url: str, hours: int) -> int:
    with session_scope(url) as session:
        return purge_alert_events(session, ttl=timedelta(hours=hours), now=NOW)


def test_events_older_than_the_retention_are_purged(db_url):
    ids = add_events(db_url, [50, 30, 23, 1])
    assert purge(db_url, 24) == 2
    assert event_ids(db_url) == ids[2:]
    assert purge(db_url, 24) == 0


def test_the_newest_event_is_kept_so_sqlite_never_hands_its_id_out_again(db_url):
    ids = add_events(db_url, [72, 48, 30])
    assert purge(db_url, 24) == 2
    assert event_ids(db_url) == ids[-1:]
    # The next event still comes after every id a stream reader may have read.
    assert add_events(db_url, [0])[0] > ids[-1]
    assert purge(db_url, 24) == 1  # now the old one may go
    assert purge(db_url, 24) == 0


def test_an_empty_table_purges_nothing(db_url):
    assert purge(db_url, 24) == 0


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    for name in [n for n in os.environ if n.startswith("RIME_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RIME_ALERT_EVENTS_RETENTION_HOURS", "2")
    use_settings(monkeypatch, settings)
    yield settings
    get_settings.cache_clear()


def test_housekeeping_purges_alert_events_past_the_configured_retention(deployment):
    url = deployment.metadata_url
    now = datetime.now(UTC)
    with session_scope(url) as session:
        for n, age in enumerate([5, 3, 1]):
            session.add(
                AlertEvent(
                    tenant_id="default",
                    project_id="proj_x",
                    alert_id=f"alert_{n}",
                    event_type="alert_fired",
                    payload={},
                    created_at=now - timedelta(hours=age),
                )
            )
    (job,) = housekeeping_definitions(0).jobs
    assert job.name == HOUSEKEEPING_JOB
    result = job.execute_in_process(resources={"metadata_store": MetadataStoreResource(database_url=url)})
    assert result.success
    assert result.output_for_node("purge_old_alert_events") == 2  # older than RIME_ALERT_EVENTS_RETENTION_HOURS=2
    with session_scope(url) as session:
        assert [e.alert_id for e in session.scalars(select(AlertEvent))] == ["alert_2"]
