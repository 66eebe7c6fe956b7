"""compact_table: many small data files rewritten into few, rows and cursor unchanged, races never lose rows."""

from __future__ import annotations

import pytest
from pyiceberg.exceptions import CommitFailedException, ValidationException

from rime_dagster.connectors.landing import RUN_ID_PROPERTY, compact_table, read_cursor
from tests.connectors.test_landing import IDENT, data_dir_files, land, orders, rows


def live_files(catalog) -> int:
    return len(catalog.load_table(IDENT).inspect.files())


def test_compaction_rewrites_small_files_and_keeps_rows_and_cursor(catalog):
    for i in range(5):  # five incremental syncs, five small files
        land(catalog, orders(i * 100, 100), mode="incremental", cursor_field="id", run_id=f"sync-{i}")
    assert live_files(catalog) == 5
    before = rows(catalog)
    result = compact_table(catalog, IDENT, run_id="compact-1", target_file_rows=1000)
    assert (result.files_before, result.files_after, result.rows) == (5, 1, 500)
    table = catalog.load_table(IDENT)
    assert live_files(catalog) == 1
    assert rows(catalog) == before
    assert table.current_snapshot().snapshot_id == result.snapshot_id
    summary = table.current_snapshot().summary
    assert summary[RUN_ID_PROPERTY] == "compact-1" and summary["rime.operation"] == "compact"
    assert read_cursor(catalog, IDENT, "id") == 499  # the next incremental sync goes on where it was
    assert table.schema().find_field("id").field_id == 1  # field ids kept

    # Already compact: nothing to do, nothing committed.
    again = compact_table(catalog, IDENT, run_id="compact-2")
    assert again.snapshot_id is None and again.files_before == 1
    assert catalog.load_table(IDENT).current_snapshot().snapshot_id == result.snapshot_id


@pytest.mark.slow
def test_a_sync_landing_during_compaction_wins(catalog, monkeypatch):
    for i in range(3):
        land(catalog, orders(i * 10, 10), mode="incremental", cursor_field="id", run_id=f"sync-{i}")
    files_before = data_dir_files(catalog)
    import rime_dagster.connectors.landing as landing

    real_replace = landing._replace_all

    def sync_meanwhile(*args, **kwargs):
        land(catalog, orders(30, 10), mode="incremental", cursor_field="id", run_id="sync-late")
        return real_replace(*args, **kwargs)

    monkeypatch.setattr(landing, "_replace_all", sync_meanwhile)
    # Our tables have no commit retries: the compaction's commit fails on the sync's new snapshot.
    with pytest.raises((CommitFailedException, ValidationException)):
        compact_table(catalog, IDENT, run_id="compact-racing", target_file_rows=1000)
    assert [r["id"] for r in rows(catalog)] == list(range(40))  # the late sync's rows are there
    # The compaction's own files are gone again; the late sync's file stays.
    assert len(data_dir_files(catalog) - files_before) == 1
