"""Iceberg table operations, without Dagster: health and history (metadata only), snapshot expiry, orphan-file
removal, compaction and checked schema changes.

The API reads health and history here and checks a schema change here before it launches the run that makes it;
the run (rime_dagster/tables/jobs.py, or a pipeline's `table_maintenance` step) carries the operation out with
`run_maintenance`, which checks the change again against the table as it is then.

Thresholds (documented in the README):
* a data file is small below 75% of the table's target file size (`write.target-file-size-bytes`, else Iceberg's
  default 512 MiB): Iceberg's own rewrite treats files below 75% of the target as candidates;
* compaction is recommended when at least two small files would fit in fewer files of the target size;
* snapshot expiry is recommended above 100 snapshots;
* orphan files are removed only when older than 3 days unless told otherwise (Iceberg's default), and never when
  any snapshot, manifest or metadata file still names them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from rime_dagster.connectors.landing import CURSOR_PROPERTY_PREFIX, RUN_ID_PROPERTY
from rime_dagster.pipelines.spec import TableMaintenanceConfig

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table
    from pyiceberg.types import PrimitiveType

log = logging.getLogger(__name__)

TARGET_FILE_SIZE_PROPERTY = "write.target-file-size-bytes"
DEFAULT_TARGET_FILE_SIZE_BYTES = 512 * 1024 * 1024  # Iceberg's default
SMALL_FILE_FRACTION = 0.75
EXPIRE_SNAPSHOTS_ABOVE = 100
DEFAULT_EXPIRE_DAYS = 7
DEFAULT_ORPHAN_DAYS = 3
DEFAULT_TARGET_FILE_ROWS = 1_000_000

# Names a new or renamed column may take: queryable without quoting, and never a nested path (pyiceberg reads a
# dot as one).
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Primitive Iceberg types a column may be added with, and the SQL spellings accepted for them.
_TYPE_ALIASES = {
    "bool": "boolean",
    "integer": "int",
    "bigint": "long",
    "real": "float",
    "varchar": "string",
    "text": "string",
    "bytes": "binary",
}
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_SIMPLE_TYPES = ("boolean", "int", "long", "float", "double", "date", "time", "timestamp", "timestamptz", "string")
_OTHER_TYPES = ("uuid", "binary", "decimal(p, s)", "fixed[n]")


# --- health and history ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableHealth:
    snapshot_count: int
    data_file_count: int
    delete_file_count: int
    small_file_count: int
    total_size_bytes: int
    avg_file_size_bytes: int
    total_records: int
    target_file_size_bytes: int
    small_file_threshold_bytes: int
    recommendations: list[str]

    @property
    def recommendation(self) -> str:
        return "; ".join(self.recommendations) or "healthy"


def target_file_size(table: Table) -> int:
    try:
        size = int(table.properties.get(TARGET_FILE_SIZE_PROPERTY, DEFAULT_TARGET_FILE_SIZE_BYTES))
    except ValueError:
        size = DEFAULT_TARGET_FILE_SIZE_BYTES
    return size if size > 0 else DEFAULT_TARGET_FILE_SIZE_BYTES


def live_files(table: Table, snapshot_id: int | None = None) -> Iterator[DataFile]:
    """The data and delete files of the current (or given) snapshot, from its manifests: no data file is opened."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    if snapshot is None:
        return
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            yield entry.data_file


