"""dbt-duckdb plugin: connector tables as DuckDB views over their current Iceberg snapshots.

Generated profiles list this module under `plugins:`. On every new dbt connection it

* points DuckDB at the extensions installed as Python packages (duckdb-ext-*) and loads `iceberg`
  (nothing is downloaded at run time);
* (re)creates, for each connector table `<namespace>.<prefix>__<table>` in the Iceberg catalog, the
  view `<prefix>.<table>` as `iceberg_scan(<current metadata file>)`, so a dbt source with
  `schema: <prefix>` reads the latest synced snapshot, streamed by DuckDB, never copied;
* drops the views it made earlier for tables that are gone (kept in `rime_meta.connector_views`).

dbt runs sandboxed (rime_dagster/dbt/sandbox.py) and never opens the Iceberg catalog: the run worker looks the
tables up (`connector_views`) and hands dbt the list in a file named by RIME_DBT_CONNECTOR_VIEWS_FILE. Without
it (`dbt parse` in the API) the views stay as they are.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbt.adapters.duckdb.plugins import BasePlugin
from typing_extensions import override

from rime_dagster.connectors.sources._sql import quote_ident, quote_literal

if TYPE_CHECKING:
    from dbt.adapters.duckdb.credentials import DuckDBCredentials
    from duckdb import DuckDBPyConnection

log = logging.getLogger(__name__)

VIEWS_TABLE = "rime_meta.connector_views"
VIEWS_FILE_ENV = "RIME_DBT_CONNECTOR_VIEWS_FILE"


def connector_views(namespace: str) -> list[tuple[str, str, str]]:
    """(schema, view, metadata location) for every connector table of `namespace`."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    from rime_dagster.platform.iceberg import open_catalog
    from rime_dagster.settings import get_settings

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


def sync_views(conn: DuckDBPyConnection, wanted: list[tuple[str, str, str]]) -> int:
    """Makes the connection's database hold exactly the connector views `wanted`; returns their count."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS rime_meta")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {VIEWS_TABLE} (schema_name VARCHAR, view_name VARCHAR)")
    previous = set(conn.execute(f"SELECT schema_name, view_name FROM {VIEWS_TABLE}").fetchall())
    current = {(schema, view) for schema, view, _ in wanted}
    for schema, view in previous - current:
        conn.execute(f"DROP VIEW IF EXISTS {quote_ident(schema)}.{quote_ident(view)}")
    for schema, view, location in wanted:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        conn.execute(
            f"CREATE OR REPLACE VIEW {quote_ident(schema)}.{quote_ident(view)} AS "
            f"SELECT * FROM iceberg_scan({quote_literal(location)})"
        )
    conn.execute(f"DELETE FROM {VIEWS_TABLE}")
    if current:
        conn.executemany(f"INSERT INTO {VIEWS_TABLE} VALUES (?, ?)", sorted(current))
    return len(current)


class Plugin(BasePlugin):
    @override
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self.namespace = plugin_config.get("namespace")  # kept: older generated profiles name it

    @override
    def update_connection_config(self, creds: DuckDBCredentials, config: dict[str, Any]) -> None:
        from rime_dagster.connectors.sources._duckdb import extension_directory

        config["extension_directory"] = extension_directory()
        config["autoinstall_known_extensions"] = False
        config["autoload_known_extensions"] = False

    @override
    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        conn.execute("LOAD avro")
        conn.execute("LOAD iceberg")
        views_file = os.environ.get(VIEWS_FILE_ENV)
        if views_file:
            wanted = [tuple(view) for view in json.loads(Path(views_file).read_text())]
            count = sync_views(conn, wanted)
            log.debug("rime: %d connector views in namespace %s", count, self.namespace)
