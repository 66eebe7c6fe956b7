"""dbt project -> Dagster definitions: assets, asset checks, a job and a schedule.

Every model, seed and snapshot is an asset keyed `[namespace, slug, name]` in the project's group;
dbt tests are asset checks; sources that read connector tables depend on those connector assets,
so the lineage graph runs connector table -> staging -> mart. The specs come from the parsed
manifest (`asset_specs.py`), without dagster-dbt: it imports dbt-core, which would cost every code
server and run worker about 1.5 s. A run imports it and runs dbt through its `DbtCliInvocation`, in an
environment of dbt's own (`workspace.dbt_env`: no platform secret, only its own target's password).
Each run writes its dbt artifacts to `runs/<run id>/` (the API reads run_results.json from there)
and then publishes the models marked `meta: {rime: {publish: true}}` to Iceberg.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias

import dagster as dg
import yaml
from filelock import FileLock, Timeout
from pydantic import Field

from rime_dagster.dbt import sandbox
from rime_dagster.dbt.asset_specs import DbtAssetSpecs, DbtSelection, build_asset_specs, subset_selection
from rime_dagster.dbt.manifest import ConnectorIndex, load_manifest, publish_requested
from rime_dagster.dbt.names import dbt_job_name, dbt_op_name, dbt_tags
from rime_dagster.dbt.run_config import DbtRunOptions
from rime_dagster.dbt.workspace import dbt_env, dbt_executable, sandbox_policy
from rime_dagster.platform import run_tags
from rime_dagster.platform.limits import max_runtime_tags
from rime_dagster.platform.schedules import rime_schedule
from rime_dagster.resources import IcebergCatalogResource, settings
from rime_dagster.specs import DbtProjectSpec

if TYPE_CHECKING:
    from dagster_dbt import DagsterDbtTranslator
    from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation

# The project's own multi-asset, or a pipeline's `dbt` step op.
RunContext: TypeAlias = dg.AssetExecutionContext | dg.OpExecutionContext
# What dbt reports about a model: an output of the project's multi-asset, a materialization in a pipeline step.
ModelEvent: TypeAlias = dg.Output | dg.AssetMaterialization

INDIRECT_SELECTION_ENV = "DBT_INDIRECT_SELECTION"
SUBSET_SELECTOR = "rime_subset"


class DbtRunConfig(dg.Config):
    """A dbt run's options (run_config.DbtRunOptions, which the API launches runs with); UI runs get the defaults."""

    command: Literal["build", "run", "test", "seed"] = Field("build", description="The dbt command.")
    full_refresh: bool = Field(False, description="Pass --full-refresh (build, run, seed).")
    vars_json: str = Field("{}", description="dbt --vars as a JSON object, over the project's own vars.")


def asset_specs_of(spec: DbtProjectSpec, manifest: Mapping[str, Any]) -> DbtAssetSpecs:
    return build_asset_specs(
        manifest, namespace=spec.namespace, slug=spec.slug, index=ConnectorIndex(spec.connector_tables)
    )