def table_health(table: Table) -> TableHealth:
    from pyiceberg.manifest import DataFileContent

    target = target_file_size(table)
    threshold = int(target * SMALL_FILE_FRACTION)
    data_sizes: list[int] = []
    records = deletes = 0
    for data_file in live_files(table):
        if data_file.content == DataFileContent.DATA:
            data_sizes.append(data_file.file_size_in_bytes)
            records += data_file.record_count
        else:
            deletes += 1
    small = [size for size in data_sizes if size < threshold]
    total = sum(data_sizes)
    snapshots = len(table.metadata.snapshots)
    recommendations = []
    if len(small) >= 2 and math.ceil(sum(small) / target) < len(small):
        recommendations.append(f"compact: {len(small):,} small files")
    if deletes:
        recommendations.append(f"rewrite: {deletes:,} delete files")
    if snapshots > EXPIRE_SNAPSHOTS_ABOVE:
        recommendations.append(f"expire snapshots: {snapshots:,} snapshots")
    return TableHealth(
        snapshot_count=snapshots,
        data_file_count=len(data_sizes),
        delete_file_count=deletes,
        small_file_count=len(small),
        total_size_bytes=total,
        avg_file_size_bytes=total // len(data_sizes) if data_sizes else 0,
        total_records=records,
        target_file_size_bytes=target,
        small_file_threshold_bytes=threshold,
        recommendations=recommendations,
    )


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: int
    parent_id: int | None
    sequence_number: int
    committed_at: datetime
    operation: str | None
    summary: dict[str, str]
    is_current: bool

    def count(self, key: str) -> int | None:
        value = self.summary.get(key)
        return int(value) if value is not None and value.isdigit() else None

    @property
    def run_id(self) -> str | None:
        return self.summary.get(RUN_ID_PROPERTY)


def snapshot_history(table: Table) -> list[SnapshotInfo]:
    """Every snapshot the table still has, newest first."""
    current = table.metadata.current_snapshot_id
    history = []
    for snapshot in table.metadata.snapshots:
        summary = snapshot.summary
        history.append(
            SnapshotInfo(
                snapshot_id=snapshot.snapshot_id,
                parent_id=snapshot.parent_snapshot_id,
                sequence_number=snapshot.sequence_number or 0,
                committed_at=datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC),
                operation=summary.operation.value if summary is not None else None,
                summary={k: v for k, v in (summary.additional_properties if summary else {}).items()},
                is_current=snapshot.snapshot_id == current,
            )
        )
    return sorted(history, key=lambda s: (s.committed_at, s.sequence_number), reverse=True)


# --- maintenance ----------------------------------------------------------------------------------------------


def _cutoff(config: TableMaintenanceConfig, default_days: int) -> datetime:
    if config.older_than is not None:
        return config.older_than if config.older_than.tzinfo else config.older_than.replace(tzinfo=UTC)
    days = config.older_than_days if config.older_than_days is not None else default_days
    return datetime.now(UTC) - timedelta(days=days)


def expire_snapshots(catalog: Catalog, namespace: str, config: TableMaintenanceConfig) -> int:
    """Expires snapshots older than the cut-off (`older_than`, else `older_than_days`, default 7), keeping the
    newest `retain_last`, the current one and every branch head or tag. Metadata only: the files they alone
    referenced stay on disk until `remove_orphan_files`."""
    table = catalog.load_table((namespace, config.table))
    snapshots = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True)
    keep = {s.snapshot_id for s in snapshots[: config.retain_last]}
    keep |= {ref.snapshot_id for ref in table.metadata.refs.values()}  # current (main) and any branch or tag
    if table.metadata.current_snapshot_id is not None:
        keep.add(table.metadata.current_snapshot_id)
    cutoff_ms = _cutoff(config, DEFAULT_EXPIRE_DAYS).timestamp() * 1000
    expired = [s.snapshot_id for s in snapshots if s.snapshot_id not in keep and s.timestamp_ms < cutoff_ms]
    if expired:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
    return len(expired)


def rows_per_file(table: Table) -> int:
    """Rows that fill one file of the table's target size, at the current files' bytes per row (an over-estimate
    for tiny files, whose footers weigh most: the rewrite then makes somewhat smaller files than the target)."""
    rows = size = 0
    for data_file in live_files(table):
        rows += data_file.record_count
        size += data_file.file_size_in_bytes
    if rows == 0 or size == 0:
        return DEFAULT_TARGET_FILE_ROWS
    return max(1000, min(100_000_000, int(target_file_size(table) * rows / size)))


@dataclass(frozen=True)
class OrphanFiles:
    removed: list[str]
    bytes: int
    kept_recent: int  # unreferenced, but not older than the cut-off


