"""Lands a connector's record batches in an Apache Iceberg table: streamed Parquet files, one atomic commit per sync.

`land_table` writes connector tables (one call is one sync of one table); `compact_table` rewrites their
files without changing their rows. A sync:

* the namespace and table are created on first use (all columns nullable, so source NULLs always land);
* new source columns are added and widened types promoted before anything is written; an incompatible
  change raises `SchemaMismatchError` with nothing written or committed;
* batches stream into Parquet files (zstd, Iceberg field ids embedded) under the table's data location,
  rolling every `target_file_rows` rows, so memory is one batch plus one row group whatever the table size;
* the files, the schema change, the table properties and the incremental cursor are committed in ONE
  catalog commit that adds ONE snapshot carrying `rime.run_id` in its summary. `full_refresh` commits an
  OVERWRITE snapshot that removes every live data file and adds the new ones (readers see the old rows or the
  new rows, never a mix or an empty table); `incremental` commits an APPEND snapshot;
* if the batch iterator or the commit fails, nothing is committed (previous snapshot, schema and cursor stay
  current) and the Parquet files written so far are deleted (best effort).

The incremental cursor lives in the table property `rime.cursor.<field>` as typed JSON, written in the same
commit as the rows it covers, so the cursor can never run ahead of the data.

One sync of a table at a time: the orchestrator runs them one after another (a Dagster pool per connector), and
this module refuses what would slip through. Our tables carry `commit.retry.num-retries=0`, so a commit that finds
the table moved on fails instead of being rebased onto the new snapshot (pyiceberg's default, which for an
incremental sync would append the rows past a stale cursor a second time). An incremental sync passes the
`StoredCursor` it read its rows with, and fails before writing if the table moved since that read. Either way it
raises `ConcurrentCommitError` with nothing committed and its files deleted: the next sync starts from the cursor
the other one stored.

This module imports no Dagster: the API shim uses it too (`table_stats`, `preview`, `read_cursor`).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, ValidationError
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io import FileIO, OutputStream

# The two private helpers are the ones pyiceberg's own append path uses (schema check, projection onto the table
# schema with field ids); reusing them keeps our files identical to pyiceberg's. Pinned by pyproject (<0.13).
from pyiceberg.io.pyarrow import (
    ParquetFormatModel,
    _check_pyarrow_schema_compatible,
    _to_requested_schema,
    parquet_files_to_data_files,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.locations import LocationProvider, load_location_provider

from rime_dagster.connectors.landing_types import CursorValue, is_orderable

__all__ = [
    "CURSOR_PROPERTY_PREFIX",
    "RUN_ID_PROPERTY",
    "ConcurrentCommitError",
    "LandResult",
    "NoSuchTableError",
    "SchemaMismatchError",
    "StoredCursor",
    "land_table",
    "preview",
    "read_cursor",
    "read_cursor_state",
    "table_stats",
]

log = logging.getLogger(__name__)

RUN_ID_PROPERTY = "rime.run_id"
CURSOR_PROPERTY_PREFIX = "rime.cursor."

# Defaults for tables this module creates; `properties` passed by the caller win.
# Merge-append folds the one-manifest-per-append that incremental syncs produce back into few manifests
# (pyiceberg has no compaction, so without it scan planning slows down with every sync).
_DEFAULT_TABLE_PROPERTIES = {
    "commit.manifest-merge.enabled": "true",
    "write.parquet.compression-codec": "zstd",
}
# Set on every table this module writes, whatever the caller passes: a conflicting commit fails, never rebases.
_NO_COMMIT_RETRY = {TableProperties.COMMIT_NUM_RETRIES: "0"}

# A row group is flushed at this many rows or bytes, whichever comes first: sources may yield tiny batches,
# and one row group per batch would make the files slow to read. This buffer is what bounds memory.
_ROW_GROUP_MAX_ROWS = 262_144
_ROW_GROUP_MAX_BYTES = 64 * 1024 * 1024


# A cursor as LandResult reports it (see `_jsonable`).
JsonCursor = int | float | str | None


class SchemaMismatchError(ValueError):
    """The source's schema cannot be reconciled with the table's (e.g. a column changed from string to int)."""


class ConcurrentCommitError(RuntimeError):
    """Another commit landed on the table during this sync (or since its cursor was read); nothing was committed."""


@dataclass(frozen=True)
class StoredCursor:
    """An incremental cursor as read from its table, with the snapshot it was read at."""

    value: CursorValue | None  # typed as stored; None: no table or no cursor yet
    snapshot_id: int | None  # None: no table, or a table without snapshots


@dataclass(frozen=True)
class LandResult:
    rows_written: int
    # The table's current snapshot after the sync (the new one, or the unchanged one when nothing was committed).
    snapshot_id: int | None
    # The cursor stored after the sync, JSON-able: ISO-8601 for dates/times, str for Decimal, base64 for bytes.
    # `read_cursor` returns the typed value.
    cursor_value: JsonCursor
    files: int
    # The existing table's schema evolved (columns added or types widened). A newly created table reports False.
    schema_changed: bool
    table_created: bool = False


def land_table(
    catalog: Catalog,
    identifier: tuple[str, str],
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    *,
    mode: Literal["full_refresh", "incremental"],
    cursor_field: str | None,
    run_id: str,
    properties: dict[str, str] | None = None,
    target_file_rows: int = 1_000_000,
    read_at: StoredCursor | None = None,
) -> LandResult:
    """Lands `batches` (all of `schema`) in the Iceberg table `identifier` in one commit; see the module docstring.

    `full_refresh` replaces the table's rows (zero batches empty it, still committing a snapshot) and restarts
    the cursor from the new rows. `incremental` appends and advances the cursor to the max of `cursor_field`
    over the stored cursor and the new rows; zero rows commit nothing. `read_at` is the cursor the caller
    selected the batches with (`read_cursor_state`): an incremental sync raises `ConcurrentCommitError`, before
    reading a batch, if the table's snapshot is no longer the one that cursor was read at.
    """
    _check_arguments(mode, target_file_rows, schema, cursor_field)
    incoming = _nullable_schema(schema)
    table = _table_for_sync(catalog, identifier, mode, read_at)
    table_created = table is None
    tx, schema_changed = _sync_transaction(
        catalog, identifier, table, incoming, {**(properties or {}), **_NO_COMMIT_RETRY}
    )

    table_schema = tx.table_metadata.schema()
    try:
        _check_pyarrow_schema_compatible(table_schema, incoming, format_version=tx.table_metadata.format_version)
    except ValueError as e:
        raise SchemaMismatchError(f"{_name(identifier)}: {e}") from e
    # The source's columns with the table's field ids, which is what the projection below needs.
    source_schema = pyarrow_to_schema(incoming, name_mapping=table_schema.name_mapping)

    cursor_key = CURSOR_PROPERTY_PREFIX + cursor_field if cursor_field else None
    previous_cursor = _decode_cursor(table.properties.get(cursor_key)) if table is not None and cursor_key else None

    io: FileIO = tx._table.io  # the FileIO the commit itself uses (the table's, or the staged new table's)
    location = load_location_provider(tx.table_metadata.location, tx.table_metadata.properties)
    writer = _RollingParquetWriter(io, location, target_file_rows, _file_prefix(run_id))
    commit_started = False
    snapshot_id: int | None = None
    try:
        rows, batch_max = _write_batches(
            writer,
            batches,
            schema,
            cursor_field,
            identifier=identifier,
            table_schema=table_schema,
            source_schema=source_schema,
        )
        paths = writer.close()
        new_cursor = _max(previous_cursor, batch_max) if mode == "incremental" else batch_max

        if mode == "incremental" and rows == 0:
            # Nothing to append: leave the table untouched (a brand-new table is still created, empty).
            if table is None:
                table = tx.commit_transaction()
            return LandResult(
                rows_written=0,
                snapshot_id=_current_snapshot_id(table),
                cursor_value=_jsonable(previous_cursor),
                files=0,
                schema_changed=False,
                table_created=table_created,
            )

        # Footers are read back (as `add_files` does): this validates each file against the table schema and
        # collects the column statistics the manifests need.
        data_files = list(parquet_files_to_data_files(io, tx.table_metadata, iter(paths)))
        snapshot_id = _stage_snapshot(tx, io, mode, data_files, {RUN_ID_PROPERTY: run_id})
        if cursor_key is not None and new_cursor is not None:
            tx.set_properties({cursor_key: _encode_cursor(new_cursor)})

        commit_started = True
        try:
            tx.commit_transaction()
        except CommitFailedException as e:
            raise ConcurrentCommitError(
                f"{_name(identifier)}: another commit landed while this sync was writing; nothing was committed. ({e})"
            ) from e
    except BaseException:
        writer.abort()
        if not commit_started or not _commit_landed(catalog, identifier, snapshot_id):
            _delete_files(io, writer.paths)
        raise

    return LandResult(
        rows_written=rows,
        snapshot_id=snapshot_id,
        cursor_value=_jsonable(new_cursor if cursor_key else None),
        files=len(paths),
        schema_changed=schema_changed,
        table_created=table_created,
    )


def _check_arguments(mode: str, target_file_rows: int, schema: pa.Schema, cursor_field: str | None) -> None:
    if mode not in ("full_refresh", "incremental"):
        raise ValueError(f"mode must be 'full_refresh' or 'incremental', not {mode!r}")
    if target_file_rows < 1:
        raise ValueError("target_file_rows must be positive")
    if cursor_field is not None:
        _check_cursor_field(schema, cursor_field)


def _table_for_sync(
    catalog: Catalog, identifier: tuple[str, str], mode: str, read_at: StoredCursor | None
) -> Table | None:
    """The table a sync lands in (None: not created yet), its commit retries off; ConcurrentCommitError when an
    incremental sync's cursor was read at another snapshot than the current one."""
    table = _load_table(catalog, identifier)
    if table is not None and any(table.properties.get(k) != v for k, v in _NO_COMMIT_RETRY.items()):
        # A table landed before retries were turned off: pyiceberg reads the retry count from the table as loaded,
        # so it is turned off in a commit of its own, before this sync's.
        table = table.transaction().set_properties(_NO_COMMIT_RETRY).commit_transaction()
    if mode == "incremental" and read_at is not None and _current_snapshot_id(table) != read_at.snapshot_id:
        raise ConcurrentCommitError(
            f"{_name(identifier)} moved from snapshot {read_at.snapshot_id} to {_current_snapshot_id(table)} since "
            "its cursor was read: another sync landed meanwhile. Nothing was written; the next sync goes on from "
            "the cursor that sync stored."
        )
    return table


