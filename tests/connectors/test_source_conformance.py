"""The contract every source type keeps (sources/base.py), checked against a real instance of each.

A case is a `Kit`: how to make a place for tables (a folder of files, a SQLite file, a PostgreSQL schema),
write a table of rows into it, build the source over it, make it unreachable, and spoil a table so that
the source's driver fails. A new source type (MySQL, HTTP, ...) starts by writing its Kit and adding it to
`KITS`; its own test module then holds only what is particular to it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rime_dagster.connectors.landing import land_table
from rime_dagster.connectors.landing_types import is_landing_type
from rime_dagster.connectors.sources import Source, SourceError, source_class
from rime_dagster.connectors.sync import TableSync, sync_table
from tests.conftest import closed_port
from tests.support.postgres import fresh_database

Row = dict[str, Any]
SECRET = "s3cr3t-conformance"
T0 = dt.datetime(2024, 1, 1)


def make_rows(ids: range) -> list[Row]:
    """Rows of the test tables: id (integer), name (text), updated_at (timestamp without time zone); some nulls."""
    return [
        {
            "id": i,
            "name": None if i == 7 else f'name {i}, "quoted" ✓' if i == 3 else f"name-{i}",
            "updated_at": None if i == 11 else T0 + dt.timedelta(hours=i, microseconds=i),
        }
        for i in ids
    ]


ROWS = make_rows(range(1, 26))


class Kit(ABC):
    """One source type's place for tables, and the source that reads it."""

    def __init__(self, connector_type: str):
        self.connector_type = connector_type

    @abstractmethod
    def source(self) -> Source:
        """A source over the place, built from raw dicts as the API and runs build it."""

    @abstractmethod
    def unreachable(self) -> Source:
        """A source whose place can't be reached (a folder or file gone, a port nothing listens on)."""

    @abstractmethod
    def write_table(self, name: str, rows: list[Row]) -> None:
        """Creates (or replaces) the table `name` of columns id, name, updated_at (see `make_rows`) with `rows`."""

    @abstractmethod
    def spoil(self, name: str) -> None:
        """Makes reading the table `name` fail inside the source's driver."""

    @abstractmethod
    def write_awkward_table(self, name: str) -> dict[str, pa.DataType]:
        """Creates a one-row table of source types Iceberg can't store as they are; returns the landing type
        each column must arrive as."""