def _fs_path(uri: str) -> str:
    """A location as pyarrow's file system names it: the path for local files, bucket + key for object stores."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return parts.path
    return parts.netloc + parts.path


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata names: metadata files (current and logged), statistics, and for every
    snapshot its manifest list, manifests and every file their entries name (deleted entries too)."""
    io = table.io
    metadata = table.metadata
    named = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    named |= {s.statistics_path for s in metadata.statistics}
    named |= {s.statistics_path for s in metadata.partition_statistics}
    seen_manifests: set[str] = set()
    for snapshot in metadata.snapshots:
        named.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            named.add(manifest.manifest_path)
            named |= {e.data_file.file_path for e in manifest.fetch_manifest_entry(io, discard_deleted=False)}
    return {_fs_path(uri) for uri in named}


def remove_orphan_files(table: Table, older_than: datetime) -> OrphanFiles:
    """Deletes the files under the table's location that no metadata names and that were last modified before
    `older_than` (files of a commit still in flight are recent: the cut-off keeps them)."""
    from pyarrow import fs

    referenced = referenced_files(table)
    filesystem, root = fs.FileSystem.from_uri(table.metadata.location)
    cutoff = older_than if older_than.tzinfo else older_than.replace(tzinfo=UTC)
    removed: list[str] = []
    size = recent = 0
    for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type != fs.FileType.File or info.path in referenced:
            continue
        modified = info.mtime
        if modified is None or (modified if modified.tzinfo else modified.replace(tzinfo=UTC)) >= cutoff:
            recent += 1
            continue
        filesystem.delete_file(info.path)
        removed.append(info.path)
        size += info.size or 0
    return OrphanFiles(removed=removed, bytes=size, kept_recent=recent)


# --- schema evolution -----------------------------------------------------------------------------------------


class SchemaChangeError(ValueError):
    """A schema change the table cannot take. `reason`: invalid (400), not_found (404) or conflict (409)."""

    def __init__(self, message: str, *, field: str, reason: Literal["invalid", "not_found", "conflict"]) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


def parse_column_type(text: str) -> PrimitiveType:
    """An Iceberg primitive type from its name (`long`, `decimal(10, 2)`, `fixed[16]`; SQL `bigint`, `varchar`...)."""
    from pyiceberg.types import PrimitiveType

    name = text.strip().lower()
    name = _TYPE_ALIASES.get(name, name)
    decimal = _DECIMAL.match(name)
    if decimal and not (1 <= int(decimal.group(1)) <= 38 and int(decimal.group(2)) <= int(decimal.group(1))):
        raise SchemaChangeError(
            "A decimal's precision is 1 to 38 and its scale at most its precision.", field="type", reason="invalid"
        )
    if name in _SIMPLE_TYPES or name in ("uuid", "binary") or decimal or re.fullmatch(r"fixed\[\d+\]", name):
        try:
            return PrimitiveType.model_validate(name)
        except ValueError:
            pass
    raise SchemaChangeError(
        f"Unknown column type '{text}'. Use one of: {', '.join(_SIMPLE_TYPES + _OTHER_TYPES)}.",
        field="type",
        reason="invalid",
    )


def _check_name(name: str, field: str) -> None:
    if not COLUMN_NAME.match(name):
        raise SchemaChangeError(
            "A column name starts with a letter or '_' and has only letters, digits and '_' (at most 128).",
            field=field,
            reason="invalid",
        )


def _clash(table: Table, name: str, field: str) -> None:
    """Column names are compared case-insensitively: SQL readers (DuckDB, dbt) could not tell them apart."""
    for existing in table.schema().fields:
        if existing.name.lower() == name.lower():
            raise SchemaChangeError(
                f"The table already has a column '{existing.name}'.", field=field, reason="conflict"
            )


def _column(table: Table, name: str) -> int:
    """The field id of the top-level column `name`."""
    for existing in table.schema().fields:
        if existing.name == name:
            return existing.field_id
    raise SchemaChangeError(f"The table has no column '{name}'.", field="column", reason="not_found")


def _cursor_of(table: Table, name: str) -> bool:
    return CURSOR_PROPERTY_PREFIX + name in table.properties


def check_schema_change(table: Table, config: TableMaintenanceConfig) -> None:
    """Raises SchemaChangeError unless the table can take the change as it is now."""
    if config.operation == "add_column":
        assert config.name is not None and config.type is not None  # the config's own validator
        _check_name(config.name, "name")
        parse_column_type(config.type)
        _clash(table, config.name, "name")
    elif config.operation == "rename_column":
        assert config.column is not None and config.name is not None
        _check_rename(table, config.column, config.name)
    else:
        assert config.column is not None
        _check_drop(table, config.column)


