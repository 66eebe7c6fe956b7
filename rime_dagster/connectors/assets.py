"""Connectors -> Dagster definitions: one asset per table, a sync job per project, a schedule per connector."""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from rime_dagster.connectors.names import (
    connector_job_name,
    connector_op_name,
    connector_pool,
    connector_schedule_name,
    connector_tags,
    describe_collisions,
    iceberg_table_name,
    landable_tables,
    landing_collisions,
    table_asset_key,
)
from rime_dagster.platform import run_tags
from rime_dagster.platform.limits import max_runtime_tags
from rime_dagster.platform.pools import pool_writes
from rime_dagster.platform.schedules import rime_schedule
from rime_dagster.resources import IcebergCatalogResource
from rime_dagster.specs import ConnectorSpec, ProjectSpec

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog

log = logging.getLogger(__name__)


def _column_schema(schema: "pa.Schema", tags: dict[str, dict[str, str]] | None = None) -> dg.TableSchema:
    """The table's columns; `tags`: each column's classifications as `{name: sensitivity}`."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=f.name,
                type=str(f.type),
                constraints=dg.TableColumnConstraints(nullable=f.nullable),
                tags=(tags or {}).get(f.name, {}),
            )
            for f in schema
        ]
    )


def _classify_landed(
    spec: ConnectorSpec, table: str, catalog: "Catalog", context: dg.AssetExecutionContext | dg.OpExecutionContext
) -> dict[str, dict[str, str]]:
    """Runs the project's classification rules over a table that just landed; its columns' classifications as
    `{column: {name: sensitivity}}`. A failure is logged and costs only this run's tags: the data has landed."""
    from rime_dagster.governance.classify import classify_tables
    from rime_dagster.settings import get_settings
    from rime_dagster.store.session import session_factory

    try:
        sessions = session_factory(get_settings().metadata_url)
        (result,) = classify_tables(
            sessions, catalog, project_id=spec.project_id, namespace=spec.namespace, tables=[table]
        )
    except Exception as exc:
        context.log.warning(f"table {table}: not classified ({type(exc).__name__}: {exc}); earlier tags are kept")
        return {}
    if result.matches:
        found = ", ".join(sorted({m.column for m in result.matches}))
        context.log.info(f"table {table}: classification rules tagged {found}")
    return {column: {tag.name: tag.sensitivity for tag in tags} for column, tags in result.columns.items()}


@dataclass(frozen=True)
class LandedTable:
    asset_key: dg.AssetKey
    metadata: dict[str, Any]


def sync_tables(
    spec: ConnectorSpec,
    tables: list[str],
    catalog: "Catalog",
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    *,
    full_refresh: bool,
) -> Iterator[LandedTable]:
    """Syncs `tables` of the connector one by one, yielding each landed table; one failing table does not
    stop the others, and a dg.Failure naming every failed table is raised at the end.

    Shared by the connector's own assets and by pipeline `connector_sync` steps.
    """
    # pyarrow, pyiceberg and the source drivers: only a run pays for them, never the code location's load.
    from rime_dagster.connectors.sync import TableSync, sync_table

    source = spec.build_source()
    failures: list[str] = []
    # The API refuses such selections and leaves such discovered tables out; this holds whatever the caller passes.
    for collision in describe_collisions(spec.table_prefix, landing_collisions(tables)):
        context.log.error(f"{collision} Not synced: one would overwrite the other.")
        failures.append(collision)
    for table in landable_tables(tables):
        table_sync = TableSync(
            table=table,
            namespace=spec.namespace,
            iceberg_table=iceberg_table_name(spec.table_prefix, table),
            mode=spec.sync_mode,
            cursor_field=spec.cursor_fields.get(table),
            properties={"rime.connector_id": spec.id, "rime.source_table": table},
        )
        try:
            result = sync_table(source, catalog, table_sync, run_id=context.run_id, full_refresh=full_refresh)
        except Exception as exc:  # one table failing must not stop the others
            context.log.error(f"table {table}: {type(exc).__name__}: {exc}")
            failures.append(f"{table}: {exc}")
            continue
        context.log.info(f"table {table}: {result.rows_written} rows, snapshot {result.snapshot_id}")
        tags = _classify_landed(spec, table_sync.iceberg_table, catalog, context)
        yield LandedTable(
            dg.AssetKey(table_asset_key(spec.namespace, spec.table_prefix, table)),
            {
                "rows": result.rows_written,
                "snapshot_id": str(result.snapshot_id) if result.snapshot_id is not None else None,
                "cursor": str(result.cursor_value) if result.cursor_value is not None else None,
                "mode": "full_refresh" if full_refresh or spec.sync_mode != "incremental" else "incremental",
                "dagster/column_schema": _column_schema(source.arrow_schema(table), tags),
            },
        )
    if failures:
        raise dg.Failure(description="; ".join(failures))


