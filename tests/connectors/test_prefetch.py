"""The read-ahead iterator: order, bounded look-ahead, errors and early stop."""

import threading

import pytest

from rime_dagster.connectors.prefetch import _Producer, prefetched
from tests.support.waiting import running, wait_until


def test_yields_everything_in_order():
    assert list(prefetched(iter(range(1000)), depth=3)) == list(range(1000))


def test_reads_at_most_depth_items_ahead():
    produced: list[int] = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    reader = prefetched(source(), depth=2)
    assert next(reader) == 0
    # One handed out, two queued, and the producer blocked putting the fourth: it reads no further.
    producer = next(t for t in threading.enumerate() if t.name == "rime-prefetch")
    wait_until(lambda: len(produced) == 4 and running(_Producer.put, producer), timeout=5, what="four items read")
    assert len(produced) == 4
    reader.close()


def test_producer_error_reaches_the_consumer_after_earlier_items():
    def source():
        yield 1
        yield 2
        raise ValueError("source broke")

    reader = prefetched(source())
    assert next(reader) == 1
    assert next(reader) == 2
    with pytest.raises(ValueError, match="source broke"):
        next(reader)


def test_early_stop_closes_the_source_and_its_thread():
    closed = threading.Event()

    def source():
        try:
            yield from range(10_000)
        finally:
            closed.set()

    before = threading.active_count()
    reader = prefetched(source(), depth=1)
    assert next(reader) == 0
    reader.close()
    assert closed.is_set()
    assert threading.active_count() == before


def test_consumer_error_stops_the_producer():
    closed = threading.Event()

    def source():
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    reader = prefetched(source())
    with pytest.raises(RuntimeError):
        for _ in reader:
            raise RuntimeError("write failed")
    reader.close()
    assert closed.is_set()
