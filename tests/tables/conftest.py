"""Tables landed the way syncs land them, in the catalog of a RIME_HOME under tmp_path (the `home` fixture), which
is the catalog the code location's IcebergCatalogResource opens too."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest

from rime_dagster.connectors.landing import land_table
from rime_dagster.platform.iceberg import open_catalog
from rime_dagster.settings import get_settings

NAMESPACE = "ops"
TABLE = "shop__orders"
IDENT = (NAMESPACE, TABLE)
SCHEMA = pa.schema([("id", pa.int64()), ("email", pa.string()), ("amount", pa.float64())])


def orders(start: int, count: int) -> pa.RecordBatch:
    ids = list(range(start, start + count))
    return pa.record_batch(
        [pa.array(ids, pa.int64()), pa.array([f"u{i}@x.org" for i in ids]), pa.array([i * 1.5 for i in ids])],
        schema=SCHEMA,
    )


def append(catalog, start: int, count: int, *, identifier=IDENT, run_id: str | None = None) -> None:
    land_table(
        catalog,
        identifier,
        SCHEMA,
        [orders(start, count)],
        mode="incremental",
        cursor_field="id",
        run_id=run_id or f"sync-{start}",
        properties={"rime.connector_id": "conn_shop", "rime.source_table": "orders"},
    )


def checksum(catalog, identifier=IDENT, snapshot_id: int | None = None) -> tuple[int, str]:
    """Row count and a digest of every row, in id order: equal before and after means the data is unchanged."""
    data = catalog.load_table(identifier).scan(snapshot_id=snapshot_id).to_arrow().sort_by("id")
    digest = hashlib.sha256(json.dumps(data.to_pylist(), sort_keys=True, default=str).encode()).hexdigest()
    return data.num_rows, digest


@pytest.fixture
def catalog(home):
    return open_catalog(get_settings())


@pytest.fixture
def small_files(catalog):
    """`shop__orders` written by five incremental syncs of 20 rows: five small files, five snapshots."""
    for i in range(5):
        append(catalog, i * 20, 20)
    return catalog
