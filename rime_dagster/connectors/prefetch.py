"""Read-ahead for record-batch streams: the source scan runs in a thread while the caller writes.

DuckDB scans and pyarrow's Parquet writer both release the GIL, so with one batch read ahead the
two overlap on separate cores instead of taking turns. The queue is bounded (`depth` batches), so
memory stays bounded whatever the table size. Nothing generic on PyPI does this with clean
shutdown semantics (early stop closes the source generator in its own thread; producer errors are
re-raised in the consumer with their traceback), hence the forty lines here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(items: Iterable[T], *, depth: int = 2, name: str = "rime-prefetch") -> Iterator[T]:
    """Yields `items` in order while a background thread produces up to `depth` of them ahead.

    When the consumer stops early (exception, `close()`), the producer stops at its next item and
    closes the underlying iterator from its own thread; this generator returns only once it has.
    """
    if depth < 1:
        raise ValueError("depth must be positive")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:
            put(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
