"""HTTP to the Rime API: auth, the error envelope, retries (tenacity) and cursor pagination."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from rime_client.errors import NotFound, RateLimited, RequestInProgress, ServiceUnavailable, error_from

API_PREFIX = "/api/v1"
# The API's largest page (`limit` above it is a 400).
MAX_PAGE = 100


class Http:
    """One httpx.Client to `base_url` with the token, and the retry policy.

    Retried: a 429 always (the server did nothing), after its Retry-After when that is at most `max_retry_after`
    seconds; a 503 or a connection error only for GETs, reads sent as POSTs (a query) and POSTs carrying an
    Idempotency-Key, which the server answers at most once: a retry of a launch it already made returns that run
    instead of starting another.

    A keyed POST retried after a timeout or a dropped connection may find the first attempt still being served: the
    server answers 409 with its details naming the key (RequestInProgress). That is waited out with the same backoff,
    under the same key, until the first attempt's answer is stored and replayed (raised when the retries are spent).
    Any other 409 (a name taken, a stale plan) is the request's own answer and is raised at once.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float,
        max_retries: int,
        max_retry_after: float,
        backoff: float,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ):
        headers = {"Accept": "application/json", "User-Agent": "rime-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url, self.token = base_url.rstrip("/"), token
        self.max_retries, self.max_retry_after, self.backoff = max_retries, max_retry_after, backoff
        self.client = httpx.Client(
            base_url=self.base_url + API_PREFIX, headers=headers, timeout=timeout, event_hooks=dict(event_hooks or {})
        )

    def close(self) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        idempotent_post: bool = False,
        idempotency_key: str | None = None,
        read_only: bool = False,
        files: list[tuple[str, tuple[str, bytes]]] | None = None,
    ) -> dict[str, Any]:
        """The JSON object of a 2xx answer ({} for a 204); else the RimeError of the last attempt.

        `idempotent_post`: sent under an Idempotency-Key (`idempotency_key`, else a new one), which every retry of
        the call reuses. `read_only`: a POST that changes nothing (a query), as safe to retry as a GET."""
        key = idempotency_key or (str(uuid.uuid4()) if idempotent_post else None)
        headers = {"Idempotency-Key": key} if key else {}
        retrying = self._retrying(safe=method == "GET" or read_only or key is not None)
        return retrying(self._once, method, path, params=params, json=json, headers=headers, files=files)

    def _retrying(self, *, safe: bool) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            retry=retry_if_exception(lambda exc: self._retryable(exc, safe)),
            wait=self._wait,
            reraise=True,
        )

    @contextmanager
    def stream(self, method: str, path: str, *, json: dict[str, Any] | None = None) -> Iterator[httpx.Response]:
        """A 2xx answer to read as it arrives (a file); else the RimeError. A read: retried as a GET is."""

        def opened() -> httpx.Response:
            response = self.client.send(self.client.build_request(method, path, json=json), stream=True)
            if response.is_error:
                response.read()
                response.close()
                raise error_from(response)
            return response

        response = self._retrying(safe=True)(opened)
        try:
            yield response
        finally:
            response.close()

    def _once(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        json: dict[str, Any] | None,
        headers: dict[str, str],
        files: list[tuple[str, tuple[str, bytes]]] | None,
    ) -> dict[str, Any]:
        response = self.client.request(method, path, params=params, json=json, headers=headers, files=files)
        if response.is_error:
            raise error_from(response)
        return response.json() if response.content else {}

    def _retryable(self, exc: BaseException, safe: bool) -> bool:
        if isinstance(exc, RateLimited):
            return exc.retry_after is None or exc.retry_after <= self.max_retry_after
        return safe and isinstance(exc, ServiceUnavailable | RequestInProgress | httpx.TransportError)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return exc.retry_after
        return float(wait_exponential_jitter(initial=self.backoff, max=30 * self.backoff, jitter=self.backoff)(state))

    def pages(
        self, path: str, *, params: Mapping[str, Any] | None = None, page_size: int = 50
    ) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, page after page (each page fetched when the last one is used)."""
        query = {**(params or {}), "limit": min(max(page_size, 1), MAX_PAGE)}
        while True:
            page = self.request("GET", path, params=query)
            yield from page["data"]
            if not page.get("has_more") or not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]


def not_found(kind: str, wanted: str, where: str = "") -> NotFound:
    """What a name that matched nothing raises: the API's own 404 code, naming what was looked for."""
    return NotFound("resource_not_found", f"No {kind} with id, name or slug '{wanted}'{where}.", status=404)
