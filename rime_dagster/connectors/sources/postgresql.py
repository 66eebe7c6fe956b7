"""PostgreSQL source: psycopg for the connection test and discovery, DuckDB's postgres scanner for reads.

Reads go through DuckDB 1.4's `postgres_scanner` (binary COPY, parallel ctid-range scans, columnar
Arrow export), loaded from the installed `duckdb-ext-postgres` package, never downloaded. On 2M rows of
(int, numeric(12,2), text, timestamptz, int) it streams 1.0-1.9M rows/s (2-CPU box, server on it):
about psql's own `COPY ... TO STDOUT (FORMAT binary)` into /dev/null (0.7-1.5x) and 1.3-2.3x draining
that COPY through psycopg's `cursor.copy()`; peak RSS is the same for 2M and 10M rows (146 MB).
The password travels in a TEMPORARY DuckDB secret (not in the ATTACH string, which DuckDB echoes in
its errors), secret and attachment are dropped after each call, and every message that leaves this
module is scrubbed of it; driver exceptions are never chained to the SourceErrors raised.

Two read paths, chosen per table, landing every PostgreSQL type the same way on both:
* the attached table is scanned (parallel, filter pushdown) and DuckDB casts to landing types;
* when a column needs PostgreSQL to convert it first (unconstrained numerics, domains, composites,
  geometric types, bytea[]), the table is read through `postgres_query` with those casts in the
  SELECT (one stream, no ctid parallelism).

What `discover` lists: ordinary and partitioned tables, views, materialized views and foreign
tables of the configured schema that the user may SELECT (partitions of a partitioned table are
left out: their rows are read through the parent). `test` counts the same set.

Row estimates: `pg_class.reltuples` when the relation was analyzed or vacuumed (>= 0). A table that
never was (reltuples = -1 on PostgreSQL 14+, also every partitioned parent) is counted exactly when
its heap is at most 8 MB (milliseconds), and otherwise gets the planner's estimate (`EXPLAIN SELECT *`,
which scales the table's current size in pages). Views and foreign tables: None.

Types (the Arrow schema `read` yields is what lands in Iceberg v2):

    smallint, integer          -> int32 (Iceberg has no int16)      bigint -> int64
    real / double precision    -> float32 / float64                 boolean -> bool
    numeric(p,s), p <= 38      -> decimal128(p,s)
    numeric, numeric(p>38)     -> string, the exact PostgreSQL text (incl. NaN, Infinity): DuckDB would
                                  read unconstrained numerics as DOUBLE (lossy), and no fixed scale fits
                                  every value; declare numeric(p,s) to land a decimal
    text, varchar, xml, inet,
    cidr, macaddr, money, bit  -> string        char(n) -> string without the pad spaces (as char::text)
    json, jsonb                -> string, the JSON text             uuid -> string, canonical form
    enum                       -> string (the label)                domain -> as its base type
    composite types            -> string, the row as JSON (to_jsonb), arrays of them a JSON array
    point, box, ... (geometric) -> string, PostgreSQL's text form
    bytea                      -> binary        bytea[] -> list<string> of PostgreSQL's hex text ('\\x0102')
    date                       -> date32        time -> time64(us)
    timetz                     -> string ('12:34:56+02')
    interval                   -> string in DuckDB's form ('1 year 2 months 3 days 04:05:06.5')
    timestamp                  -> timestamp(us)                     timestamptz -> timestamp(us, tz="UTC")
    oid                        -> int64         T[] -> list<T's landing type> (one dimension)
    anything else (ranges, tsvector, regclass, xid, ...) -> string

Known limits of the scanner: multi-dimensional array values fail the read with a SourceError;
'NaN' stored in a numeric(p,s) column arrives as 0; ±infinity dates/timestamps arrive as the
extreme int32/int64 values. Every field is nullable in the Arrow schema (NOT NULL is reported by
`discover`).

Access: with an `access` (every connector the API or a run builds), `host` is checked at every connection:
a Unix socket (`/...`, `@...`) is refused unless RIME_CONNECTOR_ALLOW_UNIX_SOCKETS, since libpq would then
log in as the platform's own OS user (peer auth, `.pgpass`); with RIME_CONNECTOR_HOSTS_DENY, the name is
resolved here, every address checked, and libpq connects to those addresses (`hostaddr`), so it cannot
resolve the name to another one in between. A failure to reach the server says only "Could not connect to
host:port." whatever the cause (refused, timed out, unknown host, another service on the port), so the
connection test cannot be used to scan a network; what a PostgreSQL server answers (authentication
failed, no such database, its FATAL messages) is passed on.

Incremental reads add `WHERE "cursor" > <cursor_value>`, evaluated by PostgreSQL on the column's own
type (a bound parameter DuckDB pushes into the COPY query; a quoted literal on the server-side-cast
path). Rows come in no particular order.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import ConfigDict, Field, SecretStr, field_validator

from rime_dagster.connectors.sources import _duckdb
from rime_dagster.connectors.sources._sql import quote_ident, quote_literal
from rime_dagster.connectors.sources.base import (
    Action,
    ColumnInfo,
    Cursor,
    Scan,
    Source,
    SourceError,
    StrictModel,
    TableInfo,
    TestResult,
    register,
)

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

# Relations we read: tables, partitioned tables, views, materialized views, foreign tables (not partitions).
_RELATIONS_SQL = """
SELECT c.oid, c.relname, c.relkind, c.reltuples, pg_catalog.pg_relation_size(c.oid) AS heap_bytes
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT c.relispartition
  AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
