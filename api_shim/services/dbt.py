"""dbt projects: fetched and parsed before they are stored, run through Dagster, read back from dbt's artifacts.

Fetching and parsing take seconds, so they happen outside any database transaction (SQLite's
write lock would block every other writer): `prepare_revision` builds a revision's files, and only
a parsed revision is ever recorded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.dagster_client import DagsterClient
from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.common import active_or_paused
from api_shim.schemas.dbt import (
    DbtLastRun,
    DbtProjectCreate,
    DbtProjectDetail,
    DbtProjectList,
    DbtProjectResponse,
    DbtProjectUpdate,
    DuckDBTarget,
    Lineage,
    PostgresTarget,
)
from api_shim.services import runs
from api_shim.services.projects import get_project
from api_shim.services.runs import RunView
from rime_dagster.dbt import workspace
from rime_dagster.dbt.manifest import (
    ASSET_TYPES,
    ConnectorIndex,
    load_manifest,
    node_asset_key,
    resources,
)
from rime_dagster.dbt.manifest import lineage as manifest_lineage
from rime_dagster.dbt.workspace import DbtProjectError, ProjectFiles
from rime_dagster.platform import run_tags
from rime_dagster.platform.iceberg import CatalogProvider, drop_tables
from rime_dagster.settings import Settings
from rime_dagster.specs import connector_tables_of
from rime_dagster.store import slugs
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Connector, DbtProject, Project

log = logging.getLogger(__name__)


def get_dbt_project(session: Session, project: Project, dbt_project_id: str) -> DbtProject:
    row = session.get(DbtProject, dbt_project_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("dbt project", dbt_project_id, " in this project")
    return row


def files_of(settings: Settings, row: DbtProject, revision: int | None = None) -> ProjectFiles:
    root = workspace.project_root(settings.dbt_home, row.project_id, row.id)
    return ProjectFiles(root, revision if revision is not None else row.revision)


def ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(select(DbtProject.id).where(DbtProject.project_id == project_id, DbtProject.name == name))
    if clash is not None and clash != except_id:
        raise Conflict(f"A dbt project named '{name}' already exists in this project.")


def new_slug(session: Session, project_id: str, name: str) -> str:
    return slugs.new_slug(session, project_id, name, fallback="dbt")


# Revisions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    files: ProjectFiles
    commit_sha: str | None
    dbt_project_name: str
    profile_name: str
    models_count: int


def target_settings(target: DuckDBTarget | PostgresTarget | None) -> tuple[dict[str, Any], str | None]:
    """(target without secrets as stored, password or None) from a validated target body."""
    if target is None:
        return {"adapter": "duckdb", "schema": "main"}, None
    data = target.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"password"})
    password = getattr(target, "password", None)
    return data, password.get_secret_value() if password is not None else None


# A stored password is for one server and login: a change of any of these needs it given again.
TARGET_ADDRESS = {"host": None, "port": 5432, "dbname": None, "user": None}


def ensure_password_for_new_address(row: DbtProject, target: Mapping[str, Any], password: str | None) -> None:
    """Refuses a target that points the stored password at another server or login without giving it again
    (else whoever may edit the project could send it to a server of their own)."""
    if password is not None or row.target_credentials_encrypted is None or target.get("adapter") != "postgres":
        return
    moved = [f for f, default in TARGET_ADDRESS.items() if row.target.get(f, default) != target.get(f, default)]
    if moved:
        raise Unprocessable(
            f"The target's {', '.join(moved)} changed: give its password again.",
            details=[{"field": "target.password", "message": "Required when host, port, dbname or user change."}],
        )


# Sources ------------------------------------------------------------------------------------

SOURCE_URL_SECRET = "url_encrypted"


def stored_source(source: Mapping[str, Any], cipher: CredentialCipher) -> dict[str, Any]:
    """The source as stored: a git URL with credentials is kept redacted, the URL itself only encrypted."""
    stored = dict(source)
    if stored.get("type") == "git" and workspace.url_has_credentials(stored["url"]):
        stored[SOURCE_URL_SECRET] = cipher.encrypt({"url": stored["url"]})
        stored["url"] = workspace.redact_url(stored["url"])
    return stored


def source_to_fetch(stored: Mapping[str, Any], cipher: CredentialCipher) -> dict[str, Any]:
    """The stored source with its git URL's credentials decrypted, for fetching only."""
    source = {k: v for k, v in stored.items() if k != SOURCE_URL_SECRET}
    if SOURCE_URL_SECRET in stored:
        source["url"] = cipher.decrypt(stored[SOURCE_URL_SECRET])["url"]
    return source


