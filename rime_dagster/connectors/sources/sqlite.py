"""SQLite source: a database file on the server, opened read-only with Python's sqlite3.

Why sqlite3 and not DuckDB's sqlite scanner: SQLite columns are dynamically typed, so the real
work is deciding what a declared type lands as and what to do with values that do not fit it.
The scanner decides both for us (unconstrained NUMERIC as DOUBLE, a mismatching value fails
with a message that names no row) and SQLite files here are uploads of modest size, where the
standard library's reader is fast enough. Here every rule is ours, written down below, and a
value that does not fit fails the read with a SourceError naming the table, column and row.

Landing types, from the declared type (SQLite's affinity rules, after a few well-known names):

    BOOLEAN, BOOL                    -> bool       (0/1, 'true'/'false'/'t'/'f'/'1'/'0', any case)
    DATE                             -> date32     (ISO 'YYYY-MM-DD' text; a datetime text at midnight)
    DATETIME, TIMESTAMP...           -> timestamp(us), naive (ISO 8601 text, ' ' or 'T', any
                                        fraction; text with an offset or 'Z' is converted to UTC;
                                        INTEGER/REAL values are Unix epoch seconds, UTC)
    TIME                             -> time64(us) (ISO 'HH:MM[:SS[.ffffff]]' text)
    DECIMAL(p,s) / NUMERIC(p,s), p<=38 -> decimal128(p,s) (INTEGER, REAL and numeric text accepted;
                                        rounded half-even to s places: SQLite stored them as
                                        doubles anyway; more than p digits is an error)
    DECIMAL / NUMERIC (no precision, or p > 38) -> float64
    JSON                             -> string
    ...contains INT                  -> int64      (INTEGER affinity)
    ...contains CHAR, CLOB or TEXT   -> string     (TEXT affinity)
    ...contains BLOB                 -> binary     (text values: their UTF-8 bytes)
    ...contains REAL, FLOA or DOUB   -> float64    (INTEGER values widen)
    no declared type, anything else  -> string     (INTEGER/REAL rendered as text; a BLOB is an error)

Anything else that does not fit (text in an INTEGER column, a fraction in an INTEGER column, a
BLOB in a TEXT column, an unparseable date) is an error, never a silent NULL. Every Arrow field is
nullable (NOT NULL is reported by `discover`).

`discover` lists tables (not views, not `sqlite_%` internals) with declared types, NOT NULL (an
INTEGER PRIMARY KEY, the rowid, is never null), primary key columns in key order and an exact
`COUNT(*)` as row estimate (None when it does not finish within the timeout).

Access: with an `access` (every connector the API or a run builds), the file is opened only where the
deployment lets connectors read (`_access.SourceAccess`), checked with symlinks resolved at every
connection, and the resolved path is what SQLite opens.

Incremental reads: for int64/float64 cursor columns `WHERE "cursor" > ?` is pushed to SQLite
(numeric comparison is the same on both sides); for every other type the comparison is done on
the converted Arrow values, since SQLite would compare the stored text or numbers, not the dates
or decimals they mean. Either way only rows with cursor > cursor_value are yielded.
"""

from __future__ import annotations

import re
import sqlite3
import time as time_module
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa
from pydantic import Field, field_validator
from typing_extensions import override

from rime_dagster.connectors.sources._sql import quote_ident
from rime_dagster.connectors.sources.base import (
    Action,
    ColumnInfo,
    Cursor,
    NoCredentials,
    Scan,
    Source,
    SourceError,
    StrictModel,
    TableInfo,
    register,
)

# A non-NULL value as sqlite3 returns it: SQLite's storage classes INTEGER, REAL, TEXT and BLOB.
SqliteValue = int | float | str | bytes

_DECIMAL = re.compile(r"^(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")
_TRUE = {"1", "true", "t"}
_FALSE = {"0", "false", "f"}


