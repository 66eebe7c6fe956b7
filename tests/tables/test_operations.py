"""Table operations on real Iceberg tables: health and history from metadata, compaction, snapshot expiry and
orphan-file removal that leave the rows unchanged, and schema changes with their checks."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import LongType, NestedField, StringType

from rime_dagster.pipelines.spec import TableMaintenanceConfig
from rime_dagster.tables.operations import (
    SchemaChangeError,
    check_schema_change,
    parse_column_type,
    referenced_files,
    remove_orphan_files,
    run_maintenance,
    snapshot_history,
    table_health,
)
from tests.tables.conftest import IDENT, NAMESPACE, TABLE, append, checksum


def op(operation: str, **fields) -> TableMaintenanceConfig:
    return TableMaintenanceConfig(table=TABLE, operation=operation, **fields)


def test_health_counts_small_files_and_recommends_compaction(small_files):
    health = table_health(small_files.load_table(IDENT))
    assert (health.snapshot_count, health.data_file_count, health.small_file_count) == (5, 5, 5)
    assert health.delete_file_count == 0 and health.total_records == 100
    assert health.total_size_bytes > 0 and health.avg_file_size_bytes == health.total_size_bytes // 5
    assert health.target_file_size_bytes == 512 * 1024 * 1024
    assert health.recommendation == "compact: 5 small files"


def test_health_of_a_table_whose_files_meet_its_target_size(small_files):
    table = small_files.load_table(IDENT)
    table.transaction().set_properties({"write.target-file-size-bytes": "100"}).commit_transaction()
    health = table_health(small_files.load_table(IDENT))
    assert health.small_file_count == 0 and health.recommendation == "healthy"


def test_health_recommends_expiry_of_many_snapshots(small_files, monkeypatch):
    from rime_dagster.tables import operations

    run_maintenance(small_files, NAMESPACE, op("compact"), run_id="compact")
    monkeypatch.setattr(operations, "EXPIRE_SNAPSHOTS_ABOVE", 5)  # 100 in production: 100 commits take a minute
    health = table_health(small_files.load_table(IDENT))
    assert health.data_file_count == 1 and health.small_file_count == 1  # one small file: nothing to merge
    assert health.recommendation == "expire snapshots: 6 snapshots"


def test_history_lists_snapshots_newest_first_with_their_counts(small_files):
    history = snapshot_history(small_files.load_table(IDENT))
    assert [s.count("total-records") for s in history] == [100, 80, 60, 40, 20]
    assert [s.operation for s in history] == ["append"] * 5
    assert history[0].is_current and not any(s.is_current for s in history[1:])
    assert history[0].parent_id == history[1].snapshot_id and history[-1].parent_id is None
    assert history[0].run_id == "sync-80" and history[0].count("added-records") == 20


def test_compaction_expiry_and_orphan_removal_keep_the_rows(small_files):
    catalog = small_files
    before = checksum(catalog)
    oldest = snapshot_history(catalog.load_table(IDENT))[-1].snapshot_id

    message, meta = run_maintenance(catalog, NAMESPACE, op("compact"), run_id="compact-1")
    assert (meta["files_before"], meta["files_after"], meta["rows"]) == (5, 1, 100), message
    assert checksum(catalog) == before
    assert checksum(catalog, snapshot_id=oldest) == (20, checksum(catalog, snapshot_id=oldest)[1])  # time travel

    _, meta = run_maintenance(catalog, NAMESPACE, op("expire_snapshots", older_than=datetime.now(UTC)), run_id="x")
    assert meta == {"expired_snapshots": 5}
    table = catalog.load_table(IDENT)
    assert len(table.metadata.snapshots) == 1 and checksum(catalog) == before

    # The five sync files are now unreferenced, but recent: the default cut-off (3 days) keeps them.
    _, meta = run_maintenance(catalog, NAMESPACE, op("remove_orphan_files"), run_id="x")
    assert meta["removed_files"] == 0 and meta["kept_recent"] >= 5
    _, meta = run_maintenance(
        catalog, NAMESPACE, op("remove_orphan_files", older_than=datetime.now(UTC) + timedelta(seconds=1)), run_id="x"
    )
    assert meta["removed_files"] >= 5 and meta["removed_bytes"] > 0
    table = catalog.load_table(IDENT)
    assert all(Path(p).exists() for p in referenced_files(table))
    assert checksum(catalog) == before


def test_orphan_removal_never_deletes_a_referenced_file_and_respects_the_cut_off(small_files):
    table = small_files.load_table(IDENT)
    data_dir = Path(table.metadata.location.removeprefix("file://")) / "data"
    stray_old, stray_new = data_dir / "stray-old.parquet", data_dir / "stray-new.parquet"
    stray_old.write_bytes(b"x" * 10)
    stray_new.write_bytes(b"y" * 10)
    an_hour_ago = time.time() - 3600
    os.utime(stray_old, (an_hour_ago, an_hour_ago))
    # Every file of the table is old now, the referenced ones too: only the metadata keeps them.
    for path in referenced_files(table):
        os.utime(path, (an_hour_ago, an_hour_ago))

    result = remove_orphan_files(table, datetime.now(UTC) - timedelta(minutes=30))
    assert result.removed == [str(stray_old)] and result.bytes == 10 and result.kept_recent == 1
    assert stray_new.exists()
    assert all(Path(p).exists() for p in referenced_files(small_files.load_table(IDENT)))
    assert checksum(small_files)[0] == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [("string", "string"), ("BIGINT", "long"), ("decimal(10, 2)", "decimal(10, 2)"), ("timestamptz", "timestamptz")],
)
def test_column_types(text, expected):
    assert str(parse_column_type(text)) == expected


@pytest.mark.parametrize("text", ["map", "struct<a: int>", "decimal(40, 2)", "decimal(4, 6)", "list<int>", "varchar2"])
def test_refused_column_types(text):
    with pytest.raises(SchemaChangeError) as refused:
        parse_column_type(text)
    assert refused.value.field == "type" and refused.value.reason == "invalid"


@pytest.fixture
def constrained(catalog):
    """A table whose `id` is an identifier field, `region` a partition source and `name` a sort key."""
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "region", StringType(), required=False),
        NestedField(3, "name", StringType(), required=False),
        NestedField(4, "note", StringType(), required=False),
        identifier_field_ids=[1],
    )
    catalog.create_namespace_if_not_exists(NAMESPACE)
    return catalog.create_table(
        (NAMESPACE, "constrained"),
        schema,
        partition_spec=PartitionSpec(PartitionField(2, 1000, IdentityTransform(), "region")),
        sort_order=SortOrder(SortField(source_id=3, transform=IdentityTransform())),
    )


@pytest.mark.parametrize(
    ("operation", "fields", "field", "reason", "says"),
    [
        ("add_column", {"name": "bad name", "type": "string"}, "name", "invalid", "letters, digits"),
        ("add_column", {"name": "a.b", "type": "string"}, "name", "invalid", "letters, digits"),
        ("add_column", {"name": "ok", "type": "bogus"}, "type", "invalid", "Unknown column type"),
        ("add_column", {"name": "NOTE", "type": "string"}, "name", "conflict", "already has a column 'note'"),
        ("rename_column", {"column": "nope", "name": "x"}, "column", "not_found", "no column 'nope'"),
        ("rename_column", {"column": "note", "name": "name"}, "name", "conflict", "already has a column 'name'"),
        ("rename_column", {"column": "note", "name": "note"}, "name", "invalid", "current name"),
        ("drop_column", {"column": "nope"}, "column", "not_found", "no column"),
        ("drop_column", {"column": "id"}, "column", "invalid", "an identifier field"),
        ("drop_column", {"column": "region"}, "column", "invalid", "a partition source"),
        ("drop_column", {"column": "name"}, "column", "invalid", "a sort key"),
    ],
)
def test_refused_schema_changes(constrained, operation, fields, field, reason, says):
    config = TableMaintenanceConfig(table="constrained", operation=operation, **fields)
    with pytest.raises(SchemaChangeError) as refused:
        check_schema_change(constrained, config)
    assert (refused.value.field, refused.value.reason) == (field, reason)
    assert says in str(refused.value)


def test_the_cursor_column_and_the_only_column_are_kept(small_files, catalog):
    table = small_files.load_table(IDENT)
    for operation, fields in (("drop_column", {"column": "id"}), ("rename_column", {"column": "id", "name": "k"})):
        with pytest.raises(SchemaChangeError, match="incremental cursor"):
            check_schema_change(table, op(operation, **fields))
    catalog.create_table((NAMESPACE, "single"), Schema(NestedField(1, "only", StringType(), required=False)))
    with pytest.raises(SchemaChangeError, match="only column"):
        check_schema_change(
            catalog.load_table((NAMESPACE, "single")),
            TableMaintenanceConfig(table="single", operation="drop_column", column="only"),
        )


def test_schema_changes_keep_the_existing_rows(small_files):
    catalog = small_files
    run_maintenance(catalog, NAMESPACE, op("add_column", name="channel", type="varchar", doc="where from"), run_id="a")
    run_maintenance(catalog, NAMESPACE, op("rename_column", column="email", name="contact"), run_id="b")
    run_maintenance(catalog, NAMESPACE, op("drop_column", column="amount"), run_id="c")
    table = catalog.load_table(IDENT)
    assert [f.name for f in table.schema().fields] == ["id", "contact", "channel"]
    assert table.schema().find_field("channel").doc == "where from"
    data = table.scan().to_arrow().sort_by("id")
    assert data.num_rows == 100 and data.column("contact")[0].as_py() == "u0@x.org"
    assert data.column("channel").null_count == 100
    # A sync after the rename still lands (its `email` comes back as a new column; the cursor goes on).
    append(catalog, 100, 1)
    after = catalog.load_table(IDENT).scan().to_arrow()
    assert after.num_rows == 101 and after.column_names == ["id", "contact", "channel", "email", "amount"]
