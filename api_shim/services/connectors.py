"""Connectors: validated against their plug-in's models and the deployment's access rules, credentials
encrypted and bound to where they go, tables named once."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.dagster_client import DagsterClient
from api_shim.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.connectors import (
    ConnectionTestResult,
    ConnectorCreate,
    ConnectorList,
    ConnectorResponse,
    ConnectorUpdate,
    DiscoveredSchema,
    LastSync,
)
from api_shim.services.projects import get_project
from api_shim.services.runs import RunView, last_run
from rime_dagster.connectors.names import describe_collisions, landing_collisions
from rime_dagster.connectors.sources import AccessRefused, Source, SourceError, source_class
from rime_dagster.connectors.sources._access import SourceAccess
from rime_dagster.connectors.sources.base import TableInfo
from rime_dagster.platform import run_tags
from rime_dagster.platform.iceberg import CatalogProvider, drop_tables
from rime_dagster.settings import Settings
from rime_dagster.store import slugs
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Connector, Project

log = logging.getLogger(__name__)


def get_connector(session: Session, project: Project, connector_id: str) -> Connector:
    connector = session.get(Connector, connector_id)
    if connector is None or connector.project_id != project.id:
        raise NotFound.of("Connector", connector_id, " in this project")
    return connector


def _plugin(connector_type: str) -> type[Source]:
    try:
        return source_class(connector_type)
    except KeyError:
        from rime_dagster.connectors.sources import known_types

        known = ", ".join(known_types())
        raise ValidationFailed.field("connector_type", f"Unknown connector type; use one of: {known}.") from None


def _validated(plugin: type[Source], config: dict[str, Any], credentials: dict[str, Any] | None) -> dict[str, Any]:
    """Checks config and credentials against the plug-in's models; returns the normalised config.

    Messages never echo submitted values, so a password cannot leak into an error.
    """
    details: list[dict[str, str]] = []
    normalised: dict[str, Any] = {}
    for field, model, value in (
        ("config", plugin.config_model, config),
        ("credentials", plugin.credentials_model, credentials or {}),
    ):
        try:
            parsed = model.model_validate(value)
            if field == "config":
                normalised = parsed.model_dump(mode="json", by_alias=True)
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                loc = ".".join(str(p) for p in (field, *error["loc"]))
                message = "Unknown field." if error["type"] == "extra_forbidden" else error["msg"]
                details.append({"field": loc, "message": message.removeprefix("Value error, ")})
    if details:
        raise ValidationFailed("Request validation failed.", details=details)
    return normalised


def _refused_field(exc: AccessRefused) -> ValidationFailed:
    return ValidationFailed.field(f"config.{exc.field}", str(exc))


def _check_paths(plugin: type[Source], config: dict[str, Any], access: SourceAccess) -> None:
    """The configured paths, before the config model looks at them: it would tell whether any file exists."""
    for key in plugin.path_fields:
        value = config.get(key)
        if isinstance(value, str) and os.path.isabs(value.strip()):
            try:
                access.confine(value.strip(), field=key)
            except AccessRefused as exc:
                raise _refused_field(exc) from None


def _check_access(source: Source) -> None:
    """400 naming the field when the source would reach a path or host off limits (see `_access`)."""
    try:
        source.check_access()
    except AccessRefused as exc:
        raise _refused_field(exc) from None
    except SourceError:
        pass  # can't be judged now (a host that does not resolve yet): checked again at every connection


def _bound_fields_changed(
    plugin: type[Source], before: tuple[dict[str, Any], dict[str, Any]], after: tuple[dict[str, Any], dict[str, Any]]
) -> list[str]:
    """Which of the plug-in's `credentials_bound_to` fields differ between two (config, credentials) pairs."""
    changed = []
    for name in plugin.credentials_bound_to:
        part, _, key = name.partition(".")
        index = 0 if part == "config" else 1
        if before[index].get(key) != after[index].get(key):
            changed.append(name)
    return changed


def _check_sync_mode(sync_mode: str, selected: list[str] | None, cursor_fields: dict[str, str]) -> None:
    if sync_mode != "incremental":
        return
    if not selected:
        raise ValidationFailed.field("selected_tables", "Incremental sync needs an explicit list of tables.")
    missing = [t for t in selected if t not in cursor_fields]
    if missing:
        raise ValidationFailed.field(
            "cursor_fields", f"Incremental sync needs a cursor column for: {', '.join(missing)}."
        )
    extra = [t for t in cursor_fields if t not in selected]
    if extra:
        raise ValidationFailed.field("cursor_fields", f"Not selected tables: {', '.join(extra)}.")