def _sync_transaction(
    catalog: Catalog,
    identifier: tuple[str, str],
    table: Table | None,
    incoming: pa.Schema,
    wanted_properties: dict[str, str],
) -> tuple[Transaction, bool]:
    """The transaction a sync commits, with the table's creation or its schema change and properties staged; and
    whether an existing table's schema changes (a newly created table reports False)."""
    if table is None:
        ensure_namespace(catalog, identifier[0])
        # The table is created by the same commit that lands its first data: a failed first sync leaves no table.
        created = catalog.create_table_transaction(
            identifier, incoming, properties={**_DEFAULT_TABLE_PROPERTIES, **wanted_properties}
        )
        return created, False
    tx = table.transaction()
    schema_changed = _evolve_schema(tx, table, incoming, identifier)
    if changed := {k: v for k, v in wanted_properties.items() if table.properties.get(k) != v}:
        tx.set_properties(changed)
    return tx, schema_changed


def _write_batches(
    writer: _RollingParquetWriter,
    batches: Iterable[pa.RecordBatch],
    declared: pa.Schema,
    cursor_field: str | None,
    *,
    identifier: tuple[str, str],
    table_schema: Schema,
    source_schema: Schema,
) -> tuple[int, CursorValue | None]:
    """Writes the non-empty `batches` (of the `declared` schema) onto the table's schema; returns the rows written
    and the max of `cursor_field` over them (None without a cursor or a row)."""
    rows = 0
    batch_max: CursorValue | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if batch.schema.names != declared.names:
            raise SchemaMismatchError(
                f"{_name(identifier)}: batch columns {batch.schema.names} differ from the declared {declared.names}"
            )
        if cursor_field is not None:
            batch_max = _max(batch_max, pc.max(batch.column(cursor_field)).as_py())
        writer.write(_with_field_ids(batch, table_schema, source_schema))
        rows += batch.num_rows
    return rows, batch_max


