"""The project's table maintenance job: one op that carries out one table operation per run, given as run config.

The API launches every table operation (compaction, snapshot expiry, orphan-file removal, schema changes) as a run
of this job; its config is a pipeline `table_maintenance` step's, so the two never diverge. The op writes the table
as the only writer of its pool (the connector's that lands it, else the table's own), so a compaction never
overlaps a sync of the same connector.

Each enabled table retention policy of the project is a schedule of this job whose run carries out the policy's
operations in order (rime_dagster/tables/retention.py), under the same pool.
"""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import dagster as dg

from rime_dagster.connectors.names import connector_pool
from rime_dagster.platform import run_tags
from rime_dagster.platform.limits import max_runtime_tags
from rime_dagster.platform.pools import pool_writes, table_pool
from rime_dagster.platform.schedules import SCHEDULE_TAGS
from rime_dagster.specs import ConnectorSpec, ProjectSpec, RetentionPolicySpec
from rime_dagster.tables.names import maintenance_job_name, maintenance_op_name
from rime_dagster.tables.retention import (
    maintenance_configs,
    retention_run_config,
    retention_schedule_name,
    retention_tags,
)


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


def table_maintenance_definitions(
    project: ProjectSpec, connectors: list[ConnectorSpec], retention_policies: Sequence[RetentionPolicySpec] = ()
) -> dg.Definitions:
    @dg.op(
        name=maintenance_op_name(project.namespace),
        config_schema=dg.Permissive(),
        required_resource_keys={"iceberg"},
        description="One Iceberg operation on one table of the project (a `table_maintenance` step's config), or "
        "a table retention policy's operations in order (`{retention_policy_id, operations: [...]}`).",
    )
    def maintain_table(context: dg.OpExecutionContext) -> None:
        # pyarrow and pyiceberg: only a run pays for them, never the code location's load.
        from rime_dagster.tables.operations import run_maintenance

        configs = maintenance_configs(context.op_config)
        pool, waited_for = maintenance_pool(project.namespace, configs[0].table, connectors)
        metadata: dict = {}
        with pool_writes(context, waited_for, pool=pool):
            for config in configs:
                message, done = run_maintenance(
                    context.resources.iceberg.catalog(), project.namespace, config, run_id=context.run_id
                )
                context.log.info(message)
                # One operation's metadata as it always was; a policy's run keys each by its operation.
                metadata |= done if len(configs) == 1 else {f"{config.operation}.{k}": v for k, v in done.items()}
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

    schedules = [retention_schedule(table_maintenance, policy) for policy in retention_policies]
    return dg.Definitions(jobs=[table_maintenance], schedules=schedules)


def retention_schedule(job: dg.JobDefinition, policy: RetentionPolicySpec) -> dg.ScheduleDefinition:
    """The policy's schedule (UTC), stopped while the policy is disabled, as a paused pipeline's is: each tick runs
    the maintenance job with the policy's operations, cut-offs counted back from the tick's scheduled time."""
    status = dg.DefaultScheduleStatus.RUNNING if policy.enabled else dg.DefaultScheduleStatus.STOPPED
    tags = {**retention_tags(policy), **SCHEDULE_TAGS}

    @dg.schedule(
        name=retention_schedule_name(policy.namespace, policy.table),
        job=job,
        cron_schedule=policy.schedule,
        execution_timezone="UTC",
        default_status=status,
        description=f"Retention policy of table {policy.table}",
        tags={run_tags.RETENTION_POLICY_ID: policy.id},
    )
    def tick(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        at = context.scheduled_execution_time or datetime.now(UTC)
        return dg.RunRequest(run_config=retention_run_config(policy, at), tags=tags)

    return tick
