"""One table's sync: stream it from the source into its Iceberg table (no Dagster here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rime_dagster.connectors.landing import LandResult, land_table, read_cursor_state
from rime_dagster.connectors.prefetch import prefetched
from rime_dagster.connectors.sources import Source

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog


@dataclass(frozen=True)
class TableSync:
    table: str
    namespace: str
    iceberg_table: str
    mode: str  # full_refresh | incremental
    cursor_field: str | None
    properties: dict[str, str]


def sync_table(source: Source, catalog: Catalog, spec: TableSync, *, run_id: str, full_refresh: bool) -> LandResult:
    """Lands `spec.table`; incremental reads only rows past the cursor stored with the Iceberg table."""
    identifier = (spec.namespace, spec.iceberg_table)
    incremental = spec.mode == "incremental" and spec.cursor_field is not None and not full_refresh
    cursor = read_cursor_state(catalog, identifier, spec.cursor_field) if incremental else None
    schema = source.arrow_schema(spec.table)
    batches = source.read(
        spec.table,
        cursor_field=spec.cursor_field if incremental else None,
        cursor_value=cursor.value if cursor else None,
    )
    reader = prefetched(batches, name=f"read-{spec.table}")
    try:
        return land_table(
            catalog,
            identifier,
            schema,
            # The scan of the next batch overlaps the Parquet write of this one (both release the GIL).
            reader,
            mode="incremental" if incremental else "full_refresh",
            # A full refresh of an incremental table restarts its cursor from the new data.
            cursor_field=spec.cursor_field,
            run_id=run_id,
            properties=spec.properties,
            # Rows were selected past this cursor: appending them onto a table that moved since would land some twice.
            read_at=cursor,
        )
    finally:
        reader.close()  # stops the read-ahead thread now, not when the traceback is collected
