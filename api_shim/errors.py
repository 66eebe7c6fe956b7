"""Domain errors (no HTTP imports): services raise these; api_shim.handlers maps them to Rime's envelope."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError as PydanticValidationError


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

    @classmethod
    def of_pydantic(cls, exc: PydanticValidationError, prefix: str) -> ValidationFailed:
        """A body part validated by a service (a channel's config, a merged condition): one detail per error,
        each field under `prefix`, as the request validator reports a body's. Never echoes the input."""
        details = []
        for error in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(part) for part in (prefix, *error["loc"]))
            message = "Unknown field." if error["type"] == "extra_forbidden" else error["msg"]
            message = message.removeprefix("Value error, ")
            details.append({"field": field, "message": message if message.endswith(".") else message + "."})
        return cls("Request validation failed.", details=details)


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
