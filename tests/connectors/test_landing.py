"""Landing connector batches in Iceberg: creation, streaming files, one-commit syncs, cursor, evolution, failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError

from rime_dagster.connectors.landing import (
    RUN_ID_PROPERTY,
    ConcurrentCommitError,
    SchemaMismatchError,
    land_table,
    preview,
    read_cursor,
    read_cursor_state,
    table_stats,
)

REPO = Path(__file__).resolve().parents[2]
IDENT = ("raw_shop", "orders")
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
T0 = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def orders(start: int, count: int, *, batch_rows: int = 10, schema: pa.Schema = SCHEMA):
    """Rows start..start+count-1 of SCHEMA, `batch_rows` per batch, generated lazily."""
    for lo in range(start, start + count, batch_rows):
        ids = list(range(lo, min(lo + batch_rows, start + count)))
        yield pa.record_batch(
            [
                pa.array(ids, pa.int64()),
                pa.array([f"order {i}" for i in ids]),
                pa.array([T0 + timedelta(seconds=i) for i in ids], pa.timestamp("us", tz="UTC")),
            ],
            schema=schema,
        )


def failing_after(batches, n: int):
    """Yields `n` batches of `batches`, then raises, as a source losing its connection mid-read would."""
    for i, batch in enumerate(batches):
        if i == n:
            raise ConnectionError("source went away")
        yield batch


def rows(catalog, identifier=IDENT, snapshot_id=None) -> list[dict]:
    table = catalog.load_table(identifier)
    return sorted(table.scan(snapshot_id=snapshot_id).to_arrow().to_pylist(), key=lambda r: r["id"])


def data_dir_files(catalog, identifier=IDENT) -> set[str]:
    root = Path(catalog.load_table(identifier).location().removeprefix("file://")) / "data"
    return {str(p) for p in root.rglob("*.parquet")}


def land(catalog, batches, **kwargs):
    kwargs.setdefault("mode", "full_refresh")
    kwargs.setdefault("cursor_field", None)
    kwargs.setdefault("run_id", "run-1")
    return land_table(catalog, IDENT, kwargs.pop("schema", SCHEMA), batches, **kwargs)


# --- 1. creation ------------------------------------------------------------------------------------------------


def test_creates_namespace_and_nullable_table_with_properties(catalog):
    assert not catalog.namespace_exists("raw_shop")
    batch = pa.record_batch(
        [pa.array([1], pa.int64()), pa.array([None], pa.string()), pa.array([None], SCHEMA[2].type)], schema=SCHEMA
    )
    result = land(catalog, [batch], properties={"rime.connector_id": "conn_1", "rime.source_table": "public.orders"})

    assert result.table_created and not result.schema_changed
    table = catalog.load_table(IDENT)
    assert table.properties["rime.connector_id"] == "conn_1"
    assert table.properties["rime.source_table"] == "public.orders"
    # `id` is non-nullable at the source but optional in Iceberg: a later NULL from the source must still land.
    assert all(field.optional for field in table.schema().fields)
    assert [f.name for f in table.schema().fields] == ["id", "name", "updated_at"]
    assert rows(catalog) == [{"id": 1, "name": None, "updated_at": None}]

    # Changed properties are updated by the next sync, and a NULL in a column declared NOT NULL still lands.
    relaxed = pa.record_batch(
        [pa.array([None, 2], pa.int64()), pa.array(["a", "b"]), pa.array([T0, T0])], names=SCHEMA.names
    )
    land(catalog, [relaxed], properties={"rime.connector_id": "conn_2"}, run_id="run-2")
    assert catalog.load_table(IDENT).properties["rime.connector_id"] == "conn_2"
    assert catalog.load_table(IDENT).properties["rime.source_table"] == "public.orders"
    assert sorted(catalog.load_table(IDENT).scan().to_arrow().column("id").to_pylist(), key=str) == [2, None]


def test_failed_first_sync_leaves_no_table(catalog, tmp_path):
    with pytest.raises(ConnectionError):
        land(catalog, failing_after(orders(0, 50), 2))
    assert not catalog.table_exists(IDENT)
    assert list((tmp_path / "wh").rglob("*.parquet")) == []


# --- 2. streaming into rolling files, one commit --------------------------------------------------------------


def test_streams_into_rolling_zstd_files_with_field_ids_in_one_commit(catalog):
    result = land(catalog, orders(0, 95, batch_rows=7), target_file_rows=20)

    assert result.rows_written == 95 and result.files == 5  # 20+20+20+20+15: batches are split across files
    table = catalog.load_table(IDENT)
    files = data_dir_files(catalog)
    assert len(files) == 5
    assert all(f.startswith(table.location().removeprefix("file://") + "/data/") for f in files)
    field_ids = {f.name: f.field_id for f in table.schema().fields}
    for path in files:
        parquet = pq.ParquetFile(path)
        assert parquet.metadata.num_rows <= 20
        assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
        arrow_schema = parquet.schema_arrow
        assert {f.name: int(f.metadata[b"PARQUET:field_id"]) for f in arrow_schema} == field_ids
    # One commit, one snapshot (the table was created by the same commit).
    assert len(table.snapshots()) == 1 and len(table.metadata.metadata_log) == 0
    summary = table.current_snapshot().summary
    assert summary[RUN_ID_PROPERTY] == "run-1"
    assert summary["added-data-files"] == "5" and summary["total-records"] == "95"
    assert [r["id"] for r in rows(catalog)] == list(range(95))


# --- 3. full refresh -------------------------------------------------------------------------------------------


def test_full_refresh_replaces_rows_in_one_overwrite_snapshot(catalog):
    land(catalog, orders(0, 30), run_id="run-1")
    first = catalog.load_table(IDENT).current_snapshot().snapshot_id
    old_rows = rows(catalog)
    seen_during_sync = []

    def replacement():
        yield from orders(1000, 10)
        # Mid-sync, a reader still sees the previous snapshot in full.
        seen_during_sync.append(rows(catalog))
        yield from orders(1010, 10)

    result = land(catalog, replacement(), run_id="run-2")

    table = catalog.load_table(IDENT)
    assert seen_during_sync == [old_rows]
    assert [r["id"] for r in rows(catalog)] == list(range(1000, 1020))
    # ONE new snapshot for the sync: an OVERWRITE removing the old files and adding the new ones.
    assert [s.snapshot_id for s in table.snapshots()] == [first, result.snapshot_id]
    assert table.current_snapshot().parent_snapshot_id == first
    summary = table.current_snapshot().summary
    assert summary.operation.value == "overwrite"
    assert summary[RUN_ID_PROPERTY] == "run-2"
    assert summary["deleted-records"] == "30" and summary["added-records"] == "20"
    assert summary["total-records"] == "20"
    # One catalog commit (one new metadata file) for the whole sync.
    assert len(table.metadata.metadata_log) == 1
    # The old snapshot is still readable (time travel), unchanged.
    assert rows(catalog, snapshot_id=first) == old_rows


# --- 4. incremental + cursor -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arrow_type, low, high, higher",
    [
        (pa.int64(), 5, 10**15, 10**15 + 1),
        (pa.string(), "apple", "pear", "zebra"),
        (
            pa.decimal128(38, 9),
            Decimal("1.5"),
            Decimal("12345678901234567890123456789.123456789"),
            Decimal("99999999999999999999999999999.999999999"),
        ),
        (pa.date32(), date(2020, 1, 1), date(2024, 2, 29), date(2024, 3, 1)),
        (pa.timestamp("us"), datetime(2024, 1, 1), datetime(2024, 1, 1, 0, 0, 0, 1), datetime(2025, 1, 1)),
        (
            pa.timestamp("us", tz="UTC"),
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2024, 7, 1, tzinfo=UTC),
        ),
    ],
    ids=["int", "string", "decimal", "date", "timestamp", "timestamptz"],
)
def test_incremental_appends_and_stores_typed_cursor_in_the_same_commit(catalog, arrow_type, low, high, higher):
    schema = pa.schema([("id", pa.int64()), ("cursor", arrow_type)])

    def sync(values, run_id):
        batch = pa.record_batch([pa.array(range(len(values)), pa.int64()), pa.array(values, arrow_type)], schema=schema)
        return land(catalog, [batch], schema=schema, mode="incremental", cursor_field="cursor", run_id=run_id)

    first = sync([low, high, None], "run-1")
    stored = read_cursor(catalog, IDENT, "cursor")
    assert stored == high and type(stored) is type(high)
    if isinstance(high, datetime):
        assert stored.tzinfo == high.tzinfo  # aware stays aware (UTC), naive stays naive
    assert json.loads(json.dumps(first.cursor_value)) == first.cursor_value  # JSON-able for run metadata

    # A sync whose rows are all older than the cursor does not move it back.
    sync([low], "run-2")
    assert read_cursor(catalog, IDENT, "cursor") == high
    third = sync([higher, None], "run-3")
    assert read_cursor(catalog, IDENT, "cursor") == higher

    table = catalog.load_table(IDENT)
    assert table.scan().count() == 6  # appended, never replaced
    assert [s.summary.operation.value for s in table.snapshots()] == ["append", "append", "append"]
    assert table.current_snapshot().snapshot_id == third.snapshot_id
    assert table.current_snapshot().summary[RUN_ID_PROPERTY] == "run-3"
    # Rows and cursor arrived in one commit each: the table was created by the first, then one metadata file each.
    assert len(table.metadata.metadata_log) == 2


def test_full_refresh_restarts_the_cursor_and_read_cursor_without_table(catalog):
    assert read_cursor(catalog, IDENT, "updated_at") is None
    land(catalog, orders(0, 20), mode="incremental", cursor_field="updated_at")
    assert read_cursor(catalog, IDENT, "updated_at") == T0 + timedelta(seconds=19)
    assert read_cursor(catalog, IDENT, "id") is None  # no cursor stored for another column

    result = land(catalog, orders(0, 5), mode="full_refresh", cursor_field="updated_at", run_id="run-2")
    assert result.cursor_value == (T0 + timedelta(seconds=4)).isoformat()
    assert read_cursor(catalog, IDENT, "updated_at") == T0 + timedelta(seconds=4)


def test_cursor_field_must_be_an_orderable_column(catalog):
    with pytest.raises(ValueError, match="not a column"):
        land(catalog, orders(0, 5), mode="incremental", cursor_field="missing")
    schema = pa.schema([("id", pa.int64()), ("tags", pa.list_(pa.string()))])
    with pytest.raises(ValueError, match="no usable order"):
        land(catalog, [], schema=schema, mode="incremental", cursor_field="tags")
    assert not catalog.table_exists(IDENT)


def test_incremental_merges_manifests(catalog):
    # pyiceberg's fast append adds a manifest per commit; merge-append (enabled on created tables) folds them.
    props = {"commit.manifest.min-count-to-merge": "3"}
    for i in range(8):
        land(catalog, orders(i * 10, 10), mode="incremental", cursor_field="id", properties=props, run_id=f"run-{i}")
    table = catalog.load_table(IDENT)
    assert len(table.current_snapshot().manifests(table.io)) < 3
    assert [r["id"] for r in rows(catalog)] == list(range(80))
    assert read_cursor(catalog, IDENT, "id") == 79


# --- 6. schema evolution ---------------------------------------------------------------------------------------


def test_new_columns_are_added_and_old_rows_read_null(catalog):
    land(catalog, orders(0, 3))
    wider = SCHEMA.append(pa.field("status", pa.string())).append(pa.field("total", pa.decimal128(12, 2)))
    batch = pa.record_batch(
        [
            pa.array([10], pa.int64()),
            pa.array(["ten"]),
            pa.array([T0], SCHEMA[2].type),
            pa.array(["paid"]),
            pa.array([Decimal("9.99")], pa.decimal128(12, 2)),
        ],
        schema=wider,
    )
    result = land(catalog, [batch], schema=wider, mode="incremental", run_id="run-2")

    assert result.schema_changed
    table = catalog.load_table(IDENT)
    assert [f.name for f in table.schema().fields] == ["id", "name", "updated_at", "status", "total"]
    assert len(table.metadata.metadata_log) == 1  # schema change and append in one commit
    got = rows(catalog)
    assert [(r["id"], r["status"], r["total"]) for r in got] == [
        (0, None, None),
        (1, None, None),
        (2, None, None),
        (10, "paid", Decimal("9.99")),
    ]
    # The same schema again is not a change.
    assert not land(catalog, [batch], schema=wider, mode="incremental", run_id="run-3").schema_changed


def test_int_widening_is_applied(catalog):
    narrow = pa.schema([("id", pa.int32()), ("amount", pa.float32())])
    land(
        catalog,
        [pa.record_batch([pa.array([1], pa.int32()), pa.array([1.5], pa.float32())], schema=narrow)],
        schema=narrow,
    )
    wide = pa.schema([("id", pa.int64()), ("amount", pa.float64())])
    batch = pa.record_batch([pa.array([2**40], pa.int64()), pa.array([0.1], pa.float64())], schema=wide)
    result = land(catalog, [batch], schema=wide, mode="incremental", run_id="run-2")

    assert result.schema_changed
    table = catalog.load_table(IDENT)
    assert [str(f.field_type) for f in table.schema().fields] == ["long", "double"]
    assert [(r["id"], r["amount"]) for r in rows(catalog)] == [(1, 1.5), (2**40, 0.1)]


def test_columns_missing_from_the_source_stay_and_are_null(catalog):
    land(catalog, orders(0, 2))
    narrower = pa.schema([pa.field("id", pa.int64()), pa.field("updated_at", pa.timestamp("us", tz="UTC"))])
    batch = pa.record_batch([pa.array([7], pa.int64()), pa.array([T0], narrower[1].type)], schema=narrower)
    result = land(catalog, [batch], schema=narrower, mode="incremental", run_id="run-2")

    assert not result.schema_changed
    assert [f.name for f in catalog.load_table(IDENT).schema().fields] == ["id", "name", "updated_at"]
    assert rows(catalog)[-1] == {"id": 7, "name": None, "updated_at": T0}


def test_incompatible_change_raises_before_reading_or_writing(catalog):
    land(catalog, orders(0, 5), mode="incremental", cursor_field="id")
    before = catalog.load_table(IDENT)
    files = data_dir_files(catalog)
    consumed = []

    def batches():
        consumed.append(True)
        yield pa.record_batch([pa.array([1], pa.int64())], names=["name"])

    changed = pa.schema([("id", pa.int64()), ("name", pa.int64())])  # string -> long is not a promotion
    with pytest.raises(SchemaMismatchError, match="name"):
        land(catalog, batches(), schema=changed, mode="incremental", cursor_field="id", run_id="run-2")

    after = catalog.load_table(IDENT)
    assert not consumed
    assert after.metadata_location == before.metadata_location
    assert data_dir_files(catalog) == files


# --- 7. failure atomicity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full_refresh", "incremental"])
def test_source_failure_midway_commits_nothing_and_removes_files(catalog, mode):
    land(catalog, orders(0, 25), mode="incremental", cursor_field="updated_at")
    before = catalog.load_table(IDENT)
    old_rows, files = rows(catalog), data_dir_files(catalog)

    with pytest.raises(ConnectionError):
        land(
            catalog,
            failing_after(orders(100, 100), 7),
            mode=mode,
            cursor_field="updated_at",
            target_file_rows=20,
            run_id="run-2",
        )

    after = catalog.load_table(IDENT)
    assert after.metadata_location == before.metadata_location
    assert after.current_snapshot().snapshot_id == before.current_snapshot().snapshot_id
    assert rows(catalog) == old_rows
    assert read_cursor(catalog, IDENT, "updated_at") == T0 + timedelta(seconds=24)
    assert data_dir_files(catalog) == files  # the 3-4 files the failed sync had written are gone


@pytest.mark.parametrize("mode", ["full_refresh", "incremental"])
@pytest.mark.parametrize("error", [CommitFailedException("conflict"), OSError("catalog unreachable")])
def test_commit_failure_commits_nothing_and_removes_files(catalog, monkeypatch, mode, error):
    # No commit retries, so the conflict surfaces at once.
    land(catalog, orders(0, 25), mode="incremental", cursor_field="id", properties={"commit.retry.num-retries": "0"})
    before = catalog.load_table(IDENT)
    old_rows, files = rows(catalog), data_dir_files(catalog)

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(catalog, "commit_table", refuse)
    with pytest.raises(ConcurrentCommitError if isinstance(error, CommitFailedException) else type(error)):
        land(catalog, orders(100, 50), mode=mode, cursor_field="id", target_file_rows=20, run_id="run-2")
    monkeypatch.undo()

    after = catalog.load_table(IDENT)
    assert after.metadata_location == before.metadata_location
    assert rows(catalog) == old_rows
    assert read_cursor(catalog, IDENT, "id") == 24
    assert data_dir_files(catalog) == files


# --- 8. zero rows ----------------------------------------------------------------------------------------------


def test_full_refresh_with_zero_rows_empties_the_table(catalog):
    land(catalog, orders(0, 10), mode="incremental", cursor_field="id")
    result = land(catalog, iter([]), cursor_field="id", run_id="run-empty")

    table = catalog.load_table(IDENT)
    assert result.rows_written == 0 and result.files == 0 and result.cursor_value is None
    assert table.current_snapshot().snapshot_id == result.snapshot_id
    assert table.current_snapshot().summary[RUN_ID_PROPERTY] == "run-empty"
    assert table.current_snapshot().summary["total-records"] == "0"
    assert rows(catalog) == []
    assert read_cursor(catalog, IDENT, "id") is None  # the next incremental sync starts from scratch


def test_incremental_with_zero_rows_commits_nothing(catalog):
    land(catalog, orders(0, 10), mode="incremental", cursor_field="id")
    before = catalog.load_table(IDENT)
    empty_batch = next(orders(0, 1)).slice(0, 0)

    result = land(catalog, iter([empty_batch]), mode="incremental", cursor_field="id", run_id="run-2")

    assert result.rows_written == 0 and result.files == 0
    assert result.snapshot_id == before.current_snapshot().snapshot_id
    assert result.cursor_value == 9
    assert catalog.load_table(IDENT).metadata_location == before.metadata_location


def test_incremental_with_zero_rows_on_a_new_table_creates_it_empty(catalog):
    result = land(catalog, iter([]), mode="incremental", cursor_field="id")
    assert result.table_created and result.snapshot_id is None and result.cursor_value is None
    assert catalog.load_table(IDENT).current_snapshot() is None
    assert table_stats(catalog, IDENT)["row_count"] == 0


# --- 9. faithful round trip ------------------------------------------------------------------------------------

ALL_TYPES = pa.schema(
    [
        ("b", pa.bool_()),
        ("i16", pa.int16()),
        ("i32", pa.int32()),
        ("i64", pa.int64()),
        ("f32", pa.float32()),
        ("f64", pa.float64()),
        ("dec", pa.decimal128(38, 9)),
        ("dec_small", pa.decimal128(10, 2)),
        ("s", pa.string()),
        ("ls", pa.large_string()),
        ("bin", pa.binary()),
        ("lbin", pa.large_binary()),
        ("d", pa.date32()),
        ("t", pa.time64("us")),
        ("ts", pa.timestamp("us")),
        ("tstz", pa.timestamp("us", tz="UTC")),
        ("ints", pa.list_(pa.int64())),
        ("strs", pa.list_(pa.string())),
        ("st", pa.struct([("a", pa.int32()), ("b", pa.string()), ("c", pa.list_(pa.float64()))])),
    ]
)
ALL_ROWS = [
    dict(
        b=True,
        i16=-32768,
        i32=2**31 - 1,
        i64=-(2**63),
        f32=1.5,
        f64=-1.7976931348623157e308,
        dec=Decimal("12345678901234567890123456789.123456789"),
        dec_small=Decimal("-12345678.90"),
        s="héllo\x00 wörld 😀",
        ls="x" * 10_000,
        bin=b"\x00\x01\x00\xff",
        lbin=b"\x00" * 5,
        d=date(1, 1, 1),
        t=time(23, 59, 59, 999999),
        ts=datetime(2024, 2, 29, 12, 34, 56, 123456),
        tstz=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ints=[1, None, 3],
        strs=[None, "a", ""],
        st=dict(a=1, b=None, c=[None, 2.5]),
    ),
    {name: None for name in ALL_TYPES.names},
    dict(
        b=False,
        i16=0,
        i32=-1,
        i64=2**63 - 1,
        f32=float("inf"),
        f64=float("nan"),
        dec=Decimal("-0.000000001"),
        dec_small=Decimal("0.00"),
        s="",
        ls="",
        bin=b"",
        lbin=b"",
        d=date(9999, 12, 31),
        t=time(0),
        ts=datetime(9999, 12, 31, 23, 59, 59, 999999),
        tstz=datetime(2038, 1, 19, 3, 14, 8, 1, tzinfo=UTC),
        ints=[],
        strs=[None],
        st=dict(a=None, b=None, c=None),
    ),
]


def test_every_source_type_round_trips(catalog):
    land(catalog, [pa.RecordBatch.from_pylist(ALL_ROWS, schema=ALL_TYPES)], schema=ALL_TYPES)

    got = catalog.load_table(IDENT).scan().to_arrow()
    assert got.num_rows == 3
    for read, written in zip(got.to_pylist(), ALL_ROWS, strict=True):
        for name in ALL_TYPES.names:
            if isinstance(written[name], float) and math.isnan(written[name]):
                assert math.isnan(read[name])
            else:
                assert read[name] == written[name] and type(read[name]) is type(written[name]), name
    # What comes back: int16 is widened to int32 (Iceberg has no 16-bit int); everything else keeps its Arrow type.
    assert got.schema.field("i16").type == pa.int32()
    expected_types = {n: ALL_TYPES.field(n).type for n in ALL_TYPES.names if n not in ("i16", "ints", "strs", "st")}
    assert {n: got.schema.field(n).type for n in expected_types} == expected_types
    assert got.schema.field("ints").type.value_type == pa.int64()
    assert got.schema.field("st").type.field("c").type.value_type == pa.float64()


# --- 10. bounded memory ----------------------------------------------------------------------------------------

_BIG_SYNC = textwrap.dedent(
    """
    import json, resource, sys, time
    import pyarrow as pa, pyarrow.compute as pc
    from pyiceberg.catalog.sql import SqlCatalog
    from rime_dagster.connectors.landing import land_table, table_stats

    tmp = sys.argv[1]
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp}/cat.db", warehouse=f"file://{tmp}/wh")
    schema = pa.schema([("id", pa.int64()), ("amount", pa.float64()), ("name", pa.string()),
                        ("ts", pa.timestamp("us", tz="UTC")), ("flag", pa.bool_())])
    total, batch_rows = 3_000_000, 50_000
    base = pa.array(range(batch_rows), pa.int64())
    generated = 0

    def batches():
        global generated
        for start in range(0, total, batch_rows):
            ids = pc.add(base, start)
            batch = pa.record_batch([
                ids,
                pc.random(batch_rows),
                pc.binary_join_element_wise("customer-", pc.cast(ids, pa.string()), ""),
                pc.multiply(ids, 1_000_000).cast(pa.timestamp("us", tz="UTC")),
                pc.equal(pc.bit_wise_and(ids, 3), 0),
            ], schema=schema)
            generated += batch.nbytes
            yield batch

    pool = pa.default_memory_pool()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = land_table(catalog, ("raw", "big"), schema, batches(), mode="full_refresh", cursor_field="id",
                        run_id="big", target_file_rows=500_000)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "rows": result.rows_written, "files": result.files, "cursor": result.cursor_value, "seconds": seconds,
        "generated_bytes": generated, "pool_peak_bytes": pool.max_memory(),
        "rss_growth_bytes": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024,
        "row_count": table_stats(catalog, ("raw", "big"))["row_count"],
    }))
    """
)


@pytest.mark.slow
def test_landing_3m_rows_keeps_memory_bounded(tmp_path):
    # A fresh interpreter, so the Arrow pool's high-water mark is this sync's alone.
    proc = subprocess.run(
        [sys.executable, "-c", _BIG_SYNC, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"landed {stats['rows']:,} rows in {stats['seconds']:.2f}s ({stats['rows'] / stats['seconds']:,.0f} rows/s); "
        f"Arrow pool peak {stats['pool_peak_bytes'] / 2**20:.0f} MiB for {stats['generated_bytes'] / 2**20:.0f} MiB "
        f"generated; RSS growth {stats['rss_growth_bytes'] / 2**20:.0f} MiB"
    )
    assert stats["rows"] == stats["row_count"] == 3_000_000
    assert stats["files"] >= 6
    assert stats["cursor"] == 2_999_999
    # Materializing the table would need at least all generated bytes at once; streaming needs a few row groups.
    assert stats["pool_peak_bytes"] < stats["generated_bytes"] / 2


# --- stats and preview for the API ---------------------------------------------------------------------------------


def test_table_stats_and_preview(catalog):
    with pytest.raises(NoSuchTableError):
        table_stats(catalog, IDENT)
    with pytest.raises(NoSuchTableError):
        preview(catalog, IDENT, 5)

    before = datetime.now(UTC).replace(microsecond=0)
    result = land(catalog, orders(0, 42, batch_rows=8), target_file_rows=10, run_id="run-7")
    stats = table_stats(catalog, IDENT)

    assert stats["row_count"] == 42
    assert stats["snapshot_id"] == result.snapshot_id
    assert stats["run_id"] == "run-7"
    assert stats["updated_at"].tzinfo is UTC and before <= stats["updated_at"] <= datetime.now(UTC)
    sample = preview(catalog, IDENT, 5)
    assert isinstance(sample, pa.Table) and sample.num_rows == 5
    assert sample.column_names == ["id", "name", "updated_at"]
    assert preview(catalog, IDENT, 0).num_rows == 0


def test_concurrent_append_makes_a_full_refresh_fail_instead_of_losing_rows(catalog):
    land(catalog, orders(0, 10), mode="incremental", cursor_field="id")

    def refresh_batches():
        yield from orders(0, 5)
        # Another writer appends while this full refresh is streaming.
        land(catalog, orders(500, 3), mode="incremental", cursor_field="id", run_id="concurrent")
        yield from orders(5, 5)

    files_after_concurrent = None
    # No commit retries on our tables: the conflicting commit fails as it is.
    with pytest.raises(ConcurrentCommitError, match="another commit landed"):
        try:
            land(catalog, refresh_batches(), run_id="run-refresh")
        finally:
            files_after_concurrent = data_dir_files(catalog)

    table = catalog.load_table(IDENT)
    assert table.current_snapshot().summary[RUN_ID_PROPERTY] == "concurrent"
    assert [r["id"] for r in rows(catalog)] == [*range(10), 500, 501, 502]
    assert files_after_concurrent == data_dir_files(catalog)
    assert len(files_after_concurrent) == 2  # the refresh's own file is gone


# --- 11. one sync at a time: an incremental append never lands twice -------------------------------------------


def test_incremental_onto_a_table_moved_since_its_cursor_was_read_fails_before_writing(catalog):
    land(catalog, orders(0, 10), mode="incremental", cursor_field="id")
    stale = read_cursor_state(catalog, IDENT, "id")
    assert stale.value == 9 and stale.snapshot_id == catalog.load_table(IDENT).current_snapshot().snapshot_id
    # Another sync read the same cursor and landed the rows past it first.
    land(catalog, orders(10, 5), mode="incremental", cursor_field="id", run_id="other", read_at=stale)
    before, files = catalog.load_table(IDENT), data_dir_files(catalog)

    with pytest.raises(ConcurrentCommitError, match="since its cursor was read"):
        land(catalog, orders(10, 5), mode="incremental", cursor_field="id", run_id="late", read_at=stale)

    after = catalog.load_table(IDENT)
    assert after.metadata_location == before.metadata_location
    assert [r["id"] for r in rows(catalog)] == list(range(15))
    assert read_cursor(catalog, IDENT, "id") == 14
    assert data_dir_files(catalog) == files


def test_read_cursor_state_without_table_or_cursor(catalog):
    assert read_cursor_state(catalog, IDENT, "id") == read_cursor_state(catalog, IDENT, None)
    assert read_cursor_state(catalog, IDENT, "id").snapshot_id is None
    # Two first syncs read "no table": the first creates it, the second finds it moved.
    nothing = read_cursor_state(catalog, IDENT, "id")
    land(catalog, orders(0, 3), mode="incremental", cursor_field="id", read_at=nothing)
    with pytest.raises(ConcurrentCommitError):
        land(catalog, orders(0, 3), mode="incremental", cursor_field="id", run_id="late", read_at=nothing)
    assert [r["id"] for r in rows(catalog)] == [0, 1, 2]


@pytest.mark.parametrize("table_from", ["this_module", "before_retries_were_off"])
def test_concurrent_incremental_commit_fails_instead_of_rebasing(catalog, table_from):
    land(catalog, orders(0, 10), mode="incremental", cursor_field="id")
    if table_from == "before_retries_were_off":  # pyiceberg's default: 4 retries, each rebasing the append
        catalog.load_table(IDENT).transaction().remove_properties("commit.retry.num-retries").commit_transaction()
    cursor = read_cursor_state(catalog, IDENT, "id")

    def batches_past_the_cursor():
        yield from orders(10, 5)
        # Another sync of the same table, from the same cursor, commits while this one is writing.
        land(catalog, orders(10, 5), mode="incremental", cursor_field="id", run_id="other", read_at=cursor)
        yield from orders(15, 5)

    with pytest.raises(ConcurrentCommitError, match="another commit landed"):
        land(
            catalog,
            batches_past_the_cursor(),
            mode="incremental",
            cursor_field="id",
            run_id="racing",
            read_at=cursor,
            target_file_rows=3,
        )
    files_after_race = data_dir_files(catalog)

    table = catalog.load_table(IDENT)
    assert table.properties["commit.retry.num-retries"] == "0"
    assert table.current_snapshot().summary[RUN_ID_PROPERTY] == "other"  # the racing sync committed nothing
    assert [r["id"] for r in rows(catalog)] == list(range(15))  # every row once
    assert read_cursor(catalog, IDENT, "id") == 14
    assert len(files_after_race) == 2  # the first sync's file and the other sync's; the racing sync's are gone

    # The next sync goes on from the stored cursor.
    land(
        catalog,
        orders(15, 5),
        mode="incremental",
        cursor_field="id",
        run_id="next",
        read_at=read_cursor_state(catalog, IDENT, "id"),
    )
    assert [r["id"] for r in rows(catalog)] == list(range(20))


def test_first_syncs_of_two_tables_of_one_new_namespace_at_once_both_land(tmp_path):
    """Two connectors of a new project sync for the first time together: both create the namespace."""
    import threading

    from pyiceberg.catalog.sql import SqlCatalog

    from rime_dagster.connectors.landing import ensure_namespace

    def create(catalog, namespace: str, barrier: threading.Barrier, errors: list[BaseException]) -> None:
        barrier.wait()
        try:
            ensure_namespace(catalog, namespace)
        except BaseException as exc:
            errors.append(exc)

    for round_ in range(10):
        catalogs = [
            SqlCatalog("test", uri=f"sqlite:///{tmp_path}/race.db", warehouse=f"file://{tmp_path}/wh") for _ in range(4)
        ]
        barrier = threading.Barrier(len(catalogs))
        errors: list[BaseException] = []
        threads = [threading.Thread(target=create, args=(c, f"project_{round_}", barrier, errors)) for c in catalogs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert catalogs[0].namespace_exists(f"project_{round_}")
