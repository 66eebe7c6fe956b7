"""Waiting for what a test needs to have happened: the condition itself, polled until a deadline, instead of a
guessed sleep. `running` tells what a thread of the test process is doing now (the app under TestClient runs in
this process), for the states no event announces: a request inside a launch, a writer queued on a lock."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], *, timeout: float = 30, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.01)


def running(function: Callable, thread: threading.Thread | None = None) -> bool:
    """Whether `function` is on the call stack of `thread` (of any thread of this process when None) right now."""
    code = function.__code__
    frames = sys._current_frames()
    tops = [frames.get(thread.ident)] if thread is not None and thread.ident is not None else list(frames.values())
    for frame in tops:
        while frame is not None:
            if frame.f_code is code:
                return True
            frame = frame.f_back
    return False