def _with_field_ids(batch: pa.RecordBatch, table_schema: Schema, file_schema: Schema) -> pa.RecordBatch:
    """`batch` projected onto the table's schema: adds the table's field ids, NULL-fills table columns the batch
    lacks and widens promoted types, exactly as pyiceberg's own writer does."""
    return _to_requested_schema(
        requested_schema=table_schema,
        file_schema=file_schema,
        batch=batch,
        include_field_ids=True,
        format_model=ParquetFormatModel(),
    )


def _stage_snapshot(
    tx: Transaction, io: FileIO, mode: str, data_files: list[DataFile], snapshot_properties: dict[str, str]
) -> int:
    """Stages a sync's one snapshot and returns its id: a full refresh replaces every live data file (and drops
    the cursors of the rows it removes), an incremental sync appends."""
    if mode == "full_refresh":
        snapshot_id = _replace_all(tx, _live_data_files(tx, io), data_files, snapshot_properties)
        # The old rows are gone, so are the cursors that described them.
        stale = [k for k in tx.table_metadata.properties if k.startswith(CURSOR_PROPERTY_PREFIX)]
        if stale:
            tx.remove_properties(*stale)
        return snapshot_id
    update = tx.update_snapshot(snapshot_properties=snapshot_properties)
    merge = tx.table_metadata.properties.get("commit.manifest-merge.enabled", "false").lower() == "true"
    with update.merge_append() if merge else update.fast_append() as producer:
        for data_file in data_files:
            producer.append_data_file(data_file)
    return producer.snapshot_id


