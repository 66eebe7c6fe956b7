"""Reads what the code location must build from Rime's metadata store.

Each domain (connectors, dbt, pipelines, monitoring) adds its own specs here as it
arrives; definitions.py hands them to that domain's factory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api_shim.db.models import Connector, Project
from rime_dagster.resources import MetadataStoreResource, settings


@dataclass(frozen=True)
class ProjectSpec:
    id: str
    name: str
    namespace: str


@dataclass(frozen=True)
class ConnectorSpec:
    id: str
    project_id: str
    namespace: str
    name: str
    connector_type: str
    config: dict[str, Any]
    credentials_encrypted: str | None
    tables: list[str]
    schedule: str | None
    paused: bool
    sync_mode: str
    cursor_fields: dict[str, str]
    table_prefix: str
    upload_dir: Path

    def build_source(self):
        """The configured source plug-in, credentials decrypted only now, inside the run."""
        from api_shim.crypto import CredentialCipher
        from rime_dagster.connectors.sources import source_class

        credentials = (
            CredentialCipher.from_settings(settings()).decrypt(self.credentials_encrypted)
            if (self.credentials_encrypted)
            else {}
        )
        return source_class(self.connector_type).from_dicts(self.config, credentials, upload_dir=self.upload_dir)


@dataclass(frozen=True)
class PlatformSpecs:
    projects: list[ProjectSpec] = field(default_factory=list)
    connectors: list[ConnectorSpec] = field(default_factory=list)


def load_specs(store: MetadataStoreResource) -> PlatformSpecs:
    home = settings().home
    with store.session() as session:
        projects = {
            p.id: ProjectSpec(id=p.id, name=p.name, namespace=p.namespace)
            for p in session.scalars(select(Project).order_by(Project.name))
        }
        connectors = [
            ConnectorSpec(
                id=c.id,
                project_id=c.project_id,
                namespace=projects[c.project_id].namespace,
                name=c.name,
                connector_type=c.connector_type,
                config=dict(c.config),
                credentials_encrypted=c.credentials_encrypted,
                tables=c.tables,
                schedule=c.schedule,
                paused=c.paused,
                sync_mode=c.sync_mode,
                cursor_fields=dict(c.cursor_fields),
                table_prefix=c.table_prefix,
                upload_dir=home / "uploads" / c.project_id / c.id,
            )
            for c in session.scalars(select(Connector).order_by(Connector.created_at, Connector.id))
        ]
    return PlatformSpecs(projects=list(projects.values()), connectors=connectors)
