"""Shared DuckDB plumbing for source plug-ins: offline extensions, landing types, scrubbed messages.

DuckDB cannot download extensions here: they come from the `duckdb-ext-*` packages, which put
`<version>/<platform>/<name>.duckdb_extension` files under the `duckdb_ext/extensions` namespace
package directory. `connect()` points DuckDB's `extension_directory` there and turns auto-install
and auto-load off, so a missing extension is a clear error instead of a network call.

`landing_type()` rewrites a DuckDB result type into one that Arrow-exports to a landing type
(`connectors.landing_types`): a type whose Arrow export those rules convert is cast in SQL to the
DuckDB spelling of their target, so that every batch a source yields has exactly the schema of a
`LIMIT 0` run of the same query.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import duckdb
import duckdb_ext  # namespace package installed by the duckdb-ext-* distributions
import pyarrow as pa
from duckdb.sqltypes import DuckDBPyType

from rime_dagster.connectors.landing_types import landing_type as arrow_landing_type
from rime_dagster.connectors.sources._sql import quote_ident

REDACTED = "***"

# DuckDB type ids (DuckDBPyType.id) and the Arrow type DuckDB exports them as (`time_ns`: would export); the
# landing rules say what that Arrow type lands as. Decimals (at most 38 digits) export as they are.
_ARROW_EXPORT = {
    "boolean": pa.bool_(),
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "utinyint": pa.uint8(),
    "usmallint": pa.uint16(),
    "uinteger": pa.uint32(),
    "ubigint": pa.uint64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "varchar": pa.string(),
    "blob": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "time_ns": pa.time64("ns"),
    "timestamp_s": pa.timestamp("s"),
    "timestamp_ms": pa.timestamp("ms"),
    "timestamp": pa.timestamp("us"),
    "timestamp_ns": pa.timestamp("ns"),
    "timestamp with time zone": pa.timestamp("us", "UTC"),
}
# Everything else (uuid, json, enum, interval, time with time zone, bit, uhugeint, bignum, map,
# union, ...) becomes its DuckDB text form: lossless and always storable, where their Arrow exports
# would lose meaning (a time with time zone exports as a plain time, a bit string as bytes).

# The DuckDB spelling of the landing types the rules convert those exports to (and of decimals).
_SPELLING = {
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.time64("us"): "TIME",
    pa.timestamp("us"): "TIMESTAMP",
}


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


def landing_type(dtype: DuckDBPyType) -> str:
    """The DuckDB type to cast a column of type `dtype` to, so that Arrow gets a landing type."""
    kind = dtype.id
    if kind == "decimal":
        return str(dtype)
    if kind == "hugeint":  # exported as decimal128(38, 0) unchecked, 39-digit values too: the cast fails on them
        return "DECIMAL(38,0)"
    if kind in _ARROW_EXPORT:
        export = _ARROW_EXPORT[kind]
        target = arrow_landing_type(export)
        if target == export:
            return str(dtype)
        return f"DECIMAL({target.precision},{target.scale})" if pa.types.is_decimal(target) else _SPELLING[target]
    if kind in ("list", "array"):  # fixed-size arrays land as plain lists
        child = dict(dtype.children)["child"]
        return f"{landing_type(_child_type(child))}[]"
    if kind == "struct":
        fields = ", ".join(f"{quote_ident(name)} {landing_type(_child_type(child))}" for name, child in dtype.children)
        return f"STRUCT({fields})"
    return "VARCHAR"


def _child_type(child: object) -> DuckDBPyType:
    """A list's or struct's child type (DuckDB's `children` also hold a decimal's precision, an enum's values)."""
    if not isinstance(child, DuckDBPyType):
        raise TypeError(f"expected a DuckDB type, got {child!r}")
    return child


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
