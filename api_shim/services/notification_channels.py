"""Notification channels: config validated per type, secrets encrypted like connector credentials and never
shown, targets held to the host deny-list; a real test message through rime_dagster.monitoring.notify."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.monitoring import (
    CHANNEL_CONFIGS,
    ChannelTestResult,
    NotificationChannelCreate,
    NotificationChannelList,
    NotificationChannelResponse,
    NotificationChannelUpdate,
)
from api_shim.services.connectors import merge_patch
from api_shim.services.projects import get_project
from rime_dagster.connectors.sources._access import SourceAccess
from rime_dagster.connectors.sources.base import AccessRefused
from rime_dagster.monitoring import notify
from rime_dagster.settings import Settings
from rime_dagster.store.crypto import CredentialCipher, CredentialsUnreadable
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import AlertRule, EscalationPolicy, NotificationChannel, Project


def get_channel(session: Session, project: Project, channel_id: str) -> NotificationChannel:
    row = session.get(NotificationChannel, channel_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Notification channel", channel_id, " in this project")
    return row


def missing_channels(session: Session, project: Project, channel_ids: Iterable[str]) -> list[str]:
    """Those of `channel_ids` that are not channels of the project, in their order."""
    wanted = list(dict.fromkeys(channel_ids))
    if not wanted:
        return []
    found = set(
        session.scalars(
            select(NotificationChannel.id).where(
                NotificationChannel.project_id == project.id, NotificationChannel.id.in_(wanted)
            )
        )
    )
    return [channel_id for channel_id in wanted if channel_id not in found]


def _validated_config(channel_type: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config checked against its type's model (400 naming `config.<field>`), without unset keys."""
    try:
        parsed = CHANNEL_CONFIGS[channel_type].model_validate(config, strict=True)
    except ValidationError as exc:
        raise ValidationFailed.of_pydantic(exc, "config") from None
    return parsed.model_dump(mode="json", exclude_none=True)


def _check_destination(channel_type: str, config: dict[str, Any], settings: Settings) -> None:
    """400 naming the field when the channel's host resolves into RIME_CONNECTOR_HOSTS_DENY (the senders check
    again at every delivery: a name that resolves elsewhere later is caught there)."""
    if channel_type == "email":
        host, port, field = config["host"], config["port"], "host"
    else:
        url = urlsplit(config["url"])
        host, port, field = url.hostname or "", url.port or (443 if url.scheme == "https" else 80), "url"
    try:
        SourceAccess(hosts_deny=tuple(settings.connector_hosts_deny)).addresses(host, port, field=field)
    except AccessRefused as exc:
        message = str(exc).replace("connectors may not reach", "notifications may not reach")
        raise ValidationFailed.field(f"config.{exc.field}", message) from None


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(
        select(NotificationChannel.id).where(
            NotificationChannel.project_id == project_id, NotificationChannel.name == name
        )
    )
    if clash is not None and clash != except_id:
        raise Conflict(f"A notification channel named '{name}' already exists in this project.")


def _store_config(row: NotificationChannel, config: dict[str, Any], cipher: CredentialCipher) -> None:
    public, secrets = notify.split_channel_config(row.channel_type, config)
    row.config = public
    row.secrets_encrypted = cipher.encrypt(secrets) if secrets else None


def _stored_secrets(row: NotificationChannel, cipher: CredentialCipher, patch: dict[str, Any]) -> dict[str, Any]:
    """The channel's secrets, to merge a patch into. Secrets the current key cannot decrypt must come again."""
    if not row.secrets_encrypted:
        return {}
    try:
        return cipher.decrypt(row.secrets_encrypted)
    except CredentialsUnreadable as exc:
        keys = notify.SECRET_KEYS.get(row.channel_type, ())
        if all(key in patch for key in keys):
            return {}
        fields = ", ".join(f"config.{key}" for key in keys)
        raise Unprocessable(str(exc), details=[{"field": "config", "message": f"Send {fields} again."}]) from None


def create_channel(
    session: Session, project: Project, body: NotificationChannelCreate, cipher: CredentialCipher, settings: Settings
) -> NotificationChannel:
    config = _validated_config(body.type, body.config)
    _check_destination(body.type, config, settings)
    _ensure_name_free(session, project.id, body.name)
    row = NotificationChannel(id=new_id("channel"), project_id=project.id, name=body.name, channel_type=body.type)
    _store_config(row, config, cipher)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A notification channel named '{body.name}' already exists in this project.") from None
    return row


