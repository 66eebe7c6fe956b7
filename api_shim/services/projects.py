"""Projects: the top-level container; deleting one removes everything it owns."""

from __future__ import annotations

import logging
import shutil

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, NotFound
from rime_dagster.platform.iceberg import CatalogProvider, drop_tables
from rime_dagster.platform.naming import unique_identifier
from rime_dagster.settings import Settings
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Project

log = logging.getLogger(__name__)


def get_project(session: Session, project_id: str, *, tenant_id: str) -> Project:
    project = session.get(Project, project_id)
    if project is None or project.tenant_id != tenant_id:
        raise NotFound.of("Project", project_id)
    return project


def _ensure_name_free(session: Session, tenant_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(select(Project.id).where(Project.tenant_id == tenant_id, Project.name == name))
    if clash is not None and clash != except_id:
        raise Conflict(f"A project named '{name}' already exists.")


def create_project(session: Session, *, tenant_id: str, name: str, description: str | None) -> Project:
    _ensure_name_free(session, tenant_id, name)
    taken = set(session.scalars(select(Project.namespace).where(Project.tenant_id == tenant_id)))
    project = Project(
        id=new_id("project"),
        tenant_id=tenant_id,
        name=name,
        description=description,
        namespace=unique_identifier(name, taken, fallback="p"),
    )
    session.add(project)
    try:
        session.flush()
    except IntegrityError:  # created concurrently under the same name
        raise Conflict(f"A project named '{name}' already exists.") from None
    return project


def update_project(session: Session, project: Project, *, changes: dict) -> Project:
    if "name" in changes and changes["name"] != project.name:
        _ensure_name_free(session, project.tenant_id, changes["name"], except_id=project.id)
        project.name = changes["name"]
    if "description" in changes:
        project.description = changes["description"]
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A project named '{changes['name']}' already exists.") from None
    return project


def delete_project(session: Session, project: Project, *, settings: Settings) -> None:
    """Deletes the project; rows it owns (connectors, ...) go with it through ON DELETE CASCADE,
    and so do its upload areas and dbt files. Its Dagster definitions disappear on the next code-location
    reload, since they are built from these rows; Iceberg tables stay unless purged."""
    session.delete(project)
    session.flush()
    shutil.rmtree(settings.home / "uploads" / project.id, ignore_errors=True)
    # dbt projects' copies, artifacts and the DuckDB warehouse: all rebuilt from sources if needed.
    shutil.rmtree(settings.dbt_home / project.id, ignore_errors=True)


def purge_project_data(catalog_provider: CatalogProvider, namespace: str) -> None:
    try:
        dropped = drop_tables(catalog_provider.catalog(), namespace, drop_namespace=True)
        log.info("purged %d Iceberg tables of namespace %s", len(dropped), namespace)
    except Exception:
        log.exception("could not purge Iceberg namespace %s", namespace)
