"""Maps every error to Rime's envelope `{"error": {code, message, details?}}`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_shim.errors import RimeError

log = logging.getLogger("api_shim.errors")

_HTTP_CODES = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "resource_not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_payload(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_payload(code, message, details), status_code=status, headers=headers)


_LOCATION_PREFIXES = {"body", "query", "path", "header", "cookie"}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATION_PREFIXES and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) if parts else "body"


def _detail(error: dict[str, Any]) -> dict[str, str]:
    kind = error.get("type", "")
    field = _field_name(tuple(error.get("loc", ())))
    if kind == "json_invalid":
        return {"field": "body", "message": f"Malformed JSON: {error.get('ctx', {}).get('error', 'cannot be parsed')}."}
    if kind == "missing" and field == "body":
        return {"field": "body", "message": "A JSON request body is required."}
    if kind == "extra_forbidden":
        return {"field": field, "message": "Unknown field."}
    message = str(error.get("msg", "Invalid value."))
    # pydantic prefixes custom validator messages with "Value error, "
    message = message.removeprefix("Value error, ")
    return {"field": field, "message": message if message.endswith(".") else message + "."}


async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [_detail(e) for e in exc.errors()]
    if details and details[0]["message"].startswith("Malformed JSON"):
        return error_response(400, "validation_error", "The request body is not valid JSON.", details=details[:1])
    return error_response(400, "validation_error", "Request validation failed.", details=details)


async def _rime(_request: Request, exc: RimeError) -> JSONResponse:
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "validation_error")
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    if exc.status_code == 404 and message == "Not Found":
        message = f"No endpoint matches {request.method} {request.url.path}."
    if exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


# Set on a request's state when its answer is "the metadata store is unavailable": the audit middleware then
# writes no entry (that write would wait out the same lock or dead server, doubling the client's wait).
STORE_UNAVAILABLE = "metadata_store_unavailable"


def store_unavailable(exc: BaseException) -> bool:
    """Whether a database error means the store is locked, down or unreachable (503), not a bug of ours (500):
    an OperationalError (SQLite "database is locked", a refused or broken connection, PostgreSQL's lock or
    statement timeout), a disconnect, or a pool that ran out of connections."""
    if isinstance(exc, SATimeoutError):
        return True
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
    # Neither message nor SQL reaches the client.
    if store_unavailable(exc):
        log.error("metadata store unavailable: %s", exc.__class__.__name__)
        setattr(request.state, STORE_UNAVAILABLE, True)
        retry_after = str(request.app.state.settings.metadata_retry_after_seconds)
        return error_response(
            503,
            "service_unavailable",
            "The metadata store is unavailable (locked by another writer, or down). "
            f"Retry in {retry_after} s.",
            headers={"Retry-After": retry_after},
        )
    log.exception("database error")
    return error_response(500, "internal_error", "Something went wrong on our end.")


def install_exception_handlers(app: FastAPI) -> None:
    # The decorator form: Starlette types add_exception_handler's handler as taking any Exception.
    app.exception_handler(RequestValidationError)(_validation)
    app.exception_handler(RimeError)(_rime)
    app.exception_handler(StarletteHTTPException)(_http)
    app.exception_handler(DBAPIError)(_database)
    app.exception_handler(SATimeoutError)(_database)  # the pool's: no connection came free in time