def connector_assets(spec: ConnectorSpec) -> dg.AssetsDefinition | None:
    """The connector's tables as one multi-asset whose step lands them (None without tables)."""
    if not spec.tables:
        return None
    by_key = {dg.AssetKey(table_asset_key(spec.namespace, spec.table_prefix, t)): t for t in spec.tables}
    asset_specs = [
        dg.AssetSpec(
            key=key,
            group_name=spec.namespace,
            description=f"`{table}` from connector '{spec.name}' ({spec.connector_type}), landed in Iceberg as "
            f"`{spec.namespace}.{iceberg_table_name(spec.table_prefix, table)}`.",
            kinds={"iceberg", spec.connector_type},
            metadata={
                run_tags.CONNECTOR_ID: spec.id,
                run_tags.SOURCE_TABLE: table,
                run_tags.ICEBERG_TABLE: f"{spec.namespace}.{iceberg_table_name(spec.table_prefix, table)}",
                run_tags.SYNC_MODE: spec.sync_mode,
            },
            tags={run_tags.PROJECT_ID: spec.project_id},
        )
        for key, table in by_key.items()
    ]

    @dg.multi_asset(
        name=connector_op_name(spec.namespace, spec.table_prefix),
        specs=asset_specs,
        can_subset=True,
        description=f"Sync connector '{spec.name}' into Iceberg.",
        # One run at a time writes the connector's tables: a second sync waits here for the first one's step.
        pool=connector_pool(spec.id),
    )
    def sync(context: dg.AssetExecutionContext, iceberg: IcebergCatalogResource) -> Iterator[dg.MaterializeResult]:
        # Runs started from the Dagster UI's asset graph carry no Rime tags: add them so the
        # API's run history shows every sync, whoever started it.
        missing = {k: v for k, v in connector_tags(spec.project_id, spec.id).items() if k not in context.run.tags}
        if missing:
            context.instance.add_run_tags(context.run_id, missing)
        full_refresh = run_tags.is_set(context.run.tags, run_tags.FULL_REFRESH)
        selected = [by_key[key] for key in sorted(context.selected_asset_keys, key=lambda k: k.path)]
        with pool_writes(context, f"another sync of connector '{spec.name}'"):
            for landed in sync_tables(spec, selected, iceberg.catalog(), context, full_refresh=full_refresh):
                yield dg.MaterializeResult(asset_key=landed.asset_key, metadata=landed.metadata)

    return sync


def project_connector_definitions(
    project: ProjectSpec,
    connectors: list[ConnectorSpec],
    build: Callable[[ConnectorSpec], dg.AssetsDefinition | None] = connector_assets,
) -> dg.Definitions:
    """The project's connectors: their assets, the project's sync job and each connector's schedule.

    One job per project (see `connector_job_name`); a sync of one connector is a run of it that selects
    that connector's tables, which is what each connector's schedule asks for. A connector whose assets fail
    to build is left out and logged; the others are not affected.
    """
    built: list[tuple[ConnectorSpec, dg.AssetsDefinition]] = []
    for spec in connectors:
        try:
            assets = build(spec)
        except Exception:
            log.exception("skipping connector %s: its definitions failed to build", spec.id)
            continue
        if assets is not None:
            built.append((spec, assets))
    if not built:
        return dg.Definitions()
    job = dg.define_asset_job(
        name=connector_job_name(project.namespace),
        selection=dg.AssetSelection.assets(*(a for _, a in built)),
        tags={run_tags.PROJECT_ID: project.id, run_tags.KIND: run_tags.KIND_CONNECTOR_SYNC, **max_runtime_tags()},
        metadata={run_tags.PROJECT_ID: project.id},
        description=f"Sync connectors of project '{project.name}' (a run selects one connector's tables).",
        # In the run worker: a step process per connector would only add start-up time.
        executor_def=dg.in_process_executor,
    )
    schedules = [
        schedule
        for spec, assets in built
        for schedule in rime_schedule(
            job,
            spec.schedule,
            paused=spec.paused,
            name=connector_schedule_name(spec.namespace, spec.table_prefix),
            asset_selection=list(assets.keys),
            run_tags=connector_tags(spec.project_id, spec.id),
        )
    ]
    return dg.Definitions(assets=[a for _, a in built], jobs=[job], schedules=schedules)