def read_cursor(catalog: Catalog, identifier: tuple[str, str], cursor_field: str | None) -> CursorValue | None:
    """The cursor stored for `cursor_field`, typed as it was stored (int, float, str, Decimal, date, time,
    datetime aware or naive, bytes); None if there is no table or no cursor."""
    return read_cursor_state(catalog, identifier, cursor_field).value


def read_cursor_state(catalog: Catalog, identifier: tuple[str, str], cursor_field: str | None) -> StoredCursor:
    """The stored cursor (as `read_cursor`) and the snapshot it belongs to, for `land_table(..., read_at=)`."""
    table = _load_table(catalog, identifier)
    if table is None:
        return StoredCursor(None, None)
    encoded = table.properties.get(CURSOR_PROPERTY_PREFIX + cursor_field) if cursor_field else None
    return StoredCursor(_decode_cursor(encoded), _current_snapshot_id(table))


def table_stats(catalog: Catalog, identifier: tuple[str, str]) -> dict[str, Any]:
    """Row count, current snapshot id, when it was committed (aware UTC) and by which run, from metadata only.

    Raises `NoSuchTableError` if the table does not exist (it is created by its first successful sync).
    """
    table = catalog.load_table(identifier)
    snapshot = table.current_snapshot()
    if snapshot is None:
        return {"row_count": 0, "snapshot_id": None, "updated_at": None, "run_id": None}
    summary = snapshot.summary
    total_records = summary.get("total-records") if summary else None
    return {
        "row_count": int(total_records) if total_records is not None else None,
        "snapshot_id": snapshot.snapshot_id,
        "updated_at": datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC),
        "run_id": summary.get(RUN_ID_PROPERTY) if summary else None,
    }


