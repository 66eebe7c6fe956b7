"""A pipeline run being followed: read it, cancel it, wait for its end over the run's WebSocket (polling otherwise)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosedOK, WebSocketException
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from rime_client._http import API_PREFIX, Http
from rime_client.models import TERMINAL, PipelineRun

log = logging.getLogger(__name__)

# Polling: the first wait, the factor, the longest wait between two reads of the run.
POLL_FIRST, POLL_FACTOR, POLL_MAX = 0.5, 1.5, 5.0

Update = Callable[[dict[str, Any]], None]


class FeedFailed(Exception):
    """The server's `error` message on a run's WebSocket: its reading of the run failed (close 1011)."""


class RunHandle:
    """A run of one pipeline: `run_id`, `status` (as last seen) and what started it (`started`, the 202's body)."""

    def __init__(
        self,
        http: Http,
        *,
        base: str,
        pipeline_id: str,
        started: dict[str, Any] | None = None,
        run_id: str | None = None,
    ):
        self._http, self._base, self.pipeline_id = http, base, pipeline_id
        self.started = started or {}
        self.run_id: str = run_id or self.started["run_id"]
        self.status: str = self.started.get("status", "queued")

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, pipeline_id={self.pipeline_id!r}, status={self.status!r})"

    def get(self) -> PipelineRun:
        """The run now, with each step's status."""
        run = PipelineRun.model_validate(self._http.request("GET", f"{self._base}/runs/{self.run_id}"))
        self.status = run.status
        return run

    def cancel(self) -> str:
        answer = self._http.request("POST", f"{self._base}/runs/{self.run_id}/cancel")
        self.status = answer["status"]
        return self.status

    def retry(self, *, from_failure: bool = True, idempotency_key: str | None = None) -> RunHandle:
        """Re-executes this failed or canceled run as a new run linked to it (its `parent_run_id`), under an
        Idempotency-Key (`idempotency_key`, else a new one) its retries reuse. `from_failure`: only the steps that
        failed or never ran, and those after them (the others show `reused`); else every step. A run that
        succeeded or has not ended, or whose environment now runs another version: Conflict."""
        started = self._http.request(
            "POST",
            f"{self._base}/runs/{self.run_id}/retry",
            json={"from_failure": from_failure},
            idempotent_post=True,
            idempotency_key=idempotency_key,
        )
        return RunHandle(self._http, base=self._base, pipeline_id=self.pipeline_id, started=started)

    def wait(self, timeout: float = 300, *, on_update: Update | None = None, websocket: bool = True) -> PipelineRun:
        """The run once it has ended (succeeded, failed or canceled), with each step's status; TimeoutError after
        `timeout` seconds. Follows the run's WebSocket (each `step_update`/`run_update` message goes to
        `on_update`), falling back to polling the run with backoff when the socket cannot be used (then `on_update` gets
        a `step_update` per step whose status changed and a `run_update` per read)."""
        deadline = time.monotonic() + timeout
        if websocket:
            try:
                if self._follow_socket(deadline, on_update):
                    return self.get()
            except TimeoutError:  # an OSError too: the deadline, not a socket to give up on
                raise
            except (OSError, WebSocketException, FeedFailed, ValueError) as exc:
                # Refused (401, 404, 429), a proxy that refuses upgrades, a dropped socket, the server's feed failing:
                # the run is still readable over HTTP. Errors of `on_update` are the caller's and go up.
                log.info("following run %s over its WebSocket failed (%s); polling", self.run_id, exc)
        return self._poll(deadline, on_update)

    def _socket_url(self) -> str:
        base = self._http.base_url
        scheme = "wss" if base.startswith("https") else "ws"
        host = base.removeprefix("https").removeprefix("http")
        return f"{scheme}{host}{API_PREFIX}/ws/pipelines/{self.pipeline_id}/runs/{self.run_id}"

    def _follow_socket(self, deadline: float, on_update: Update | None) -> bool:
        """True once the server closed the socket after the run's final `run_update`."""
        # The token as the subprotocols `bearer, <token>` keeps it out of URLs (which servers and proxies log).
        protocols = [Subprotocol("bearer"), Subprotocol(self._http.token)] if self._http.token else None
        ended = False
        with connect(self._socket_url(), subprotocols=protocols, open_timeout=_left(deadline)) as socket:
            while True:
                try:
                    message = json.loads(socket.recv(timeout=_left(deadline)))
                except ConnectionClosedOK:
                    return ended
                if message.get("type") == "error":
                    raise FeedFailed(message.get("message", "the run's feed failed"))
                if message.get("type") == "run_update":
                    self.status = message["status"]
                    ended = self.status in TERMINAL
                if on_update is not None:
                    on_update(message)

    def _poll(self, deadline: float, on_update: Update | None) -> PipelineRun:
        pause = POLL_FIRST
        seen: dict[str, str] = {}
        while True:
            run = self.get()
            if on_update is not None:
                # As the socket does: a `step_update` per step whose status changed since the last read, then the run.
                for step in run.steps:
                    if seen.get(step.step_id) != step.status:
                        seen[step.step_id] = step.status
                        # Its fields as the socket's `step_update` has them (the step's own `type` gives way).
                        on_update({**step.model_dump(mode="json"), "type": "step_update"})
                on_update({"type": "run_update", "run_id": run.run_id, "status": run.status})
            if run.finished:
                return run
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Run {self.run_id} still {run.status} after the wait's timeout.")
            time.sleep(min(pause, left))
            pause = min(pause * POLL_FACTOR, POLL_MAX)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("The wait's timeout passed.")
    return left