def public_source(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The source as the API shows it: never a credential (rows stored before encryption are redacted too)."""
    source = {k: v for k, v in stored.items() if k != SOURCE_URL_SECRET}
    if source.get("type") == "git":
        source["url"] = workspace.redact_url(source["url"])
    return source


def prepare_revision(
    settings: Settings,
    *,
    files: ProjectFiles,
    source: Mapping[str, Any],
    target: Mapping[str, Any],
    namespace: str,
    vars: Mapping[str, Any],
) -> Revision:
    """Fetches the source into a new revision folder and parses it; on any failure the folder is removed
    and Unprocessable carries the reason (dbt's own message for a broken project)."""
    try:
        files.revision_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise Conflict("Another update of this dbt project is in progress; retry shortly.") from None
    try:
        commit = workspace.fetch(
            source,
            files.project_dir,
            allowed_roots=settings.dbt_project_roots,
            timeout=settings.dbt_timeout_seconds,
            max_bytes=settings.dbt_project_max_bytes,
            git=workspace.GitRules.from_settings(settings),
        )
        project_file = workspace.read_project_file(files.project_dir)
        duckdb_file = workspace.duckdb_path(settings.dbt_home, files.root.parent.name)
        output = workspace.profile_output(
            target,
            duckdb_file=duckdb_file,
            namespace=namespace,
            threads=settings.dbt_threads,
        )
        workspace.write_profiles(files, project_file.profile, output)
        confine = workspace.sandbox_policy(settings, files, duckdb_file=duckdb_file, target=target)
        manifest_path = workspace.parse(
            files, vars=vars, timeout=settings.dbt_timeout_seconds, confine=confine, env=workspace.dbt_env(settings)
        )
        manifest = load_manifest(manifest_path)
    except DbtProjectError as exc:
        shutil.rmtree(files.revision_dir, ignore_errors=True)
        raise Unprocessable(str(exc)) from None
    except BaseException:
        shutil.rmtree(files.revision_dir, ignore_errors=True)
        raise
    return Revision(
        files=files,
        commit_sha=commit,
        dbt_project_name=project_file.name,
        profile_name=project_file.profile,
        models_count=len(resources(manifest, ("model",))),
    )


def discard_revision(revision: Revision) -> None:
    shutil.rmtree(revision.files.revision_dir, ignore_errors=True)


def record_new(
    session: Session,
    *,
    dbt_id: str,
    project: Project,
    body: DbtProjectCreate,
    slug: str,
    target: dict[str, Any],
    password: str | None,
    revision: Revision,
    cipher: CredentialCipher,
) -> DbtProject:
    ensure_name_free(session, project.id, body.name)
    if slug in slugs.taken_slugs(session, project.id):
        raise Conflict("A connector, dbt project or pipeline took this name meanwhile; retry.")
    row = DbtProject(
        id=dbt_id,
        project_id=project.id,
        name=body.name,
        slug=slug,
        source=stored_source(body.source.model_dump(mode="json", exclude_none=True), cipher),
        target=target,
        target_credentials_encrypted=cipher.encrypt({"password": password}) if password else None,
        vars=body.vars or {},
        schedule=body.schedule,
        revision=revision.files.revision,
        commit_sha=revision.commit_sha,
        dbt_project_name=revision.dbt_project_name,
        profile_name=revision.profile_name,
        models_count=revision.models_count,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A dbt project named '{body.name}' already exists in this project.") from None
    return row


def delete_files(settings: Settings, row: DbtProject) -> None:
    shutil.rmtree(workspace.project_root(settings.dbt_home, row.project_id, row.id), ignore_errors=True)


def purge_published(catalog_provider: CatalogProvider, namespace: str, slug: str) -> None:
    try:
        dropped = drop_tables(catalog_provider.catalog(), namespace, prefix=slug)
        log.info("purged published Iceberg tables %s", ", ".join(dropped) or "(none)")
    except Exception:
        log.exception("could not purge the Iceberg tables of %s.%s__*", namespace, slug)


# Reading ------------------------------------------------------------------------------------


def manifest_of(settings: Settings, row: DbtProject) -> dict[str, Any]:
    path = files_of(settings, row).manifest_path
    try:
        return load_manifest(path)
    except (OSError, ValueError):
        raise Unprocessable(
            "This dbt project's parsed files are missing on the server; update it with `refresh: true`."
        ) from None


def connector_index(session: Session, project: Project) -> ConnectorIndex:
    connectors = session.scalars(select(Connector).where(Connector.project_id == project.id))
    return ConnectorIndex(t for c in connectors for t in connector_tables_of(c, project.namespace))


def resolve_selection(
    manifest: Mapping[str, Any], *, command: str, select_expr: str | None, exclude: str | None
) -> tuple[list[str], bool]:
    """The unique ids of the models, seeds and snapshots a run covers, and whether that is all of them.

    dbt's own selector evaluates `select`/`exclude` on the manifest; a selected test brings in the
    node it tests when the command is `test` or the selection is only tests. `seed` keeps seeds, `run` models.
    """
    from dagster_dbt.utils import select_unique_ids

    try:
        ids = select_unique_ids(select_expr or "fqn:*", exclude or "", "", None, manifest)
    except Exception as exc:
        field = "exclude" if exclude and not select_expr else "select"
        raise ValidationFailed.field(field, f"dbt could not evaluate the selection: {exc}") from None
    nodes = manifest.get("nodes", {})
    chosen: set[str] = set()
    tested: set[str] = set()  # nodes whose tests the selection names
    for unique_id in ids:
        node = nodes.get(unique_id)
        if node is None:
            continue
        if node["resource_type"] in ASSET_TYPES:
            chosen.add(unique_id)
        elif node["resource_type"] == "test":
            attached = node.get("attached_node")
            parents = [attached] if attached else (node.get("depends_on") or {}).get("nodes", [])
            tested.update(p for p in parents if nodes.get(p, {}).get("resource_type") in ASSET_TYPES)
    # Tests select the nodes they test only for `test`, or when the selection names nothing but tests:
    # `stg_orders+ --exclude customers` must not rebuild `customers` because a test on it is downstream.
    if command == "test" or not chosen:
        chosen |= tested
    kinds = {"seed": {"seed"}, "run": {"model"}}.get(command, set(ASSET_TYPES))
    chosen = {u for u in chosen if nodes[u]["resource_type"] in kinds}
    if not chosen:
        what = {"seed": "seeds", "run": "models"}.get(command, "models, seeds or snapshots")
        raise Unprocessable(f"The selection matches no {what} of this dbt project.")
    everything = {n["unique_id"] for n in resources(manifest, ASSET_TYPES)}
    return sorted(chosen), chosen == everything


def asset_keys(namespace: str, slug: str, manifest: Mapping[str, Any], unique_ids: list[str]) -> list[list[str]]:
    nodes = manifest.get("nodes", {})
    return [node_asset_key(namespace, slug, nodes[u]) for u in unique_ids]


def run_dir(settings: Settings, row: DbtProject, dagster_run_id: str) -> Path:
    return files_of(settings, row).run_dir(dagster_run_id)


# What the Transformations routes call -------------------------------------------------------------------------

DBT_PROJECTS = Listing(
    "dbt_projects",
    {"created_at": DbtProject.created_at, "updated_at": DbtProject.updated_at, "name": DbtProject.name},
    DbtProject.id,
)


def last_run(dagster: DagsterClient, row: DbtProject) -> RunView | None:
    return runs.last_run(dagster, {run_tags.DBT_PROJECT_ID: row.id})


def dbt_project_response(row: DbtProject, last: RunView | None) -> DbtProjectResponse:
    return DbtProjectResponse.of(
        row,
        source=public_source(row.source),
        target_credentials_set=row.target_credentials_encrypted is not None,
        status=active_or_paused(row.paused),
        last_run=DbtLastRun.of(last) if last else None,
    )


def lineage(session: Session, settings: Settings, project: Project, row: DbtProject) -> Lineage:
    """Sources, seeds, models, snapshots and tests, with the connector tables that feed the sources upstream."""
    return Lineage.model_validate(manifest_lineage(manifest_of(settings, row), connector_index(session, project)))


def _detail(
    session: Session, settings: Settings, project: Project, row: DbtProject, last: RunView | None
) -> DbtProjectDetail:
    return DbtProjectDetail.of(dbt_project_response(row, last), lineage=lineage(session, settings, project, row))


def list_page(
    session: Session, dagster: DagsterClient, codec: CursorCodec, project: Project, page: PageRequest
) -> DbtProjectList:
    result = DBT_PROJECTS.page(
        session, select(DbtProject).where(DbtProject.project_id == project.id), page, codec, {"project": project.id}
    )
    return result.as_page(DbtProjectList, lambda r: dbt_project_response(r, last_run(dagster, r)))


def describe(
    session: Session, settings: Settings, dagster: DagsterClient, project: Project, dbt_project_id: str
) -> DbtProjectDetail:
    row = get_dbt_project(session, project, dbt_project_id)
    return _detail(session, settings, project, row, last_run(dagster, row))


def create(
    sessions: sessionmaker[Session],
    settings: Settings,
    cipher: CredentialCipher,
    body: DbtProjectCreate,
    *,
    tenant_id: str,
    project_id: str,
) -> DbtProjectDetail:
    """Copies (path) or checks out (git) the project, generates its profile and parses it; only a project that
    parses is recorded. Fetching and parsing happen outside any transaction: they take seconds."""
    target, password = target_settings(body.target)
    with sessions() as session:
        project = get_project(session, project_id, tenant_id=tenant_id)
        ensure_name_free(session, project.id, body.name)
        slug = new_slug(session, project.id, body.name)
        namespace = project.namespace
    dbt_id = new_id("dbt_project")
    files = ProjectFiles(workspace.project_root(settings.dbt_home, project.id, dbt_id), 1)
    revision = prepare_revision(
        settings,
        files=files,
        source=body.source.model_dump(mode="json"),
        target=target,
        namespace=namespace,
        vars=body.vars or {},
    )
    try:
        with sessions.begin() as session:
            project = get_project(session, project_id, tenant_id=tenant_id)
            record_new(
                session,
                dbt_id=dbt_id,
                project=project,
                body=body,
                slug=slug,
                target=target,
                password=password,
                revision=revision,
                cipher=cipher,
            )
    except BaseException:
        delete_files(settings, DbtProject(id=dbt_id, project_id=project.id))
        raise
    with sessions() as session:
        project = get_project(session, project_id, tenant_id=tenant_id)
        return _detail(session, settings, project, get_dbt_project(session, project, dbt_id), None)


def update(
    sessions: sessionmaker[Session],
    settings: Settings,
    cipher: CredentialCipher,
    dagster: DagsterClient,
    body: DbtProjectUpdate,
    *,
    tenant_id: str,
    project_id: str,
    dbt_project_id: str,
) -> DbtProjectDetail:
    """A new `source`, `target` or `vars`, or `refresh`, fetches and parses a new revision outside any
    transaction; a broken one is refused (Unprocessable) and the current revision stays in service."""
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "source", "target", "vars", "refresh"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    with sessions() as session:
        project = get_project(session, project_id, tenant_id=tenant_id)
        planned = _plan_update(
            session, settings, cipher, project, get_dbt_project(session, project, dbt_project_id), body
        )
    revision = None
    if bool({"source", "target", "vars"} & changes.keys()) or body.refresh:
        revision = prepare_revision(
            settings,
            files=planned.next_files,
            source=planned.source,
            target=planned.target,
            namespace=planned.namespace,
            vars=planned.variables,
        )
    try:
        with sessions.begin() as session:
            project = get_project(session, project_id, tenant_id=tenant_id)
            row = get_dbt_project(session, project, dbt_project_id)
            _apply_update(session, project, row, body, planned, revision, cipher=cipher)
            session.flush()
    except BaseException:
        if revision is not None:
            discard_revision(revision)
        raise
    if revision is not None:  # the previous revision stays for runs that may still use it
        workspace.prune_revisions(revision.files.root, {revision.files.revision, planned.previous_revision})
    with sessions() as session:
        project = get_project(session, project_id, tenant_id=tenant_id)
        row = get_dbt_project(session, project, dbt_project_id)
        return _detail(session, settings, project, row, last_run(dagster, row))


@dataclass(frozen=True)
class _PlannedUpdate:
    """What an update sets, read from the body and the stored project before any revision is prepared."""

    source: dict[str, Any]  # to fetch from: the stored one has its git URL's credentials decrypted
    target: dict[str, Any]
    password: str | None  # given with a new target
    variables: dict[str, Any]
    previous_revision: int
    next_files: ProjectFiles
    namespace: str


def _plan_update(
    session: Session,
    settings: Settings,
    cipher: CredentialCipher,
    project: Project,
    row: DbtProject,
    body: DbtProjectUpdate,
) -> _PlannedUpdate:
    """The update's settings (the body's, else the stored ones); Conflict for a taken name, Unprocessable for a
    target that would send the stored password to another server."""
    if body.name is not None:
        ensure_name_free(session, project.id, body.name, except_id=row.id)
    source = body.source.model_dump(mode="json") if body.source else source_to_fetch(row.source, cipher)
    target, password = target_settings(body.target) if body.target else (dict(row.target), None)
    if body.target is not None:
        ensure_password_for_new_address(row, target, password)
    return _PlannedUpdate(
        source=source,
        target=target,
        password=password,
        variables=body.vars if body.vars is not None else dict(row.vars),
        previous_revision=row.revision,
        next_files=files_of(settings, row, row.revision + 1),
        namespace=project.namespace,
    )


def _apply_update(
    session: Session,
    project: Project,
    row: DbtProject,
    body: DbtProjectUpdate,
    planned: _PlannedUpdate,
    revision: Revision | None,
    *,
    cipher: CredentialCipher,
) -> None:
    """Sets the update on the stored project, with the prepared `revision` (if any); Conflict when the project
    moved to another revision meanwhile."""
    if revision is not None and row.revision != planned.previous_revision:
        raise Conflict("The dbt project changed meanwhile; retry.")
    if body.name is not None:
        ensure_name_free(session, project.id, body.name, except_id=row.id)
        row.name = body.name  # the slug stays: renames never move assets or tables
    if "schedule" in body.model_fields_set:
        row.schedule = body.schedule
    if body.status is not None:
        row.paused = body.status == "paused"
    if revision is not None:
        _record_revision(
            row, revision, source=planned.source, target=planned.target, variables=planned.variables, cipher=cipher
        )
        if body.target is not None:
            _record_password(row, planned.target, planned.password, cipher)


def _record_revision(
    row: DbtProject,
    revision: Revision,
    *,
    source: Mapping[str, Any],
    target: dict[str, Any],
    variables: dict[str, Any],
    cipher: CredentialCipher,
) -> None:
    row.source, row.target, row.vars = stored_source(source, cipher), target, variables
    row.revision = revision.files.revision
    row.commit_sha = revision.commit_sha
    row.dbt_project_name = revision.dbt_project_name
    row.profile_name = revision.profile_name
    row.models_count = revision.models_count
    row.parsed_at = datetime.now(UTC)


def _record_password(
    row: DbtProject, target: Mapping[str, Any], password: str | None, cipher: CredentialCipher
) -> None:
    """A new target keeps its password only if it is postgres; a password given with it replaces the stored one."""
    if target["adapter"] != "postgres":
        row.target_credentials_encrypted = None
    elif password is not None:
        row.target_credentials_encrypted = cipher.encrypt({"password": password})


def delete(session: Session, project: Project, dbt_project_id: str) -> DbtProject:
    """Deletes the dbt project's row; returns it, for its files and (if asked) published tables to be removed."""
    row = get_dbt_project(session, project, dbt_project_id)
    session.delete(row)
    session.flush()
    return row