def preview(catalog: Catalog, identifier: tuple[str, str], limit: int) -> pa.Table:
    """The first `limit` rows of the current snapshot (reads only as many files as it needs).

    Raises `NoSuchTableError` if the table does not exist.
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    return catalog.load_table(identifier).scan(limit=limit).to_arrow()


# --- writing ---------------------------------------------------------------------------------------------------


class _RollingParquetWriter:
    """Writes Arrow batches to Parquet files of at most `target_file_rows` rows, buffering one row group."""

    def __init__(self, io: FileIO, location: LocationProvider, target_file_rows: int, prefix: str):
        self._io = io
        self._location = location
        self._target_file_rows = target_file_rows
        self._row_group_rows = min(target_file_rows, _ROW_GROUP_MAX_ROWS)
        self._prefix = prefix
        self.paths: list[str] = []  # every file started, so a failure can delete them
        self._closed_paths: list[str] = []
        self._stream: OutputStream | None = None
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._file_rows = 0  # rows in the open file, buffered ones included
        self._buffer: list[pa.RecordBatch] = []
        self._buffer_rows = 0
        self._buffer_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            # The projection's output schema (with field ids) is the same for every batch of a sync.
            self._schema = batch.schema
        elif batch.schema != self._schema:
            batch = batch.cast(self._schema)
        while batch.num_rows:
            take = min(batch.num_rows, self._target_file_rows - self._file_rows)
            part, batch = batch.slice(0, take), batch.slice(take)
            self._buffer.append(part)
            self._buffer_rows += part.num_rows
            self._buffer_bytes += part.nbytes
            self._file_rows += part.num_rows
            if self._buffer_rows >= self._row_group_rows or self._buffer_bytes >= _ROW_GROUP_MAX_BYTES:
                self._flush()
            if self._file_rows >= self._target_file_rows:
                self._close_file()

    def close(self) -> list[str]:
        """Finishes the open file; returns the paths of all files written."""
        self._close_file()
        return list(self._closed_paths)

    def abort(self) -> None:
        """Releases the open file after a failure (its content is discarded by the caller)."""
        self._buffer, self._buffer_rows, self._buffer_bytes = [], 0, 0
        for closer in (self._writer, self._stream):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    pass
        self._writer = self._stream = None

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            path = self._location.new_data_location(f"{self._prefix}-{len(self.paths):05d}.parquet")
            self.paths.append(path)
            self._stream = self._io.new_output(path).create(overwrite=False)
            self._writer = pq.ParquetWriter(
                self._stream,
                schema=self._schema,
                compression="zstd",
                # As pyiceberg writes decimals: int32/int64 physical types for small precisions.
                store_decimal_as_integer=True,
            )
        self._writer.write_table(pa.Table.from_batches(self._buffer), row_group_size=self._buffer_rows)
        self._buffer, self._buffer_rows, self._buffer_bytes = [], 0, 0

    def _close_file(self) -> None:
        self._flush()
        if self._writer is not None and self._stream is not None:  # opened together by _flush
            self._writer.close()
            self._stream.close()
            self._closed_paths.append(self.paths[-1])
            self._writer = self._stream = None
        self._file_rows = 0


def _replace_all(
    tx: Transaction, live: list[DataFile], data_files: list[DataFile], snapshot_properties: dict[str, str]
) -> int:
    """Stages ONE overwrite snapshot: every live data file out, `data_files` in; returns its id. (A
    `tx.delete(AlwaysTrue())` followed by an append would put two snapshots, DELETE then APPEND, in the commit.)"""
    with tx.update_snapshot(snapshot_properties=snapshot_properties).overwrite() as producer:
        # The predicate makes the producer open every manifest; the explicit files are what it removes.
        producer.delete_by_predicate(AlwaysTrue())
        for data_file in live:
            producer.delete_data_file(data_file)
        for data_file in data_files:
            producer.append_data_file(data_file)
    return producer.snapshot_id


@dataclass(frozen=True)
class CompactResult:
    files_before: int
    files_after: int
    rows: int
    snapshot_id: int | None  # None: nothing to do, nothing committed


def compact_table(
    catalog: Catalog,
    identifier: tuple[str, str],
    *,
    run_id: str,
    target_file_rows: int = 1_000_000,
    min_files: int = 2,
) -> CompactResult:
    """Rewrites the current snapshot's data files into files of `target_file_rows` rows, in one commit.

    The rows, schema and properties (the incremental cursor too) stay as they are; the new snapshot carries
    `rime.operation=compact`. Rows stream through one batch at a time. The commit requires the snapshot that
    was read to still be current, so a sync landing meanwhile makes the compaction fail (and delete its files),
    never lose the sync's rows. Fewer than `min_files` data files: nothing to do.
    """
    table = catalog.load_table(identifier)
    tx = table.transaction()
    io: FileIO = tx._table.io
    live = _live_data_files(tx, io)
    snapshot = table.current_snapshot()
    if snapshot is None or len(live) < min_files:
        return CompactResult(len(live), len(live), sum(f.record_count for f in live), None)
    if any(m.content != ManifestContent.DATA for m in snapshot.manifests(io)):
        raise ValueError(f"{_name(identifier)} has delete files; compacting them is not supported")
    table_schema = tx.table_metadata.schema()
    location = load_location_provider(tx.table_metadata.location, tx.table_metadata.properties)
    writer = _RollingParquetWriter(io, location, target_file_rows, _file_prefix(run_id))
    commit_started = False
    snapshot_id: int | None = None
    try:
        rows = 0
        for batch in table.scan(snapshot_id=snapshot.snapshot_id).to_arrow_batch_reader():
            if batch.num_rows:
                writer.write(_with_field_ids(batch, table_schema, table_schema))
                rows += batch.num_rows
        paths = writer.close()
        data_files = list(parquet_files_to_data_files(io, tx.table_metadata, iter(paths)))
        snapshot_id = _replace_all(tx, live, data_files, {RUN_ID_PROPERTY: run_id, "rime.operation": "compact"})
        commit_started = True
        tx.commit_transaction()
    except BaseException:
        writer.abort()
        if not commit_started or not _commit_landed(catalog, identifier, snapshot_id):
            _delete_files(io, writer.paths)
        raise
    return CompactResult(len(live), len(paths), rows, snapshot_id)


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    """Creates the namespace unless it exists, also when another writer creates it at the same moment
    (the first syncs of two connectors of one project): the catalog's unique key refuses the second
    insert with an integrity error that pyiceberg does not translate into NamespaceAlreadyExistsError."""
    try:
        catalog.create_namespace_if_not_exists(namespace)
    except Exception:
        if not catalog.namespace_exists(namespace):
            raise


def _file_prefix(run_id: str) -> str:
    # The run id in the file name lets an operator trace a stray file back to its sync.
    safe_run = re.sub(r"[^A-Za-z0-9_-]", "_", run_id)[:40] or "run"
    return f"{safe_run}-{uuid.uuid4().hex}"


def _live_data_files(tx: Transaction, io: FileIO) -> list[DataFile]:
    snapshot = tx.table_metadata.current_snapshot()
    if snapshot is None:
        return []
    # Metadata only (manifests), no data file is opened.
    return [
        entry.data_file
        for manifest in snapshot.manifests(io)
        if manifest.content == ManifestContent.DATA
        for entry in manifest.fetch_manifest_entry(io, discard_deleted=True)
    ]


def _commit_landed(catalog: Catalog, identifier: tuple[str, str], snapshot_id: int | None) -> bool:
    """Whether a commit that raised still landed; True when unknown, so files are never deleted under a reader."""
    if snapshot_id is None:
        return False
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        return False
    except Exception:
        log.warning("cannot tell whether the commit to %s landed; keeping its data files", _name(identifier))
        return True
    return table.snapshot_by_id(snapshot_id) is not None


def _delete_files(io: FileIO, paths: list[str]) -> None:
    for path in paths:
        try:
            io.delete(path)
        except FileNotFoundError:
            pass
        except Exception:
            log.warning("could not delete orphaned data file %s", path, exc_info=True)


# --- schema ----------------------------------------------------------------------------------------------------


def _nullable_schema(schema: pa.Schema) -> pa.Schema:
    """The schema with every field (nested ones too) nullable and no field metadata.

    Nullable so that NULLs always land and sources may relax constraints later; without metadata so that
    field ids a source happens to carry (e.g. read from Parquet) are never mistaken for the table's.
    """
    return pa.schema([_nullable_field(f) for f in schema])


def _nullable_field(field: pa.Field) -> pa.Field:
    return pa.field(field.name, _nullable_type(field.type), nullable=True)


def _nullable_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(t):
        return pa.struct([_nullable_field(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_large_list(t):
        return pa.large_list(_nullable_field(t.value_field))
    if pa.types.is_list(t):
        return pa.list_(_nullable_field(t.value_field))
    if pa.types.is_map(t):
        return pa.map_(t.key_field, _nullable_field(t.item_field))  # map keys can never be NULL
    return t


def _evolve_schema(tx: Transaction, table: Table, incoming: pa.Schema, identifier: tuple[str, str]) -> bool:
    """Stages (in `tx`) the union of the table's and the source's columns; True if the schema changes.

    Table columns the source lacks are kept (new rows get NULL); type widening pyiceberg allows (int->long,
    float->double, decimal precision) is applied; anything else raises before a single file is written.
    """
    try:
        with tx.update_schema() as update:
            update.union_by_name(incoming)
    except (ValidationError, ValueError, TypeError) as e:
        raise SchemaMismatchError(f"{_name(identifier)}: the source schema is incompatible with the table: {e}") from e
    return tx.table_metadata.current_schema_id != table.metadata.current_schema_id


def _check_cursor_field(schema: pa.Schema, cursor_field: str) -> None:
    if cursor_field not in schema.names:
        raise ValueError(f"cursor field {cursor_field!r} is not a column of the source ({', '.join(schema.names)})")
    cursor_type = schema.field(cursor_field).type
    if not is_orderable(cursor_type):
        raise ValueError(f"cursor field {cursor_field!r} has type {cursor_type}, which has no usable order")


# --- cursor ----------------------------------------------------------------------------------------------------


def _max(a: CursorValue | None, b: CursorValue | None) -> CursorValue | None:
    if a is None:
        return b
    if b is None:
        return a
    try:
        return max(a, b)
    except TypeError:
        # The column's type changed since the cursor was stored (e.g. naive -> aware timestamps): the old value
        # cannot be compared, so the new data's max is the only meaningful cursor.
        return b


def _encode_cursor(value: CursorValue) -> str:
    # Type-tagged so that read_cursor returns what was stored, not a string: datetimes keep their (lack of)
    # timezone and microseconds, decimals keep every digit.
    raw: bool | int | float | str
    if isinstance(value, bool):
        kind, raw = "bool", value
    elif isinstance(value, int):
        kind, raw = "int", value
    elif isinstance(value, float):
        kind, raw = "float", value
    elif isinstance(value, Decimal):
        kind, raw = "decimal", str(value)
    elif isinstance(value, datetime):  # before date: datetime is a date
        kind, raw = "datetime", value.isoformat()
    elif isinstance(value, date):
        kind, raw = "date", value.isoformat()
    elif isinstance(value, time):
        kind, raw = "time", value.isoformat()
    elif isinstance(value, str):
        kind, raw = "str", value
    elif isinstance(value, bytes):
        kind, raw = "bytes", base64.b64encode(value).decode()
    else:
        raise TypeError(f"cannot store a cursor of type {type(value).__name__}")
    return json.dumps({"type": kind, "value": raw})


def _decode_cursor(encoded: str | None) -> CursorValue | None:
    if encoded is None:
        return None
    stored = json.loads(encoded)
    kind, raw = stored["type"], stored["value"]
    decoders: dict[str, Callable[[Any], CursorValue]] = {
        "bool": bool,
        "int": int,
        "float": float,
        "decimal": Decimal,
        "datetime": datetime.fromisoformat,
        "date": date.fromisoformat,
        "time": time.fromisoformat,
        "str": str,
        "bytes": base64.b64decode,
    }
    return decoders[kind](raw)


def _jsonable(value: CursorValue | None) -> JsonCursor:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


# --- helpers ---------------------------------------------------------------------------------------------------


def _load_table(catalog: Catalog, identifier: tuple[str, str]) -> Table | None:
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        return None


def _current_snapshot_id(table: Table | None) -> int | None:
    snapshot = table.current_snapshot() if table is not None else None
    return snapshot.snapshot_id if snapshot is not None else None


def _name(identifier: tuple[str, str]) -> str:
    return ".".join(identifier)
