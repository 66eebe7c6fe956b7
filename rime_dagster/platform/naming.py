"""Identifier-safe names for Iceberg namespaces/tables and Dagster asset keys."""

from __future__ import annotations

import re

_NOT_IDENT = re.compile(r"[^a-z0-9_]+")
MAX_IDENT = 48


def identifier(name: str, *, fallback: str = "x") -> str:
    """`Production CRM` -> `production_crm`: lower-case [a-z0-9_], starts with a letter."""
    ident = _NOT_IDENT.sub("_", name.lower()).strip("_")
    ident = re.sub(r"_+", "_", ident)[:MAX_IDENT].rstrip("_")
    if not ident or not ident[0].isalpha():
        ident = f"{fallback}_{ident}".rstrip("_")
    return ident


def unique_identifier(name: str, taken: set[str], *, fallback: str = "x") -> str:
    base = identifier(name, fallback=fallback)
    candidate, n = base, 2
    while candidate in taken:
        candidate = f"{base}_{n}"
        n += 1
    return candidate
