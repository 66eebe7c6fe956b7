"""dbt-duckdb plugin: connector tables as DuckDB views over their current Iceberg snapshots.

Generated profiles list this module under `plugins:`. On every new dbt connection it

* points DuckDB at the extensions installed as Python packages (duckdb-ext-*) and loads `iceberg`
  (nothing is downloaded at run time);
* (re)creates, for each connector table `<namespace>.<prefix>__<table>` in the Iceberg catalog, the
  view `<prefix>.<table>` as `iceberg_scan(<current metadata file>)`, so a dbt source with
  `schema: <prefix>` reads the latest synced snapshot, streamed by DuckDB, never copied;
* drops the views it made earlier for tables that are gone (kept in `rime_meta.connector_views`).

The Iceberg catalog is the deployment's (RIME_* settings, inherited by the dbt process).
"""

from __future__ import annotations

import logging
from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin

log = logging.getLogger(__name__)

VIEWS_TABLE = "rime_meta.connector_views"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connector_views(namespace: str) -> list[tuple[str, str, str]]:
    """(schema, view, metadata location) for every connector table of `namespace`."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    from api_shim.iceberg import open_catalog
    from api_shim.settings import get_settings

    catalog = open_catalog(get_settings())
    try:
        identifiers = catalog.list_tables(namespace)
    except NoSuchNamespaceError:
        return []
    views = []
    for ident in identifiers:
        name = ident[-1]
        if "__" not in name:
            continue
        table = catalog.load_table(ident)
        if "rime.connector_id" not in table.properties:
            continue  # published dbt models and anything else are not sources
        prefix, view = name.split("__", 1)
        location = table.metadata_location.removeprefix("file://")
        views.append((prefix, view, location))
    return views


def sync_views(conn: Any, namespace: str) -> int:
    """Makes the connection's database hold exactly the current connector views; returns their count."""
    wanted = connector_views(namespace)
    conn.execute("CREATE SCHEMA IF NOT EXISTS rime_meta")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {VIEWS_TABLE} (schema_name VARCHAR, view_name VARCHAR)")
    previous = set(conn.execute(f"SELECT schema_name, view_name FROM {VIEWS_TABLE}").fetchall())
    current = {(schema, view) for schema, view, _ in wanted}
    for schema, view in previous - current:
        conn.execute(f"DROP VIEW IF EXISTS {_quote(schema)}.{_quote(view)}")
    for schema, view, location in wanted:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        conn.execute(
            f"CREATE OR REPLACE VIEW {_quote(schema)}.{_quote(view)} AS "
            f"SELECT * FROM iceberg_scan({_literal(location)})"
        )
    conn.execute(f"DELETE FROM {VIEWS_TABLE}")
    if current:
        conn.executemany(f"INSERT INTO {VIEWS_TABLE} VALUES (?, ?)", sorted(current))
    return len(current)


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self.namespace = plugin_config.get("namespace")

    def update_connection_config(self, creds, config: dict[str, Any]) -> None:
        from rime_dagster.connectors.sources._duckdb import extension_directory

        config["extension_directory"] = extension_directory()
        config["autoinstall_known_extensions"] = False
        config["autoload_known_extensions"] = False

    def configure_connection(self, conn) -> None:
        conn.execute("LOAD avro")
        conn.execute("LOAD iceberg")
        if self.namespace:
            count = sync_views(conn, self.namespace)
            log.debug("rime: %d connector views in namespace %s", count, self.namespace)