def _check_distinct_landing(table_prefix: str, selected: list[str] | None) -> None:
    """Two selected tables landing in one Iceberg table would overwrite each other: 422 naming them."""
    sentences = describe_collisions(table_prefix, landing_collisions(selected or []))
    if sentences:
        raise Unprocessable(
            f"{' '.join(sentences)} Select only one of them.",
            details=[{"field": "selected_tables", "message": sentence} for sentence in sentences],
        )


def left_out_tables_note(connector: Connector) -> str | None:
    """Why discovered tables that would land in one Iceberg table are not synced (None: none are left out).

    There is no safe choice among them: one appearing later would take over the other's Iceberg table.
    """
    if connector.selected_tables is not None:
        return None
    sentences = describe_collisions(connector.table_prefix, landing_collisions(connector.known_tables))
    if not sentences:
        return None
    return f"Not synced: {' '.join(sentences)} Select one of them in selected_tables to sync it."


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(select(Connector.id).where(Connector.project_id == project_id, Connector.name == name))
    if clash is not None and clash != except_id:
        raise Conflict(f"A connector named '{name}' already exists in this project.")


def landed_prefixes(catalog_provider: CatalogProvider, namespace: str) -> set[str]:
    """Every prefix some Iceberg table of the namespace is named under (`<prefix>__<table>`).

    A connector deleted without purge_data leaves its tables, and their incremental cursors, under its
    prefix: a new connector must not land there.
    """
    from pyiceberg.exceptions import NoSuchNamespaceError

    try:
        names = [identifier[-1] for identifier in catalog_provider.catalog().list_tables(namespace)]
    except NoSuchNamespaceError:
        return set()
    except Exception:
        log.exception("could not list the Iceberg tables of %s", namespace)
        raise ServiceUnavailable("The Iceberg catalog did not answer; try again.") from None
    prefixes: set[str] = set()
    for name in names:
        parts = name.split("__")
        prefixes.update("__".join(parts[:i]) for i in range(1, len(parts)))
    return prefixes


