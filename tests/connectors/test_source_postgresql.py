"""The `postgresql` connector against a real PostgreSQL 15 server (the session's throwaway one; no mocks)."""

from __future__ import annotations

import datetime as dt
import socket
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import psycopg
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rime_dagster.connectors.sources import _duckdb, source_class
from rime_dagster.connectors.sources.base import SourceError
from rime_dagster.connectors.sources.postgresql import PostgresConfig, PostgresSource

pytestmark = pytest.mark.postgres

DATABASE = "rime_connector_src"
ROLE = "rime_readonly"
PASSWORD = "s3cr3t-pw"
READABLE = ("every_type", "events", "order_lines")  # what ROLE may SELECT

SETUP_SQL = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);

CREATE TABLE every_type (
    id integer PRIMARY KEY,
    i2 smallint, i8 bigint, f4 real, f8 double precision,
    amount numeric(12,2), wide numeric(38,10),
    name text NOT NULL DEFAULT '', code varchar(20), flag char(3), ok boolean,
    day date, at timestamp, at_tz timestamptz, at_ms timestamp(3), clock time, clock_tz timetz, span interval,
    raw bytea, doc json, docb jsonb, ref uuid, ints integer[], texts text[], amounts numeric(10,2)[],
    mood mood, moods mood[], addr inet, price money, obj oid
);
INSERT INTO every_type VALUES
  (1, -32768, 9223372036854775807, 1.5, 2.25, 1234567890.12, 12345678901234567890.1234567891,
   'Zoë ✓', 'v', 'abc', true, '2024-02-29', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.654321+13',
   '2024-01-02 03:04:05.123', '12:34:56.789', '12:34:56+02', '1 day 02:00:00', '\\x00ff10', '{"a": [1, 2]}',
   '{"b": {"c": null}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', '{"x",NULL,"z"}', '{1.50,NULL}',
   'happy', '{sad,happy}', '10.0.0.1', 12.5, 42),
  (2, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (3, 7, -1, -0.25, 1e300, -0.01, 0, '', '', '   ', false, '0001-01-01', '1999-12-31 23:59:59.999999',
   '1970-01-01 00:00:00+00', NULL, '00:00:00', '23:59:59-05:30', '-3 days', '', '[]', '[]', NULL, '{}', '{}', '{}',
   'sad', '{}', '::1', -1, 0);

-- Types DuckDB's scanner would read lossily (or as DuckDB structs): the server casts them.
CREATE TABLE lossless (
    id integer PRIMARY KEY, amount numeric, big numeric(50,5), amounts numeric[], positive positive_int,
    pr pair, pt point, blobs bytea[],
    -- the same types as in every_type, which is scanned directly: both paths must land them alike
    i2 smallint, span interval, clock_tz timetz, ref uuid, mood mood, moods mood[], obj oid, at_tz timestamptz
);
INSERT INTO lossless VALUES
  (1, 12345678901234567890.123456789, 123456789012345678901234567890123456789012345.12345, '{0.1,NULL,3}', 5,
   ROW(1, 'x'), point(1.5, -2), '{"\\\\x0102"}', 1, '1 day', '01:00:00+01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   'sad', '{happy}', 7, '2024-01-01 00:00:00+00'),
  (2, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (3, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, -0.5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- The primary key's order (tenant, order_id, line_no) differs from the columns' order.
CREATE TABLE order_lines (
    line_no integer NOT NULL, order_id bigint NOT NULL, tenant text NOT NULL, sku text, qty integer,
    PRIMARY KEY (tenant, order_id, line_no)
);
INSERT INTO order_lines
SELECT l, o, 't1', 'sku-' || o || '-' || l, l FROM generate_series(1, 3) o, generate_series(1, 2) l;

CREATE TABLE events (id bigint PRIMARY KEY, kind text, updated_at timestamptz NOT NULL);
INSERT INTO events
SELECT i, 'kind-' || (i % 3), timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
FROM generate_series(1, 50) i;

CREATE TABLE empty_table (id integer, label text, amount numeric(8,3), seen_at timestamptz);

CREATE TABLE big (id integer PRIMARY KEY, amount numeric(12,2), label text, created_at timestamptz, grp integer);
INSERT INTO big
SELECT i, i / 100.0, md5(i::text), timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second', i % 1000
FROM generate_series(1, 200000) i;
ANALYZE big;
ANALYZE events;

CREATE TABLE never_analyzed (id integer, note text) WITH (autovacuum_enabled = false);
INSERT INTO never_analyzed SELECT i, 'n' || i FROM generate_series(1, 1000) i;

CREATE VIEW recent_events AS SELECT id, updated_at FROM events WHERE id > 40;

CREATE TABLE measurements (id integer, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO measurements SELECT i, date '2024-01-01' + i FROM generate_series(0, 99) i;
"""

ALLOWED_LEAF_TYPES = (
    pa.types.is_boolean,
    lambda t: t in (pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.binary(), pa.date32()),
    lambda t: pa.types.is_decimal128(t) and t.precision <= 38,
    lambda t: t == pa.time64("us"),
    lambda t: t in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")),
)


def assert_landable(t: pa.DataType) -> None:
    """Only types Iceberg v2 stores: no unsigned/narrow ints, no ns timestamps, no intervals, no dictionaries."""
    if pa.types.is_list(t):
        return assert_landable(t.value_type)
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            assert_landable(t.field(i).type)
        return None
    assert any(check(t) for check in ALLOWED_LEAF_TYPES), t


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(postgres_url) -> Iterator[dict]:
    """A fresh database on the session's server, filled with SETUP_SQL, plus the login role ROLE.

    ROLE gets a scram-sha-256 pg_hba rule of its own (the server trusts everyone else), so wrong
    passwords really fail; skipped when the test process cannot write the server's pg_hba.conf.
    """
    url = urlsplit(postgres_url.replace("postgresql+psycopg", "postgresql"))
    host, port, admin_user = url.hostname, url.port, url.username
    with psycopg.connect(host=host, port=port, user=admin_user, dbname="rime", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.execute(f"CREATE DATABASE {DATABASE}")
        admin.execute(f"DROP ROLE IF EXISTS {ROLE}")
        admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        hba = Path(admin.execute("SHOW hba_file").fetchone()[0])
        original_hba = None
        try:
            original_hba = hba.read_text()
            rules = "".join(f"host all {ROLE} {net} scram-sha-256\n" for net in ("127.0.0.1/32", "::1/128"))
            hba.write_text(rules + original_hba)
            admin.execute("SELECT pg_reload_conf()")
        except OSError:
            original_hba = None
        with psycopg.connect(host=host, port=port, user=admin_user, dbname=DATABASE, autocommit=True) as db:
            db.execute(SETUP_SQL)
            db.execute(f"GRANT SELECT ON {', '.join(READABLE)} TO {ROLE}")
        info = {"host": host, "port": port, "admin_user": admin_user, "scram": original_hba is not None}
        if info["scram"]:
            _wait_for_scram(info)
        try:
            yield info
        finally:
            if original_hba is not None:
                hba.write_text(original_hba)
                admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {ROLE}")


def _wait_for_scram(info: dict) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            psycopg.connect(host=info["host"], port=info["port"], user=ROLE, password="wrong", dbname=DATABASE).close()
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return
        time.sleep(0.05)
    raise AssertionError("the scram-sha-256 rule did not take effect")


def make(server: dict, *, user: str | None = None, password: str = PASSWORD, **config) -> PostgresSource:
    values = {"host": server["host"], "port": server["port"], "database": DATABASE, **config}
    source = PostgresSource.from_dicts(values, {"username": user or server["admin_user"], "password": password})
    assert isinstance(source, PostgresSource)
    return source


@pytest.fixture(scope="module")
def source(server) -> PostgresSource:
    return make(server)


@pytest.fixture
def scram(server) -> dict:
    if not server["scram"]:
        pytest.skip("cannot edit the throwaway server's pg_hba.conf")
    return server


def rows_of(source: PostgresSource, table: str, **kwargs) -> list[dict]:
    schema = source.arrow_schema(table)
    out = []
    for batch in source.read(table, **kwargs):
        assert batch.schema == schema
        out.extend(batch.to_pylist())
    return sorted(out, key=lambda row: row["id"])


def psycopg_rows(server: dict, query: str) -> list[dict]:
    with (
        psycopg.connect(host=server["host"], port=server["port"], user=server["admin_user"], dbname=DATABASE) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        return cur.execute(query).fetchall()


def assert_clean(text: str) -> None:
    assert PASSWORD not in text
    assert "s3cr3t" not in text


# --- config ------------------------------------------------------------------------------------------------


def test_registered():
    assert source_class("postgresql") is PostgresSource


def test_config_models_validate_the_api_body():
    source = PostgresSource.from_dicts(
        {"host": "crm-db.internal.acme.co.nz", "port": 5432, "database": "crm_production", "schema": "public"},
        {"username": "rime_readonly", "password": "secret"},
    )
    assert source.config.schema_ == "public"
    assert source.config.model_dump(by_alias=True) == {
        "host": "crm-db.internal.acme.co.nz",
        "port": 5432,
        "database": "crm_production",
        "schema": "public",
        "sslmode": "prefer",
        "connect_timeout_seconds": 10,
    }
    assert source.config.model_dump()["schema"] == "public"
    assert PostgresConfig.model_validate({"host": "h", "database": "d", "schema_": "s"}).schema_ == "s"
    for text in (repr(source), str(source), repr(source.credentials), str(source.credentials)):
        assert "secret" not in text.replace("SecretStr", "")
    assert source.credentials.password.get_secret_value() == "secret"
    assert "rime_readonly" in repr(source) and "crm-db.internal.acme.co.nz" in repr(source)


@pytest.mark.parametrize(
    "config",
    [
        {"host": "h", "database": "d", "port": 0},
        {"host": "h", "database": "d", "port": 65536},
        {"host": "h", "database": "d", "sslmode": "sometimes"},
        {"host": "h", "database": "d", "password": "x"},
        {"database": "d"},
        {"host": "", "database": "d"},
    ],
)
def test_config_rejects(config):
    with pytest.raises(ValidationError):
        PostgresSource.from_dicts(config, {"username": "u", "password": "p"})


def test_credentials_reject_unknown_keys_and_require_password():
    with pytest.raises(ValidationError):
        PostgresSource.from_dicts({"host": "h", "database": "d"}, {"username": "u"})
    with pytest.raises(ValidationError):
        PostgresSource.from_dicts({"host": "h", "database": "d"}, {"username": "u", "password": "p", "role": "x"})


# --- test() --------------------------------------------------------------------------------------------------


def test_connection_test_counts_the_tables_the_user_may_read(scram):
    result = make(scram, user=ROLE).test(timeout=5)
    assert result.success, result.message
    assert result.message == "Connection successful. 3 tables accessible."


def test_connection_test_as_owner_counts_tables_views_and_partitioned_parents(source):
    result = source.test(timeout=5)
    # every_type, lossless, order_lines, events, empty_table, big, never_analyzed, recent_events, measurements
    assert result == type(result)(True, "Connection successful. 9 tables accessible.")


def test_wrong_password_fails_with_a_reason_and_no_secret(scram):
    secret = "s3cr3t-pw-but-wrong"
    result = make(scram, user=ROLE, password=secret).test(timeout=5)
    assert result.success is False
    assert result.message == f"Authentication failed for user '{ROLE}'."
    assert secret not in result.message


def _blackhole() -> socket.socket:
    """A socket that accepts TCP connections (kernel backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "case",
    ["unknown_user", "unknown_database", "unknown_schema", "closed_port", "blackhole", "unresolvable_host"],
)
def test_connection_test_failures_are_quick_and_secret_free(server, case):
    timeout = 2.0
    holder = None
    if case == "unknown_user":
        src, expected = make(server, user="nobody"), "Authentication failed for user 'nobody'"
    elif case == "unknown_database":
        src, expected = make(server, database="no_such_db"), "Database 'no_such_db' does not exist."
    elif case == "unknown_schema":
        src, expected = make(server, schema="no_such_schema"), "Schema 'no_such_schema' not found."
    elif case == "closed_port":
        port = _closed_port()
        src, expected = make(server, port=port), f"Could not connect to 127.0.0.1:{port}."
    elif case == "blackhole":
        holder = _blackhole()
        port = holder.getsockname()[1]
        # the same sentence as a closed port: the test must not help anyone scan ports (issue 11)
        src, expected = make(server, port=port), f"Could not connect to 127.0.0.1:{port}."
    else:
        src, expected = make(server, host="no-such-host.invalid"), "Could not connect to no-such-host.invalid:"
    try:
        started = time.monotonic()
        result = src.test(timeout=timeout)
        elapsed = time.monotonic() - started
    finally:
        if holder is not None:
            holder.close()
    assert result.success is False
    assert result.message.startswith(expected), result.message
    assert elapsed < timeout + 1.0
    assert_clean(result.message)


def test_discover_and_read_fail_with_source_errors_free_of_secrets(server):
    port = _closed_port()
    src = make(server, port=port)
    for call in (lambda: src.discover(timeout=3), lambda: src.arrow_schema("events"), lambda: list(src.read("events"))):
        with pytest.raises(SourceError, match=f"Could not connect to 127.0.0.1:{port}") as info:
            call()
        assert_clean(str(info.value))
        assert info.value.__cause__ is None and info.value.__context__ is None  # no driver exception chained


def test_wrong_password_on_read_and_discover(scram):
    src = make(scram, user=ROLE, password="s3cr3t-wrong")
    for call in (lambda: src.discover(timeout=3), lambda: list(src.read("events"))):
        with pytest.raises(SourceError, match=f"Authentication failed for user '{ROLE}'") as info:
            call()
        assert "s3cr3t" not in str(info.value)


def test_driver_messages_are_scrubbed():
    """DuckDB's own connect error quotes the whole conninfo, password included: scrub removes it."""
    con = _duckdb.connect(["postgres_scanner"])
    try:
        with pytest.raises(duckdb.Error) as info:
            con.execute(
                f"ATTACH 'host=127.0.0.1 port={_closed_port()} dbname=x user=u password={PASSWORD}' "
                "AS src (TYPE postgres, READ_ONLY)"
            )
    finally:
        con.close()
    raw = str(info.value)
    assert PASSWORD in raw  # the driver really does leak it ...
    assert_clean(_duckdb.scrub(raw, PASSWORD))  # ... and we don't
    assert_clean(_duckdb.scrub(raw))  # even without knowing the secret (password=... options)
    assert_clean(_duckdb.scrub(f"postgresql://u:{PASSWORD}@h/db failed"))
    src = PostgresSource.from_dicts({"host": "127.0.0.1", "database": "x"}, {"username": "u", "password": PASSWORD})
    assert_clean(src._connect_error(info.value))
    assert src._connect_error(info.value) == "Could not connect to 127.0.0.1:5432."


# --- discover --------------------------------------------------------------------------------------------------


def test_discover_columns_keys_and_estimates(source):
    tables = {t.name: t for t in source.discover(timeout=10)}
    assert set(tables) == {
        "every_type",
        "lossless",
        "order_lines",
        "events",
        "empty_table",
        "big",
        "never_analyzed",
        "recent_events",
        "measurements",  # its partition measurements_2024 is read through the parent, not listed
    }
    every = {c.name: (c.type, c.nullable) for c in tables["every_type"].columns}
    assert list(every)[:3] == ["id", "i2", "i8"]
    assert every["id"] == ("integer", False)
    assert every["name"] == ("text", False)
    assert every["amount"] == ("numeric(12,2)", True)
    assert every["code"] == ("character varying(20)", True)
    assert every["at_tz"] == ("timestamp with time zone", True)
    assert every["at_ms"] == ("timestamp(3) without time zone", True)
    assert every["amounts"] == ("numeric(10,2)[]", True)
    assert every["mood"] == ("mood", True)
    assert {c.name: c.type for c in tables["lossless"].columns}["positive"] == "positive_int"
    assert tables["every_type"].primary_key == ["id"]
    assert tables["order_lines"].primary_key == ["tenant", "order_id", "line_no"]
    assert tables["empty_table"].primary_key == []
    assert tables["big"].row_estimate == pytest.approx(200_000, rel=0.05)  # analyzed: pg_class.reltuples
    assert tables["events"].row_estimate == 50
    assert tables["never_analyzed"].row_estimate == 1000  # reltuples = -1: small heap, counted
    assert tables["empty_table"].row_estimate == 0
    assert tables["recent_events"].row_estimate is None  # a view
    assert tables["measurements"].row_estimate is not None and tables["measurements"].row_estimate > 0


def test_discover_as_a_restricted_user_lists_only_readable_tables(scram):
    assert sorted(t.name for t in make(scram, user=ROLE).discover(timeout=10)) == sorted(READABLE)


def test_discover_unknown_schema(server):
    with pytest.raises(SourceError, match="Schema 'nope' not found."):
        make(server, schema="nope").discover(timeout=5)


# --- schema and reads ------------------------------------------------------------------------------------------


def test_arrow_schema_is_faithful_and_landable(source):
    schema = source.arrow_schema("every_type")
    expected = {
        "id": pa.int32(),
        "i2": pa.int32(),
        "i8": pa.int64(),
        "f4": pa.float32(),
        "f8": pa.float64(),
        "amount": pa.decimal128(12, 2),
        "wide": pa.decimal128(38, 10),
        "name": pa.string(),
        "code": pa.string(),
        "flag": pa.string(),
        "ok": pa.bool_(),
        "day": pa.date32(),
        "at": pa.timestamp("us"),
        "at_tz": pa.timestamp("us", tz="UTC"),
        "at_ms": pa.timestamp("us"),
        "clock": pa.time64("us"),
        "clock_tz": pa.string(),
        "span": pa.string(),
        "raw": pa.binary(),
        "doc": pa.string(),
        "docb": pa.string(),
        "ref": pa.string(),
        "ints": pa.list_(pa.int32()),
        "texts": pa.list_(pa.string()),
        "amounts": pa.list_(pa.decimal128(10, 2)),
        "mood": pa.string(),
        "moods": pa.list_(pa.string()),
        "addr": pa.string(),
        "price": pa.string(),
        "obj": pa.int64(),
    }
    assert schema.names == list(expected)
    for field in schema:
        assert pa.types.is_list(field.type) or field.type == expected[field.name], field
        if pa.types.is_list(field.type):
            assert field.type.value_type == expected[field.name].value_type, field
        assert_landable(field.type)
    for field in source.arrow_schema("lossless"):
        assert_landable(field.type)


def test_read_matches_psycopg_row_for_row(source, server):
    got = rows_of(source, "every_type")
    expected = psycopg_rows(
        server,
        """SELECT id, i2, i8, f4, f8, amount, wide, name, code, flag::text AS flag, ok, day, at, at_tz, at_ms, clock,
                  clock_tz::text AS clock_tz, span::text AS span, raw, doc::text AS doc, docb::text AS docb,
                  ref::text AS ref, ints, texts, amounts, mood::text AS mood, moods::text[] AS moods,
                  host(addr) || '/' || masklen(addr) AS addr, price::text AS price, obj::bigint AS obj
           FROM every_type ORDER BY id""",
    )
    assert len(got) == len(expected) == 3
    for ours, theirs in zip(got, expected, strict=True):
        theirs["raw"] = bytes(theirs["raw"]) if theirs["raw"] is not None else None
        assert ours == theirs
    first = got[0]
    assert first["i8"] == 2**63 - 1 and first["i2"] == -32768
    assert first["at_tz"] == dt.datetime(2024, 1, 1, 14, 4, 5, 654321, tzinfo=dt.UTC)
    assert first["ref"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert first["ints"] == [1, None, 3] and first["amounts"] == [Decimal("1.50"), None]
    assert set(got[1].values()) == {None, 2, ""}  # all NULL but the key and the NOT NULL default


def test_unconstrained_numeric_and_friends_land_exactly_as_text(source, server):
    schema = source.arrow_schema("lossless")
    assert schema.field("amount").type == pa.string()
    assert schema.field("big").type == pa.string()
    assert pa.types.is_list(schema.field("amounts").type) and schema.field("amounts").type.value_type == pa.string()
    assert schema.field("positive").type == pa.int32()  # a domain lands as its base type
    got = rows_of(source, "lossless")
    assert [row["amount"] for row in got] == ["12345678901234567890.123456789", "NaN", "Infinity", "-0.5"]
    first = got[0]
    assert first["big"] == "123456789012345678901234567890123456789012345.12345"
    assert first["amounts"] == ["0.1", None, "3"]
    assert first["positive"] == 5
    assert first["pr"] == '{"a": 1, "b": "x"}'
    assert first["pt"] == "(1.5,-2)"
    assert first["blobs"] == ["\\x0102"]
    assert first["mood"] == "sad" and first["moods"] == ["happy"] and first["obj"] == 7
    assert first["ref"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert first["at_tz"] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def test_both_read_paths_land_a_type_the_same_way(source):
    """`lossless` goes through postgres_query (server-side casts), `every_type` through the table scan."""
    scanned, queried = source.arrow_schema("every_type"), source.arrow_schema("lossless")
    for name in ("id", "i2", "span", "clock_tz", "ref", "mood", "moods", "obj", "at_tz"):
        assert scanned.field(name) == queried.field(name), name
    first = rows_of(source, "lossless")[0]
    assert (first["i2"], first["span"], first["clock_tz"]) == (1, "1 day", "01:00:00+01")


def test_incremental_reads_only_newer_rows(source):
    cutoff = dt.datetime(2024, 1, 2, 12, tzinfo=dt.UTC)  # after event 36
    got = rows_of(source, "events", cursor_field="updated_at", cursor_value=cutoff)
    assert [row["id"] for row in got] == list(range(37, 51))
    assert all(row["updated_at"] > cutoff for row in got)
    naive_in_utc = rows_of(source, "events", cursor_field="updated_at", cursor_value=cutoff.replace(tzinfo=None))
    assert [row["id"] for row in naive_in_utc] == list(range(37, 51))
    assert [row["id"] for row in rows_of(source, "events", cursor_field="id", cursor_value=48)] == [49, 50]
    assert rows_of(source, "events", cursor_field="id", cursor_value=50) == []
    assert len(rows_of(source, "events", cursor_field="id", cursor_value=None)) == 50
    # on the server-cast path the comparison is PostgreSQL's own (numeric, not text)
    got = rows_of(source, "lossless", cursor_field="amount", cursor_value=Decimal("-1"))
    assert [row["amount"] for row in got] == ["12345678901234567890.123456789", "NaN", "Infinity", "-0.5"]
    got = rows_of(source, "lossless", cursor_field="amount", cursor_value=Decimal("1e19"))
    assert [row["id"] for row in got] == [1, 2, 3]  # NaN sorts above every number in PostgreSQL
    assert [r["id"] for r in rows_of(source, "lossless", cursor_field="id", cursor_value=3)] == [4]


def test_quoted_identifiers_and_cursor_injection_are_harmless(source):
    with pytest.raises(SourceError, match="Cursor column 'id\" > 0 --' not found"):
        list(source.read("events", cursor_field='id" > 0 --', cursor_value=1))
    assert rows_of(source, "events", cursor_field="kind", cursor_value="kind-2' OR 'a'='a") == []
    with pytest.raises(SourceError, match="not found"):
        source.arrow_schema('events"; DROP TABLE events; --')


def test_batches_are_bounded(source):
    sizes, total, ids = [], 0, 0
    for batch in source.read("big", batch_rows=10_000):
        sizes.append(batch.num_rows)
        total += batch.num_rows
        ids += sum(batch.column("id").to_pylist())
    assert total == 200_000 and ids == 200_000 * 200_001 // 2
    assert max(sizes) <= 10_000 and len(sizes) >= 20


def test_empty_table_has_a_schema_and_no_batches(source):
    schema = source.arrow_schema("empty_table")
    assert schema == pa.schema(
        [
            ("id", pa.int32()),
            ("label", pa.string()),
            ("amount", pa.decimal128(8, 3)),
            ("seen_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    assert list(source.read("empty_table")) == []


def test_views_and_partitioned_tables_are_readable(source):
    assert [row["id"] for row in rows_of(source, "recent_events")] == list(range(41, 51))
    assert len(rows_of(source, "measurements")) == 100


def test_unknown_table(source):
    with pytest.raises(SourceError, match=r"^Table 'nope' not found in schema 'public'\.$"):
        source.arrow_schema("nope")
    with pytest.raises(SourceError, match=r"^Table 'nope' not found in schema 'public'\.$"):
        list(source.read("nope"))
    with pytest.raises(SourceError, match="Cursor column 'nope' not found in table 'events'"):
        list(source.read("events", cursor_field="nope", cursor_value=1))


def test_restricted_user_reads_with_a_password(scram):
    src = make(scram, user=ROLE)
    assert len(rows_of(src, "events")) == 50
    with pytest.raises(SourceError) as info:
        list(src.read("big"))  # exists, but not granted
    assert_clean(str(info.value))


def test_uuid_strings_are_canonical(source, server):
    (ref,) = [row["ref"] for row in rows_of(source, "every_type") if row["id"] == 1]
    assert str(uuid.UUID(ref)) == ref


def test_every_table_lands_in_iceberg_and_reads_back(source, tmp_path):
    """The yielded schema is what lands: pyiceberg accepts it and the rows read back unchanged."""
    from pyiceberg.catalog.sql import SqlCatalog

    from rime_dagster.connectors.landing import land_table

    catalog = SqlCatalog("test", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=f"file://{tmp_path}/wh")
    for table in ("every_type", "lossless", "empty_table", "events"):
        schema = source.arrow_schema(table)
        result = land_table(
            catalog, ("raw_pg", table), schema, source.read(table), mode="full_refresh", cursor_field=None, run_id="r1"
        )
        landed = sorted(catalog.load_table(("raw_pg", table)).scan().to_arrow().to_pylist(), key=lambda r: r["id"])
        assert result.rows_written == len(landed)
        assert landed == rows_of(source, table), table


def test_nothing_stays_attached_or_stored(source):
    rows_of(source, "events")
    list(source.read("big", batch_rows=1000))[:1]  # abandoned after the first batch
    with pytest.raises(SourceError):
        list(source.read("nope"))
    con = _duckdb.connect(["postgres_scanner"])
    try:
        assert con.execute("SELECT count(*) FROM duckdb_secrets()").fetchone()[0] == 0
        attached = {name for (name,) in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
        assert not any(name.startswith("rime_pg") for name in attached), attached
    finally:
        con.close()
