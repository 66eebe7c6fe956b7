"""Pipeline -> Dagster job: one node per step, wired by `depends_on`.

Every step node has one Nothing input `start` (fed by all the steps it depends on) and one Nothing
output `result`, so a step runs only when every upstream step succeeded; Dagster does not start
the rest, which the API reports as `skipped`. A `pipeline` step is the other pipeline's graph
embedded as a node (its root steps wait on `start`, a join op produces `result`), so its steps
run in the same Dagster run and show in the same graph. Op definitions are named
`<pipeline id>__<step>` (unique in a job); nodes are aliased to `step_<step id>`.
"""

import re
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.types.dagster_type import resolve_dagster_type

from rime_dagster.connectors.assets import sync_tables
from rime_dagster.connectors.names import connector_pool
from rime_dagster.dbt.assets import dbt_events
from rime_dagster.dbt.manifest import load_manifest, read_run_results
from rime_dagster.pipelines.names import DONE_NODE, MAX_NESTING, pipeline_tags, step_node_name
from rime_dagster.pipelines.spec import (
    ConnectorSyncConfig,
    DbtStepConfig,
    PipelineStepConfig,
    StepBody,
    StepConfig,
    TableMaintenanceConfig,
    parse_step_config,
    validate_dag,
)
from rime_dagster.pipelines.triggers import trigger_sensors
from rime_dagster.platform import run_tags
from rime_dagster.platform.names import dagster_name
from rime_dagster.platform.pools import pool_writes
from rime_dagster.platform.schedules import rime_schedule
from rime_dagster.specs import ConnectorSpec, DbtProjectSpec, PipelineSpec
from rime_dagster.tables.jobs import maintenance_pool

START, RESULT = "start", "result"
NOTHING = resolve_dagster_type(dg.Nothing)  # graph input/output mappings want the DagsterType itself


class Resources:
    """What steps refer to, by id: the project's connectors and dbt projects, its pipelines in the environment
    being built (a pipeline step runs the other pipeline's version in the same environment), and each pipeline in
    its live environment (whose runs an on_success trigger follows)."""

    def __init__(
        self,
        connectors: Mapping[str, ConnectorSpec],
        dbt_projects: Mapping[str, DbtProjectSpec],
        pipelines: Mapping[str, PipelineSpec],
        live_pipelines: Mapping[str, PipelineSpec] | None = None,
    ) -> None:
        self.connectors = connectors
        self.dbt_projects = dbt_projects
        self.pipelines = pipelines  # in the environment being built
        self.live_pipelines = pipelines if live_pipelines is None else live_pipelines  # what triggers watch
        self.graphs: dict[str, dg.GraphDefinition] = {}


def _run_variables(context: dg.OpExecutionContext, pipeline: PipelineSpec) -> dict[str, Any]:
    return {**pipeline.variables, **run_tags.variables_of(context.run.tags)}


def _step_pool(pipeline: PipelineSpec, config: StepConfig, resources: Resources) -> tuple[str | None, str]:
    """The pool of a step that writes Iceberg tables (rime_dagster/platform/pools.py), and who it may wait for.

    Maintenance of a connector's table shares the connector's pool with its syncs: a connector's sync step
    writes all its tables, so one pool per table would not keep them apart.
    """
    if isinstance(config, ConnectorSyncConfig):
        connector = resources.connectors.get(config.connector_id)
        name = connector.name if connector else config.connector_id
        return connector_pool(config.connector_id), f"another sync of connector '{name}'"
    if isinstance(config, TableMaintenanceConfig):
        return maintenance_pool(pipeline.namespace, config.table, resources.connectors.values())
    return None, ""


def _step_op(pipeline: PipelineSpec, step: StepBody, config: StepConfig, resources: Resources) -> dg.OpDefinition:
    retry = dg.RetryPolicy(max_retries=pipeline.retries, delay=5) if pipeline.retries else None
    pool, waited_for = _step_pool(pipeline, config, resources)

    @dg.op(
        name=dagster_name(pipeline.namespace, pipeline.base_name, re.sub(r"[^A-Za-z0-9_]", "_", step.id)),
        ins={START: dg.In(dg.Nothing)},
        out={RESULT: dg.Out(dg.Nothing)},
        description=f"{step.type} step '{step.name or step.id}' of pipeline '{pipeline.name}'",
        tags={run_tags.STEP_ID: step.id, run_tags.STEP_TYPE: step.type, run_tags.PIPELINE_ID: pipeline.id},
        retry_policy=retry,
        required_resource_keys={"iceberg"},
        pool=pool,
    )
    def run_step(context: dg.OpExecutionContext) -> Iterator[Any]:
        full_refresh = run_tags.is_set(context.run.tags, run_tags.FULL_REFRESH)
        rows = 0
        with pool_writes(context, waited_for):  # nothing without a pool
            if isinstance(config, ConnectorSyncConfig):
                rows = yield from _sync_step(context, config, resources, full_refresh=full_refresh)
            elif isinstance(config, DbtStepConfig):
                rows = yield from _dbt_step(context, pipeline, step, config, resources, full_refresh=full_refresh)
            elif isinstance(config, TableMaintenanceConfig):
                _maintenance_step(context, pipeline.namespace, config)
        yield dg.Output(None, RESULT, metadata={"rows": rows})

    return run_step


