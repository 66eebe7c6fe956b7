"""The landing type rules (connectors/landing_types.py): what lands as it is, what converts, what is refused,
and how the shared read of sources.base applies them to whatever a source yields."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from contextlib import closing, contextmanager
from decimal import Decimal

import pyarrow as pa
import pytest

from rime_dagster.connectors.landing import land_table
from rime_dagster.connectors.landing_types import (
    LandingTypeError,
    conform_batch,
    is_landing_type,
    is_orderable,
    landing_schema,
    landing_type,
)
from rime_dagster.connectors.sources import _duckdb
from rime_dagster.connectors.sources.base import Cursor, Scan, Source, SourceError, StrictModel, TableInfo
from tests.connectors.test_landing import ALL_ROWS, ALL_TYPES

CONVERSIONS = {
    pa.int8(): pa.int32(),
    pa.int16(): pa.int32(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.uint64(): pa.decimal128(20, 0),
    pa.float16(): pa.float32(),
    pa.timestamp("ns"): pa.timestamp("us"),
    pa.timestamp("s", "Asia/Tokyo"): pa.timestamp("us", "UTC"),
    pa.time32("s"): pa.time64("us"),
    pa.date64(): pa.date32(),
    pa.large_string(): pa.string(),
    pa.dictionary(pa.int32(), pa.large_string()): pa.string(),
    pa.decimal256(40, 2): pa.string(),
    pa.decimal256(20, 2): pa.decimal128(20, 2),
    pa.null(): pa.string(),
    pa.large_list(pa.uint8()): pa.list_(pa.int32()),
    pa.struct([("a", pa.null()), ("b", pa.timestamp("ns", "UTC"))]): pa.struct(
        [("a", pa.string()), ("b", pa.timestamp("us", "UTC"))]
    ),
}


def test_conversions_reach_landing_types():
    for source_type, landed in CONVERSIONS.items():
        assert landing_type(source_type) == landed, source_type
        assert is_landing_type(landed), landed
        assert not is_landing_type(source_type) or source_type == landed, source_type
    assert landing_type(pa.null(), keep_null=True) == pa.null()  # typed later by another file of the table


def test_types_without_a_landing_type_are_refused():
    with pytest.raises(LandingTypeError, match=r"^Column 'x' has type month_day_nano_interval, which can't be stored"):
        landing_type(pa.month_day_nano_interval(), where="Column 'x'")
    with pytest.raises(LandingTypeError, match="can't be stored"):
        landing_type(pa.struct([("u", pa.dense_union([pa.field("a", pa.int32())]))]))


def test_landing_types_are_what_iceberg_stores_as_they_are(catalog):
    """Landing's every-type batch, converted by the rules, lands and reads back as it was converted."""
    schema = landing_schema(ALL_TYPES, where="table 'every'")
    assert all(is_landing_type(f.type) for f in schema)
    assert [f.name for f in schema if f.type != ALL_TYPES.field(f.name).type] == ["i16", "ls", "lbin"]
    batch = conform_batch(pa.RecordBatch.from_pylist(ALL_ROWS, schema=ALL_TYPES), schema, where="Table 'every'")
    land_table(catalog, ("raw", "every"), schema, [batch], mode="full_refresh", cursor_field=None, run_id="r")
    landed = catalog.load_table(("raw", "every")).scan().to_arrow()
    assert [f.type for f in landed.schema] == [f.type for f in schema]
    assert _same(landed.to_pylist(), ALL_ROWS)


def _same(rows: list[dict], expected: list[dict]) -> bool:
    """Equal rows, NaN equal to NaN."""

    def comparable(row: dict) -> dict:
        return {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}

    return [comparable(row) for row in rows] == [comparable(row) for row in expected]


def test_conform_batch_converts_values_losslessly_and_names_what_does_not_convert():
    tokyo = dt.timezone(dt.timedelta(hours=9))
    raw = pa.RecordBatch.from_pydict(
        {
            "u64": pa.array([2**64 - 1, None], pa.uint64()),
            "ns": pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns")),
            "tokyo": pa.array([dt.datetime(2024, 1, 1, 9, tzinfo=tokyo), None], pa.timestamp("s", "Asia/Tokyo")),
            "kind": pa.array(["a", None]).dictionary_encode(),
            "nothing": pa.nulls(2),
        }
    )
    schema = pa.schema([(f.name, landing_type(f.type)) for f in raw.schema] + [("missing", pa.int64())])
    landed = conform_batch(raw, schema, where="Table 't'")
    assert landed.schema == schema
    assert landed.to_pylist()[0] == {
        "u64": Decimal(2**64 - 1),
        "ns": dt.datetime(2023, 11, 14, 22, 13, 20, 123456),  # nanoseconds truncated
        "tokyo": dt.datetime(2024, 1, 1, 0, tzinfo=dt.UTC),  # the same instant
        "kind": "a",
        "nothing": None,
        "missing": None,
    }
    with pytest.raises(LandingTypeError, match=r"^Table 't': column 'kind' can't be converted to int64"):
        conform_batch(raw, pa.schema([("kind", pa.int64())]), where="Table 't'")


