"""Publishing dbt models to Iceberg: the relation is streamed as Arrow batches into
`<namespace>.<slug>__<model>` with one OVERWRITE snapshot, like a connector's full refresh."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from rime_dagster.connectors.landing import LandResult, land_table
from rime_dagster.connectors.prefetch import prefetched
from rime_dagster.connectors.sources._sql import quote_ident
from rime_dagster.dbt.manifest import published_table_name

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

BATCH_ROWS = 100_000


def _duckdb_batches(duckdb_file: Path, relation: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import duckdb

    from rime_dagster.connectors.sources._duckdb import extension_directory

    con = duckdb.connect(
        str(duckdb_file),
        read_only=True,
        config={
            "extension_directory": extension_directory(),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        },
    )
    try:
        con.execute("LOAD avro")
        con.execute("LOAD iceberg")  # a published view may read connector tables
        con.execute("SET TimeZone = 'UTC'")
        reader = con.execute(f"SELECT * FROM {relation}").fetch_record_batch(BATCH_ROWS)
    except Exception:
        con.close()
        raise

    def batches() -> Iterator[pa.RecordBatch]:
        with closing(con):
            yield from reader

    return reader.schema, batches()


def publish_model(
    catalog: Catalog,
    *,
    namespace: str,
    slug: str,
    dbt_project_id: str,
    node: Mapping[str, Any],
    duckdb_file: Path | None,
    postgres: Mapping[str, Any] | None,
    run_id: str,
) -> tuple[str, LandResult]:
    """Lands the model's current rows; returns the Iceberg table name and the landing result."""
    relation_name = node.get("alias") or node["name"]
    if duckdb_file is not None:
        relation = f"{quote_ident(node['schema'])}.{quote_ident(relation_name)}"
        schema, batches = _duckdb_batches(duckdb_file, relation)
    elif postgres is not None:
        from rime_dagster.connectors.sources import source_class

        source = source_class("postgresql").from_dicts(
            {**postgres["config"], "schema": node["schema"]}, postgres["credentials"]
        )
        schema = source.arrow_schema(relation_name)
        batches = source.read(relation_name)
    else:
        raise ValueError("publish_model needs a DuckDB file or a PostgreSQL target")
    name = published_table_name(slug, node)
    reader = prefetched(batches, name=f"publish-{name}")
    try:
        result = land_table(
            catalog,
            (namespace, name),
            schema,
            reader,
            mode="full_refresh",
            cursor_field=None,
            run_id=run_id,
            properties={"rime.dbt_project_id": dbt_project_id, "rime.dbt_model": node["unique_id"]},
        )
    finally:
        reader.close()
    return f"{namespace}.{name}", result
