"""The `sqlite` connector against real SQLite files (no mocks)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from rime_dagster.connectors.sources import source_class
from rime_dagster.connectors.sources.base import NoCredentials, SourceError
from rime_dagster.connectors.sources.sqlite import SqliteSource

SCHEMA_SQL = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    email VARCHAR(200),
    balance DECIMAL(10,2),
    score REAL,
    ratio NUMERIC,
    active BOOLEAN,
    born DATE,
    created_at DATETIME,
    seen TIMESTAMP,
    wakes TIME,
    avatar BLOB,
    prefs JSON,
    anything,
    big_count UNSIGNED BIG INT
);
CREATE TABLE order_lines (
    line_no INTEGER NOT NULL, order_id INTEGER NOT NULL, tenant TEXT NOT NULL, qty INT,
    PRIMARY KEY (tenant, order_id, line_no)
) WITHOUT ROWID;
CREATE TABLE empty_table (id INTEGER, label TEXT);
CREATE TABLE big (id INTEGER PRIMARY KEY, label TEXT, amount REAL, updated_at DATETIME);
CREATE VIEW active_customers AS SELECT id, name FROM customers WHERE active;
"""

CUSTOMERS = [
    # id, name, email, balance, score, ratio, active, born, created_at, seen, wakes, avatar, prefs, anything, big
    (
        1,
        "Zoë",
        "zoe@example.com",
        "1234.5",
        4.5,
        0.25,
        1,
        "1990-02-28",
        "2024-01-02 03:04:05",
        "2024-01-02T03:04:05.123456Z",
        "07:30:00",
        b"\x00\xff",
        '{"a": 1}',
        42,
        9_223_372_036_854_775_807,
    ),
    (
        2,
        "Bob",
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    ),
    (
        3,
        "Ana",
        "ana@example.com",
        0.125,  # a REAL: rounded half-even to the declared scale (0.12)
        7,  # an INTEGER in a REAL column
        12,
        "true",
        "2000-01-01 00:00:00",  # a datetime text at midnight is a date
        1_700_000_000,  # Unix seconds
        "2024-06-01 12:00:00+02:00",  # an offset: converted to UTC
        "23:59:59.5",
        "text in a blob column",
        "[]",
        "x",
        -1,
    ),
]


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_SQL)
        conn.executemany(f"INSERT INTO customers VALUES ({', '.join('?' * 15)})", CUSTOMERS)
        conn.executemany(
            "INSERT INTO order_lines VALUES (?, ?, ?, ?)",
            [(line, order, "t1", line) for order in (1, 2) for line in (1, 2)],
        )
        conn.executemany(
            "INSERT INTO big VALUES (?, ?, ?, ?)",
            (
                (i, f"label-{i}", i / 4, (dt.datetime(2024, 1, 1) + dt.timedelta(minutes=i)).isoformat(sep=" "))
                for i in range(1, 25_001)
            ),
        )
    conn.close()
    return path


def make(path: Path | str) -> SqliteSource:
    source = SqliteSource.from_dicts({"path": str(path)}, None)
    assert isinstance(source, SqliteSource)
    return source


def rows_of(source: SqliteSource, table: str, **kwargs) -> list[dict]:
    schema = source.arrow_schema(table)
    out = []
    for batch in source.read(table, **kwargs):
        assert batch.schema == schema
        out.extend(batch.to_pylist())
    return out


# --- config ----------------------------------------------------------------------------------------------------


def test_registered_without_credentials():
    assert source_class("sqlite") is SqliteSource
    assert SqliteSource.credentials_model is NoCredentials


def test_config_requires_an_existing_absolute_file(db, tmp_path):
    assert make(db).config.path == str(db)
    with pytest.raises(ValidationError, match="absolute"):
        SqliteSource.from_dicts({"path": "shop.sqlite"}, None)
    with pytest.raises(ValidationError, match="no such file"):
        SqliteSource.from_dicts({"path": str(tmp_path / "missing.sqlite")}, None)
    with pytest.raises(ValidationError, match="no such file"):
        SqliteSource.from_dicts({"path": str(tmp_path)}, None)  # a directory
    with pytest.raises(ValidationError, match="extra"):
        SqliteSource.from_dicts({"path": str(db), "mode": "rw"}, None)
    with pytest.raises(ValidationError):
        SqliteSource.from_dicts({"path": str(db)}, {"password": "x"})


# --- test() ----------------------------------------------------------------------------------------------------