def _sync_step(
    context: dg.OpExecutionContext, config: ConnectorSyncConfig, resources: Resources, *, full_refresh: bool
) -> Generator[dg.AssetMaterialization, None, int]:
    """Syncs the connector's tables (all, or the step's); returns the rows landed."""
    connector = resources.connectors.get(config.connector_id)
    if connector is None:
        raise dg.Failure(description=f"Connector {config.connector_id} no longer exists.")
    rows = 0
    tables = config.tables or connector.tables
    catalog = context.resources.iceberg.catalog()
    for landed in sync_tables(connector, tables, catalog, context, full_refresh=full_refresh):
        rows += landed.metadata["rows"]
        yield dg.AssetMaterialization(asset_key=landed.asset_key, metadata=landed.metadata)
    return rows


def _dbt_step(
    context: dg.OpExecutionContext,
    pipeline: PipelineSpec,
    step: StepBody,
    config: DbtStepConfig,
    resources: Resources,
    *,
    full_refresh: bool,
) -> Generator[Any, None, int]:
    """Runs the step's dbt command; returns the rows published to Iceberg plus those the adapter says the
    models wrote (DuckDB says nothing)."""
    project = resources.dbt_projects.get(config.dbt_project_id)
    if project is None:
        raise dg.Failure(description=f"dbt project {config.dbt_project_id} no longer exists.")
    rows = 0
    run_dir = project.files.run_dir(f"{context.run_id}-{step.id}")
    for event in dbt_events(
        project,
        load_manifest(project.files.manifest_path).get("nodes", {}),
        context,
        context.resources.iceberg,
        command=config.command,
        full_refresh=full_refresh,
        variables={**project.vars, **_run_variables(context, pipeline)},
        run_dir=run_dir,
        select=config.select,
        exclude=config.exclude,
    ):
        if isinstance(event, dg.Output):  # an op context gets materializations, not outputs
            continue
        if isinstance(event, dg.AssetMaterialization):
            # Dagster holds metadata as MetadataValues: the count is the value of one.
            rows += int(getattr(event.metadata.get(run_tags.PUBLISHED_ROWS), "value", None) or 0)
        yield event
    return rows + dbt_rows(run_dir)


def _maintenance_step(context: dg.OpExecutionContext, namespace: str, config: TableMaintenanceConfig) -> None:
    # pyarrow and pyiceberg: only a run pays for them, never the code location's load.
    from rime_dagster.tables.operations import run_maintenance

    message, _ = run_maintenance(context.resources.iceberg.catalog(), namespace, config, run_id=context.run_id)
    context.log.info(message)


def dbt_rows(run_dir: Path) -> int:
    """Rows the models, seeds and snapshots of a dbt run wrote, as the adapter reported them."""
    results = read_run_results(run_dir) or {}
    return sum(
        r["rows_affected"]
        for unique_id, r in results.items()
        if unique_id.split(".", 1)[0] in ("model", "seed", "snapshot") and (r["rows_affected"] or 0) > 0
    )


def _join_op(pipeline: PipelineSpec) -> dg.OpDefinition:
    @dg.op(
        name=dagster_name(pipeline.namespace, pipeline.base_name, DONE_NODE),
        ins={START: dg.In(dg.Nothing)},
        out={RESULT: dg.Out(dg.Nothing)},
    )
    def done() -> None:
        return None

    return done


