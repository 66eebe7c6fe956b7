"""Opaque, type-prefixed identifiers (`proj_...`, `usr_...`, `req_...`), time-ordered ULIDs."""

from __future__ import annotations

from ulid import ULID

PREFIXES = {
    "project": "proj",
    "connector": "conn",
    "resource": "res",
    "plan": "plan",
    "dbt_project": "dbt",
    "pipeline": "pipe",
    "pipeline_version": "pver",
    "approval": "apr",
    "comment": "cmt",
    "alert": "alert",
    "rule": "rule",
    "channel": "chan",
    "escalation_policy": "esc",
    "classification": "cls",
    "masking_policy": "mask",
    "retention_policy": "ret",
    "user": "usr",
    "token": "tok",
    "audit": "aud",
    "request": "req",
    "delivery": "dlv",
}


def new_id(kind: str) -> str:
    """A new id for a resource kind; lower-case so it reads well in URLs."""
    return f"{PREFIXES[kind]}_{str(ULID()).lower()}"


def new_request_id() -> str:
    return f"req_{ULID()}"