ORDER BY c.relname
"""
_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       NOT (a.attnotnull OR COALESCE(t.typnotnull, false)) AS nullable
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_PRIMARY_KEYS_SQL = """
SELECT i.indrelid, a.attname
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indisprimary AND i.indrelid = ANY(%(oids)s)
ORDER BY i.indrelid, k.position
"""
# The read plan's view of one relation: per column (and array element) the type's kind and, for domains,
# the base type.
_PLAN_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS declared, t.typtype, t.typcategory,
       CASE WHEN t.typtype = 'd' THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END AS domain_base,
       e.typtype AS element_typtype, e.typcategory AS element_category,
       CASE WHEN e.typtype = 'd' THEN pg_catalog.format_type(e.typbasetype, e.typtypmod) END AS element_domain_base
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
WHERE n.nspname = {schema} AND c.relname = {table} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY a.attnum
"""
# Never-analyzed tables up to this heap size are counted exactly; larger ones get the planner's guess.
_COUNT_BELOW_BYTES = 8 * 1024 * 1024
_NUMERIC = re.compile(r"^numeric(?:\((\d+),(-?\d+)\))?(\[\])?$")


class PostgresConfig(StrictModel):
    # `schema` shadows a BaseModel attribute: the field is `schema_`, spelled `schema` on the wire.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    host: str = Field(min_length=1)
    port: int = Field(5432, ge=1, le=65535)
    database: str = Field(min_length=1)
    schema_: str = Field("public", alias="schema", min_length=1)
    sslmode: SSLMode = "prefer"
    connect_timeout_seconds: int = Field(10, ge=1, le=300)

    @field_validator("host")
    @classmethod
    def _one_host(cls, value: str) -> str:
        if "," in value:  # libpq would try each: a denied or socket host could hide behind an allowed one
            raise ValueError("must be one host name, IP address or socket folder, not a list")
        return value


class PostgresCredentials(StrictModel):
    username: str = Field(min_length=1)
    password: SecretStr


def _numeric_needs_text(type_name: str) -> bool:
    """True for numerics DuckDB would read as DOUBLE: no typmod, precision > 38, odd scales."""
    match = _NUMERIC.match(type_name)
    if match is None:
        return False
    if match.group(1) is None:
        return True
    precision, scale = int(match.group(1)), int(match.group(2))
    return precision > 38 or scale < 0 or scale > precision