def pipeline_graph(pipeline: PipelineSpec, resources: Resources, depth: int = 0) -> dg.GraphDefinition:
    """The pipeline's steps as a graph (cached per pipeline: an embedded pipeline is one definition)."""
    if pipeline.id in resources.graphs:
        return resources.graphs[pipeline.id]
    if depth > MAX_NESTING:
        raise ValueError(f"pipeline {pipeline.id}: pipelines nest deeper than {MAX_NESTING}")
    steps = [StepBody.model_validate(s) for s in pipeline.steps]
    validate_dag(steps)
    node_defs: list[dg.NodeDefinition] = []
    dependencies: dict[dg.NodeInvocation, dict[str, Any]] = {}
    for i, step in enumerate(steps):
        config = parse_step_config(step, i)
        definition: dg.NodeDefinition
        if isinstance(config, PipelineStepConfig):
            inner = resources.pipelines.get(config.pipeline_id)
            if inner is None:
                raise ValueError(f"pipeline {pipeline.id}: step {step.id} runs unknown pipeline {config.pipeline_id}")
            definition = pipeline_graph(inner, resources, depth + 1)
        else:
            definition = _step_op(pipeline, step, config, resources)
        if definition not in node_defs:
            node_defs.append(definition)
        upstream = [dg.DependencyDefinition(step_node_name(dep), RESULT) for dep in step.depends_on]
        dependencies[dg.NodeInvocation(definition.name, alias=step_node_name(step.id))] = (
            {START: dg.MultiDependencyDefinition(upstream)} if upstream else {}
        )
    # One `start` fans out to the root steps; a join op waits for every sink and is the graph's `result`.
    depended = {d for s in steps for d in s.depends_on}
    sinks = [s for s in steps if s.id not in depended]
    join = _join_op(pipeline)
    node_defs.append(join)
    dependencies[dg.NodeInvocation(join.name, alias=DONE_NODE)] = {
        START: dg.MultiDependencyDefinition([dg.DependencyDefinition(step_node_name(s.id), RESULT) for s in sinks])
    }
    graph = dg.GraphDefinition(
        name=dagster_name(pipeline.namespace, pipeline.base_name, "graph"),
        description=f"Pipeline '{pipeline.name}'",
        node_defs=node_defs,
        dependencies=dependencies,
        input_mappings=[
            dg.InputMapping(
                graph_input_name=START,
                mapped_node_name=step_node_name(s.id),
                mapped_node_input_name=START,
                dagster_type=NOTHING,
            )
            for s in steps
            if not s.depends_on
        ],
        output_mappings=[
            dg.OutputMapping(
                graph_output_name=RESULT,
                mapped_node_name=DONE_NODE,
                mapped_node_output_name=RESULT,
                dagster_type=NOTHING,
            )
        ],
    )
    resources.graphs[pipeline.id] = graph
    return graph


def is_chain(pipeline: PipelineSpec, resources: Resources, depth: int = 0) -> bool:
    """Whether no two steps can ever run at once (also inside embedded pipelines).

    A DAG admits exactly one execution order when each step in topological order depends on
    the one before it.
    """
    steps = [StepBody.model_validate(s) for s in pipeline.steps]
    order = validate_dag(steps)
    by_id = {s.id: s for s in steps}
    if any(order[i - 1] not in by_id[order[i]].depends_on for i in range(1, len(order))):
        return False
    for i, step in enumerate(steps):
        config = parse_step_config(step, i)
        if isinstance(config, PipelineStepConfig):
            inner = resources.pipelines.get(config.pipeline_id)
            if inner is None or depth > MAX_NESTING or not is_chain(inner, resources, depth + 1):
                return False
    return True


def execution_config(parallel: bool) -> dict[str, Any]:
    """Run config selecting the executor of Dagster's default `multi_or_in_process_executor`."""
    return {"execution": {"config": {"multiprocess": {}} if parallel else {"in_process": {}}}}


def pipeline_definitions(pipeline: PipelineSpec, resources: Resources) -> dg.Definitions:
    tags = {**pipeline_tags(pipeline.project_id, pipeline.id), run_tags.ENVIRONMENT: pipeline.environment}
    if pipeline.version is not None:
        tags[run_tags.PIPELINE_VERSION] = str(pipeline.version)
    if pipeline.timeout_seconds:
        tags["dagster/max_runtime"] = str(pipeline.timeout_seconds)
    # A chain gains nothing from a process per step, and each one costs seconds of start-up
    # (imports); it runs in the run worker. Pipelines with parallel branches get the
    # multiprocess executor. Either is only the default: a launch may choose the other.
    job = pipeline_graph(pipeline, resources).to_job(
        name=pipeline.job_name,
        description=f"Pipeline '{pipeline.name}' ({pipeline.environment}, version {pipeline.version})",
        tags=tags,
        metadata={run_tags.PIPELINE_ID: pipeline.id, run_tags.PROJECT_ID: pipeline.project_id},
        config=execution_config(parallel=not is_chain(pipeline, resources)),
    )
    # Only the live environment's schedule starts running, and only it has the triggers' sensors
    # (rime_dagster/pipelines/versions.py): one pipeline, one set of scheduled runs.
    schedules = rime_schedule(job, pipeline.schedule, paused=pipeline.paused or not pipeline.live)
    sensors = (
        trigger_sensors(pipeline, job, connectors=resources.connectors, pipelines=resources.live_pipelines)
        if pipeline.live
        else []
    )
    return dg.Definitions(jobs=[job], schedules=schedules, sensors=sensors)
