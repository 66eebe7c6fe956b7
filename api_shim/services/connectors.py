"""Connectors: validated against their plug-in's models, credentials encrypted, tables named once."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.crypto import CredentialCipher
from api_shim.db.models import Connector, Project
from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.iceberg import drop_tables
from api_shim.ids import new_id
from api_shim.naming import unique_identifier
from api_shim.settings import Settings
from rime_dagster.connectors.names import describe_collisions, landing_collisions
from rime_dagster.connectors.sources import Source, SourceError, source_class
from rime_dagster.connectors.sources.base import TableInfo

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


def _ensure_name_free(session: Session, project: Project, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(select(Connector.id).where(Connector.project_id == project.id, Connector.name == name))
    if clash is not None and clash != except_id:
        raise Conflict(f"A connector named '{name}' already exists in this project.")


def create_connector(session: Session, project: Project, body, cipher: CredentialCipher) -> Connector:
    plugin = _plugin(body.connector_type)
    config = _validated(plugin, body.config, body.credentials)
    cursor_fields = body.cursor_fields or {}
    _check_sync_mode(body.sync_mode, body.selected_tables, cursor_fields)
    _ensure_name_free(session, project, body.name)
    from api_shim.services.dbt import taken_prefixes  # connector prefixes and dbt slugs share a name space

    table_prefix = unique_identifier(body.name, taken_prefixes(session, project.id), fallback="c")
    _check_distinct_landing(table_prefix, body.selected_tables)
    connector = Connector(
        id=new_id("connector"),
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
    session: Session, connector: Connector, changes: dict[str, Any], cipher: CredentialCipher
) -> Connector:
    for field in ("name", "sync_mode", "config"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    plugin = _plugin(connector.connector_type)
    config = merge_patch(connector.config, changes.get("config") or {})
    credentials = credentials_of(connector, cipher)
    if "credentials" in changes:
        credentials = merge_patch(credentials, changes["credentials"] or {}) if changes["credentials"] else {}
    config = _validated(plugin, config, credentials)
    selected = changes.get("selected_tables", connector.selected_tables)
    sync_mode = changes.get("sync_mode", connector.sync_mode)
    cursor_fields = merge_patch(connector.cursor_fields, changes.get("cursor_fields") or {})
    _check_sync_mode(sync_mode, selected, cursor_fields)
    if "selected_tables" in changes:
        _check_distinct_landing(connector.table_prefix, selected)
    if "name" in changes:
        project = session.get(Project, connector.project_id)
        _ensure_name_free(session, project, changes["name"], except_id=connector.id)
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


def upload_dir(settings: Settings, connector: Connector) -> Path:
    # rime_dagster.specs builds the same path for the code location.
    return settings.home / "uploads" / connector.project_id / connector.id


def build_source(connector: Connector, cipher: CredentialCipher, settings: Settings) -> Source:
    plugin = source_class(connector.connector_type)
    return plugin.from_dicts(
        connector.config, credentials_of(connector, cipher), upload_dir=upload_dir(settings, connector)
    )


def delete_connector(session: Session, connector: Connector, settings: Settings) -> None:
    session.delete(connector)
    session.flush()
    shutil.rmtree(upload_dir(settings, connector), ignore_errors=True)


def discover(source: Source, *, timeout: float) -> list[TableInfo]:
    try:
        return source.discover(timeout)
    except SourceError as exc:
        raise Unprocessable(f"Schema discovery failed: {exc}") from None


def refresh_known_tables(connector: Connector, cipher: CredentialCipher, settings: Settings, *, timeout: float) -> None:
    """Best effort at creation: a source that cannot be reached yet just has no known tables."""
    try:
        tables = build_source(connector, cipher, settings).discover(timeout)
    except Exception as exc:
        log.info("discovery for connector %s failed: %s", connector.id, type(exc).__name__)
        return
    connector.known_tables = [t.name for t in tables]


def purge_connector_data(catalog_provider, namespace: str, table_prefix: str) -> None:
    try:
        dropped = drop_tables(catalog_provider.catalog(), namespace, prefix=table_prefix)
        log.info("purged Iceberg tables %s", ", ".join(dropped) or "(none)")
    except Exception:
        log.exception("could not purge the Iceberg tables of %s.%s__*", namespace, table_prefix)
