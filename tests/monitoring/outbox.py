"""Rows the notification tests send from: a project, a rule, channels (secrets encrypted as the API stores
them) and alerts fired through the real lifecycle (rime_dagster.monitoring.alerts), which queues the outbox."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from rime_dagster.monitoring import alerts
from rime_dagster.monitoring.notify import split_channel_config
from rime_dagster.settings import Settings
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Alert, AlertRule, NotificationChannel, Project


def add_project(session: Session, name: str = "Sales analytics") -> Project:
    project = Project(id=new_id("project"), tenant_id="default", name=name, namespace=name.lower().replace(" ", "_"))
    session.add(project)
    session.flush()
    return project


def add_channel(
    session: Session, settings: Settings, project: Project, channel_type: str, config: dict[str, Any], name: str = ""
) -> NotificationChannel:
    public, secrets = split_channel_config(channel_type, config)
    channel = NotificationChannel(
        id=new_id("channel"),
        project_id=project.id,
        name=name or f"{channel_type} {new_id('channel')[-6:]}",
        channel_type=channel_type,
        config=public,
        secrets_encrypted=CredentialCipher.from_settings(settings).encrypt(secrets) if secrets else None,
    )
    session.add(channel)
    session.flush()
    return channel


def add_rule(
    session: Session, project: Project, channels: list[NotificationChannel], name: str = "Orders failed"
) -> AlertRule:
    rule = AlertRule(
        id=new_id("rule"),
        project_id=project.id,
        name=name,
        slug=name.lower().replace(" ", "_"),
        severity="high",
        condition={"type": "run_failed"},
        channel_ids=[channel.id for channel in channels],
        enabled=True,
        only_final_retry=False,
        cursor={},
    )
    session.add(rule)
    session.flush()
    return rule


def fire(session: Session, rule: AlertRule, target: str = "pipeline:pipe_1", run: str = "0f3c2a") -> Alert:
    alert = alerts.fire(
        session,
        rule,
        target=target,
        title=f"Pipeline orders failed ({target})",
        message='Step load_orders failed: relation "orders" does not exist',
        context={"dagster_run_id": f"{run}-1111-2222-3333-444455556666", "pipeline_id": "pipe_1"},
    )
    assert alert is not None
    return alert
