"""Shared DuckDB plumbing for source plug-ins: offline extensions, quoting, landing-safe types.

DuckDB cannot download extensions here: they come from the `duckdb-ext-*` packages, which put
`<version>/<platform>/<name>.duckdb_extension` files under the `duckdb_ext/extensions` namespace
package directory. `connect()` points DuckDB's `extension_directory` there and turns auto-install
and auto-load off, so a missing extension is a clear error instead of a network call.

`landing_type()` rewrites a DuckDB result type into one that Arrow-exports to a type Iceberg v2
stores (bool, int32/64, float32/64, decimal128(p<=38), string, binary, date32, time64(us),
timestamp(us), timestamp(us, UTC), list, struct); sources cast in SQL so that every batch they
yield has exactly the schema of a `LIMIT 0` run of the same query.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import duckdb_ext  # namespace package installed by the duckdb-ext-* distributions

if TYPE_CHECKING:
    from duckdb.sqltypes import DuckDBPyType

REDACTED = "***"

# DuckDB type ids (DuckDBPyType.id) that Arrow-export unchanged to a landing type.
_KEEP = {
    "boolean",
    "integer",
    "bigint",
    "float",
    "double",
    "decimal",
    "varchar",
    "blob",
    "date",
    "time",
    "timestamp",
    "timestamp with time zone",
}
# Narrow or unsigned integers: widened to the smallest signed type Iceberg stores.
_WIDEN = {
    "tinyint": "INTEGER",
    "smallint": "INTEGER",
    "utinyint": "INTEGER",
    "usmallint": "INTEGER",
    "uinteger": "BIGINT",
    "ubigint": "DECIMAL(20,0)",
    "hugeint": "DECIMAL(38,0)",
    "timestamp_s": "TIMESTAMP",
    "timestamp_ms": "TIMESTAMP",
    "timestamp_ns": "TIMESTAMP",  # Iceberg v2 has no nanosecond timestamps
    "time_ns": "TIME",
}
# Everything else (uuid, json, enum, interval, time with time zone, bit, uhugeint, bignum, map,
# union, ...) becomes its DuckDB text form: lossless and always storable.


@cache
def extension_directory() -> str:
    """`.../site-packages/duckdb_ext/extensions`: the offline extension repository."""
    for base in duckdb_ext.__path__:
        candidate = Path(base) / "extensions"
        if candidate.is_dir():
            return str(candidate)
    raise RuntimeError("duckdb_ext/extensions not found: install the duckdb-ext-* packages")


def default_threads() -> int:
    """Scan threads (each one may hold a source connection): the CPUs we have, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


_instances: dict[tuple[int, tuple[str, ...]], duckdb.DuckDBPyConnection] = {}
_instances_lock = threading.Lock()


def connect(extensions: Iterable[str]) -> duckdb.DuckDBPyConnection:
    """A new connection to this process's in-memory DuckDB with `extensions` loaded (installed packages only).

    The database instance is shared by the process (one per set of extensions, re-created after a
    fork): loading an extension verifies its signature, ~0.2 s for a 50 MB file, which we pay once.
    Connections are cheap; callers close theirs. Settings are the instance's: session time zone
    UTC (timestamptz exports as `timestamp[us, tz=UTC]`), insertion order not preserved (parallel
    scans stream without re-ordering buffers), `default_threads()` threads, memory capped at 1 GB.
    Whatever a caller ATTACHes or CREATEs is visible instance-wide: use unique names, drop them after.
    """
    key = (os.getpid(), tuple(sorted(extensions)))
    with _instances_lock:
        instance = _instances.get(key)
        if instance is None:
            instance = duckdb.connect(
                config={
                    "extension_directory": extension_directory(),
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "threads": default_threads(),
                    "memory_limit": "1GB",
                    "preserve_insertion_order": False,
                }
            )
            try:
                for name in key[1]:
                    instance.execute(f"LOAD {name}")
                instance.execute("SET GLOBAL TimeZone = 'UTC'")
            except Exception:
                instance.close()
                raise
            _instances[key] = instance
    return instance.cursor()


def unique_name(prefix: str) -> str:
    """A fresh identifier-safe name for an instance-wide object (attached database, secret)."""
    return f"{prefix}_{uuid.uuid4().hex}"


def quote_ident(name: str) -> str:
    """A DuckDB (and PostgreSQL / SQLite) double-quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A DuckDB single-quoted string literal (DuckDB strings have no backslash escapes)."""
    return "'" + value.replace("'", "''") + "'"


def landing_type(dtype: DuckDBPyType) -> str:
    """The DuckDB type to cast a column of type `dtype` to, so that Arrow gets a landing type."""
    kind = dtype.id
    if kind in _KEEP:
        return str(dtype)
    if kind in _WIDEN:
        return _WIDEN[kind]
    if kind in ("list", "array"):  # fixed-size arrays land as plain lists
        child = dict(dtype.children)["child"]
        return f"{landing_type(child)}[]"
    if kind == "struct":
        fields = ", ".join(f"{quote_ident(name)} {landing_type(child)}" for name, child in dtype.children)
        return f"STRUCT({fields})"
    return "VARCHAR"


def landing_select(columns: list[tuple[str, DuckDBPyType]], relation_alias: str) -> str:
    """A select list taking each column from `relation_alias`, cast to its landing type if needed."""
    items = []
    for name, dtype in columns:
        column = f"{relation_alias}.{quote_ident(name)}"
        target = landing_type(dtype)
        if target == str(dtype):
            items.append(column)
        else:
            items.append(f"CAST({column} AS {target}) AS {quote_ident(name)}")
    return ", ".join(items)


_PASSWORD_OPTION = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s\"']+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def scrub(message: str, *secrets: str | None) -> str:
    """`message` without the given secret values, `password=...` options or URL passwords."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, REDACTED)
    message = _PASSWORD_OPTION.sub(lambda m: m.group(1) + REDACTED, message)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", message)
