"""Opens the Iceberg catalog (pyiceberg) that connector tables land in."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rime_dagster.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog  # imported by the functions: only a catalog user pays for pyiceberg


def open_catalog(settings: Settings) -> Catalog:
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


class CatalogProvider:
    """Opens the catalog once per process (each pyiceberg SQL catalog holds its own engine)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()

    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                self._catalog = open_catalog(self._settings)
            return self._catalog


def drop_tables(
    catalog: Catalog, namespace: str, *, prefix: str | None = None, drop_namespace: bool = False
) -> list[str]:
    """Drops (and purges) the namespace's tables, or only those named `<prefix>__*`."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    try:
        identifiers = catalog.list_tables(namespace)
    except NoSuchNamespaceError:
        return []
    dropped: list[str] = []
    for identifier in identifiers:
        if prefix is None or identifier[-1].startswith(f"{prefix}__"):
            catalog.purge_table(identifier)
            dropped.append(".".join(identifier))
    if drop_namespace:
        catalog.drop_namespace(namespace)
    return dropped