def test_connection_test(db):
    # customers, order_lines, empty_table, big (not the view, not sqlite_sequence)
    result = make(db).test(timeout=5)
    assert result.success and result.message == "Connection successful. 4 tables accessible."


def test_connection_test_failures(db, tmp_path):
    source = make(db)
    db.unlink()  # vanished after the config was validated
    result = source.test(timeout=5)
    assert result.success is False and "does not exist" in result.message
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just some bytes" * 100)
    result = make(junk).test(timeout=5)
    assert result.success is False and "not a database" in result.message
    with pytest.raises(SourceError, match="not a database"):
        make(junk).discover(timeout=5)


def test_opens_read_only(db):
    source = make(db)
    before = db.read_bytes()
    rows_of(source, "customers")
    source.discover(timeout=5)
    assert db.read_bytes() == before
    conn = source._open()
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|attempt to write"):
        conn.execute("DELETE FROM customers")
    conn.close()


# --- discover --------------------------------------------------------------------------------------------------


def test_discover(db):
    tables = {t.name: t for t in make(db).discover(timeout=10)}
    assert sorted(tables) == ["big", "customers", "empty_table", "order_lines"]
    customers = {c.name: (c.type, c.nullable) for c in tables["customers"].columns}
    assert list(customers)[:4] == ["id", "name", "email", "balance"]
    assert customers["id"] == ("INTEGER", False)  # the rowid: never NULL
    assert customers["name"] == ("TEXT", False)
    assert customers["balance"] == ("DECIMAL(10,2)", True)
    assert customers["anything"] == ("", True)
    assert tables["customers"].primary_key == ["id"]
    assert tables["order_lines"].primary_key == ["tenant", "order_id", "line_no"]
    assert {c.name: c.nullable for c in tables["order_lines"].columns}["qty"] is True
    assert tables["empty_table"].primary_key == []
    assert {name: t.row_estimate for name, t in tables.items()} == {
        "big": 25_000,
        "customers": 3,
        "empty_table": 0,
        "order_lines": 4,
    }


# --- schema and reads ------------------------------------------------------------------------------------------


def test_arrow_schema_from_declared_types(db):
    assert make(db).arrow_schema("customers") == pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("email", pa.string()),
            ("balance", pa.decimal128(10, 2)),
            ("score", pa.float64()),
            ("ratio", pa.float64()),
            ("active", pa.bool_()),
            ("born", pa.date32()),
            ("created_at", pa.timestamp("us")),
            ("seen", pa.timestamp("us")),
            ("wakes", pa.time64("us")),
            ("avatar", pa.binary()),
            ("prefs", pa.string()),
            ("anything", pa.string()),
            ("big_count", pa.int64()),
        ]
    )


def test_read_converts_by_the_documented_rules(db):
    first, second, third = rows_of(make(db), "customers")
    assert first == {
        "id": 1,
        "name": "Zoë",
        "email": "zoe@example.com",
        "balance": Decimal("1234.50"),
        "score": 4.5,
        "ratio": 0.25,
        "active": True,
        "born": dt.date(1990, 2, 28),
        "created_at": dt.datetime(2024, 1, 2, 3, 4, 5),
        "seen": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
        "wakes": dt.time(7, 30),
        "avatar": b"\x00\xff",
        "prefs": '{"a": 1}',
        "anything": "42",
        "big_count": 9_223_372_036_854_775_807,
    }
    assert second == {key: (value if key in ("id", "name") else None) for key, value in second.items()}
    assert second["name"] == "Bob"
    assert third["balance"] == Decimal("0.12")
    assert third["score"] == 7.0 and third["ratio"] == 12.0
    assert third["active"] is True
    assert third["born"] == dt.date(2000, 1, 1)
    assert third["created_at"] == dt.datetime(2023, 11, 14, 22, 13, 20)
    assert third["seen"] == dt.datetime(2024, 6, 1, 10, 0)
    assert third["wakes"] == dt.time(23, 59, 59, 500000)
    assert third["avatar"] == b"text in a blob column"
    assert third["anything"] == "x"