@dataclass(frozen=True)
class _PgColumn:
    name: str
    declared: str  # format_type(), e.g. "numeric(12,2)", "mood[]"
    typtype: str  # b base, c composite, d domain, e enum, r range, m multirange, p pseudo
    category: str  # pg_type.typcategory: A array, G geometric, N numeric, ...
    domain_base: str | None
    element_typtype: str | None
    element_category: str | None
    element_domain_base: str | None


def _server_expression(column: _PgColumn) -> tuple[str | None, bool]:
    """PostgreSQL expression for a column, and whether it forces the `postgres_query` path.

    Forcing casts fix what DuckDB's scanner would read lossily or as a DuckDB-specific struct, so
    that a PostgreSQL type lands the same way whichever path a table takes: lossy numerics -> text,
    domains -> their base type, composites -> JSON text, geometric types and bytea[] -> text.
    The other casts only align `postgres_query` (which knows no user types) with the table scan.
    """
    name = quote_ident(column.name)
    is_array = column.category == "A"
    suffix = "[]" if is_array else ""
    domain_base = column.element_domain_base if is_array else column.domain_base
    if domain_base is not None:
        base = domain_base.removesuffix("[]")
        return f"{name}::{'text' if _numeric_needs_text(base) else base}{suffix}", True
    if _numeric_needs_text(column.declared.removesuffix("[]")):
        return f"{name}::text{suffix}", True
    kind = column.element_typtype if is_array else column.typtype
    category = column.element_category if is_array else column.category
    if kind == "c":
        return f"to_jsonb({name})::text", True
    if category == "G" or column.declared == "bytea[]":
        return f"{name}::text{suffix}", True
    if column.declared.removesuffix("[]") == "oid":
        return f"{name}::bigint{suffix}", False
    if kind == "e":
        return f"{name}::text{suffix}", False
    return None, False


def _pg_literal(value: object) -> str:
    return sql.Literal(value).as_string(None)


def _one_row(conn: psycopg.Connection, query: str) -> tuple[Any, ...]:
    """The row of a query that returns exactly one (an aggregate, an EXPLAIN)."""
    row = conn.execute(query).fetchone()
    if row is None:
        raise psycopg.ProgrammingError(f"no row from {query}")
    return row


@dataclass
class _Attached:
    """A connection to the process's DuckDB, the source attached as `alias` with the password in `secret`."""

    con: duckdb.DuckDBPyConnection
    alias: str
    secret: str
    attached: bool = False

    def close(self) -> None:
        try:
            if self.attached:
                self.con.execute(f"DETACH {self.alias}")
            self.con.execute(f"DROP TEMPORARY SECRET IF EXISTS {self.secret}")
        except duckdb.Error:
            pass
        finally:
            self.con.close()


@dataclass(frozen=True)
class _Query:
    sql: str
    params: list[Any]
    cursor_applied: bool = False


