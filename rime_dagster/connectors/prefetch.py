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
from collections.abc import Generator, Iterable
from typing import Generic, TypeAlias, TypeVar

T = TypeVar("T")


class _Done:
    """The producer's last item: the source is exhausted."""


_DONE = _Done()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_Slot: TypeAlias = T | _Raised | _Done  # what the queue carries


class _Producer(Generic[T]):
    """The background thread: puts the source's items, then `_DONE` or the error, until told to stop."""

    def __init__(self, items: Iterable[T], slots: queue.Queue[_Slot[T]], stop: threading.Event) -> None:
        self.items = items
        self.slots = slots
        self.stop = stop

    def put(self, item: _Slot[T]) -> bool:
        while not self.stop.is_set():
            try:
                self.slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        iterator = iter(self.items)
        try:
            for item in iterator:
                if not self.put(item):
                    return
            self.put(_DONE)
        except BaseException as exc:
            self.put(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def prefetched(items: Iterable[T], *, depth: int = 2, name: str = "rime-prefetch") -> Generator[T, None, None]:
    """Yields `items` in order while a background thread produces up to `depth` of them ahead.

    When the consumer stops early (exception, `close()`), the producer stops at its next item and
    closes the underlying iterator from its own thread; this generator returns only once it has.
    """
    if depth < 1:
        raise ValueError("depth must be positive")
    slots: queue.Queue[_Slot[T]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = threading.Thread(target=_Producer(items, slots, stop).run, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if isinstance(item, _Done):
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()