@pytest.mark.parametrize(
    ("column", "value", "kind"),
    [
        ("big_count", "not a number", "TEXT"),
        ("big_count", 1.5, "REAL"),
        ("score", "abc", "TEXT"),
        ("born", "yesterday", "TEXT"),
        ("born", "2024-01-02 10:00:00", "TEXT"),
        ("created_at", "soon", "TEXT"),
        ("active", 2, "INTEGER"),
        ("balance", 123456789012, "INTEGER"),  # 12 + 2 digits > precision 10
        ("balance", "lots", "TEXT"),
        ("email", b"\x00\x01", "BLOB"),
        ("anything", b"\x00", "BLOB"),
    ],
)
def test_values_that_do_not_fit_fail_naming_table_column_and_row(db, column, value, kind):
    with sqlite3.connect(db) as conn:
        conn.execute(f'UPDATE customers SET "{column}" = ? WHERE id = 3', [value])
    conn.close()
    with pytest.raises(SourceError) as info:
        list(make(db).read("customers"))
    message = str(info.value)
    assert message.startswith(f"Table 'customers', column '{column}', row 3 of the read: a {kind} value"), message


def test_incremental_reads(db):
    source = make(db)
    got = rows_of(source, "big", cursor_field="id", cursor_value=24_990)  # INTEGER: filtered by SQLite
    assert [row["id"] for row in got] == list(range(24_991, 25_001))
    cutoff = dt.datetime(2024, 1, 1) + dt.timedelta(minutes=24_995)
    got = rows_of(source, "big", cursor_field="updated_at", cursor_value=cutoff)  # DATETIME: compared as datetimes
    assert [row["id"] for row in got] == [24_996, 24_997, 24_998, 24_999, 25_000]
    aware = cutoff.replace(tzinfo=dt.timezone(dt.timedelta(hours=1))) + dt.timedelta(hours=1)  # same instant
    assert [row["id"] for row in rows_of(source, "big", cursor_field="updated_at", cursor_value=aware)] == [
        24_996,
        24_997,
        24_998,
        24_999,
        25_000,
    ]
    got = rows_of(source, "customers", cursor_field="balance", cursor_value=Decimal("1"))
    assert [row["id"] for row in got] == [1]
    got = rows_of(source, "customers", cursor_field="name", cursor_value="Ana")
    assert [row["name"] for row in got] == ["Zoë", "Bob"]
    assert len(rows_of(source, "big", cursor_field="id", cursor_value=None)) == 25_000
    with pytest.raises(SourceError, match="Cursor column 'nope' not found in table 'big'"):
        list(source.read("big", cursor_field="nope", cursor_value=1))
    with pytest.raises(SourceError, match="cannot be compared"):
        list(source.read("big", cursor_field="updated_at", cursor_value=b"\x00"))


def test_batches_are_bounded(db):
    sizes = [batch.num_rows for batch in make(db).read("big", batch_rows=1_000)]
    assert sum(sizes) == 25_000 and max(sizes) <= 1_000 and len(sizes) == 25


def test_empty_table_without_rowid_and_unknown_table(db):
    source = make(db)
    assert source.arrow_schema("empty_table") == pa.schema([("id", pa.int64()), ("label", pa.string())])
    assert list(source.read("empty_table")) == []
    assert sorted((r["order_id"], r["line_no"]) for r in rows_of(source, "order_lines")) == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    with pytest.raises(SourceError, match=r"^Table 'nope' not found\.$"):
        source.arrow_schema("nope")
    with pytest.raises(SourceError, match=r"^Table 'nope' not found\.$"):
        list(source.read("nope"))


def test_odd_names_are_quoted(tmp_path):
    path = tmp_path / "odd name?#.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE "we""ird table" ("sel ect" INTEGER, "x""y" TEXT)')
        conn.execute('INSERT INTO "we""ird table" VALUES (1, \'a\')')
    conn.close()
    source = make(path)
    assert [t.name for t in source.discover(timeout=5)] == ['we"ird table']
    assert rows_of(source, 'we"ird table') == [{"sel ect": 1, 'x"y': "a"}]


def test_lands_in_iceberg_and_reads_back(db, tmp_path):
    from pyiceberg.catalog.sql import SqlCatalog

    from rime_dagster.connectors.landing import land_table

    source = make(db)
    catalog = SqlCatalog("test", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=f"file://{tmp_path}/wh")
    for table in ("customers", "order_lines", "empty_table"):
        land_table(
            catalog,
            ("raw_sqlite", table),
            source.arrow_schema(table),
            source.read(table),
            mode="full_refresh",
            cursor_field=None,
            run_id="r1",
        )
        landed = catalog.load_table(("raw_sqlite", table)).scan().to_arrow().to_pylist()
        assert sorted(landed, key=repr) == sorted(rows_of(source, table), key=repr), table