@register
class PostgresSource(Source):
    connector_type = "postgresql"
    config_model = PostgresConfig
    credentials_model = PostgresCredentials
    host_fields = ("host",)
    credentials_bound_to = ("config.host", "config.port", "config.database", "credentials.username")
    driver_errors = (psycopg.Error, duckdb.Error)

    config: PostgresConfig
    credentials: PostgresCredentials

    def __repr__(self) -> str:
        c = self.config
        return (
            f"PostgresSource(host={c.host!r}, port={c.port}, database={c.database!r}, "
            f"schema={c.schema_!r}, user={self.credentials.username!r})"
        )

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def _unreachable(self) -> str:
        """The one message for every way of not reaching a server (see the module docstring)."""
        return f"Could not connect to {self._where}."

    def _target(self) -> dict[str, str]:
        """libpq's `host` (and `hostaddr`, when access resolved the name); SourceError when off limits."""
        host = self.config.host
        addresses = self.access.addresses(host, self.config.port, field="host") if self.access else None
        if addresses is None:
            return {"host": host}
        if not addresses:
            raise SourceError(self._unreachable)
        return {"host": ",".join([host] * len(addresses)), "hostaddr": ",".join(addresses)}

    def _scrub(self, message: str) -> str:
        return _duckdb.scrub(message, self.credentials.password.get_secret_value())

    def _connect_timeout(self, timeout: float | None) -> int:
        """Seconds for libpq's connect_timeout (whole seconds, libpq's minimum is 2)."""
        seconds = self.config.connect_timeout_seconds
        if timeout is not None:
            seconds = min(seconds, math.ceil(timeout))
        return max(2, seconds)

    def _options(self, timeout: float | None) -> dict[str, Any]:
        """libpq connection options, without the password."""
        options: dict[str, Any] = dict(
            sslmode=self.config.sslmode,
            connect_timeout=self._connect_timeout(timeout),
            application_name="rime",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        if timeout is not None:
            options["options"] = f"-c statement_timeout={max(1, int(timeout * 1000))}"
        return options

    def _psycopg(self, timeout: float | None) -> psycopg.Connection:
        # The host and its resolved addresses, then libpq's options: keyword arguments psycopg passes on to libpq.
        options: dict[str, Any] = {**self._target(), **self._options(timeout)}
        return self._guarded(
            "connect",
            None,
            lambda: psycopg.connect(
                port=self.config.port,
                dbname=self.config.database,
                user=self.credentials.username,
                password=self.credentials.password.get_secret_value(),
                autocommit=True,
                **options,
            ),
        )

    def _translate(self, exc: Exception, action: Action, table: str | None) -> SourceError:
        text = self._scrub(str(exc)).strip()
        if action == "connect" or "Unable to connect to Postgres" in text:
            return SourceError(self._connect_error(exc))
        if action == "test":
            return SourceError(f"Connected, but listing tables failed: {text}")
        if action == "discover":
            return SourceError(f"Discovery of schema '{self.config.schema_}' failed: {text}")
        if "dimensions" in text:
            text += " (multi-dimensional arrays are not supported)"
        return SourceError(f"Reading '{self.config.schema_}.{table}' failed: {text}")

    def _connect_error(self, exc: Exception) -> str:
        """A user-facing, secret-free sentence for a failed connection (psycopg or DuckDB)."""
        text = self._scrub(str(exc))
        user = self.credentials.username
        if re.search(r"password authentication failed|authentication failed for user", text, re.I):
            return f"Authentication failed for user '{user}'."
        if re.search(r'role ".*" does not exist', text):
            return f"Authentication failed for user '{user}' (no such role)."
        if re.search(r'database ".*" does not exist', text):
            return f"Database '{self.config.database}' does not exist."
        if "FATAL:" not in text:  # not the server speaking: refused, timed out, unknown host, not PostgreSQL, ...
            return self._unreachable
        reason = text.split("FATAL:", 1)[1].strip().splitlines()[0].strip().rstrip(".")
        return f"Could not connect to {self._where}: {reason}."

    def _duckdb(self, timeout: float | None = None) -> _Attached:
        """A DuckDB connection with the source attached read-only (only the configured schema)."""
        c, lit = self.config, quote_literal
        target = self._target()
        con = _duckdb.connect(["postgres_scanner"])
        attached = _Attached(con, _duckdb.unique_name("rime_pg"), _duckdb.unique_name("rime_pg_secret"))

        def attach() -> None:
            con.execute(
                f"CREATE TEMPORARY SECRET {attached.secret} (TYPE postgres, HOST {lit(c.host)}, PORT {c.port}, "
                f"DATABASE {lit(c.database)}, USER {lit(self.credentials.username)}, "
                f"PASSWORD {lit(self.credentials.password.get_secret_value())})"
            )
            # A resolved host travels here, as libpq's host/hostaddr lists, overriding the secret's HOST.
            options = self._options(None) | {"connect_timeout": self._connect_timeout(timeout)}
            conninfo = make_conninfo("", **options, **(target if "hostaddr" in target else {}))
            con.execute(
                f"ATTACH {lit(conninfo)} AS {attached.alias} "
                f"(TYPE postgres, READ_ONLY, SECRET {attached.secret}, SCHEMA {lit(c.schema_)})"
            )
            attached.attached = True

        try:
            self._guarded("connect", None, attach)
        except BaseException:
            attached.close()
            raise
        return attached

    # -- Source hooks ---------------------------------------------------------------------

    def test(self, timeout: float) -> TestResult:
        outcome: list[TestResult] = []
        attempt = super().test  # never raises

        # libpq's connect_timeout has a 2 s floor and whole-second steps, and name resolution is
        # not covered by it: a watchdog thread makes `timeout` a hard bound on the caller.
        worker = threading.Thread(
            target=lambda: outcome.append(attempt(timeout)), name="rime-postgres-test", daemon=True
        )
        worker.start()
        worker.join(max(timeout, 0.1))
        if outcome:
            return outcome[0]
        return TestResult(False, self._unreachable)

    def _count_tables(self, timeout: float) -> int:
        schema = self.config.schema_
        with self._psycopg(timeout) as conn:
            found = conn.execute(
                "SELECT pg_catalog.has_schema_privilege(oid, 'USAGE') FROM pg_catalog.pg_namespace WHERE nspname = %s",
                [schema],
            ).fetchone()
            if found is None:
                raise SourceError(f"Schema '{schema}' not found.")
            if not found[0]:
                raise SourceError(f"User '{self.credentials.username}' has no access to schema '{schema}'.")
            return len(conn.execute(_RELATIONS_SQL, {"schema": schema}).fetchall())

    def _discover(self, timeout: float) -> list[TableInfo]:
        deadline = time.monotonic() + timeout
        schema = self.config.schema_
        with self._psycopg(timeout) as conn:
            if conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", [schema]).fetchone() is None:
                raise SourceError(f"Schema '{schema}' not found.")
            return self._tables(conn, deadline)

    def _tables(self, conn: psycopg.Connection, deadline: float) -> list[TableInfo]:
        relations = conn.execute(_RELATIONS_SQL, {"schema": self.config.schema_}).fetchall()
        oids = [oid for oid, *_ in relations]
        columns: dict[int, list[ColumnInfo]] = {oid: [] for oid in oids}
        for oid, name, type_name, nullable in conn.execute(_COLUMNS_SQL, {"oids": oids}):
            columns[oid].append(ColumnInfo(name=name, type=type_name, nullable=nullable))
        keys: dict[int, list[str]] = {oid: [] for oid in oids}
        for oid, name in conn.execute(_PRIMARY_KEYS_SQL, {"oids": oids}):
            keys[oid].append(name)
        tables = []
        for oid, name, kind, reltuples, heap_bytes in relations:
            tables.append(
                TableInfo(
                    name=name,
                    columns=columns[oid],
                    primary_key=keys[oid],
                    row_estimate=self._row_estimate(conn, name, kind, reltuples, heap_bytes, deadline),
                )
            )
        return tables

    def _row_estimate(
        self, conn: psycopg.Connection, table: str, kind: str, reltuples: float, heap_bytes: int, deadline: float
    ) -> int | None:
        if kind in ("v", "f"):
            return None
        if reltuples >= 0:
            return int(reltuples)
        if kind in ("r", "m") and heap_bytes == 0:
            return 0
        if time.monotonic() >= deadline:
            return None
        relation = f"{quote_ident(self.config.schema_)}.{quote_ident(table)}"
        try:
            if kind in ("r", "m") and heap_bytes <= _COUNT_BELOW_BYTES:  # small: counting is as cheap as guessing
                (count,) = _one_row(conn, f"SELECT count(*) FROM {relation}")
                return int(count)
            (plan,) = _one_row(conn, f"EXPLAIN (FORMAT JSON) SELECT * FROM {relation}")
            return int(plan[0]["Plan"]["Plan Rows"])
        except psycopg.Error:
            return None

    def _arrow_schema(self, table: str) -> pa.Schema:
        with closing(self._duckdb()) as source:
            query = self._query(source, table, None, limit0=True)
            return source.con.execute(query.sql, query.params).fetch_record_batch(1).schema

    @contextmanager
    def _scan(self, table: str, cursor: Cursor | None, batch_rows: int) -> Iterator[Scan]:
        with closing(self._duckdb()) as source:
            query = self._query(source, table, cursor)
            with closing(source.con.execute(query.sql, query.params).fetch_record_batch(batch_rows)) as reader:
                yield Scan(reader.schema, reader, cursor_applied=query.cursor_applied)

    # -- read planning ----------------------------------------------------------------------

    def _query(self, source: _Attached, table: str, cursor: Cursor | None, *, limit0: bool = False) -> _Query:
        """The DuckDB query streaming `table` in landing types, plus its parameters.

        Columns DuckDB would read lossily or as DuckDB-specific structs (see `_server_expression`) are
        converted by PostgreSQL through `postgres_query`; otherwise the attached table is scanned
        directly (parallel ctid ranges, filter pushdown). DuckDB-side casts then bring every column
        to a landing type (`_duckdb.landing_select`). The cursor is always compared by PostgreSQL.
        """
        schema, qi = self.config.schema_, quote_ident
        catalog = _PLAN_SQL.format(schema=_pg_literal(schema), table=_pg_literal(table))
        con, alias = source.con, source.alias
        rows = con.execute(f"SELECT * FROM postgres_query({quote_literal(alias)}, {quote_literal(catalog)})").fetchall()
        if not rows:
            raise SourceError(f"Table '{table}' not found in schema '{schema}'.")
        columns = [_PgColumn(*row) for row in rows]
        # The cursor is compared in the query when it names a column (else the base refuses it).
        filtered = (
            cursor
            if cursor is not None and cursor.value is not None and cursor.field in {column.name for column in columns}
            else None
        )
        expressions = [_server_expression(column) for column in columns]
        params: list[Any] = []
        where = ""
        if any(forces for _, forces in expressions):
            select = ", ".join(
                f"{expression} AS {qi(column.name)}" if expression else qi(column.name)
                for column, (expression, _) in zip(columns, expressions, strict=True)
            )
            pg_sql = f"SELECT {select} FROM {qi(schema)}.{qi(table)}"
            if filtered is not None:
                pg_sql += f" WHERE {qi(filtered.field)} > {self._cursor_literal(filtered)}"
            if limit0:
                pg_sql += " LIMIT 0"
            relation = f"postgres_query({quote_literal(alias)}, {quote_literal(pg_sql)}) AS t"
        else:
            relation = f"{alias}.{qi(schema)}.{qi(table)} AS t"
            if filtered is not None:
                where = f" WHERE t.{qi(filtered.field)} > ?"
                params.append(filtered.value)
        described = con.sql(f"SELECT * FROM {relation}")
        select_list = _duckdb.landing_select(list(zip(described.columns, described.types, strict=True)), "t")
        query = f"SELECT {select_list} FROM {relation}{where}"
        if limit0:
            query += " LIMIT 0"
        return _Query(query, params, cursor_applied=filtered is not None)

    @staticmethod
    def _cursor_literal(cursor: Cursor) -> str:
        try:
            return _pg_literal(cursor.value)
        except psycopg.Error:
            raise SourceError(
                f"Cursor value of type {type(cursor.value).__name__} cannot be compared with '{cursor.field}'."
            ) from None
