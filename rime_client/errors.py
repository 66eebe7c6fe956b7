"""The API's error envelope as exceptions: one class per status, each carrying code, message and request id."""

from __future__ import annotations

from typing import Any

import httpx


class RimeError(Exception):
    """An error answer of the Rime API (or the client's own, e.g. a name that matched nothing: no `request_id`)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        status: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ):
        super().__init__(f"{code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.code, self.message, self.request_id, self.status = code, message, request_id, status
        self.details = details or []


class ValidationError(RimeError):
    """400: `details` holds one entry per field."""


class Unauthorized(RimeError):
    """401: a missing, wrong or expired token."""


class Forbidden(RimeError):
    """403: the token's role may not do this."""


class NotFound(RimeError):
    """404, or a name or slug that matched nothing."""


class Conflict(RimeError):
    """409."""


class RequestInProgress(Conflict):
    """409 to a retry of a keyed trigger while the server still serves the first attempt under its Idempotency-Key
    (after a timeout or a dropped connection): the work may well be under way. The client waits and asks again under
    the same key (the answer is then the first attempt's); this is raised once its retries are spent. Calling again
    with `idempotency_key` set to this error's `idempotency_key` gets that answer, and starts nothing new."""

    idempotency_key: str | None = None


class Unprocessable(RimeError):
    """422: well-formed but refused (e.g. an invalid pipeline DAG)."""


class RateLimited(RimeError):
    """429 after the client's retries; `retry_after`: the seconds the server asked for."""

    retry_after: float | None = None


class ServiceUnavailable(RimeError):
    """503: Dagster or the metadata store is down (after the client's retries, where it retries)."""


BY_STATUS: dict[int, type[RimeError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (the API sends delta-seconds), if present and readable."""
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def error_from(response: httpx.Response) -> RimeError:
    """The exception for an error answer: its envelope's code, message and details, and its X-Request-Id."""
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details")
    except (ValueError, KeyError, TypeError):  # not the API's envelope (a proxy's page, say)
        code, message, details = f"http_{response.status_code}", response.text[:500] or response.reason_phrase, None
    cls = BY_STATUS.get(response.status_code, RimeError)
    if cls is Conflict and isinstance(details, list) and any(_names_the_key(detail) for detail in details):
        cls = RequestInProgress
    exc = cls(
        code,
        message,
        request_id=response.headers.get("X-Request-Id"),
        status=response.status_code,
        details=details if isinstance(details, list) else None,
    )
    if isinstance(exc, RateLimited):
        exc.retry_after = retry_after(response)
    if isinstance(exc, RequestInProgress):
        exc.idempotency_key = response.request.headers.get("Idempotency-Key")
    return exc


def _names_the_key(detail: object) -> bool:
    """The API's mark on the 409 of a key still in use: a `details` entry naming the Idempotency-Key header."""
    return isinstance(detail, dict) and detail.get("field") == "Idempotency-Key"
