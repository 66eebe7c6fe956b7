"""Projects: the top-level container; deleting one removes everything it owns."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.db.models import Project
from api_shim.errors import Conflict, NotFound
from api_shim.ids import new_id


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
    project = Project(id=new_id("project"), tenant_id=tenant_id, name=name, description=description)
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


def delete_project(session: Session, project: Project) -> None:
    """Deletes the project; rows it owns go with it through ON DELETE CASCADE.

    Resources that live outside the metadata store (Dagster definitions, Iceberg
    tables) are cleaned up by their domains as they are added.
    """
    session.delete(project)
    session.flush()