def dbt_definitions(spec: DbtProjectSpec) -> dg.Definitions:
    manifest_path = spec.files.manifest_path
    if not manifest_path.is_file():
        return dg.Definitions()  # not parsed yet (or its files are gone): nothing to run
    manifest = load_manifest(manifest_path)
    assets = asset_specs_of(spec, manifest)
    nodes = manifest.get("nodes", {})

    @dg.multi_asset(
        name=dbt_op_name(spec.namespace, spec.slug),
        specs=assets.specs,
        check_specs=assets.check_specs,
        can_subset=True,
        op_tags={run_tags.DBT_PROJECT_ID: spec.id},
    )
    def run_dbt(
        context: dg.AssetExecutionContext, config: DbtRunConfig, iceberg: IcebergCatalogResource
    ) -> Iterator[Any]:
        missing = {k: v for k, v in dbt_tags(spec.project_id, spec.id).items() if k not in context.run.tags}
        if missing:  # started from the Dagster UI: tag it so the API's run history shows it
            context.instance.add_run_tags(context.run_id, missing)
        options = DbtRunOptions.from_op_config(config)
        yield from dbt_events(
            spec,
            nodes,
            context,
            iceberg,
            command=options.command,
            full_refresh=options.full_refresh,
            variables={**spec.vars, **options.vars},
            run_dir=spec.files.run_dir(context.run_id),
            assets=assets,
        )

    job = dg.define_asset_job(
        name=dbt_job_name(spec.namespace, spec.slug),
        selection=dg.AssetSelection.assets(run_dbt),
        tags={**dbt_tags(spec.project_id, spec.id), **max_runtime_tags()},
        metadata={run_tags.DBT_PROJECT_ID: spec.id, run_tags.PROJECT_ID: spec.project_id},
        description=f"Run dbt project '{spec.name}'.",
        # One step (one multi-asset op): a step process of its own would only add start-up time.
        executor_def=dg.in_process_executor,
    )
    schedules = rime_schedule(job, spec.schedule, paused=spec.paused)
    return dg.Definitions(assets=[run_dbt], jobs=[job], schedules=schedules)


def dbt_events(
    spec: DbtProjectSpec,
    nodes: Mapping[str, Any],
    context: RunContext,
    iceberg: IcebergCatalogResource,
    *,
    command: str,
    full_refresh: bool,
    variables: Mapping[str, Any],
    run_dir: Path,
    select: str | None = None,
    exclude: str | None = None,
    assets: DbtAssetSpecs | None = None,
) -> Iterator[Any]:
    """Runs one dbt command and yields its Dagster events; models marked for publishing are published to
    Iceberg once dbt exits (their events held back until then). Raises when dbt or a publish failed.

    Shared by the project's own assets (`assets` given: the selection comes from the asset context, and
    the events are its outputs and check results) and pipeline `dbt` steps (an op context;
    `select`/`exclude` passed to dbt; asset materializations and check evaluations).
    """
    # dagster-dbt imports dbt-core: only a run pays for it, never the code location's load.
    from rime_dagster.dbt.translator import translator_for

    # dbt reads the password through env_var() in the generated profile: it goes to that dbt process only,
    # never to a file nor to this worker's os.environ (which the next dbt run of the worker would inherit).
    env = dbt_env(settings(), spec.target_password())
    manifest = load_manifest(spec.files.manifest_path)
    selection = (
        subset_selection(manifest, assets, context.selected_asset_keys, context.selected_asset_check_keys)
        if assets is not None
        else None
    )
    args = _dbt_args(command, full_refresh=full_refresh, variables=variables, select=select, exclude=exclude)
    tables = _prepare_run_dir(spec, run_dir, env)
    held: list[ModelEvent] = []  # events of models to publish, yielded once published
    failure: BaseException | None = None
    publish_errors: list[str] = []
    with _warehouse_lock(spec, context), _selected(spec, selection) as (project_dir, selection_args):
        if selection and selection.indirect_selection:
            env[INDIRECT_SELECTION_ENV] = selection.indirect_selection
        invocation = _start_dbt(
            [*args, *selection_args],
            confine=sandbox_policy(
                settings(), spec.files, duckdb_file=spec.duckdb_file, target=spec.target, tables=tables
            ),
            env=env,
            project_dir=project_dir,
            profiles_dir=spec.files.profiles_dir,
            target_path=run_dir,
            manifest=manifest,
            translator=translator_for(spec),
        )
        events: Iterator[Any] = invocation.stream()
        if assets is not None:
            events = _asset_events(events, context, assets, nodes)
        try:
            for event in events:
                if isinstance(event, (dg.Output, dg.AssetMaterialization)) and _publishes(nodes, event):
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


