"""Shapes shared by every endpoint group: the error envelope and base model config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# RFC 3339 in UTC with a `Z` suffix, whatever the backend returned.
Timestamp = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]

# RFC 3339's date-time: a date, then optionally a time. pydantic also reads a bare number as Unix seconds
# (`to=0.5` became 1970-01-01T00:00:00.5Z), which no client means.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?)?")


def _date_time_text(value: object) -> object:
    if isinstance(value, str) and not _DATE_TIME.fullmatch(value.strip()):
        raise ValueError("Must be an RFC 3339 date-time, e.g. 2026-01-01T00:00:00Z.")
    return value


# A date-time query parameter: RFC 3339 text only.
DateTimeText = Annotated[datetime, BeforeValidator(_date_time_text)]


class RequestModel(BaseModel):
    """Request bodies: unknown keys are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, obj: object, /, **derived: Any) -> Self:
        """The response read from `obj`'s attributes (an ORM row, a run view), with `derived` for the fields it
        does not hold as such: `PipelineResponse.of(row, status=active_or_paused(row.paused))`. A mapping's keys
        count as attributes."""
        if isinstance(obj, Mapping):
            return cls.model_validate({**obj, **derived})
        return cls.model_validate(_Overlay(obj, derived) if derived else obj)


class _Overlay:
    """An object's attributes, with some added or replaced: what `ResponseModel.of` validates."""

    def __init__(self, source: object, derived: dict[str, Any]):
        self._source, self._derived = source, derived

    def __getattr__(self, name: str) -> object:
        return self._derived[name] if name in self._derived else getattr(self._source, name)


def active_or_paused(paused: bool) -> str:
    """The `status` of a connector, dbt project or pipeline that has a schedule, from its `paused` column."""
    return "paused" if paused else "active"


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    """Every non-2xx response has this shape."""

    error: ErrorBody


_ERROR_DESCRIPTIONS = {
    400: "validation_error: malformed JSON, a missing or invalid field (see `details`)",
    401: "unauthorized: the token is missing, expired, revoked or invalid",
    403: "forbidden: the caller's role does not allow this",
    404: "resource_not_found",
    409: "conflict: the request conflicts with the current state",
    413: "payload_too_large",
    422: "unprocessable_entity: valid JSON, semantically invalid",
    429: "rate_limited: see `Retry-After`",
    500: "internal_error",
    503: "service_unavailable: a dependency (metadata store, Dagster) is down",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


# Every authenticated endpoint can answer these.
COMMON_ERRORS = error_responses(400, 401, 403, 413, 429, 500, 503)