class FilesKit(Kit):
    def __init__(self, root: Path, fmt: str):
        super().__init__("files")
        self.folder, self.fmt = root / "files", fmt
        self.folder.mkdir()

    def source(self) -> Source:
        return source_class("files").from_dicts({"path": str(self.folder)}, None)

    def unreachable(self) -> Source:
        return source_class("files").from_dicts({"path": str(self.folder / "gone")}, None)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.{self.fmt}"

    def write_table(self, name: str, rows: list[Row]) -> None:
        path = self._path(name)
        if self.fmt == "parquet":
            schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("updated_at", pa.timestamp("us"))])
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        elif self.fmt == "csv":
            with path.open("w", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(["id", "name", "updated_at"])
                for row in rows:
                    writer.writerow([row["id"], row["name"] or "", _iso(row["updated_at"]) or ""])
        else:
            lines = [json.dumps({**row, "updated_at": _iso(row["updated_at"])}) for row in rows]
            path.write_text("\n".join(lines) + "\n")

    def spoil(self, name: str) -> None:
        self._path(name).unlink()  # after the source planned the table: the read's open fails

    def write_awkward_table(self, name: str) -> dict[str, pa.DataType]:
        path = self._path(name)
        if self.fmt == "parquet":
            tokyo = dt.timezone(dt.timedelta(hours=9))
            table = pa.table(
                {
                    "small": pa.array([200], pa.uint8()),
                    "huge": pa.array([2**64 - 1], pa.uint64()),
                    "at": pa.array([dt.datetime(2024, 1, 1, 9, tzinfo=tokyo)], pa.timestamp("ns", "Asia/Tokyo")),
                    "kind": pa.array(["a"]).dictionary_encode(),
                    "long": pa.array(["x"], pa.large_string()),
                }
            )
            pq.write_table(table, path)
            return {
                "small": pa.int32(),
                "huge": pa.decimal128(20, 0),
                "at": pa.timestamp("us", "UTC"),
                "kind": pa.string(),
                "long": pa.string(),
            }
        if self.fmt == "csv":
            path.write_text("at_ns,empty\n2024-01-01T00:00:00.123456789,\n")
            return {"at_ns": pa.timestamp("us"), "empty": pa.string()}
        path.write_text('{"tags": [1, 2], "at": "2024-01-01T10:00:00+02:00", "nothing": null}\n')
        return {"tags": pa.list_(pa.int64()), "at": pa.timestamp("us", "UTC"), "nothing": pa.string()}


class SqliteKit(Kit):
    def __init__(self, root: Path):
        super().__init__("sqlite")
        self.path = root / "source.sqlite"
        self._execute()

    def _execute(self, *statements: str, rows: list[tuple] | None = None) -> None:
        with sqlite3.connect(self.path) as conn:
            for statement in statements:
                if rows is not None and "?" in statement:
                    conn.executemany(statement, rows)
                else:
                    conn.execute(statement)
        conn.close()

    def source(self) -> Source:
        return source_class("sqlite").from_dicts({"path": str(self.path)}, None)

    def unreachable(self) -> Source:
        source = self.source()
        self.path.unlink()
        return source

    def write_table(self, name: str, rows: list[Row]) -> None:
        self._execute(
            f'DROP TABLE IF EXISTS "{name}"',
            f'CREATE TABLE "{name}" (id INTEGER PRIMARY KEY, name TEXT, updated_at DATETIME)',
            f'INSERT INTO "{name}" VALUES (?, ?, ?)',
            rows=[(r["id"], r["name"], _iso(r["updated_at"], sep=" ")) for r in rows],
        )

    def spoil(self, name: str) -> None:
        self.path.write_bytes(b"this is not a database" * 100)

    def write_awkward_table(self, name: str) -> dict[str, pa.DataType]:
        self._execute(
            f'CREATE TABLE "{name}" (tiny TINYINT, big UNSIGNED BIG INT, ratio NUMERIC, flag BOOLEAN, at DATETIME, x)',
            f"INSERT INTO \"{name}\" VALUES (1, 9223372036854775807, 0.5, 'true', '2024-01-01 10:00:00+02:00', 42)",
        )
        return {
            "tiny": pa.int64(),
            "big": pa.int64(),
            "ratio": pa.float64(),
            "flag": pa.bool_(),
            "at": pa.timestamp("us"),
            "x": pa.string(),
        }


class PostgresKit(Kit):
    """A schema of its own in the module's database, so that it holds only the tables a test writes."""

    def __init__(self, database_url: str):
        super().__init__("postgresql")
        url = urlsplit(database_url.replace("postgresql+psycopg", "postgresql"))
        self.server = {"host": url.hostname, "port": url.port, "database": url.path.lstrip("/")}
        self.user = url.username
        self.schema = f"k_{uuid.uuid4().hex[:12]}"
        self._execute(f"CREATE SCHEMA {self.schema}")

    def _execute(self, *statements: str) -> None:
        server = self.server
        with psycopg.connect(
            host=server["host"], port=server["port"], dbname=server["database"], user=self.user, autocommit=True
        ) as conn:
            for statement in statements:
                conn.execute(statement)

    def _source(self, **config: Any) -> Source:
        values = {**self.server, "schema": self.schema, **config}
        return source_class("postgresql").from_dicts(values, {"username": self.user, "password": SECRET})

    def source(self) -> Source:
        return self._source()

    def unreachable(self) -> Source:
        return self._source(host="127.0.0.1", port=closed_port())

    def write_table(self, name: str, rows: list[Row]) -> None:
        values = ", ".join(f"({r['id']}, {_pg_text(r['name'])}, {_pg_text(_iso(r['updated_at']))})" for r in rows)
        self._execute(
            f"DROP TABLE IF EXISTS {self.schema}.{name}",
            f"CREATE TABLE {self.schema}.{name} (id integer PRIMARY KEY, name text, updated_at timestamp)",
            f"INSERT INTO {self.schema}.{name} VALUES {values}",
        )

    def spoil(self, name: str) -> None:
        # DuckDB's scanner fails on multi-dimensional array values, in the middle of the read.
        self._execute(
            f"ALTER TABLE {self.schema}.{name} ADD COLUMN grid integer[]",
            f"UPDATE {self.schema}.{name} SET grid = '{{{{1,2}},{{3,4}}}}'",
        )

    def write_awkward_table(self, name: str) -> dict[str, pa.DataType]:
        self._execute(
            f"CREATE TABLE {self.schema}.{name} "
            "(small smallint, span interval, amount numeric, ref uuid, clock timetz)",
            f"INSERT INTO {self.schema}.{name} VALUES "
            "(7, '1 day', 12345678901234567890.5, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '12:00:00+02')",
        )
        return {
            "small": pa.int32(),
            "span": pa.string(),
            "amount": pa.string(),
            "ref": pa.string(),
            "clock": pa.string(),
        }


def _iso(value: dt.datetime | None, sep: str = "T") -> str | None:
    return value.isoformat(sep=sep) if value is not None else None


def _pg_text(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


@pytest.fixture(scope="module")
def conformance_database(postgres_url) -> Iterator[str]:
    with fresh_database(postgres_url, "source_conformance") as url:
        yield url


KITS: dict[str, Callable[[pytest.FixtureRequest, Path], Kit]] = {
    "files-csv": lambda _, root: FilesKit(root, "csv"),
    "files-jsonl": lambda _, root: FilesKit(root, "jsonl"),
    "files-parquet": lambda _, root: FilesKit(root, "parquet"),
    "sqlite": lambda _, root: SqliteKit(root),
    "postgresql": lambda request, _: PostgresKit(request.getfixturevalue("conformance_database")),
}


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.postgres) if name == "postgresql" else name for name in KITS]
)
def kit(request, tmp_path) -> Kit:
    return KITS[request.param](request, tmp_path)


