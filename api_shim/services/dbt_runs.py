"""A dbt project's runs (launched, listed with dbt's own result per node) and its models with their latest status."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api_shim.dagster_client import DagsterClient
from api_shim.pagination import CursorCodec, PageRequest, paginate_items, scope_of
from api_shim.schemas.dbt import (
    DbtColumn,
    DbtModel,
    DbtModelList,
    DbtNodeResult,
    DbtRun,
    DbtRunList,
    DbtRunRequest,
    DbtRunStarted,
    DbtTest,
)
from api_shim.services.dbt import asset_keys, get_dbt_project, manifest_of, resolve_selection, run_dir
from api_shim.services.runs import RunView, launch_summary, launch_tags, run_page, run_view
from rime_dagster.dbt import manifest as manifests
from rime_dagster.dbt.names import dbt_job_name, dbt_op_name, dbt_tags
from rime_dagster.dbt.run_config import DbtRunOptions
from rime_dagster.platform import run_tags
from rime_dagster.settings import Settings
from rime_dagster.store.models import DbtProject, Project
from rime_dagster.store.session import release

# Runs whose dbt results are read to find each model's latest status.
STATUS_LOOKBACK_RUNS = 20


def launch(
    session: Session,
    dagster: DagsterClient,
    settings: Settings,
    project: Project,
    dbt_project_id: str,
    body: DbtRunRequest,
    *,
    triggered_by: str,
) -> DbtRunStarted:
    """Launches the project's job. dbt's selector evaluates `select`/`exclude` on the manifest, and the nodes they
    cover become the run's asset selection (all of them: no selection)."""
    row = get_dbt_project(session, project, dbt_project_id)
    manifest = manifest_of(settings, row)
    unique_ids, everything = resolve_selection(
        manifest, command=body.command, select_expr=body.select, exclude=body.exclude
    )
    release(session)
    options = DbtRunOptions(
        command=body.command,
        full_refresh=body.full_refresh,
        vars=body.vars or {},
        select=body.select,
        exclude=body.exclude,
    )
    launched = dagster.launch_run(
        dbt_job_name(project.namespace, row.slug),
        generation=project.definitions_generation,
        tags={
            **dbt_tags(project.id, row.id),
            **launch_tags(triggered_by, full_refresh=body.full_refresh),
            **options.tags(),
        },
        run_config=options.run_config(dbt_op_name(project.namespace, row.slug)),
        asset_selection=None if everything else asset_keys(project.namespace, row.slug, manifest, unique_ids),
    )
    return DbtRunStarted.of(launch_summary(dagster, launched), command=body.command, selected=len(unique_ids))


def _node_results(manifest: dict[str, Any], results: dict[str, dict[str, Any]] | None) -> list[DbtNodeResult]:
    nodes = {**manifest.get("nodes", {}), **manifest.get("sources", {})}
    out = []
    for unique_id, result in (results or {}).items():
        node = nodes.get(unique_id, {})
        out.append(
            DbtNodeResult.of(
                result,
                unique_id=unique_id,
                name=node.get("name") or unique_id.rsplit(".", 1)[-1],
                resource_type=node.get("resource_type") or unique_id.split(".", 1)[0],
            )
        )
    return out


def dbt_run(settings: Settings, row: DbtProject, manifest: dict[str, Any], view: RunView) -> DbtRun:
    """A run with what it was asked (from its tags) and dbt's result for each node it ran."""
    tags = view.record.dagster_run.tags
    options = DbtRunOptions.from_tags(tags)
    results = manifests.read_run_results(run_dir(settings, row, view.dagster_run_id))
    return DbtRun.of(
        view,
        command=options.command,
        select=options.select,
        exclude=options.exclude,
        full_refresh=options.full_refresh,
        triggered_by=tags.get(run_tags.TRIGGERED_BY) or ("schedule" if tags.get(run_tags.TRIGGER) else None),
        results=_node_results(manifest, results),
    )


def run_history(
    session: Session,
    dagster: DagsterClient,
    settings: Settings,
    codec: CursorCodec,
    project: Project,
    dbt_project_id: str,
    *,
    limit: int,
    cursor: str | None,
) -> DbtRunList:
    row = get_dbt_project(session, project, dbt_project_id)
    release(session)
    tags = {run_tags.DBT_PROJECT_ID: row.id}
    page = run_page(dagster, codec, scope=f"dbt-runs:{row.id}", tags=tags, limit=limit, cursor=cursor)
    manifest = manifest_of(settings, row)
    return page.as_page(DbtRunList, lambda r: dbt_run(settings, row, manifest, run_view(dagster, r)))


def _latest_statuses(settings: Settings, dagster: DagsterClient, row: DbtProject) -> dict[str, str]:
    """unique_id -> dbt status in the newest run (of the last few) that ran the node."""
    statuses: dict[str, str] = {}
    for record in dagster.run_records(tags={run_tags.DBT_PROJECT_ID: row.id}, limit=STATUS_LOOKBACK_RUNS):
        results = manifests.read_run_results(run_dir(settings, row, record.dagster_run.run_id))
        for unique_id, result in (results or {}).items():
            if result["status"] is not None:
                statuses.setdefault(unique_id, result["status"])
    return statuses


def _model(
    namespace: str,
    row: DbtProject,
    node: dict[str, Any],
    tests: dict[str, list[dict[str, Any]]],
    statuses: dict[str, str],
) -> DbtModel:
    node_tests = [
        DbtTest(**manifests.test_summary(t), last_status=statuses.get(t["unique_id"]))
        for t in sorted(tests.get(node["unique_id"], []), key=lambda t: t["name"])
    ]
    published = node["resource_type"] == "model" and manifests.publish_requested(node)
    return DbtModel(
        name=node["name"],
        unique_id=node["unique_id"],
        resource_type=node["resource_type"],
        materialization=manifests.materialization(node),
        schema=node.get("schema") or "",
        database=node.get("database"),
        description=node.get("description") or None,
        depends_on=list((node.get("depends_on") or {}).get("nodes", [])),
        columns=[
            DbtColumn(name=c["name"], data_type=c.get("data_type"), description=c.get("description") or None)
            for c in (node.get("columns") or {}).values()
        ],
        tests=node_tests,
        asset_key=manifests.node_asset_key(namespace, row.slug, node),
        published_table=f"{namespace}.{manifests.published_table_name(row.slug, node)}" if published else None,
        last_run_status=statuses.get(node["unique_id"]),
    )


def models_page(
    session: Session,
    dagster: DagsterClient,
    settings: Settings,
    codec: CursorCodec,
    project: Project,
    dbt_project_id: str,
    page: PageRequest,
) -> DbtModelList:
    """A page of the manifest's models, seeds and snapshots by name (unique_id breaks ties between a model and a
    seed of one name), with their columns, tests and latest run status."""
    row = get_dbt_project(session, project, dbt_project_id)
    manifest = manifest_of(settings, row)
    nodes = paginate_items(
        manifests.resources(manifest),
        lambda n: (n["name"], n["unique_id"]),
        request=page,
        codec=codec,
        scope=scope_of("dbt.models", {"dbt_project": row.id}),
    )
    tests = manifests.tests_by_node(manifest)
    statuses = _latest_statuses(settings, dagster, row) if nodes.items else {}
    return nodes.as_page(DbtModelList, lambda node: _model(project.namespace, row, node, tests, statuses))
