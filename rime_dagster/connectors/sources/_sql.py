"""Quoting for the SQL text we build: the one helper for DuckDB, SQLite and PostgreSQL (standard strings on)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """A double-quoted identifier: `we"ird` -> `"we""ird"`."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A single-quoted string literal (no backslash escapes, as DuckDB and standard SQL read them)."""
    return "'" + value.replace("'", "''") + "'"