def _check_rename(table: Table, column: str, name: str) -> None:
    _column(table, column)
    _check_name(name, "name")
    if name == column:
        raise SchemaChangeError("The new name is the column's current name.", field="name", reason="invalid")
    if name.lower() != column.lower():  # a change of case only clashes with nothing but itself
        _clash(table, name, "name")
    if _cursor_of(table, column):
        raise SchemaChangeError(
            f"'{column}' is the incremental cursor of the connector that syncs this table.",
            field="column",
            reason="invalid",
        )


def _check_drop(table: Table, column: str) -> None:
    field_id = _column(table, column)
    schema = table.schema()
    uses = []
    if field_id in schema.identifier_field_ids:
        uses.append("an identifier field")
    if any(f.source_id == field_id for spec in table.specs().values() for f in spec.fields):
        uses.append("a partition source")
    if any(f.source_id == field_id for order in table.sort_orders().values() for f in order.fields):
        uses.append("a sort key")
    if _cursor_of(table, column):
        uses.append("the incremental cursor of the connector that syncs this table")
    if len(schema.fields) == 1:
        uses.append("the table's only column")
    if uses:
        raise SchemaChangeError(
            f"'{column}' cannot be dropped: it is {' and '.join(uses)}.", field="column", reason="invalid"
        )


def apply_schema_change(table: Table, config: TableMaintenanceConfig) -> int:
    """Checks the change and commits it in one schema update; returns the new schema id. Data files are not
    rewritten: Iceberg resolves columns by field id, so old files read NULL for an added column and lose a
    dropped one."""
    check_schema_change(table, config)
    with table.update_schema() as update:
        if config.operation == "add_column":
            assert config.name is not None and config.type is not None
            update.add_column(config.name, parse_column_type(config.type), doc=config.doc, required=False)
        elif config.operation == "rename_column":
            assert config.column is not None and config.name is not None
            update.rename_column(config.column, config.name)
        else:
            assert config.column is not None
            update.delete_column(config.column)
    return table.metadata.current_schema_id


# --- one operation, as a run carries it out -------------------------------------------------------------------


def run_maintenance(
    catalog: Catalog, namespace: str, config: TableMaintenanceConfig, *, run_id: str
) -> tuple[str, dict[str, Any]]:
    """Carries out `config`'s operation on its table; returns a line for the run's log and metadata for its
    output."""
    identifier = (namespace, config.table)
    if config.operation == "compact":
        from rime_dagster.connectors.landing import compact_table

        rows = config.target_file_rows or rows_per_file(catalog.load_table(identifier))
        result = compact_table(catalog, identifier, run_id=run_id, target_file_rows=rows, min_files=config.min_files)
        meta = {"files_before": result.files_before, "files_after": result.files_after, "rows": result.rows}
        if result.snapshot_id is None:
            return f"{config.table}: {result.files_before} data file(s), nothing to compact", meta
        return (
            f"{config.table}: {result.files_before} data files rewritten into {result.files_after} "
            f"({result.rows} rows, snapshot {result.snapshot_id})",
            {**meta, "snapshot_id": str(result.snapshot_id)},
        )
    if config.operation == "expire_snapshots":
        expired = expire_snapshots(catalog, namespace, config)
        return f"{config.table}: expired {expired} snapshots", {"expired_snapshots": expired}
    table = catalog.load_table(identifier)
    if config.operation == "remove_orphan_files":
        orphans = remove_orphan_files(table, _cutoff(config, DEFAULT_ORPHAN_DAYS))
        return (
            f"{config.table}: removed {len(orphans.removed)} orphan files ({orphans.bytes} bytes); "
            f"{orphans.kept_recent} unreferenced files are too recent to remove",
            {"removed_files": len(orphans.removed), "removed_bytes": orphans.bytes, "kept_recent": orphans.kept_recent},
        )
    schema_id = apply_schema_change(table, config)
    return f"{config.table}: {config.operation} done (schema {schema_id})", {"schema_id": schema_id}
