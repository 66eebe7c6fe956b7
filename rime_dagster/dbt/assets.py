"""dbt project -> Dagster definitions through dagster-dbt: assets, asset checks, a job and a schedule.

Every model, seed and snapshot is an asset keyed `[namespace, slug, name]` in the project's group;
dbt tests are asset checks; sources that read connector tables depend on those connector assets,
so the lineage graph runs connector table -> staging -> mart. Each run writes its dbt artifacts to
`runs/<run id>/` (the API reads run_results.json from there) and then publishes the models marked
`meta: {rime: {publish: true}}` to Iceberg.
"""

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any, Literal

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets
from filelock import FileLock, Timeout
from pydantic import Field

from rime_dagster.dbt.manifest import (
    ConnectorIndex,
    load_manifest,
    node_asset_key,
    publish_requested,
    source_asset_key,
)
from rime_dagster.dbt.names import dbt_job_name, dbt_op_name, dbt_tags
from rime_dagster.dbt.workspace import PASSWORD_ENV, dbt_executable
from rime_dagster.platform.schedules import rime_schedule
from rime_dagster.resources import IcebergCatalogResource
from rime_dagster.specs import DbtProjectSpec


class RimeDbtTranslator(DagsterDbtTranslator):
    """Keys and groups under the Rime project; sources on connector tables map to the connector assets."""

    def __init__(self, namespace: str, slug: str, index: ConnectorIndex):
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))
        self.namespace = namespace
        self.slug = slug
        self.index = index

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey(source_asset_key(self.namespace, self.slug, dbt_resource_props, self.index))
        return dg.AssetKey(node_asset_key(self.namespace, self.slug, dbt_resource_props))

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return self.namespace


class DbtRunConfig(dg.Config):
    """What the API's `POST .../run` sets; a run started from the Dagster UI gets the defaults."""

    command: Literal["build", "run", "test", "seed"] = Field("build", description="The dbt command.")
    full_refresh: bool = Field(False, description="Pass --full-refresh (build, run, seed).")
    vars_json: str = Field("{}", description="dbt --vars as a JSON object, over the project's own vars.")


def translator_for(spec: DbtProjectSpec) -> RimeDbtTranslator:
    return RimeDbtTranslator(spec.namespace, spec.slug, ConnectorIndex(spec.connector_tables))


def dbt_definitions(spec: DbtProjectSpec) -> dg.Definitions:
    manifest_path = spec.files.manifest_path
    if not manifest_path.is_file():
        return dg.Definitions()  # not parsed yet (or its files are gone): nothing to run
    manifest = load_manifest(manifest_path)
    translator = translator_for(spec)
    nodes = manifest.get("nodes", {})

    @dbt_assets(
        manifest=manifest,
        dagster_dbt_translator=translator,
        name=dbt_op_name(spec.id),
        op_tags={"rime/dbt_project_id": spec.id},
    )
    def run_dbt(context: dg.AssetExecutionContext, config: DbtRunConfig, iceberg: IcebergCatalogResource):
        missing = {k: v for k, v in dbt_tags(spec.project_id, spec.id).items() if k not in context.run.tags}
        if missing:  # started from the Dagster UI: tag it so the API's run history shows it
            context.instance.add_run_tags(context.run_id, missing)
        variables = {**spec.vars, **json.loads(config.vars_json or "{}")}
        yield from dbt_events(
            spec,
            nodes,
            context,
            iceberg,
            command=config.command,
            full_refresh=config.full_refresh,
            variables=variables,
            run_dir=spec.files.run_dir(context.run_id),
        )

    job = dg.define_asset_job(
        name=dbt_job_name(spec.id),
        selection=dg.AssetSelection.assets(run_dbt),
        tags=dbt_tags(spec.project_id, spec.id),
        description=f"Run dbt project '{spec.name}'.",
        # One step (one multi-asset op): a step process of its own would only add start-up time.
        executor_def=dg.in_process_executor,
    )
    schedules = rime_schedule(job, spec.schedule, paused=spec.paused)
    return dg.Definitions(assets=[run_dbt], jobs=[job], schedules=schedules)