def rows_of(source: Source, table: str, **kwargs: Any) -> list[Row]:
    schema = source.arrow_schema(table)
    out = []
    for batch in source.read(table, **kwargs):
        assert batch.schema == schema
        out.extend(batch.to_pylist())
    return sorted(out, key=lambda row: row.get("id", 0))


def assert_translated(error: SourceError) -> None:
    """A SourceError that shows no driver exception (neither chained nor as its context) and no secret."""
    assert type(error).__module__.startswith("rime_dagster.connectors.sources")
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    assert SECRET not in str(error)


# --- test() ----------------------------------------------------------------------------------------------------


def test_a_connection_test_counts_the_tables_in_the_same_words(kit):
    kit.write_table("events", ROWS)
    result = kit.source().test(timeout=10)
    assert (result.success, result.message) == (True, "Connection successful. 1 table accessible.")
    kit.write_table("people", ROWS[:3])
    result = kit.source().test(timeout=10)
    assert (result.success, result.message) == (True, "Connection successful. 2 tables accessible.")


def test_an_unreachable_source_fails_its_test_and_raises_source_errors(kit):
    source = kit.unreachable()
    started = time.monotonic()
    result = source.test(timeout=3)
    assert time.monotonic() - started < 4
    assert result.success is False and result.message and SECRET not in result.message
    for call in (lambda: source.discover(timeout=3), lambda: source.arrow_schema("events")):
        with pytest.raises(SourceError) as info:
            call()
        assert_translated(info.value)
    with pytest.raises(SourceError) as info:
        list(source.read("events"))
    assert_translated(info.value)


# --- discover, schema and full reads ---------------------------------------------------------------------------


def test_discover_lists_tables_columns_and_row_counts(kit):
    kit.write_table("events", ROWS)
    kit.write_table("people", ROWS[:3])
    tables = {table.name: table for table in kit.source().discover(timeout=30)}
    assert sorted(tables) == ["events", "people"]
    assert [column.name for column in tables["events"].columns] == ["id", "name", "updated_at"]
    assert (tables["events"].row_estimate, tables["people"].row_estimate) == (25, 3)


def test_a_full_read_yields_every_row_in_landing_types_that_land_as_they_are(kit, catalog):
    kit.write_table("events", ROWS)
    source = kit.source()
    schema = source.arrow_schema("events")
    assert schema.names == ["id", "name", "updated_at"]
    assert all(is_landing_type(field.type) for field in schema), schema
    assert rows_of(source, "events") == ROWS
    land_table(
        catalog, ("raw", "events"), schema, source.read("events"), mode="full_refresh", cursor_field=None, run_id="r"
    )
    assert sorted(catalog.load_table(("raw", "events")).scan().to_arrow().to_pylist(), key=lambda r: r["id"]) == ROWS