def create_connector(
    session: Session,
    project: Project,
    body: ConnectorCreate,
    cipher: CredentialCipher,
    *,
    settings: Settings,
    catalog: CatalogProvider,
) -> Connector:
    plugin = _plugin(body.connector_type)
    connector_id = new_id("connector")
    access = SourceAccess.from_settings(settings, upload_dir_of(settings, project.id, connector_id))
    _check_paths(plugin, body.config, access)
    config = _validated(plugin, body.config, body.credentials)
    _check_access(plugin.from_dicts(config, body.credentials, upload_dir=access.own_area, access=access))
    cursor_fields = body.cursor_fields or {}
    _check_sync_mode(body.sync_mode, body.selected_tables, cursor_fields)
    _ensure_name_free(session, project.id, body.name)
    # Never a prefix whose tables a deleted connector left behind: a new connector lands in fresh tables.
    table_prefix = slugs.new_slug(
        session, project.id, body.name, fallback="c", also_taken=landed_prefixes(catalog, project.namespace)
    )
    _check_distinct_landing(table_prefix, body.selected_tables)
    connector = Connector(
        id=connector_id,
        project_id=project.id,
        name=body.name,
        connector_type=body.connector_type,
        config=config,
        credentials_encrypted=cipher.encrypt(body.credentials) if body.credentials else None,
        selected_tables=body.selected_tables,
        schedule=body.schedule,
        sync_mode=body.sync_mode,
        cursor_fields=cursor_fields,
        table_prefix=table_prefix,
    )
    session.add(connector)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A connector named '{body.name}' already exists in this project.") from None
    return connector


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 JSON merge patch."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def update_connector(
    session: Session, connector: Connector, changes: dict[str, Any], cipher: CredentialCipher, *, settings: Settings
) -> Connector:
    for field in ("name", "sync_mode", "config"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    plugin = _plugin(connector.connector_type)
    access = SourceAccess.from_settings(settings, upload_dir(settings, connector))
    config = merge_patch(connector.config, changes.get("config") or {})
    _check_paths(plugin, config, access)
    stored = credentials_of(connector, cipher)
    credentials = stored
    if "credentials" in changes:
        credentials = merge_patch(stored, changes["credentials"] or {}) if changes["credentials"] else {}
    config = _validated(plugin, config, credentials)
    moved = _bound_fields_changed(plugin, (connector.config, stored), (config, credentials))
    if moved and stored:
        # The stored secret goes only where it was given for: a new destination needs it given again, whole.
        sent = changes.get("credentials") or {}
        try:
            plugin.credentials_model.model_validate(sent)
        except ValidationError:
            message = f"Changing {', '.join(moved)} needs the credentials again: send every credentials field."
            raise Unprocessable(message, details=[{"field": "credentials", "message": message}]) from None
        credentials = sent
    _check_access(plugin.from_dicts(config, credentials, upload_dir=access.own_area, access=access))
    selected = changes.get("selected_tables", connector.selected_tables)
    sync_mode = changes.get("sync_mode", connector.sync_mode)
    cursor_fields = merge_patch(connector.cursor_fields, changes.get("cursor_fields") or {})
    _check_sync_mode(sync_mode, selected, cursor_fields)
    if "selected_tables" in changes:
        _check_distinct_landing(connector.table_prefix, selected)
    if "name" in changes:
        _ensure_name_free(session, connector.project_id, changes["name"], except_id=connector.id)
        connector.name = changes["name"]  # table_prefix stays: renames never move data
    connector.config = config
    connector.credentials_encrypted = cipher.encrypt(credentials) if credentials else None
    connector.selected_tables = selected
    connector.sync_mode = sync_mode
    connector.cursor_fields = cursor_fields
    if "schedule" in changes:
        connector.schedule = changes["schedule"]
    if "status" in changes and changes["status"] is not None:
        connector.paused = changes["status"] == "paused"
    session.flush()
    return connector


def credentials_of(connector: Connector, cipher: CredentialCipher) -> dict[str, Any]:
    return cipher.decrypt(connector.credentials_encrypted) if connector.credentials_encrypted else {}


def upload_dir_of(settings: Settings, project_id: str, connector_id: str) -> Path:
    # rime_dagster.specs builds the same path for the code location.
    return settings.home / "uploads" / project_id / connector_id


def upload_dir(settings: Settings, connector: Connector) -> Path:
    return upload_dir_of(settings, connector.project_id, connector.id)


def build_source(connector: Connector, cipher: CredentialCipher, settings: Settings) -> Source:
    """The connector's source, confined to what the deployment lets connectors reach."""
    plugin = source_class(connector.connector_type)
    directory = upload_dir(settings, connector)
    try:
        return plugin.from_dicts(
            connector.config,
            credentials_of(connector, cipher),
            upload_dir=directory,
            access=SourceAccess.from_settings(settings, directory),
        )
    except ValidationError as exc:  # valid when stored, not now: say so (never the values: credentials)
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        reason = str(first["msg"]).removeprefix("Value error, ")
        raise Unprocessable(f"The connector's config is no longer usable: {where}: {reason}.") from None


def delete_connector(session: Session, connector: Connector, settings: Settings) -> None:
    session.delete(connector)
    session.flush()
    shutil.rmtree(upload_dir(settings, connector), ignore_errors=True)


def discover(source: Source, *, timeout: float) -> list[TableInfo]:
    try:
        return source.discover(timeout)
    except SourceError as exc:
        raise Unprocessable(f"Schema discovery failed: {exc}") from None


def discovered_names(source: Source, *, timeout: float, connector_id: str) -> list[str] | None:
    """Best effort: the source's table names, None when it cannot be reached (yet)."""
    try:
        return [t.name for t in source.discover(timeout)]
    except Exception as exc:
        log.info("discovery for connector %s failed: %s", connector_id, type(exc).__name__)
        return None


def refresh_known_tables(connector: Connector, cipher: CredentialCipher, settings: Settings, *, timeout: float) -> None:
    """Stores the discovered tables of a connector that syncs whatever it discovers (`selected_tables` null).

    Only data engineers' writes call this (create, update, upload, the connection test): reads never
    store anything, since every change to a connector reloads the Dagster definitions.
    """
    if connector.selected_tables is not None:
        return
    store_known_tables(
        connector,
        discovered_names(build_source(connector, cipher, settings), timeout=timeout, connector_id=connector.id),
    )


def store_known_tables(connector: Connector, names: list[str] | None) -> None:
    """Only an actual change is written: each one moves the definitions generation on."""
    if names is not None and names != connector.known_tables:
        connector.known_tables = names


def purge_connector_data(catalog_provider: CatalogProvider, namespace: str, table_prefix: str) -> None:
    try:
        dropped = drop_tables(catalog_provider.catalog(), namespace, prefix=table_prefix)
        log.info("purged Iceberg tables %s", ", ".join(dropped) or "(none)")
    except Exception:
        log.exception("could not purge the Iceberg tables of %s.%s__*", namespace, table_prefix)


# What the Connectors routes call ------------------------------------------------------------------------------

CONNECTORS = Listing(
    "connectors",
    {"created_at": Connector.created_at, "updated_at": Connector.updated_at, "name": Connector.name},
    Connector.id,
)
CONNECTION_TIMEOUT_SECONDS = 10.0


def connector_response(connector: Connector, last: RunView | None) -> ConnectorResponse:
    """The connector as the API shows it: its status says whether it is paused, never synced, or how it last did."""
    if connector.paused:
        status = "paused"
    elif last is None:
        status = "created"
    else:
        status = "error" if last.status == "failed" else "active"
    return ConnectorResponse.of(
        connector,
        credentials_set=connector.credentials_encrypted is not None,
        status=status,
        last_sync=LastSync.of(last) if last else None,
    )


def last_sync(dagster: DagsterClient, connector: Connector) -> RunView | None:
    return last_run(dagster, {run_tags.CONNECTOR_ID: connector.id})


def list_page(
    session: Session, dagster: DagsterClient, codec: CursorCodec, project: Project, page: PageRequest
) -> ConnectorList:
    result = CONNECTORS.page(
        session, select(Connector).where(Connector.project_id == project.id), page, codec, {"project": project.id}
    )
    return result.as_page(ConnectorList, lambda c: connector_response(c, last_sync(dagster, c)))


def create(
    session: Session,
    project: Project,
    body: ConnectorCreate,
    cipher: CredentialCipher,
    *,
    settings: Settings,
    catalog: CatalogProvider,
) -> ConnectorResponse:
    """Creates the connector; one that syncs whatever it discovers stores what it finds now (if it can)."""
    connector = create_connector(session, project, body, cipher, settings=settings, catalog=catalog)
    refresh_known_tables(connector, cipher, settings, timeout=CONNECTION_TIMEOUT_SECONDS)
    return connector_response(connector, None)


def describe(session: Session, dagster: DagsterClient, project: Project, connector_id: str) -> ConnectorResponse:
    connector = get_connector(session, project, connector_id)
    return connector_response(connector, last_sync(dagster, connector))


def update(
    session: Session,
    dagster: DagsterClient,
    project: Project,
    connector_id: str,
    body: ConnectorUpdate,
    cipher: CredentialCipher,
    *,
    settings: Settings,
) -> ConnectorResponse:
    """Applies the patch; a change of where or what it reads refreshes the tables a discovering connector syncs."""
    connector = get_connector(session, project, connector_id)
    changes = body.model_dump(exclude_unset=True)
    update_connector(session, connector, changes, cipher, settings=settings)
    if changes.keys() & {"config", "credentials", "selected_tables"}:
        refresh_known_tables(connector, cipher, settings, timeout=CONNECTION_TIMEOUT_SECONDS)
    return connector_response(connector, last_sync(dagster, connector))


def delete(session: Session, project: Project, connector_id: str, *, settings: Settings) -> Connector:
    """Deletes the connector and its upload area; returns it (its Iceberg tables stay unless purged)."""
    connector = get_connector(session, project, connector_id)
    delete_connector(session, connector, settings)
    return connector


def _connector_in(session: Session, *, tenant_id: str, project_id: str, connector_id: str) -> Connector:
    return get_connector(session, get_project(session, project_id, tenant_id=tenant_id), connector_id)


def test_connection(
    sessions: sessionmaker[Session],
    cipher: CredentialCipher,
    settings: Settings,
    *,
    tenant_id: str,
    project_id: str,
    connector_id: str,
) -> ConnectionTestResult:
    """Tests the connection; a connector that syncs whatever it discovers stores the tables it finds.

    The explicit refresh of what the connector syncs: a data engineer's write, unlike `discover_schema`. A slow
    source must not hold a transaction (SQLite: the write lock) open, so the source is reached outside any.
    """
    with sessions() as session:
        connector = _connector_in(session, tenant_id=tenant_id, project_id=project_id, connector_id=connector_id)
        try:
            source = build_source(connector, cipher, settings)
        except Unprocessable as exc:
            return ConnectionTestResult(success=False, message=exc.message)
        left_out = left_out_tables_note(connector)
        discovers = connector.selected_tables is None
    result = source.test(CONNECTION_TIMEOUT_SECONDS)
    if result.success and discovers:
        names = discovered_names(source, timeout=CONNECTION_TIMEOUT_SECONDS, connector_id=connector_id)
        with sessions.begin() as session:
            current = session.get(Connector, connector_id)
            if current is not None:  # not deleted meanwhile
                store_known_tables(current, names)
                left_out = left_out_tables_note(current)
    message = f"{result.message} {left_out}" if result.success and left_out else result.message
    return ConnectionTestResult(success=result.success, message=message)


def discover_schema(
    sessions: sessionmaker[Session],
    cipher: CredentialCipher,
    settings: Settings,
    *,
    tenant_id: str,
    project_id: str,
    connector_id: str,
) -> DiscoveredSchema:
    """The source's live schema. A read: nothing is stored (a stored change would reload the Dagster definitions)."""
    with sessions() as session:
        connector = _connector_in(session, tenant_id=tenant_id, project_id=project_id, connector_id=connector_id)
        source = build_source(connector, cipher, settings)
    tables = discover(source, timeout=CONNECTION_TIMEOUT_SECONDS)
    return DiscoveredSchema.model_validate(
        {"tables": [{**t.__dict__, "columns": [c.__dict__ for c in t.columns]} for t in tables]}
    )
