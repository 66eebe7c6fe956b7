"""Opens the Iceberg catalog (pyiceberg) that connector tables land in."""

from __future__ import annotations

from pathlib import Path

from api_shim.settings import Settings


def open_catalog(settings: Settings):
    """The configured pyiceberg catalog: a SQL catalog under RIME_HOME unless
    RIME_ICEBERG_CATALOG_PROPERTIES names another `type`."""
    from pyiceberg.catalog import load_catalog

    props = dict(settings.iceberg_properties)
    warehouse = props.get("warehouse", "")
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if "type" not in props:
        props["type"] = "sql"
    return load_catalog(settings.iceberg_catalog_name, **props)
