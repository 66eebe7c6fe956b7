"""The write lease of a pool (rime_dagster/platform/write_leases.py): one holder at a time, on SQLite and PostgreSQL,
however many writers ask at the same moment; taken over only once its holder let it expire."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import update

from rime_dagster.platform import write_leases
from rime_dagster.platform.write_leases import claim, current_holder, write_lease
from rime_dagster.store.models import WriteLease
from rime_dagster.store.session import session_scope
from rime_dagster.store.types import utcnow

POOL = "connector:c_123"


def test_writers_asking_together_hold_the_lease_one_after_another(db_url, monkeypatch):
    monkeypatch.setattr(write_leases, "POLL_SECONDS", 0.02)
    writers = 6
    barrier = threading.Barrier(writers)
    windows: list[tuple[float, float]] = []
    waited: list[str] = []
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            barrier.wait()
            with write_lease(POOL, f"run-{i}", url=db_url, on_wait=waited.append):
                start = time.monotonic()
                time.sleep(0.05)
                windows.append((start, time.monotonic()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(windows) == writers
    windows.sort()
    assert all(earlier[1] <= later[0] for earlier, later in zip(windows, windows[1:], strict=False)), windows
    assert waited and all(h.startswith("run-") or h == "another run" for h in waited)
    assert current_holder(db_url, POOL) is None  # every holder released it


def test_a_held_lease_is_taken_over_only_once_it_expired(db_url):
    assert claim(db_url, POOL, "run-a")
    assert not claim(db_url, POOL, "run-b")
    assert claim(db_url, POOL, "run-a")  # the holder again (a retried step of the same run)
    with session_scope(db_url) as session:  # run-a died: it stopped renewing a while ago
        session.execute(update(WriteLease).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert claim(db_url, POOL, "run-b")
    assert current_holder(db_url, POOL) == "run-b"
    assert not claim(db_url, POOL, "run-a")
    assert claim(db_url, "connector:other", "run-a")  # pools are independent


def test_the_holder_renews_the_lease_while_it_writes(db_url, monkeypatch):
    monkeypatch.setattr(write_leases, "RENEW_SECONDS", 0.05)
    with write_lease(POOL, "run-a", url=db_url):
        with session_scope(db_url) as session:
            first = session.get(WriteLease, POOL).expires_at
        deadline = time.monotonic() + 10
        while True:
            with session_scope(db_url) as session:
                if session.get(WriteLease, POOL).expires_at > first:
                    break
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)
    assert current_holder(db_url, POOL) is None


def test_a_lease_whose_holder_is_gone_is_taken_over_at_once(db_url, monkeypatch):
    monkeypatch.setattr(write_leases, "POLL_SECONDS", 0.02)
    assert claim(db_url, POOL, "run-killed")  # its worker was killed: never released, far from expiring
    asked: list[str] = []

    def gone(holder: str) -> bool:
        asked.append(holder)
        return len(asked) >= 3  # the run ends (its worker found dead) while the next writer waits

    started = time.monotonic()
    with write_lease(POOL, "run-next", url=db_url, holder_gone=gone):
        assert current_holder(db_url, POOL) == "run-next"
    assert time.monotonic() - started < write_leases.LEASE_SECONDS / 10
    assert set(asked) == {"run-killed"} and len(asked) == 3
    assert current_holder(db_url, POOL) is None
