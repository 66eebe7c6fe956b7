"""Reads what the code location must build from Rime's metadata store.

Each domain (connectors, dbt, pipelines, monitoring) adds its own specs here as it
arrives; definitions.py hands them to that domain's factory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from api_shim.db.models import Project
from rime_dagster.resources import MetadataStoreResource


@dataclass(frozen=True)
class ProjectSpec:
    id: str
    name: str


@dataclass(frozen=True)
class PlatformSpecs:
    projects: list[ProjectSpec] = field(default_factory=list)


def load_specs(store: MetadataStoreResource) -> PlatformSpecs:
    with store.session() as session:
        projects = [ProjectSpec(id=p.id, name=p.name) for p in session.scalars(select(Project).order_by(Project.name))]
    return PlatformSpecs(projects=projects)
