"""The project's table maintenance job: one op that carries out one table operation per run, given as run config.

The API launches every table operation (compaction, snapshot expiry, orphan-file removal, schema changes) as a run
of this job; its config is a pipeline `table_maintenance` step's, so the two never diverge. The op writes the table
as the only writer of its pool (the connector's that lands it, else the table's own), so a compaction never
overlaps a sync of the same connector.
"""

from collections.abc import Iterable

import dagster as dg

from rime_dagster.connectors.names import connector_pool
from rime_dagster.pipelines.spec import TableMaintenanceConfig
from rime_dagster.platform import run_tags
from rime_dagster.platform.limits import max_runtime_tags
from rime_dagster.platform.pools import pool_writes, table_pool
from rime_dagster.specs import ConnectorSpec, ProjectSpec
from rime_dagster.tables.names import maintenance_job_name, maintenance_op_name


def maintenance_pool(namespace: str, table: str, connectors: Iterable[ConnectorSpec]) -> tuple[str, str]:
    """The pool of a step that maintains `table`, and who it may wait for.

    A connector's table shares the connector's pool with its syncs: a sync writes all the connector's tables, so
    one pool per table would not keep them apart. Other tables (published dbt models) get a pool of their own.
    """
    prefix = table.split("__", 1)[0]
    owner = next((c for c in connectors if c.table_prefix == prefix and c.namespace == namespace), None)
    if owner is not None:
        return connector_pool(owner.id), f"another sync of connector '{owner.name}'"
    return table_pool(namespace, table), f"other maintenance of {table}"


def table_maintenance_definitions(project: ProjectSpec, connectors: list[ConnectorSpec]) -> dg.Definitions:
    @dg.op(
        name=maintenance_op_name(project.namespace),
        config_schema=dg.Permissive(),
        required_resource_keys={"iceberg"},
        description="One Iceberg operation on one table of the project (a `table_maintenance` step's config).",
    )
    def maintain_table(context: dg.OpExecutionContext) -> None:
        # pyarrow and pyiceberg: only a run pays for them, never the code location's load.
        from rime_dagster.tables.operations import run_maintenance

        config = TableMaintenanceConfig.model_validate(context.op_config)
        pool, waited_for = maintenance_pool(project.namespace, config.table, connectors)
        with pool_writes(context, waited_for, pool=pool):
            message, metadata = run_maintenance(
                context.resources.iceberg.catalog(), project.namespace, config, run_id=context.run_id
            )
        context.log.info(message)
        context.add_output_metadata(metadata)

    @dg.job(
        name=maintenance_job_name(project.namespace),
        description=f"Table operations of project '{project.name}' (a run carries out one, given as run config).",
        tags={run_tags.PROJECT_ID: project.id, run_tags.KIND: run_tags.KIND_TABLE_MAINTENANCE, **max_runtime_tags()},
        metadata={run_tags.PROJECT_ID: project.id},
        executor_def=dg.in_process_executor,
    )
    def table_maintenance() -> None:
        maintain_table()

    return dg.Definitions(jobs=[table_maintenance])