def test_unknown_tables_are_source_errors(kit):
    kit.write_table("events", ROWS)
    source = kit.source()
    for call in (lambda: source.arrow_schema("nope"), lambda: list(source.read("nope"))):
        with pytest.raises(SourceError, match="'nope' not found"):
            call()


# --- incremental reads -----------------------------------------------------------------------------------------


def test_an_incremental_read_yields_only_rows_past_the_cursor(kit):
    kit.write_table("events", ROWS)
    source = kit.source()
    cutoff = ROWS[19]["updated_at"]
    assert [row["id"] for row in rows_of(source, "events", cursor_field="updated_at", cursor_value=cutoff)] == [
        21,
        22,
        23,
        24,
        25,
    ]
    assert [row["id"] for row in rows_of(source, "events", cursor_field="id", cursor_value=22)] == [23, 24, 25]
    assert rows_of(source, "events", cursor_field="id", cursor_value=25) == []
    assert rows_of(source, "events", cursor_field="updated_at", cursor_value=None) == ROWS  # the first sync
    with pytest.raises(SourceError, match=r"^Cursor column 'nope' not found in table 'events'\.$"):
        list(source.read("events", cursor_field="nope", cursor_value=1))


def test_incremental_syncs_land_each_new_row_once(kit, catalog):
    """The cursor the first sync stores with the Iceberg table selects the second sync's rows (nulls never)."""
    spec = TableSync("events", "raw", "events", "incremental", "updated_at", {})
    kit.write_table("events", ROWS)
    first = sync_table(kit.source(), catalog, spec, run_id="r1", full_refresh=False)
    kit.write_table("events", [*ROWS, *make_rows(range(26, 31))])
    second = sync_table(kit.source(), catalog, spec, run_id="r2", full_refresh=False)
    third = sync_table(kit.source(), catalog, spec, run_id="r3", full_refresh=False)
    assert (first.rows_written, second.rows_written, third.rows_written) == (25, 5, 0)
    landed = sorted(row["id"] for row in catalog.load_table(("raw", "events")).scan().to_arrow().to_pylist())
    assert landed == list(range(1, 31))


# --- batches ---------------------------------------------------------------------------------------------------


def test_batches_hold_batch_rows_rows_and_batch_rows_is_checked(kit):
    kit.write_table("events", ROWS)
    source = kit.source()
    assert [batch.num_rows for batch in source.read("events", batch_rows=7)] == [7, 7, 7, 4]
    filtered = source.read("events", cursor_field="updated_at", cursor_value=ROWS[2]["updated_at"], batch_rows=10)
    assert [batch.num_rows for batch in filtered] == [10, 10, 1]  # rows 4..25 but 11 (a null cursor)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_rows must be positive"):
            source.read("events", batch_rows=bad)  # refused when called, before any connection


# --- errors and types ------------------------------------------------------------------------------------------


def test_driver_errors_become_source_errors(kit):
    kit.write_table("events", ROWS)
    source = kit.source()
    source.arrow_schema("events")  # as a sync does, before it reads
    kit.spoil("events")
    with pytest.raises(SourceError) as info:
        list(source.read("events"))
    assert_translated(info.value)


def test_types_iceberg_cannot_store_arrive_converted_by_the_shared_rules(kit, catalog):
    expected = kit.write_awkward_table("odd")
    source = kit.source()
    schema = source.arrow_schema("odd")
    assert {field.name: field.type for field in schema} == expected
    rows = rows_of(source, "odd")
    assert len(rows) == 1 and all(
        value is not None for name, value in rows[0].items() if name not in ("empty", "nothing")
    )
    land_table(catalog, ("raw", "odd"), schema, source.read("odd"), mode="full_refresh", cursor_field=None, run_id="r")
    assert catalog.load_table(("raw", "odd")).scan().to_arrow().to_pylist() == rows


def test_every_source_type_has_a_case_here():
    from rime_dagster.connectors.sources import known_types

    covered = {name.split("-")[0] for name in KITS}
    assert covered == set(known_types())