def _dbt_args(
    command: str, *, full_refresh: bool, variables: Mapping[str, Any], select: str | None, exclude: str | None
) -> list[str]:
    args = [command]
    if full_refresh and command in ("build", "run", "seed"):
        args.append("--full-refresh")
    if variables:
        args += ["--vars", json.dumps(dict(variables))]
    if select:
        args += ["--select", select]
    if exclude:
        args += ["--exclude", exclude]
    return args


def _prepare_run_dir(spec: DbtProjectSpec, run_dir: Path, env: dict[str, str]) -> list[str]:
    """Makes the run's folder, with the project's partial parse and (DuckDB) the connector views file that `env`
    points dbt at. Returns the current metadata files of the connector tables dbt reads."""
    from rime_dagster.dbt.duckdb_plugin import VIEWS_FILE_ENV, connector_views

    run_dir.mkdir(parents=True, exist_ok=True)
    tables: list[str] = []
    if spec.adapter == "duckdb":
        # The connector tables dbt reads as views: looked up here, since dbt's sandbox keeps it from the catalog.
        views = connector_views(spec.namespace)
        (run_dir / "connector_views.json").write_text(json.dumps(views))
        env[VIEWS_FILE_ENV] = str(run_dir / "connector_views.json")
        tables = [location for _, _, location in views]
    # Start from the revision's parse: dbt re-parses only what differs (e.g. other vars), not every file.
    partial = spec.files.target_dir / "partial_parse.msgpack"
    if partial.is_file():
        shutil.copy2(partial, run_dir / partial.name)
    return tables


def _asset_events(
    events: Iterable[Any], context: RunContext, assets: DbtAssetSpecs, nodes: Mapping[str, Any]
) -> Iterator[Any]:
    """dagster-dbt's events for an op (asset materializations, check evaluations, observations) as the
    events of the project's multi-asset: an output per selected asset, a check result per selected check.

    A test dbt ran without its check being selected (dbt's eager indirect selection picks relationships
    tests of unselected models) is reported as observations of the nodes it read, as dagster-dbt does.
    """
    selected = context.selected_asset_keys
    selected_checks = context.selected_asset_check_keys
    for event in events:
        if isinstance(event, dg.AssetMaterialization) and event.asset_key in selected:
            yield dg.Output(None, output_name=event.asset_key.to_python_identifier(), metadata=event.metadata)
        elif isinstance(event, dg.AssetCheckEvaluation):
            if dg.AssetCheckKey(event.asset_key, event.check_name) in selected_checks:
                yield dg.AssetCheckResult(
                    asset_key=event.asset_key,
                    check_name=event.check_name,
                    passed=event.passed,
                    severity=event.severity,
                    metadata=event.metadata,
                )
                continue
            test = nodes.get(_metadata_text(event.metadata, "unique_id") or "", {})
            for parent_id in (test.get("depends_on") or {}).get("nodes", []):
                yield dg.AssetObservation(
                    asset_key=assets.key_of(parent_id),
                    metadata=event.metadata,
                    description=f"dbt test `{event.check_name}` ran without its asset check being selected.",
                )
        else:
            yield event


@contextmanager
def _selected(spec: DbtProjectSpec, selection: DbtSelection | None) -> Iterator[tuple[Path, list[str]]]:
    """The project folder to run dbt in, and the selection arguments for it.

    A selection too long for one command-line argument becomes a selector in a temporary copy of the
    project (dbt reads selectors only from the project's selectors.yml; a revision is never edited).
    """
    if selection is None:
        yield spec.files.project_dir, []
        return
    if not selection.too_long:
        yield spec.files.project_dir, ["--select", selection.select]
        return
    # Inside the project's dbt folder: the only place its sandboxed dbt may read.
    with tempfile.TemporaryDirectory(prefix="subset-", dir=spec.root) as folder:
        project_dir = Path(folder) / "project"
        # Links as links: `dbt deps` links local packages, which need not be copied.
        shutil.copytree(spec.files.project_dir, project_dir, symlinks=True)
        selectors = [{"name": SUBSET_SELECTOR, "definition": {"union": selection.select.split(" ")}}]
        (project_dir / "selectors.yml").write_text(yaml.safe_dump({"selectors": selectors}))
        yield project_dir, ["--selector", SUBSET_SELECTOR]


