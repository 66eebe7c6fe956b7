"""How connector tables are named in Iceberg and Dagster: one place, used by the API and the code location."""

from __future__ import annotations

from api_shim.naming import identifier


def iceberg_table_name(table_prefix: str, table: str) -> str:
    return f"{table_prefix}__{identifier(table, fallback='t')}"


def table_asset_key(namespace: str, table_prefix: str, table: str) -> list[str]:
    """[project, connector, table], as the Dagster asset key and lineage node of a synced table."""
    return [namespace, table_prefix, identifier(table, fallback="t")]


def connector_job_name(connector_id: str) -> str:
    return f"sync_{connector_id}"


def connector_pool(connector_id: str) -> str:
    """The Dagster pool (one slot) of every step that writes the connector's tables: its sync job's, and pipeline
    steps that sync it or maintain one of its tables. See rime_dagster/platform/pools.py."""
    return f"connector-sync:{connector_id}"


def connector_tags(project_id: str, connector_id: str) -> dict[str, str]:
    return {"rime/project_id": project_id, "rime/connector_id": connector_id, "rime/kind": "connector_sync"}
