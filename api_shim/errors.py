"""Domain errors (no HTTP imports): services raise these; api_shim.handlers maps them to Rime's envelope."""

from __future__ import annotations

from typing import Any


class RimeError(Exception):
    """Base class: `code` and `status` follow the error table of the Rime overview."""

    code = "internal_error"
    status = 500

    def __init__(
        self, message: str, *, details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class ValidationFailed(RimeError):
    code, status = "validation_error", 400

    @classmethod
    def field(cls, field: str, message: str) -> ValidationFailed:
        return cls("Request validation failed.", details=[{"field": field, "message": message}])


class Unauthorized(RimeError):
    code, status = "unauthorized", 401


class Forbidden(RimeError):
    code, status = "forbidden", 403


class NotFound(RimeError):
    code, status = "resource_not_found", 404

    @classmethod
    def of(cls, kind: str, ident: str, where: str = "") -> NotFound:
        return cls(f"{kind} with ID '{ident}' was not found{where}.")


class Conflict(RimeError):
    code, status = "conflict", 409


class PayloadTooLarge(RimeError):
    code, status = "payload_too_large", 413


class Unprocessable(RimeError):
    code, status = "unprocessable_entity", 422


class RateLimited(RimeError):
    code, status = "rate_limited", 429


class ServiceUnavailable(RimeError):
    code, status = "service_unavailable", 503
