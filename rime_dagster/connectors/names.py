"""How connector tables are named in Iceberg and Dagster: one place, used by the API and the code location."""

from __future__ import annotations

from collections.abc import Iterable

from rime_dagster.platform import run_tags
from rime_dagster.platform.names import dagster_name
from rime_dagster.platform.naming import identifier


def landing_name(table: str) -> str:
    """The source table's part of its Iceberg table name and asset key: `Order-Items` -> `order_items`."""
    return identifier(table, fallback="t")


def iceberg_table_name(table_prefix: str, table: str) -> str:
    return f"{table_prefix}__{landing_name(table)}"


def table_asset_key(namespace: str, table_prefix: str, table: str) -> list[str]:
    """[project, connector, table], as the Dagster asset key and lineage node of a synced table."""
    return [namespace, table_prefix, landing_name(table)]


def landing_collisions(tables: Iterable[str]) -> dict[str, list[str]]:
    """Landing names that two or more of `tables` share (`Orders` and `orders`, `order-items` and `order_items`,
    long names cut at the same place), each with those tables in their order."""
    by_name: dict[str, list[str]] = {}
    for table in tables:
        by_name.setdefault(landing_name(table), []).append(table)
    return {name: group for name, group in by_name.items() if len(group) > 1}


def landable_tables(tables: Iterable[str]) -> list[str]:
    """`tables` without those sharing a landing name: no choice between them would be safe, since a table that
    appears later would take over (and overwrite) the Iceberg table of one that synced before. Selected tables
    are refused when they collide; discovered ones are left out."""
    tables = list(tables)
    colliding = {t for group in landing_collisions(tables).values() for t in group}
    return [t for t in tables if t not in colliding]


def describe_collisions(table_prefix: str, collisions: dict[str, list[str]]) -> list[str]:
    """One sentence per shared landing name, naming the tables: `'Orders' and 'orders' would both land in ...`."""
    sentences = []
    for name, group in collisions.items():
        quoted = [f"'{t}'" for t in group]
        both = "both" if len(group) == 2 else "all"
        listed = f"{', '.join(quoted[:-1])} and {quoted[-1]}"
        sentences.append(f"{listed} would {both} land in Iceberg table '{iceberg_table_name(table_prefix, name)}'.")
    return sentences


def connector_job_name(namespace: str) -> str:
    """The job that syncs the connectors of the project with this namespace (a run selects one connector's tables).

    One job per project, not per connector: Dagster resolves every asset job against the whole asset graph
    and snapshots each job's config schema, so a job per connector made a reload grow with the square of
    the number of connectors (8 s of the code server's 12 s at 1,000 connectors).
    """
    return f"sync_{namespace}"


def connector_schedule_name(namespace: str, table_prefix: str) -> str:
    """The connector's schedule (of its project's sync job): `demo__shop_files_schedule`."""
    return f"{dagster_name(namespace, table_prefix)}_schedule"


def connector_op_name(namespace: str, table_prefix: str) -> str:
    """The op that syncs the connector's tables (their multi-asset): `demo__shop_files__sync`."""
    return dagster_name(namespace, table_prefix, "sync")


def connector_pool(connector_id: str) -> str:
    """The Dagster pool (one slot) of every step that writes the connector's tables: its sync job's, and pipeline
    steps that sync it or maintain one of its tables. See rime_dagster/platform/pools.py."""
    return f"connector-sync:{connector_id}"


def connector_tags(project_id: str, connector_id: str) -> dict[str, str]:
    return {
        run_tags.PROJECT_ID: project_id,
        run_tags.CONNECTOR_ID: connector_id,
        run_tags.KIND: run_tags.KIND_CONNECTOR_SYNC,
    }