def update_channel(
    session: Session,
    row: NotificationChannel,
    body: NotificationChannelUpdate,
    cipher: CredentialCipher,
    settings: Settings,
) -> NotificationChannel:
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "config"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    if body.config is not None:
        # The whole config, secrets included (a Slack URL's real form replaces its redacted one), then the patch.
        current = {**row.config, **_stored_secrets(row, cipher, body.config)}
        config = _validated_config(row.channel_type, merge_patch(current, body.config))
        _check_destination(row.channel_type, config, settings)
        _store_config(row, config, cipher)
    if body.name is not None:
        _ensure_name_free(session, row.project_id, body.name, except_id=row.id)
        row.name = body.name
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A notification channel named '{body.name}' already exists in this project.") from None
    return row


def channel_users(session: Session, project: Project, channel_id: str) -> tuple[list[str], list[str]]:
    """Names of the project's alert rules and escalation policies that send to the channel."""
    rules = session.scalars(select(AlertRule).where(AlertRule.project_id == project.id).order_by(AlertRule.name))
    policies = session.scalars(
        select(EscalationPolicy).where(EscalationPolicy.project_id == project.id).order_by(EscalationPolicy.name)
    )
    return (
        [rule.name for rule in rules if channel_id in rule.channel_ids],
        [p.name for p in policies if any(channel_id in step.get("channel_ids", []) for step in p.steps)],
    )


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


# What the Monitoring routes call ------------------------------------------------------------------------------

CHANNELS = Listing(
    "notification_channels",
    {
        "created_at": NotificationChannel.created_at,
        "updated_at": NotificationChannel.updated_at,
        "name": NotificationChannel.name,
    },
    NotificationChannel.id,
)


def channel_response(row: NotificationChannel) -> NotificationChannelResponse:
    """The channel without its secrets: each secret kept out of the shown config says whether it is set (a type
    has one secret, so it is set when anything is encrypted)."""
    shown = dict(row.config)
    for key in notify.SECRET_KEYS.get(row.channel_type, ()):
        if key not in shown:
            shown[f"{key}_set"] = row.secrets_encrypted is not None
    return NotificationChannelResponse.of(row, type=row.channel_type, config=shown)


def list_page(session: Session, codec: CursorCodec, project: Project, page: PageRequest) -> NotificationChannelList:
    stmt = select(NotificationChannel).where(NotificationChannel.project_id == project.id)
    result = CHANNELS.page(session, stmt, page, codec, {"project": project.id})
    return result.as_page(NotificationChannelList, channel_response)


def create(
    session: Session, project: Project, body: NotificationChannelCreate, cipher: CredentialCipher, settings: Settings
) -> NotificationChannelResponse:
    return channel_response(create_channel(session, project, body, cipher, settings))


def describe(session: Session, project: Project, channel_id: str) -> NotificationChannelResponse:
    return channel_response(get_channel(session, project, channel_id))


def update(
    session: Session,
    project: Project,
    channel_id: str,
    body: NotificationChannelUpdate,
    cipher: CredentialCipher,
    settings: Settings,
) -> NotificationChannelResponse:
    row = get_channel(session, project, channel_id)
    return channel_response(update_channel(session, row, body, cipher, settings))


def delete(session: Session, project: Project, channel_id: str) -> None:
    """Deletes the channel, unless alert rules or escalation policies send to it (Conflict naming them)."""
    row = get_channel(session, project, channel_id)
    rules, policies = channel_users(session, project, row.id)
    if rules or policies:
        users = [f"alert rule(s) {_quoted(rules)}"] if rules else []
        users += [f"escalation policy(ies) {_quoted(policies)}"] if policies else []
        raise Conflict(f"The channel is used by {' and '.join(users)}; remove it from them first.")
    session.delete(row)
    session.flush()


def send_test(
    readers: sessionmaker[Session], settings: Settings, *, tenant_id: str, project_id: str, channel_id: str
) -> ChannelTestResult:
    """Sends a real test message. A read-only session: no write lock is held while the receiver answers."""
    with readers() as session:
        channel = get_channel(session, get_project(session, project_id, tenant_id=tenant_id), channel_id)
        success, message = notify.send_test(channel, settings=settings)
    return ChannelTestResult(success=success, message=message)