def test_orderable_cursor_types():
    for t in (pa.int32(), pa.float64(), pa.decimal128(10, 2), pa.string(), pa.date32(), pa.timestamp("us", "UTC")):
        assert is_orderable(t), t
    for t in (pa.bool_(), pa.list_(pa.int64()), pa.struct([("a", pa.int32())])):
        assert not is_orderable(t), t


def test_duckdb_sources_cast_to_the_same_landing_types():
    """What DuckDB-backed sources select (`_duckdb.landing_select`) lands as the shared rules say."""
    exports = {
        "TINYINT": pa.int8(),
        "UTINYINT": pa.uint8(),
        "USMALLINT": pa.uint16(),
        "UINTEGER": pa.uint32(),
        "UBIGINT": pa.uint64(),
        "TIMESTAMP_S": pa.timestamp("s"),
        "TIMESTAMP_NS": pa.timestamp("ns"),
        "TIME_NS": pa.time64("ns"),
        "DECIMAL(12,2)": pa.decimal128(12, 2),
        "TIMESTAMPTZ": pa.timestamp("us", "UTC"),
        "TINYINT[]": pa.large_list(pa.int8()),
    }
    text = ["UUID", "INTERVAL", "TIMETZ", "BIT", "MAP(VARCHAR, INTEGER)", "UNION(a INT, b VARCHAR)"]
    columns = ", ".join(f"NULL::{t} AS c{i}" for i, t in enumerate([*exports, *text]))
    with closing(_duckdb.connect([])) as con:  # the sources' own: session time zone UTC
        described = con.sql(f"SELECT {columns}")
        select = _duckdb.landing_select(list(zip(described.columns, described.types, strict=True)), "t")
        schema = con.sql(f"SELECT {select} FROM ({described.sql_query()}) AS t").fetch_arrow_table().schema
    for i, export in enumerate(exports.values()):
        landed, expected = schema.field(i).type, landing_type(export)
        assert is_landing_type(landed), list(exports)[i]
        if pa.types.is_list(expected):  # DuckDB names the list item `l`, not `item`
            landed, expected = landed.value_type, expected.value_type
        assert landed == expected, list(exports)[i]
    for i in range(len(exports), len(exports) + len(text)):
        assert schema.field(i).type == pa.string(), text[i - len(exports)]


# --- the shared read, on types no source of ours yields ----------------------------------------------------------


class _NoConfig(StrictModel):
    pass


class _ArrowTables(Source):
    """A plug-in over Arrow tables in memory: what a future source (an HTTP API's JSON) might yield."""

    connector_type = "arrow"
    config_model = _NoConfig

    def __init__(self, **tables: pa.Table):
        super().__init__(_NoConfig(), None)
        self.tables = tables

    def _count_tables(self, timeout: float) -> int:
        return len(self.tables)

    def _discover(self, timeout: float) -> list[TableInfo]:
        return []

    def _arrow_schema(self, table: str) -> pa.Schema:
        return self.tables[table].schema

    @contextmanager
    def _scan(self, table: str, cursor: Cursor | None, batch_rows: int) -> Iterator[Scan]:
        yield Scan(self.tables[table].schema, self.tables[table].to_batches(max_chunksize=3))


def test_the_shared_read_converts_what_a_source_yields_to_landing_types():
    odd = pa.table({"id": pa.array(range(10), pa.uint8()), "at": pa.array(range(10), pa.timestamp("ns"))})
    source = _ArrowTables(odd=odd)
    schema = source.arrow_schema("odd")
    assert schema == pa.schema([("id", pa.int32()), ("at", pa.timestamp("us"))])
    batches = list(source.read("odd", cursor_field="id", cursor_value=2, batch_rows=4))
    assert [b.num_rows for b in batches] == [4, 3]  # filled up across the source's 3-row batches
    assert all(b.schema == schema for b in batches)
    assert [r["id"] for b in batches for r in b.to_pylist()] == list(range(3, 10))


def test_the_shared_read_refuses_types_without_a_landing_type():
    source = _ArrowTables(odd=pa.table({"span": pa.array([pa.MonthDayNano([1, 2, 3])])}))
    expected = r"^Column 'span' of table 'odd' has type month_day_nano_interval, which can't be stored in Iceberg\.$"
    for call in (lambda: source.arrow_schema("odd"), lambda: list(source.read("odd"))):
        with pytest.raises(SourceError, match=expected) as info:
            call()
        assert info.value.__cause__ is None and info.value.__context__ is None