def dbt_events(
    spec: DbtProjectSpec,
    nodes: Mapping[str, Any],
    context,
    iceberg: IcebergCatalogResource,
    *,
    command: str,
    full_refresh: bool,
    variables: Mapping[str, Any],
    run_dir,
    select: str | None = None,
    exclude: str | None = None,
):
    """Runs one dbt command and yields its Dagster events; models marked for publishing are published to
    Iceberg once dbt exits (their events held back until then). Raises when dbt or a publish failed.

    Shared by the project's own assets (selection from the asset context) and pipeline `dbt` steps
    (an op context; `select`/`exclude` passed to dbt).
    """
    password = spec.target_password()
    if password is not None:
        # dbt reads it through env_var() in the generated profile; it is never written to disk.
        os.environ[PASSWORD_ENV] = password
    dbt = DbtCliResource(
        project_dir=str(spec.files.project_dir),
        profiles_dir=str(spec.files.profiles_dir),
        dbt_executable=dbt_executable(),
    )
    args = [command]
    if full_refresh and command in ("build", "run", "seed"):
        args.append("--full-refresh")
    if variables:
        args += ["--vars", json.dumps(dict(variables))]
    if select:
        args += ["--select", select]
    if exclude:
        args += ["--exclude", exclude]
    run_dir.mkdir(parents=True, exist_ok=True)
    # Start from the revision's parse: dbt re-parses only what differs (e.g. other vars), not every file.
    partial = spec.files.target_dir / "partial_parse.msgpack"
    if partial.is_file():
        shutil.copy2(partial, run_dir / partial.name)
    held: list[Any] = []  # events of models to publish, yielded once published
    failure: BaseException | None = None
    publish_errors: list[str] = []
    with _warehouse_lock(spec, context):
        invocation = dbt.cli(
            args,
            context=context,
            target_path=run_dir,
            manifest=load_manifest(spec.files.manifest_path),
            dagster_dbt_translator=translator_for(spec),
        )
        try:
            for event in invocation.stream():
                if isinstance(event, (dg.Output, dg.AssetMaterialization)) and _publishes(nodes, event, context):
                    held.append(event)
                    continue
                yield event
        except Exception as exc:  # the models dbt did finish still get published and reported
            failure = exc
        for event in held:
            published, error = _publish(spec, nodes, event, context, iceberg)
            if error:
                publish_errors.append(error)
            yield published
    if failure is not None:
        raise failure
    if publish_errors:
        raise dg.Failure(description="; ".join(publish_errors))


class _warehouse_lock:
    """One dbt process at a time per DuckDB file (DuckDB allows one writer process); waits, with a log line."""

    def __init__(self, spec: DbtProjectSpec, context: dg.AssetExecutionContext):
        self.lock = FileLock(str(spec.duckdb_file) + ".lock") if spec.adapter == "duckdb" else None
        self.context = context

    def __enter__(self):
        if self.lock is None:
            return self
        os.makedirs(os.path.dirname(self.lock.lock_file), exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            self.context.log.info("Another dbt run holds this project's DuckDB database; waiting for it.")
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()


def _node_for(nodes: Mapping[str, Any], event: dg.Output, context: dg.AssetExecutionContext) -> Mapping[str, Any]:
    unique_id = event.metadata.get("unique_id")
    value = getattr(unique_id, "value", unique_id)
    return nodes.get(value, {}) if isinstance(value, str) else {}


def _publishes(nodes: Mapping[str, Any], event: dg.Output, context: dg.AssetExecutionContext) -> bool:
    node = _node_for(nodes, event, context)
    return node.get("resource_type") == "model" and publish_requested(node)


def _publish(
    spec: DbtProjectSpec,
    nodes: Mapping[str, Any],
    event: dg.Output,
    context: dg.AssetExecutionContext,
    iceberg: IcebergCatalogResource,
) -> tuple[dg.Output, str | None]:
    from rime_dagster.dbt.publish import publish_model

    node = _node_for(nodes, event, context)
    postgres = None
    if spec.adapter == "postgres":
        postgres = {
            "config": {
                "host": spec.target["host"],
                "port": spec.target.get("port", 5432),
                "database": spec.target["dbname"],
            },
            "credentials": {"username": spec.target["user"], "password": spec.target_password() or ""},
        }
    try:
        table, result = publish_model(
            iceberg.catalog(),
            namespace=spec.namespace,
            slug=spec.slug,
            dbt_project_id=spec.id,
            node=node,
            duckdb_file=spec.duckdb_file if spec.adapter == "duckdb" else None,
            postgres=postgres,
            run_id=context.run_id,
        )
    except Exception as exc:
        # The model itself was built: it is reported as materialized, and the run fails at the end.
        message = f"Publishing {node.get('name')} to Iceberg failed: {type(exc).__name__}: {exc}"
        context.log.error(message)
        return event, message
    context.log.info(f"published {node['name']} to Iceberg {table}: {result.rows_written} rows")
    published = event.with_metadata(
        {
            **event.metadata,
            "rime/iceberg_table": table,
            "rime/iceberg_snapshot_id": str(result.snapshot_id),
            "rime/published_rows": result.rows_written,
        }
    )
    return published, None
