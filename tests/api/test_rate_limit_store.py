"""The metadata store's `limits` storage (rime-store://): exact under concurrency, shared, purged; the default of
several API workers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from sqlalchemy import func, select

from api_shim import rate_limit_store
from api_shim.middleware import RateLimits
from api_shim.rate_limit_store import StoreRateLimitStorage
from rime_dagster.settings import Settings
from rime_dagster.store.models import RateLimitCounter
from rime_dagster.store.session import engine_for


def limiter(url: str) -> SlidingWindowCounterRateLimiter:
    return SlidingWindowCounterRateLimiter(storage_from_string("rime-store://", metadata_url=url))


def test_concurrent_hits_grant_exactly_the_limit(db_url):
    # Two storages over one database, as two API workers have: 120 hits from 8 threads against 50/hour.
    first, second = limiter(db_url), limiter(db_url)
    item = parse("50/hour")

    def hit(i: int) -> bool:
        return (first if i % 2 else second).hit(item, "default", "projects")

    with ThreadPoolExecutor(8) as pool:
        granted = sum(pool.map(hit, range(120)))
    assert granted == 50
    stats = first.get_window_stats(item, "default", "projects")
    assert stats.remaining == 0 and time.time() < stats.reset_time <= time.time() + 3600
    assert second.test(parse("60/hour"), "default", "projects")  # a refused hit counted for nothing
    assert first.hit(parse("50/hour"), "default", "users")  # another key's quota


def test_expired_rows_are_purged(db_url, monkeypatch):
    storage = StoreRateLimitStorage("rime-store://", metadata_url=db_url)
    storage.incr("old", expiry=-1)  # already expired
    assert storage.get("old") == 0
    monkeypatch.setattr(rate_limit_store, "PURGE_SECONDS", 0.0)
    assert storage.acquire_sliding_window_entry("new", limit=5, expiry=60)
    with engine_for(db_url).connect() as conn:
        keys = conn.scalars(select(RateLimitCounter.key)).all()
        assert len(keys) == 1 and keys[0].startswith("new/")
    assert storage.incr("x" * 300, expiry=60) == 1 and storage.get("x" * 300) == 1  # a long key is stored hashed
    with engine_for(db_url).connect() as conn:
        assert conn.scalar(select(func.max(func.length(RateLimitCounter.key)))) <= 255


@pytest.mark.parametrize(
    ("workers", "storage", "shared"),
    [(1, "memory://", False), (2, "memory://", True), (2, "memory://?x=1", True), (4, "rime-store://", True)],
)
def test_several_workers_count_in_the_store(tmp_path, db_url, workers, storage, shared):
    settings = Settings(home=tmp_path, database_url=db_url, api_workers=workers, rate_limit_storage=storage)
    limits = RateLimits(settings)
    assert limits.blocking is shared
    assert isinstance(limits.limiter, SlidingWindowCounterRateLimiter) is shared
