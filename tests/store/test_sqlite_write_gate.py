"""SQLite write transactions of one process queue on a lock: released on every way a transaction ends."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from rime_dagster.store import session as db_session
from rime_dagster.store.migrate import upgrade_to_head
from rime_dagster.store.models import User
from rime_dagster.store.session import _GatedConnection, engine_for, session_factory, session_scope, unit_of_work
from tests.support.waiting import running, wait_until


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'rime.db'}"
    upgrade_to_head(url)
    yield url
    engine_for(url).dispose()


def _user(n: int) -> User:
    return User(id=f"usr_{n}", tenant_id="default", email=f"u{n}@example.com", name=str(n), role="viewer")


def _write(url: str, n: int) -> None:
    with session_scope(url) as session:
        session.add(_user(n))


def _gate(url: str) -> threading.Lock:
    return db_session.sqlite_write_gate(url)


def test_the_gate_is_free_after_commit_rollback_and_close(url):
    _write(url, 1)
    assert not _gate(url).locked()
    with pytest.raises(RuntimeError), session_scope(url) as session:
        session.add(_user(2))
        session.flush()
        assert _gate(url).locked()  # held for the whole write transaction
        raise RuntimeError("rolled back")
    assert not _gate(url).locked()
    session = session_factory(url)()
    session.add(_user(3))
    session.flush()
    session.close()  # neither committed nor rolled back explicitly
    assert not _gate(url).locked()
    _write(url, 4)
    with session_scope(url) as session:
        assert {u.id for u in session.query(User)} >= {"usr_1", "usr_4"}


def test_a_writer_waits_for_the_one_before_and_gets_the_database_at_once(url):
    holder = session_factory(url)()
    holder.add(_user(1))
    holder.flush()
    finished: list[float] = []

    def second() -> None:
        _write(url, 2)
        finished.append(time.monotonic())

    thread = threading.Thread(target=second)
    thread.start()
    wait_until(lambda: running(_GatedConnection.enter_write, thread), timeout=5, what="the second writer at the gate")
    assert not finished  # queued behind the open transaction
    released = time.monotonic()
    holder.commit()
    holder.close()
    thread.join(5)
    assert finished and finished[0] >= released  # it wrote only once the first had committed
    # Handed over on commit, not on SQLite's next busy poll.
    assert finished[0] - released < 0.2


def test_a_writer_that_cannot_get_the_gate_fails_like_a_locked_database(url):
    holder = session_factory(url)()
    holder.add(_user(1))
    holder.flush()
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as info:
            # same thread, second connection (one that waits 0.2 s): would wait forever on a plain lock
            with unit_of_work(session_factory(url, busy_timeout=0.2)) as session:
                session.add(_user(2))
        assert isinstance(info.value.orig, sqlite3.OperationalError)
        assert "database is locked" in str(info.value.orig)
        assert time.monotonic() - started < 2
    finally:
        holder.rollback()
        holder.close()
    _write(url, 3)  # and nothing is left held
