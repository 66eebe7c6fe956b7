"""Transformations group: `/projects/{id}/dbt-projects...` (register, update, run, runs, models, lineage)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import BackgroundTasks, Body, Depends, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_shim.dagster_client import DagsterClient, DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, SettingsDep, Viewer, pagination
from api_shim.errors import Conflict, ValidationFailed
from api_shim.pagination import Listing, Page, PageRequest, paginate_items, scope_of
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.dbt import (
    DbtColumn,
    DbtLastRun,
    DbtModel,
    DbtModelList,
    DbtNodeResult,
    DbtProjectCreate,
    DbtProjectDetail,
    DbtProjectList,
    DbtProjectResponse,
    DbtProjectUpdate,
    DbtRun,
    DbtRunList,
    DbtRunRequest,
    DbtRunStarted,
    DbtTest,
    Lineage,
)
from api_shim.services import dbt as service
from api_shim.services.projects import get_project
from api_shim.services.runs import RunView, launch_summary, run_page, run_view
from rime_dagster.dbt import manifest as manifests
from rime_dagster.dbt import workspace
from rime_dagster.dbt.names import dbt_job_name, dbt_op_name, dbt_tags
from rime_dagster.dbt.workspace import ProjectFiles
from rime_dagster.platform import run_tags
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import DbtProject, Project
from rime_dagster.store.session import release

router = rime_router(prefix="/projects/{id}/dbt-projects", tags=["Transformations"])

DBT_PROJECTS = Listing(
    "dbt_projects",
    {"created_at": DbtProject.created_at, "updated_at": DbtProject.updated_at, "name": DbtProject.name},
    DbtProject.id,
)
DbtProjectPage = page_params(DBT_PROJECTS)
ModelPage = Annotated[PageRequest, Depends(pagination("name", default_sort="name"))]
# Runs whose dbt results are read to find each model's latest status.
STATUS_LOOKBACK_RUNS = 20


def _cipher(request: Request) -> CredentialCipher:
    return request.app.state.cipher


def _project(session: Session, principal, project_id: str) -> Project:
    return get_project(session, project_id, tenant_id=principal.tenant_id)


def _last_run(dagster: DagsterClient, row: DbtProject) -> RunView | None:
    records = dagster.run_records(tags={run_tags.DBT_PROJECT_ID: row.id}, limit=1)
    return run_view(dagster, records[0], with_events=False) if records else None


def _response(row: DbtProject, last: RunView | None, cls=DbtProjectResponse, **extra: Any):
    return cls(
        id=row.id,
        name=row.name,
        source=service.public_source(row.source),
        target=row.target,
        target_credentials_set=row.target_credentials_encrypted is not None,
        vars=row.vars,
        schedule=row.schedule,
        status="paused" if row.paused else "active",
        dbt_project_name=row.dbt_project_name,
        revision=row.revision,
        commit_sha=row.commit_sha,
        models_count=row.models_count,
        parsed_at=row.parsed_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_run=DbtLastRun(
            run_id=last.run_id, status=last.status, started_at=last.started_at, finished_at=last.finished_at
        )
        if last
        else None,
        **extra,
    )


def _lineage(session: Session, settings, project: Project, row: DbtProject) -> Lineage:
    graph = manifests.lineage(service.manifest_of(settings, row), service.connector_index(session, project))
    return Lineage.model_validate(graph)


def _detail(session: Session, settings, dagster: DagsterClient, project: Project, row: DbtProject):
    return _response(
        row, _last_run(dagster, row), cls=DbtProjectDetail, lineage=_lineage(session, settings, project, row)
    )


@router.get(
    "", name="dbt.list", response_model=DbtProjectList, responses=error_responses(404), summary="List dbt projects"
)
def list_dbt_projects(
    id: str,
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    page: DbtProjectPage,
):
    project = _project(session, principal, id)
    stmt = select(DbtProject).where(DbtProject.project_id == project.id)
    result = DBT_PROJECTS.page(session, stmt, page, codec, {"project": project.id})
    return Page[DbtProjectResponse](
        data=[_response(r, _last_run(dagster, r)) for r in result.items],
        next_cursor=result.next_cursor,
        has_more=result.has_more,
    )


@router.post(
    "",
    name="dbt.create",
    status_code=status.HTTP_201_CREATED,
    response_model=DbtProjectDetail,
    responses=error_responses(404, 409, 422),
    summary="Create a dbt project",
    description="Copies (path) or checks out (git) the project under RIME_HOME, generates its profile and "
    "parses it at once: a broken project is refused with 422 and dbt's own message.",
)
async def create_dbt_project(
    id: str,
    body: DbtProjectCreate,
    request: Request,
    principal: Engineer,
    settings: SettingsDep,
):
    sessions = request.app.state.sessions
    target, password = service.target_settings(body.target)

    def register() -> DbtProjectDetail:
        with sessions() as session:
            project = _project(session, principal, id)
            service.ensure_name_free(session, project.id, body.name)
            slug = service.new_slug(session, project.id, body.name)
            namespace = project.namespace
        dbt_id = new_id("dbt_project")
        files = ProjectFiles(workspace.project_root(settings.dbt_home, project.id, dbt_id), 1)
        # Outside any transaction: fetching and parsing take seconds.
        revision = service.prepare_revision(
            settings,
            files=files,
            source=body.source.model_dump(mode="json"),
            target=target,
            namespace=namespace,
            vars=body.vars or {},
        )
        try:
            with sessions.begin() as session:
                project = _project(session, principal, id)
                row = service.record_new(
                    session,
                    dbt_id=dbt_id,
                    project=project,
                    body=body,
                    slug=slug,
                    target=target,
                    password=password,
                    revision=revision,
                    cipher=_cipher(request),
                )
        except BaseException:
            service.delete_files(settings, DbtProject(id=dbt_id, project_id=project.id))
            raise
        with sessions() as session:
            project = _project(session, principal, id)
            row = session.get(DbtProject, dbt_id)
            graph = _lineage(session, settings, project, row)
            return _response(row, None, cls=DbtProjectDetail, lineage=graph)

    detail = await run_in_threadpool(register)
    return detail


@router.get(
    "/{dbtId}",
    name="dbt.get",
    response_model=DbtProjectDetail,
    responses=error_responses(404, 422),
    summary="Get project details including lineage",
)
def get_dbt_project(
    id: str, dbtId: str, principal: Viewer, session: SessionDep, settings: SettingsDep, dagster: DagsterClientDep
):
    project = _project(session, principal, id)
    row = service.get_dbt_project(session, project, dbtId)
    return _detail(session, settings, dagster, project, row)


@router.patch(
    "/{dbtId}",
    name="dbt.update",
    response_model=DbtProjectDetail,
    responses=error_responses(404, 409, 422),
    summary="Update a dbt project",
    description="A new `source`, `target` or `vars`, or `refresh: true`, fetches and parses a new revision; "
    "a broken one is refused with 422 and the current revision stays in service.",
)
async def update_dbt_project(
    id: str,
    dbtId: str,
    body: DbtProjectUpdate,
    request: Request,
    principal: Engineer,
    settings: SettingsDep,
    dagster: DagsterClientDep,
):
    sessions = request.app.state.sessions
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "source", "target", "vars", "refresh"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")

    def update() -> DbtProjectDetail:
        with sessions() as session:
            project = _project(session, principal, id)
            row = service.get_dbt_project(session, project, dbtId)
            if "name" in changes:
                service.ensure_name_free(session, project.id, changes["name"], except_id=row.id)
            cipher = _cipher(request)
            source = body.source.model_dump(mode="json") if body.source else service.source_to_fetch(row.source, cipher)
            target, password = service.target_settings(body.target) if body.target else (dict(row.target), None)
            if body.target is not None:
                service.ensure_password_for_new_address(row, target, password)
            variables = body.vars if body.vars is not None else dict(row.vars)
            previous_revision = row.revision
            next_files = service.files_of(settings, row, row.revision + 1)
            namespace = project.namespace
        revision = None
        if bool({"source", "target", "vars"} & changes.keys()) or body.refresh:
            # Outside any transaction: fetching and parsing take seconds.
            revision = service.prepare_revision(
                settings, files=next_files, source=source, target=target, namespace=namespace, vars=variables
            )
        try:
            with sessions.begin() as session:
                project = _project(session, principal, id)
                row = service.get_dbt_project(session, project, dbtId)
                if revision is not None and row.revision != previous_revision:
                    raise Conflict("The dbt project changed meanwhile; retry.")
                if "name" in changes:
                    service.ensure_name_free(session, project.id, changes["name"], except_id=row.id)
                    row.name = changes["name"]  # the slug stays: renames never move assets or tables
                if "schedule" in changes:
                    row.schedule = changes["schedule"]
                if body.status is not None:
                    row.paused = body.status == "paused"
                if revision is not None:
                    row.source, row.target, row.vars = service.stored_source(source, cipher), target, variables
                    if body.target is not None:
                        if target["adapter"] != "postgres":
                            row.target_credentials_encrypted = None
                        elif password is not None:
                            row.target_credentials_encrypted = cipher.encrypt({"password": password})
                    row.revision = revision.files.revision
                    row.commit_sha = revision.commit_sha
                    row.dbt_project_name = revision.dbt_project_name
                    row.profile_name = revision.profile_name
                    row.models_count = revision.models_count
                    row.parsed_at = datetime.now(UTC)
                session.flush()
        except BaseException:
            if revision is not None:
                service.discard_revision(revision)
            raise
        if revision is not None:  # the previous revision stays for runs that may still use it
            workspace.prune_revisions(revision.files.root, {revision.files.revision, previous_revision})
        with sessions() as session:
            project = _project(session, principal, id)
            row = service.get_dbt_project(session, project, dbtId)
            return _detail(session, settings, dagster, project, row)

    detail = await run_in_threadpool(update)
    return detail


@router.delete(
    "/{dbtId}",
    name="dbt.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete a dbt project",
)
def delete_dbt_project(
    id: str,
    dbtId: str,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    purge_data: Annotated[bool, Query(description="Also drop the Iceberg tables its models published.")] = False,
):
    project = _project(session, principal, id)
    row = service.get_dbt_project(session, project, dbtId)
    session.delete(row)
    session.flush()
    background.add_task(service.delete_files, settings, row)
    if purge_data:
        background.add_task(service.purge_published, request.app.state.iceberg, project.namespace, row.slug)


@router.post(
    "/{dbtId}/run",
    name="dbt.run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DbtRunStarted,
    responses=error_responses(404, 409, 422),
    dependencies=[Idempotent],
    summary="Trigger a dbt run",
    description="Launches the project's Dagster job. `select`/`exclude` are evaluated by dbt's selector on the "
    "manifest and become the run's asset selection (tests come with the nodes they test).",
)
def run_dbt_project(
    id: str,
    dbtId: str,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
    dagster: DagsterClientDep,
    body: Annotated[DbtRunRequest | None, Body()] = None,
):
    body = body or DbtRunRequest()
    project = _project(session, principal, id)
    row = service.get_dbt_project(session, project, dbtId)
    manifest = service.manifest_of(settings, row)
    unique_ids, everything = service.resolve_selection(
        manifest, command=body.command, select_expr=body.select, exclude=body.exclude
    )
    release(session)
    tags = {
        **dbt_tags(project.id, row.id),
        run_tags.DBT_COMMAND: body.command,
        run_tags.FULL_REFRESH: run_tags.flag(body.full_refresh),
        run_tags.TRIGGERED_BY: principal.email,
    }
    if body.select:
        tags[run_tags.DBT_SELECT] = body.select
    if body.exclude:
        tags[run_tags.DBT_EXCLUDE] = body.exclude
    run_config = {
        "ops": {
            dbt_op_name(project.namespace, row.slug): {
                "config": {
                    "command": body.command,
                    "full_refresh": body.full_refresh,
                    "vars_json": json.dumps(body.vars or {}),
                }
            }
        }
    }
    launched = dagster.launch_run(
        dbt_job_name(project.namespace, row.slug),
        generation=project.definitions_generation,
        tags=tags,
        run_config=run_config,
        asset_selection=None if everything else service.asset_keys(project.namespace, row.slug, manifest, unique_ids),
    )
    return DbtRunStarted(**launch_summary(dagster, launched), command=body.command, selected=len(unique_ids))


def _node_results(manifest: dict[str, Any], results: dict[str, dict[str, Any]] | None) -> list[DbtNodeResult]:
    nodes = {**manifest.get("nodes", {}), **manifest.get("sources", {})}
    out = []
    for unique_id, result in (results or {}).items():
        node = nodes.get(unique_id, {})
        out.append(
            DbtNodeResult(
                unique_id=unique_id,
                name=node.get("name") or unique_id.rsplit(".", 1)[-1],
                resource_type=node.get("resource_type") or unique_id.split(".", 1)[0],
                status=result["status"],
                execution_time=result["execution_time"],
                rows_affected=result["rows_affected"],
                message=result["message"],
            )
        )
    return out


def _run(settings, row: DbtProject, manifest: dict[str, Any], view: RunView) -> DbtRun:
    tags = view.record.dagster_run.tags
    results = manifests.read_run_results(service.run_dir(settings, row, view.dagster_run_id))
    return DbtRun(
        run_id=view.run_id,
        dagster_run_id=view.dagster_run_id,
        dagster_url=view.dagster_url,
        status=view.status,
        command=tags.get(run_tags.DBT_COMMAND, "build"),
        select=tags.get(run_tags.DBT_SELECT),
        exclude=tags.get(run_tags.DBT_EXCLUDE),
        full_refresh=run_tags.is_set(tags, run_tags.FULL_REFRESH),
        triggered_by=tags.get(run_tags.TRIGGERED_BY) or ("schedule" if tags.get(run_tags.TRIGGER) else None),
        started_at=view.started_at,
        finished_at=view.finished_at,
        duration_seconds=view.duration_seconds,
        results=_node_results(manifest, results),
        error=view.error,
    )


@router.get(
    "/{dbtId}/runs",
    name="dbt.runs",
    response_model=DbtRunList,
    responses=error_responses(404),
    summary="List run history",
)
def dbt_runs(
    id: str,
    dbtId: str,
    principal: Viewer,
    session: SessionDep,
    settings: SettingsDep,
    codec: CursorCodecDep,
    dagster: DagsterClientDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query()] = None,
):
    project = _project(session, principal, id)
    row = service.get_dbt_project(session, project, dbtId)
    release(session)
    page = run_page(
        dagster, codec, scope=f"dbt-runs:{row.id}", tags={run_tags.DBT_PROJECT_ID: row.id}, limit=limit, cursor=cursor
    )
    manifest = service.manifest_of(settings, row)
    runs = [_run(settings, row, manifest, run_view(dagster, r)) for r in page.records]
    return DbtRunList(data=runs, next_cursor=page.next_cursor, has_more=page.has_more)


def _latest_statuses(settings, dagster: DagsterClient, row: DbtProject) -> dict[str, str]:
    """unique_id -> dbt status in the newest run (of the last few) that ran the node."""
    statuses: dict[str, str] = {}
    for record in dagster.run_records(tags={run_tags.DBT_PROJECT_ID: row.id}, limit=STATUS_LOOKBACK_RUNS):
        results = manifests.read_run_results(service.run_dir(settings, row, record.dagster_run.run_id))
        for unique_id, result in (results or {}).items():
            if result["status"] is not None:
                statuses.setdefault(unique_id, result["status"])
    return statuses


@router.get(
    "/{dbtId}/models",
    name="dbt.models",
    response_model=DbtModelList,
    responses=error_responses(404, 422),
    summary="List models in the project",
    description="Models, seeds and snapshots with their columns, tests and latest run status.",
)
def dbt_models(
    id: str,
    dbtId: str,
    principal: Viewer,
    session: SessionDep,
    settings: SettingsDep,
    dagster: DagsterClientDep,
    codec: CursorCodecDep,
    page: ModelPage,
):
    project = _project(session, principal, id)
    row = service.get_dbt_project(session, project, dbtId)
    manifest = service.manifest_of(settings, row)
    # A page of the manifest's nodes, by name (unique_id breaks ties between a model and a seed of one name).
    nodes = paginate_items(
        manifests.resources(manifest),
        lambda n: (n["name"], n["unique_id"]),
        request=page,
        codec=codec,
        scope=scope_of("dbt.models", {"dbt_project": row.id}),
    )
    tests = manifests.tests_by_node(manifest)
    statuses = _latest_statuses(settings, dagster, row) if nodes.items else {}
    models = []
    for node in nodes.items:
        node_tests = [
            DbtTest(**manifests.test_summary(t), last_status=statuses.get(t["unique_id"]))
            for t in sorted(tests.get(node["unique_id"], []), key=lambda t: t["name"])
        ]
        models.append(
            DbtModel(
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
                asset_key=manifests.node_asset_key(project.namespace, row.slug, node),
                published_table=(
                    f"{project.namespace}.{manifests.published_table_name(row.slug, node)}"
                    if node["resource_type"] == "model" and manifests.publish_requested(node)
                    else None
                ),
                last_run_status=statuses.get(node["unique_id"]),
            )
        )
    return DbtModelList(data=models, next_cursor=nodes.next_cursor, has_more=nodes.has_more)


@router.get(
    "/{dbtId}/lineage",
    name="dbt.lineage",
    response_model=Lineage,
    responses=error_responses(404, 422),
    summary="Get the lineage DAG",
    description="Sources, seeds, models, snapshots and tests, with the connector tables that feed sources upstream.",
)
def dbt_lineage(id: str, dbtId: str, principal: Viewer, session: SessionDep, settings: SettingsDep):
    project = _project(session, principal, id)
    row = service.get_dbt_project(session, project, dbtId)
    return _lineage(session, settings, project, row)