def _start_dbt(
    args: list[str],
    *,
    confine: sandbox.Policy | None,
    env: Mapping[str, str],
    project_dir: Path,
    profiles_dir: Path,
    target_path: Path,
    manifest: Mapping[str, Any],
    translator: "DagsterDbtTranslator",
) -> "DbtCliInvocation":
    """Starts `dbt <args>` as dagster-dbt's `DbtCliResource.cli` does, but in the environment `env` alone:
    `cli` hands dbt a copy of this worker's os.environ (platform secrets included) and takes no environment.
    Without `cli`'s in-process dbt adapter, used only for column metadata we do not fetch."""
    from dagster_dbt.compat import DBT_PYTHON_VERSION
    from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation

    return DbtCliInvocation.run(
        args=[*sandbox.command(confine, [dbt_executable()]), *args],
        env={
            **env,
            "DAGSTER_DBT_CLI": "true",
            "DBT_LOG_FORMAT": "json",
            "DBT_TARGET_PATH": str(target_path),
            "DBT_LOG_PATH": str(target_path),
            "DBT_PROFILES_DIR": str(profiles_dir),
            "DBT_PROJECT_DIR": str(project_dir),
        },
        manifest=manifest,
        dagster_dbt_translator=translator,
        project_dir=project_dir,
        target_path=target_path,
        raise_on_error=True,
        context=None,
        adapter=None,
        cli_version=DBT_PYTHON_VERSION,
    )


def _metadata_text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    value = getattr(value, "value", value)
    return value if isinstance(value, str) else None


class _warehouse_lock:
    """One dbt process at a time per DuckDB file (DuckDB allows one writer process); waits, with a log line,
    for at most RIME_DBT_LOCK_TIMEOUT_SECONDS, then fails the run."""

    def __init__(self, spec: DbtProjectSpec, context: RunContext) -> None:
        self.lock = FileLock(str(spec.duckdb_file) + ".lock") if spec.adapter == "duckdb" else None
        self.context = context

    def __enter__(self) -> Self:
        if self.lock is None:
            return self
        os.makedirs(os.path.dirname(self.lock.lock_file), exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            timeout = settings().dbt_lock_timeout_seconds
            self.context.log.info("Another dbt run holds this project's DuckDB database; waiting for it.")
            try:
                self.lock.acquire(timeout=timeout)
            except Timeout:
                raise dg.Failure(
                    description=f"Another dbt run held this project's DuckDB database for more than {timeout:g} s "
                    "(RIME_DBT_LOCK_TIMEOUT_SECONDS); this run did not start dbt. Retry once that run has ended.",
                    allow_retries=False,
                ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()


def _node_for(nodes: Mapping[str, Any], event: ModelEvent) -> Mapping[str, Any]:
    unique_id = _metadata_text(event.metadata, "unique_id")
    return nodes.get(unique_id, {}) if unique_id else {}


def _publishes(nodes: Mapping[str, Any], event: ModelEvent) -> bool:
    node = _node_for(nodes, event)
    return node.get("resource_type") == "model" and publish_requested(node)


def _publish(
    spec: DbtProjectSpec,
    nodes: Mapping[str, Any],
    event: ModelEvent,
    context: RunContext,
    iceberg: IcebergCatalogResource,
) -> tuple[ModelEvent, str | None]:
    from rime_dagster.dbt.publish import publish_model

    node = _node_for(nodes, event)
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
            run_tags.ICEBERG_TABLE: table,
            run_tags.ICEBERG_SNAPSHOT_ID: str(result.snapshot_id),
            run_tags.PUBLISHED_ROWS: result.rows_written,
        }
    )
    return published, None
