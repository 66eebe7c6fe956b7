"""The `files` connector against real CSV / Parquet / JSON-lines files (no mocks)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from rime_dagster.connectors.sources import source_class
from rime_dagster.connectors.sources.base import SourceError
from rime_dagster.connectors.sources.files import INFER_SAMPLE_BYTES, FilesSource, table_name

UTC = dt.UTC


def make(path: Path | None = None, *, upload_dir: Path | None = None, **config) -> FilesSource:
    if path is not None:
        config["path"] = str(path)
    source = FilesSource.from_dicts(config, None, upload_dir=upload_dir)
    assert isinstance(source, FilesSource)
    return source


def rows(source: FilesSource, table: str, **kwargs) -> list[dict]:
    schema = source.arrow_schema(table)
    out = []
    for batch in source.read(table, **kwargs):
        assert batch.schema == schema
        assert batch.schema.metadata is None
        out.extend(batch.to_pylist())
    return out


def columns(source: FilesSource) -> dict[str, dict[str, tuple[str, bool]]]:
    return {t.name: {c.name: (c.type, c.nullable) for c in t.columns} for t in source.discover(timeout=30)}


# --- config ----------------------------------------------------------------------------------


def test_registered():
    assert source_class("files") is FilesSource


def test_config_model_validation(tmp_path):
    with pytest.raises(ValidationError, match="absolute"):
        FilesSource.from_dicts({"path": "data/in"}, None)
    with pytest.raises(ValidationError, match="extra"):
        FilesSource.from_dicts({"path": str(tmp_path), "recursive": True}, None)
    with pytest.raises(ValidationError, match="extra"):
        FilesSource.from_dicts({"csv": {"delimter": ";"}}, None)
    with pytest.raises(ValidationError):
        FilesSource.from_dicts({"format": "xlsx"}, None)
    with pytest.raises(ValidationError, match="one character"):
        FilesSource.from_dicts({"csv": {"delimiter": ";;"}}, None)
    with pytest.raises(ValidationError, match="table name"):
        FilesSource.from_dicts({"tables": {"Orders": "orders_*.csv"}}, None)
    with pytest.raises(ValidationError, match="relative"):
        FilesSource.from_dicts({"tables": {"orders": "../elsewhere/*.csv"}}, None)
    with pytest.raises(ValidationError, match="relative"):
        FilesSource.from_dicts({"tables": {"orders": "/etc/*.csv"}}, None)

    config = make(csv={"delimiter": "\t", "null_values": [" ", "-"]}, path=tmp_path).config
    assert config.csv.delimiter == "\t"  # not stripped away as whitespace
    assert config.csv.null_values == [" ", "-"]
    assert config.format == "auto"
    assert FilesSource.from_dicts({"path": ""}, None).config.path is None  # blank -> upload area


def test_table_names():
    assert table_name("Orders 2024-01") == "orders_2024_01"
    assert table_name("  Weird--Name!!.v2 ") == "weird_name_v2"
    assert table_name("2024") == "t_2024"
    assert table_name("___") == "t"
    assert len(table_name("x" * 100)) == 48


# --- CSV -------------------------------------------------------------------------------------

CSV = (
    "id,customer,amount,created_at,paid_at,day,at,active,note\n"
    '1,"Smith, John",12.50,2024-01-01T10:00:00,2024-01-01T10:00:00+02:00,2024-01-01,10:30:00,true,"multi\nline"\n'
    "2,NULL,,2024-01-02 11:00:00.250,2024-01-02T09:00:00Z,2024-01-02,11:00:00,false,\n"
    '3,"Quote ""Q"" Ltd",-0.1,2024-01-03T00:00:00,,2024-01-03,,,null\n'
)


def test_csv_discover_schema_and_rows(tmp_path):
    (tmp_path / "Orders Export.csv").write_text(CSV)
    source = make(tmp_path)

    assert columns(source) == {
        "orders_export": {
            "id": ("int64", True),
            "customer": ("string", True),
            "amount": ("double", True),  # decimals in text land as float64 (documented)
            "created_at": ("timestamp[us]", True),
            "paid_at": ("timestamp[us, tz=UTC]", True),
            "day": ("date32[day]", True),
            "at": ("time64[us]", True),
            "active": ("bool", True),
            "note": ("string", True),
        }
    }
    assert source.discover(timeout=30)[0].row_estimate == 3
    assert source.discover(timeout=30)[0].primary_key == []

    assert rows(source, "orders_export") == [
        {
            "id": 1,
            "customer": "Smith, John",
            "amount": 12.5,
            "created_at": dt.datetime(2024, 1, 1, 10, 0),
            "paid_at": dt.datetime(2024, 1, 1, 8, 0, tzinfo=UTC),
            "day": dt.date(2024, 1, 1),
            "at": dt.time(10, 30),
            "active": True,
            "note": "multi\nline",
        },
        {
            "id": 2,
            "customer": None,
            "amount": None,
            "created_at": dt.datetime(2024, 1, 2, 11, 0, 0, 250000),
            "paid_at": dt.datetime(2024, 1, 2, 9, 0, tzinfo=UTC),
            "day": dt.date(2024, 1, 2),
            "at": dt.time(11, 0),
            "active": False,
            "note": None,
        },
        {
            "id": 3,
            "customer": 'Quote "Q" Ltd',
            "amount": -0.1,
            "created_at": dt.datetime(2024, 1, 3),
            "paid_at": None,
            "day": dt.date(2024, 1, 3),
            "at": None,
            "active": None,
            "note": None,
        },
    ]


def test_csv_options_and_gzip(tmp_path):
    body = "1;a|b;-\n2;'x;y';7\n3;-;8\n"
    with gzip.open(tmp_path / "plain.csv.gz", "wt") as fh:
        fh.write(body)
    source = make(tmp_path, csv={"delimiter": ";", "header": False, "quote_char": "'", "null_values": ["-"]})
    assert source.arrow_schema("plain") == pa.schema([("f0", pa.int64()), ("f1", pa.string()), ("f2", pa.int64())])
    assert rows(source, "plain") == [
        {"f0": 1, "f1": "a|b", "f2": None},
        {"f0": 2, "f1": "x;y", "f2": 7},
        {"f0": 3, "f1": None, "f2": 8},
    ]


def test_csv_nanosecond_timestamps_truncate_to_microseconds(tmp_path):
    (tmp_path / "ns.csv").write_text("ts\n2024-01-01 10:00:00.123456789\n")
    source = make(tmp_path)
    assert source.arrow_schema("ns") == pa.schema([("ts", pa.timestamp("us"))])
    assert rows(source, "ns") == [{"ts": dt.datetime(2024, 1, 1, 10, 0, 0, 123456)}]


_KEEP_POOLS_ALIVE: list[pa.MemoryPool] = []


def _big_csv(path: Path, rows_: int, tail: str) -> None:
    lines = ["id,qty,later"] + [f"{i},{i % 97}," for i in range(rows_)]
    path.write_text("\n".join(lines) + "\n" + tail)
    assert path.stat().st_size > INFER_SAMPLE_BYTES  # the tail is past the inference sample


def test_csv_column_empty_in_sample_but_filled_later_reads_as_string(tmp_path):
    _big_csv(tmp_path / "late.csv", 400_000, "400000,5,now filled\n")
    source = make(tmp_path)
    assert source.arrow_schema("late").field("later").type == pa.string()
    last = None
    for batch in source.read("late", batch_rows=100_000):
        last = batch
    assert last is not None and last.to_pylist()[-1] == {"id": 400000, "qty": 5, "later": "now filled"}


def test_csv_unparseable_later_row_names_file_and_column(tmp_path):
    _big_csv(tmp_path / "big.csv", 400_000, "400000,abc,\n")
    source = make(tmp_path)
    assert source.arrow_schema("big").field("qty").type == pa.int64()
    with pytest.raises(SourceError, match=r"File 'big\.csv': column 'qty' .*int64.*'abc'"):
        for _ in source.read("big"):
            pass


@pytest.mark.slow
def test_csv_reading_is_streamed_in_bounded_batches(tmp_path):
    path = tmp_path / "events.csv"
    n = 300_000
    filler = "x" * 250
    with path.open("w") as fh:
        fh.write("id,label,amount,ts\n")
        fh.writelines(f"{i},{filler}{i},{i * 0.5},2024-01-{1 + i % 28:02d}T{i % 24:02d}:00:00\n" for i in range(n))
    source = make(tmp_path)
    schema = source.arrow_schema("events")

    def peak(fn) -> int:
        previous = pa.default_memory_pool()
        pool = pa.proxy_memory_pool(previous)
        _KEEP_POOLS_ALIVE.append(pool)  # buffers may outlive fn(); freeing them needs their pool
        pa.set_memory_pool(pool)
        try:
            fn()
        finally:
            pa.set_memory_pool(previous)
        return pool.max_memory()

    decoded: list[int] = []
    full_peak = peak(lambda: decoded.append(pa_csv.read_csv(path).nbytes))
    assert full_peak >= decoded[0] > 70_000_000  # the measurement sees a full load

    sizes: list[int] = []
    ids_ok = [True]

    def stream() -> None:
        expected = 0
        for batch in make(tmp_path).read("events", batch_rows=20_000):
            assert batch.schema == schema
            sizes.append(batch.num_rows)
            ids = batch.column("id").to_pylist()
            ids_ok[0] &= ids == list(range(expected, expected + len(ids)))
            expected += len(ids)

    streamed_peak = peak(stream)
    assert sum(sizes) == n and ids_ok[0]
    assert max(sizes) <= 20_000
    assert sizes[:-1] == [20_000] * (len(sizes) - 1)  # re-chunked to full batches
    # ~3 batches in flight + Arrow read-ahead (32 x 256 KiB): ~27 MB here, flat in the file size.
    assert streamed_peak < decoded[0] / 2, (streamed_peak, decoded[0])

    (estimate,) = [t.row_estimate for t in source.discover(timeout=30)]
    assert estimate is not None and abs(estimate - n) < n * 0.1


# --- Parquet ---------------------------------------------------------------------------------


def test_parquet_types_and_rows(tmp_path):
    paris = dt.timezone(dt.timedelta(hours=1))
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "small": pa.array([1, None, -3], pa.int8()),
            "big_unsigned": pa.array([1, None, 2**64 - 1], pa.uint64()),
            "price": pa.array([Decimal("1.10"), None, Decimal("-3.25")], pa.decimal128(12, 2)),
            "at_paris": pa.array(
                [dt.datetime(2024, 1, 1, 10, tzinfo=paris), None, dt.datetime(2024, 6, 1, 0, 0, 1, 5000, tzinfo=paris)],
                pa.timestamp("ms", tz="Europe/Paris"),
            ),
            "at_ns": pa.array([1_704_103_200_123_456_789, None, 0], pa.timestamp("ns")),
            "tags": pa.array([["a", "b"], None, []], pa.list_(pa.string())),
            "kind": pa.array(["x", "y", None]).dictionary_encode(),
            "address": pa.array(
                [{"city": "Oslo", "zip": 150}, None, {"city": None, "zip": 2}],
                pa.struct([("city", pa.string()), ("zip", pa.uint16())]),
            ),
            "attrs": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
            "empty": pa.nulls(3),
        }
    )
    schema = table.schema.set(0, pa.field("id", pa.int64(), nullable=False))
    pq.write_table(table.cast(schema), tmp_path / "facts.parquet", row_group_size=2)
    source = make(tmp_path)

    landed = source.arrow_schema("facts")
    entries = pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.int64())])
    assert landed == pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            ("small", pa.int32()),
            ("big_unsigned", pa.decimal128(20, 0)),
            ("price", pa.decimal128(12, 2)),
            ("at_paris", pa.timestamp("us", "UTC")),
            ("at_ns", pa.timestamp("us")),
            ("tags", pa.list_(pa.string())),
            ("kind", pa.string()),
            ("address", pa.struct([("city", pa.string()), ("zip", pa.int32())])),
            ("attrs", pa.list_(pa.field("entries", entries, nullable=False))),
            ("empty", pa.string()),
        ]
    )
    (info,) = source.discover(timeout=30)
    assert info.row_estimate == 3
    assert info.columns[0].nullable is False and info.columns[1].nullable is True
    assert info.columns[4].type == "timestamp[us, tz=UTC]"

    got = rows(source, "facts", batch_rows=2)
    assert got == [
        {
            "id": 1,
            "small": 1,
            "big_unsigned": Decimal(1),
            "price": Decimal("1.10"),
            "at_paris": dt.datetime(2024, 1, 1, 9, tzinfo=UTC),
            "at_ns": dt.datetime(2024, 1, 1, 10, 0, 0, 123456),
            "tags": ["a", "b"],
            "kind": "x",
            "address": {"city": "Oslo", "zip": 150},
            "attrs": [{"key": "k", "value": 1}],
            "empty": None,
        },
        {
            "id": 2,
            "small": None,
            "big_unsigned": None,
            "price": None,
            "at_paris": None,
            "at_ns": None,
            "tags": None,
            "kind": "y",
            "address": None,
            "attrs": None,
            "empty": None,
        },
        {
            "id": 3,
            "small": -3,
            "big_unsigned": Decimal(2**64 - 1),
            "price": Decimal("-3.25"),
            "at_paris": dt.datetime(2024, 5, 31, 23, 0, 1, 5000, tzinfo=UTC),
            "at_ns": dt.datetime(1970, 1, 1),
            "tags": [],
            "kind": None,
            "address": {"city": None, "zip": 2},
            "attrs": [],
            "empty": None,
        },
    ]


def test_parquet_batches_and_incremental(tmp_path):
    n = 10_000
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int32()),
            "updated_at": pa.array([start + dt.timedelta(minutes=i) for i in range(n)], pa.timestamp("ns", "UTC")),
        }
    )
    pq.write_table(table, tmp_path / "log.pq", row_group_size=3_000)
    source = make(tmp_path)
    sizes = [b.num_rows for b in source.read("log", batch_rows=4_096)]
    assert sum(sizes) == n and max(sizes) <= 4_096

    cutoff = start + dt.timedelta(minutes=n - 6)
    newer = rows(source, "log", cursor_field="updated_at", cursor_value=cutoff)
    assert [r["id"] for r in newer] == list(range(n - 5, n))
    as_text = rows(source, "log", cursor_field="updated_at", cursor_value=cutoff.isoformat())
    assert as_text == newer
    assert [r["id"] for r in rows(source, "log", cursor_field="id", cursor_value=n - 3)] == [n - 2, n - 1]
    with pytest.raises(SourceError, match="Cursor column 'nope'"):
        source.read("log", cursor_field="nope", cursor_value=1)


# --- JSON-lines ------------------------------------------------------------------------------

JSON_ROWS = [
    {
        "id": 1,
        "user": {"name": "ann", "tags": ["a", "b"], "seen": "2024-01-01T10:00:00"},
        "scores": [1.5, 2],
        "at": "2024-01-01T10:00:00Z",
        "local": "2024-01-01T10:00:00.25",
        "day": "2024-01-01",
        "ok": True,
        "nothing": None,
        "text": "hello",
    },
    {
        "id": 2,
        "user": {"name": None, "tags": [], "seen": None},
        "scores": None,
        "at": "2024-01-02T10:00:00+02:00",
        "local": "2024-01-02 00:00",
        "day": None,
        "ok": False,
        "text": "2024-13-99 not a date",
    },
    {"id": 3, "user": None, "scores": [], "at": None, "local": None, "day": "2024-01-03", "ok": None},
]


def test_jsonl_nested_types_and_rows(tmp_path):
    body = "\n".join(json.dumps(r) for r in JSON_ROWS) + "\n\n"
    (tmp_path / "events.jsonl").write_text(body)
    with gzip.open(tmp_path / "events_gz.ndjson.gz", "wt") as fh:
        fh.write(body)
    source = make(tmp_path)

    expected_schema = pa.schema(
        [
            ("id", pa.int64()),
            ("user", pa.struct([("name", pa.string()), ("tags", pa.list_(pa.string())), ("seen", pa.timestamp("us"))])),
            ("scores", pa.list_(pa.float64())),
            ("at", pa.timestamp("us", "UTC")),
            ("local", pa.timestamp("us")),
            ("day", pa.date32()),
            ("ok", pa.bool_()),
            ("nothing", pa.string()),
            ("text", pa.string()),
        ]
    )
    assert source.arrow_schema("events") == expected_schema
    assert source.arrow_schema("events_gz") == expected_schema
    assert {t.name: t.row_estimate for t in source.discover(timeout=30)} == {"events": 3, "events_gz": 3}

    expected = [
        {
            "id": 1,
            "user": {"name": "ann", "tags": ["a", "b"], "seen": dt.datetime(2024, 1, 1, 10)},
            "scores": [1.5, 2.0],
            "at": dt.datetime(2024, 1, 1, 10, tzinfo=UTC),
            "local": dt.datetime(2024, 1, 1, 10, 0, 0, 250000),
            "day": dt.date(2024, 1, 1),
            "ok": True,
            "nothing": None,
            "text": "hello",
        },
        {
            "id": 2,
            "user": {"name": None, "tags": [], "seen": None},
            "scores": None,
            "at": dt.datetime(2024, 1, 2, 8, tzinfo=UTC),
            "local": dt.datetime(2024, 1, 2),
            "day": None,
            "ok": False,
            "nothing": None,
            "text": "2024-13-99 not a date",
        },
        {
            "id": 3,
            "user": None,
            "scores": [],
            "at": None,
            "local": None,
            "day": dt.date(2024, 1, 3),
            "ok": None,
            "nothing": None,
            "text": None,
        },
    ]
    assert rows(source, "events") == expected
    assert rows(source, "events_gz", batch_rows=1) == expected
    assert [r["id"] for r in rows(source, "events", cursor_field="day", cursor_value="2024-01-01")] == [3]


def test_jsonl_streams_and_reports_unexpected_later_field(tmp_path):
    line = json.dumps({"id": 0, "payload": "p" * 100}) + "\n"
    count = INFER_SAMPLE_BYTES // len(line) + 20_000
    path = tmp_path / "feed.jsonl"
    path.write_text(line * count + json.dumps({"id": 1, "payload": "x", "surprise": 1}) + "\n")
    source = make(tmp_path)
    assert source.arrow_schema("feed") == pa.schema([("id", pa.int64()), ("payload", pa.string())])
    seen = 0
    with pytest.raises(SourceError, match=rf"File 'feed\.jsonl', lines .*line {count + 1} has field 'surprise'"):
        for batch in source.read("feed", batch_rows=10_000):
            assert batch.num_rows <= 10_000
            seen += batch.num_rows
    assert seen > 0  # streamed before hitting the bad line


# --- tables, folders, test() -----------------------------------------------------------------


def test_files_are_not_merged_unless_a_glob_maps_them(tmp_path):
    (tmp_path / "orders_2024-01.csv").write_text("id,amount\n1,10\n2,20\n")
    (tmp_path / "orders_2024-02.csv").write_text("id,amount,channel\n3,30.5,web\n")
    (tmp_path / "customers.csv").write_text("id,name\n1,ann\n")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".hidden.csv").write_text("a\n1\n")

    assert sorted(columns(make(tmp_path))) == ["customers", "orders_2024_01", "orders_2024_02"]

    source = make(tmp_path, tables={"orders": "orders_*.csv"})
    info = {t.name: t for t in source.discover(timeout=30)}
    assert sorted(info) == ["customers", "orders"]
    assert info["orders"].row_estimate == 3
    assert source.arrow_schema("orders") == pa.schema(
        [("id", pa.int64()), ("amount", pa.float64()), ("channel", pa.string())]
    )
    assert rows(source, "orders") == [
        {"id": 1, "amount": 10.0, "channel": None},
        {"id": 2, "amount": 20.0, "channel": None},
        {"id": 3, "amount": 30.5, "channel": "web"},
    ]
    assert make(tmp_path, tables={"orders": "orders_*.csv"}).test(timeout=10).message == (
        "Connection successful. 2 tables accessible."
    )


def test_glob_over_files_with_incompatible_schemas_names_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.csv").write_text("id,amount\n1,10\n")
    (tmp_path / "sub" / "b.csv").write_text("id,amount\n2,n/a\n")
    source = make(tmp_path, tables={"orders": "sub/*.csv"})
    with pytest.raises(SourceError, match=r"File 'sub/b\.csv' doesn't match .* table 'orders'"):
        source.arrow_schema("orders")

    empty_glob = make(tmp_path, tables={"orders": "nothing_*.csv"})
    result = empty_glob.test(timeout=10)
    assert not result.success and "matches no files" in result.message


def test_table_name_collisions_are_reported(tmp_path):
    (tmp_path / "Orders.csv").write_text("a\n1\n")
    (tmp_path / "orders.jsonl").write_text('{"a": 1}\n')
    source = make(tmp_path)
    with pytest.raises(SourceError, match=r"orders \(Orders\.csv, orders\.jsonl\)"):
        source.discover(timeout=10)
    assert not source.test(timeout=10).success


def test_explicit_format_reads_any_extension(tmp_path):
    (tmp_path / "export.txt").write_text("a|b\n1|x\n")
    source = make(tmp_path, format="csv", csv={"delimiter": "|"})
    assert rows(source, "export") == [{"a": 1, "b": "x"}]
    assert make(tmp_path).test(timeout=10).success is False  # auto: .txt is not a data file


def test_upload_area_is_used_when_path_is_none(tmp_path):
    uploads = tmp_path / "uploads"
    source = make(upload_dir=uploads)
    missing = source.test(timeout=10)
    assert not missing.success and missing.message == "No CSV, Parquet or JSON-lines files found in the upload area."
    assert source.discover(timeout=10) == []
    assert not make(upload_dir=None).test(timeout=10).success

    uploads.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), uploads / "numbers.parquet")
    source = make(upload_dir=uploads)
    assert source.test(timeout=10) == type(missing)(True, "Connection successful. 1 table accessible.")
    assert rows(source, "numbers") == [{"x": 1}, {"x": 2}]
    with pytest.raises(SourceError, match="Table 'nope' not found in the upload area"):
        source.arrow_schema("nope")


def test_connection_test_on_missing_empty_and_broken_folders(tmp_path):
    result = make(tmp_path / "missing").test(timeout=10)
    assert (result.success, result.message) == (False, f"Folder '{tmp_path / 'missing'}' does not exist.")

    result = make(tmp_path).test(timeout=10)
    assert (result.success, result.message) == (False, f"No CSV, Parquet or JSON-lines files found in '{tmp_path}'.")

    (tmp_path / "a_file.csv").write_text("a\n1\n")
    result = make(tmp_path / "a_file.csv").test(timeout=10)
    assert not result.success and "not a folder" in result.message

    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    source = make(tmp_path)
    assert source.test(timeout=10).success  # cheap check: files exist and are readable
    with pytest.raises(SourceError, match="'broken.parquet' is not a readable Parquet file"):
        source.discover(timeout=10)

    (tmp_path / "broken.parquet").unlink()
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SourceError, match="'empty.csv' is empty"):
        make(tmp_path).arrow_schema("empty")


def test_csv_row_longer_than_a_read_block_is_reread_with_bigger_blocks(tmp_path):
    lines = ["id,text"] + [f"{i},short" for i in range(20_000)]
    lines.append(f'20000,"{"long " * 150_000}"')  # ~750 KB: longer than a 256 KiB read block
    lines += [f"{i},short" for i in range(20_001, 40_000)]
    (tmp_path / "wide.csv").write_text("\n".join(lines) + "\n")
    got = [r["id"] for r in rows(make(tmp_path), "wide", batch_rows=7_000)]
    assert got == list(range(40_000))  # nothing lost or repeated by the retry


def test_json_dates_that_do_not_parse_stay_text_and_duplicate_csv_headers_fail(tmp_path):
    (tmp_path / "odd.jsonl").write_text('{"d": "2024-13-99"}\n{"d": "2024-02-30"}\n')
    assert make(tmp_path).arrow_schema("odd") == pa.schema([("d", pa.string())])

    (tmp_path / "dupes.csv").write_text("a,b,a\n1,2,3\n")
    with pytest.raises(SourceError, match="duplicate column names: a"):
        make(tmp_path).arrow_schema("dupes")


def test_timeouts_are_reported(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    result = make(tmp_path).test(timeout=0)
    assert not result.success and "Timed out" in result.message
    with pytest.raises(SourceError, match="Timed out"):
        make(tmp_path).discover(timeout=0)