class SqliteConfig(StrictModel):
    path: str = Field(min_length=1, description="Absolute path of the SQLite database file")

    @field_validator("path")
    @classmethod
    def _existing_absolute_file(cls, value: str) -> str:
        path = Path(value)
        if not path.is_absolute():
            raise ValueError("must be an absolute path")
        if not path.is_file():
            raise ValueError("no such file")
        return value


class _Unfit(Exception):
    """A value that does not fit its column's landing type."""


# -- value converters (slow path: one Python value at a time) ---------------------------------


def _kind(value: SqliteValue) -> str:
    return {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}.get(type(value), type(value).__name__)


def _to_int(value: SqliteValue) -> int:
    if isinstance(value, int):
        return value
    raise _Unfit


def _to_float(value: SqliteValue) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise _Unfit


def _to_str(value: SqliteValue) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise _Unfit


def _to_bytes(value: SqliteValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise _Unfit


def _to_bool(value: SqliteValue) -> bool:
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Unfit


def _decimal_converter(precision: int, scale: int) -> Callable[[SqliteValue], Decimal]:
    quantum = Decimal(1).scaleb(-scale)

    def convert(value: SqliteValue) -> Decimal:
        if isinstance(value, bytes) or value is True or value is False:
            raise _Unfit
        try:
            number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
            number = number.quantize(quantum, rounding=ROUND_HALF_EVEN)
        except (InvalidOperation, ValueError):
            raise _Unfit from None
        if not number.is_finite() or len(number.as_tuple().digits) > precision:
            raise _Unfit
        return number

    return convert


def _to_timestamp(value: SqliteValue) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            raise _Unfit from None
    if not isinstance(value, str):
        raise _Unfit
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Unfit from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _to_date(value: SqliteValue) -> date:
    if not isinstance(value, str):
        raise _Unfit
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        pass
    parsed = _to_timestamp(value)
    if parsed.time() != time(0):
        raise _Unfit
    return parsed.date()


def _to_time(value: SqliteValue) -> time:
    if not isinstance(value, str):
        raise _Unfit
    try:
        parsed = time.fromisoformat(value.strip())
    except ValueError:
        raise _Unfit from None
    return parsed.replace(tzinfo=None)


@dataclass(frozen=True)
class _Column:
    name: str
    declared: str
    type: pa.DataType
    convert: Callable[[SqliteValue], object]
    fast_types: frozenset[type] = frozenset()  # Python types Arrow converts exactly as `convert` would
    arrow_cast: bool = False  # the fast path parses text with Arrow (dates, timestamps)


_NONE = type(None)
_INTS = frozenset({int, _NONE})
_NUMBERS = frozenset({int, float, _NONE})
_TEXTS = frozenset({str, _NONE})
_BYTES = frozenset({bytes, str, _NONE})


def _landing(name: str, declared: str) -> _Column:
    """The landing type of a column from its declared type (rules in the module docstring): a well-known type
    name first, then SQLite's affinity rules."""
    upper = " ".join(declared.upper().split())
    column = _by_type_name(name, declared, upper)
    return column if column is not None else _by_affinity(name, declared, upper)


def _by_type_name(name: str, declared: str, upper: str) -> _Column | None:
    """The column of a well-known type name (`upper`: the declared type, upper case); None for any other."""
    base = upper.split("(")[0].strip()
    if base in ("BOOLEAN", "BOOL"):
        return _Column(name, declared, pa.bool_(), _to_bool)
    if base == "DATE":
        return _Column(name, declared, pa.date32(), _to_date, _TEXTS, arrow_cast=True)
    if base == "DATETIME" or base.startswith("TIMESTAMP"):
        return _Column(name, declared, pa.timestamp("us"), _to_timestamp, _TEXTS, arrow_cast=True)
    if base == "TIME":
        return _Column(name, declared, pa.time64("us"), _to_time)
    if base in ("DECIMAL", "NUMERIC"):
        match = _DECIMAL.match(upper)
        if match and 1 <= int(match.group(1)) <= 38 and int(match.group(2) or 0) <= int(match.group(1)):
            precision, scale = int(match.group(1)), int(match.group(2) or 0)
            return _Column(name, declared, pa.decimal128(precision, scale), _decimal_converter(precision, scale))
        return _Column(name, declared, pa.float64(), _to_float, _NUMBERS)
    if base == "JSON":
        return _Column(name, declared, pa.string(), _to_str, _TEXTS)
    return None


def _by_affinity(name: str, declared: str, upper: str) -> _Column:
    """The column by SQLite's type affinity rules (https://www.sqlite.org/datatype3.html#determination_of_column_affinity)."""
    if "INT" in upper:
        return _Column(name, declared, pa.int64(), _to_int, _INTS)
    if "CHAR" in upper or "CLOB" in upper or "TEXT" in upper:
        return _Column(name, declared, pa.string(), _to_str, _TEXTS)
    if "BLOB" in upper:
        return _Column(name, declared, pa.binary(), _to_bytes, _BYTES)
    if "REAL" in upper or "FLOA" in upper or "DOUB" in upper:
        return _Column(name, declared, pa.float64(), _to_float, _NUMBERS)
    return _Column(name, declared, pa.string(), _to_str, _TEXTS)


def _interrupt_after(conn: sqlite3.Connection, deadline: float) -> None:
    """Make statements on `conn` fail ("interrupted") once time.monotonic() passes `deadline`."""
    conn.set_progress_handler(lambda: int(time_module.monotonic() > deadline), 10_000)


@register
class SqliteSource(Source):
    connector_type = "sqlite"
    config_model = SqliteConfig
    credentials_model = NoCredentials
    path_fields = ("path",)
    driver_errors = (sqlite3.Error,)

    config: SqliteConfig

    def __repr__(self) -> str:
        return f"SqliteSource(path={self.config.path!r})"

    @override
    def _translate(self, exc: Exception, action: Action, table: str | None) -> SourceError:
        if action == "connect":
            return SourceError(f"Could not open {self.config.path}: {exc}.")
        if action == "read":
            return SourceError(f"Reading table '{table}' from {self.config.path} failed: {exc}.")
        return SourceError(f"Could not read {self.config.path}: {exc}.")

    def _open(self, timeout: float | None = None) -> sqlite3.Connection:
        """Read-only connection; with `timeout`, statements are interrupted past that many seconds."""
        path = self._confined(self.config.path, field="path")  # again at every use: the file may have been swapped
        if not path.is_file():
            raise SourceError(f"SQLite file {self.config.path} does not exist or is not a file.")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout or 5.0, check_same_thread=False
            )
            conn.execute("PRAGMA query_only = ON")
            return conn

        conn = self._guarded("connect", None, connect)
        if timeout is not None:
            _interrupt_after(conn, time_module.monotonic() + timeout)
        return conn

    def _tables(self, conn: sqlite3.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY name"
        ).fetchall()
        return [name for (name,) in rows]

    def _columns(self, conn: sqlite3.Connection, table: str) -> list[tuple[str, str, bool, int]]:
        """(name, declared type, not null, primary-key position) of the columns `SELECT *` returns."""
        rows = conn.execute(
            'SELECT name, type, "notnull", pk FROM pragma_table_xinfo(?) WHERE hidden != 1 ORDER BY cid', [table]
        ).fetchall()
        if not rows:
            raise SourceError(f"Table '{table}' not found.")
        return [(name, declared or "", bool(notnull), pk) for name, declared, notnull, pk in rows]

    def _landing_columns(self, conn: sqlite3.Connection, table: str) -> list[_Column]:
        return [_landing(name, declared) for name, declared, _, _ in self._columns(conn, table)]

    # -- Source hooks -----------------------------------------------------------------------------------------

    def _count_tables(self, timeout: float) -> int:
        with closing(self._open(timeout)) as conn:
            return len(self._tables(conn))

    def _discover(self, timeout: float) -> list[TableInfo]:
        deadline = time_module.monotonic() + timeout
        with closing(self._open()) as conn:
            return [self._table_info(conn, table, deadline) for table in self._tables(conn)]

    def _table_info(self, conn: sqlite3.Connection, table: str, deadline: float) -> TableInfo:
        columns = self._columns(conn, table)
        keys = sorted((pk, name) for name, _, _, pk in columns if pk)
        rowid_alias = len(keys) == 1 and any(pk and declared.upper() == "INTEGER" for _, declared, _, pk in columns)
        _interrupt_after(conn, deadline)
        try:
            estimate = conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]
        except sqlite3.OperationalError:  # interrupted at the deadline
            estimate = None
        finally:
            conn.set_progress_handler(None, 0)
        return TableInfo(
            name=table,
            columns=[
                ColumnInfo(name, declared, nullable=not (notnull or (rowid_alias and pk == 1)))
                for name, declared, notnull, pk in columns
            ],
            primary_key=[name for _, name in keys],
            row_estimate=estimate,
        )

    def _arrow_schema(self, table: str) -> pa.Schema:
        with closing(self._open()) as conn:
            return _schema(self._landing_columns(conn, table))

    @contextmanager
    def _scan(self, table: str, cursor: Cursor | None, batch_rows: int) -> Iterator[Scan]:
        with closing(self._open()) as conn:
            columns = self._landing_columns(conn, table)
            query = f"SELECT {', '.join(quote_ident(column.name) for column in columns)} FROM {quote_ident(table)}"
            params: list[object] = []
            pushed = _pushed_cursor(cursor, columns)
            if pushed is not None:
                query += f" WHERE {quote_ident(pushed.field)} > ?"
                params.append(pushed.value)
            rows = conn.execute(query, params)
            yield Scan(
                _schema(columns), self._batches(table, columns, rows, batch_rows), cursor_applied=pushed is not None
            )

    def _batches(
        self, table: str, columns: list[_Column], rows: sqlite3.Cursor, batch_rows: int
    ) -> Iterator[pa.RecordBatch]:
        schema = _schema(columns)
        seen = 0
        while chunk := rows.fetchmany(batch_rows):
            values = list(zip(*chunk, strict=True))
            arrays = [self._array(table, column, values[i], seen) for i, column in enumerate(columns)]
            seen += len(chunk)
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    @staticmethod
    def _array(table: str, column: _Column, values: tuple[SqliteValue | None, ...], offset: int) -> pa.Array:
        """One column of a batch in its landing type; fast paths first, then value by value."""
        # Arrow converts a whole list at C speed, but silently truncates floats to ints and takes BLOBs as
        # text: only columns holding nothing but the expected Python types take the fast path.
        if column.fast_types and set(map(type, values)) <= column.fast_types:
            try:
                if column.arrow_cast:
                    return pa.array(values, type=pa.string()).cast(column.type)
                return pa.array(values, type=column.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                pass  # e.g. an integer too big for a double, a text Arrow cannot parse: value by value
        converted: list[object] = []
        for position, value in enumerate(values):
            if value is None:
                converted.append(None)
                continue
            try:
                converted.append(column.convert(value))
            except _Unfit:
                raise SourceError(
                    f"Table '{table}', column '{column.name}', row {offset + position + 1} of the read: "
                    f"a {_kind(value)} value does not fit the declared type "
                    f"{column.declared or '(none)'} (landing type {column.type})."
                ) from None
        return pa.array(converted, type=column.type)


def _pushed_cursor(cursor: Cursor | None, columns: list[_Column]) -> Cursor | None:
    """`cursor` when its filter goes into the query: numbers (int64, float64 columns) compare the same in SQLite.
    None: the base compares other types on the converted values, since SQLite would compare the stored text or
    numbers."""
    if cursor is None or cursor.value is None:
        return None
    column = {column.name: column for column in columns}.get(cursor.field)
    return cursor if column is not None and column.type in (pa.int64(), pa.float64()) else None


def _schema(columns: list[_Column]) -> pa.Schema:
    return pa.schema([pa.field(column.name, column.type) for column in columns])
