"""The read path's DuckDB database: what a query could reach holds neither the hash key nor anything unmasked."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.types import StringType

from rime_dagster.governance import reads
from rime_dagster.governance.masking import ColumnMask, MaskPlan, hash_key

KEY = hash_key("platform-secret", "proj_1")
LIMITS = reads.ReadLimits(timeout_seconds=10, memory_limit="256MB", threads=1)


@pytest.fixture
def project(tmp_path) -> reads.ProjectData:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=(tmp_path / "wh").as_uri())
    catalog.create_namespace("ns")
    table = catalog.create_table(
        ("ns", "crm__customer"), schema=pa.schema([("id", pa.int64()), ("email", pa.string())])
    )
    table.append(pa.table({"id": [1, 2], "email": ["ada@example.com", "grace@example.org"]}))
    plan = MaskPlan(masked={"crm__customer": {"email": ColumnMask("hash")}})
    return reads.ProjectData(catalog, "ns", plan, KEY)


def test_the_key_is_nowhere_sql_can_look(project):
    with reads.read_query(project, "SELECT * FROM crm__customer", limits=LIMITS) as read:
        con = read._con  # the read's own database, as the query sees it
        catalog_text = " ".join(
            str(row)
            for sql in (
                "SELECT * FROM duckdb_views()",
                "SELECT * FROM duckdb_settings()",
                "SELECT * FROM duckdb_functions()",
                "SELECT * FROM duckdb_tables()",
                "SELECT * FROM duckdb_secrets()",
            )
            for row in con.execute(sql).fetchall()
        )
        for secret in (KEY.hex(), KEY.decode("latin-1"), "platform-secret"):
            assert secret not in catalog_text
        assert "ada@example.com" not in str(read.head(10)[0].to_pylist())
        # Locked down: no file outside the table's location, no configuration change.
        with pytest.raises(Exception, match="disabled by configuration"):
            con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
        with pytest.raises(Exception, match="locked"):
            con.execute("SET enable_external_access = true")
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "244.1 MiB"


def test_a_renamed_column_stays_masked_in_older_snapshots(project):
    table = project.catalog.load_table(("ns", "crm__customer"))
    before = table.current_snapshot().snapshot_id
    with table.update_schema() as update:
        update.rename_column("email", "mail")
    plan = MaskPlan(masked={"crm__customer": {"mail": ColumnMask("redact")}})
    renamed = reads.ProjectData(project.catalog, "ns", plan, KEY)
    with reads.read_table(renamed, "crm__customer", limits=LIMITS, snapshot_id=before) as read:
        assert read.head(10)[0].to_pylist() == [{"id": 1, "email": "****"}, {"id": 2, "email": "****"}]
    with pytest.raises(reads.NoSuchSnapshot):
        reads.read_table(renamed, "crm__customer", limits=LIMITS, snapshot_id=12345)


def _wait_for_spares(limits: reads.ReadLimits, count: int) -> None:
    deadline = time.monotonic() + 10
    while reads._spares.count(limits) < count:
        assert time.monotonic() < deadline, "the spare databases were not opened"
        time.sleep(0.01)


def _wait_until_closed(con) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            con.execute("SELECT 1")
        except Exception as exc:
            assert "closed" in str(exc), exc
            return
        assert time.monotonic() < deadline, "the read's database was not closed"
        time.sleep(0.01)


def test_each_read_gets_a_database_no_other_read_used(project):
    limits = reads.ReadLimits(timeout_seconds=10, memory_limit="200MB", threads=1, spare_databases=2)
    reads._spares.clear()
    try:
        with reads.read_query(project, "SELECT id FROM crm__customer", limits=limits) as first:
            first._con.execute("CREATE TEMP TABLE leak AS SELECT 1 AS x")
            # None is opened while a read runs (it would compete with the query for the CPU): as it ends.
            time.sleep(0.2)
            assert reads._spares.count(limits) == 0
        _wait_for_spares(limits, 2)
        assert reads._spares.count(limits) == 2  # filled to the limit, not beyond
        spares = list(reads._spares._ready[(limits.threads, limits.memory_limit)])
        with reads.read_query(project, "SELECT id FROM crm__customer", limits=limits) as second:
            assert second._con is not first._con
            # It took a spare (by identity: the refill may already have replaced it in the count).
            assert any(second._con is spare for spare in spares)
            con = second._con
            assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'leak'").fetchone() == (0,)
            # Only this read's view; its own limits and lock-down, as a database opened for it would have.
            assert con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall() == [
                ("crm__customer",)
            ]
            assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "190.7 MiB"
            with pytest.raises(Exception, match="disabled by configuration"):
                con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
        _wait_until_closed(second._con)  # retired: closed on the background thread, never handed out again
        assert reads._spares.take(limits) is not second._con
    finally:
        reads._spares.clear()


def test_no_spares_when_turned_off(project):
    limits = reads.ReadLimits(timeout_seconds=10, memory_limit="210MB", threads=1, spare_databases=0)
    with reads.read_query(project, "SELECT id FROM crm__customer", limits=limits) as read:
        assert read.head(5)[0].num_rows == 2
    assert reads._spares.count(limits) == 0


def test_a_write_between_two_reads_is_seen_by_the_second(project):
    limits = reads.ReadLimits(timeout_seconds=10, memory_limit="220MB", threads=1, spare_databases=1)
    try:
        with reads.read_query(project, "SELECT count(*) AS n FROM crm__customer", limits=limits) as read:
            assert read.head(1)[0].to_pylist() == [{"n": 2}]
        _wait_for_spares(limits, 1)
        table = project.catalog.load_table(("ns", "crm__customer"))
        with table.update_schema() as update:
            update.add_column("tier", StringType())
        table = project.catalog.load_table(("ns", "crm__customer"))
        table.append(pa.table({"id": [3], "email": ["x@example.net"], "tier": ["gold"]}))
        with reads.read_query(project, "SELECT id, tier FROM crm__customer ORDER BY id", limits=limits) as read:
            assert read.head(5)[0].to_pylist() == [
                {"id": 1, "tier": None},
                {"id": 2, "tier": None},
                {"id": 3, "tier": "gold"},
            ]
    finally:
        reads._spares.clear()
