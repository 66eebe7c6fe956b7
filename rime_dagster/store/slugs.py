"""The slugs that name a project's objects in Dagster and Iceberg, chosen once, when an object is created.

A project's connectors (`table_prefix`), dbt projects and pipelines (`slug`) share one space of slugs: connector
prefixes and dbt slugs prefix asset keys and Iceberg tables, and dbt and pipeline slugs name jobs
(`<namespace>__<slug>`, rime_dagster/platform/names.py). A slug is never changed afterwards: renaming an object
keeps its Dagster names, Iceberg tables and run history where they are.
"""

from __future__ import annotations

from collections.abc import Set

from sqlalchemy import select
from sqlalchemy.orm import Session

from rime_dagster.platform.naming import unique_identifier
from rime_dagster.store.models import Connector, DbtProject, Pipeline, Project


def taken_slugs(session: Session, project_id: str) -> set[str]:
    """Every slug the project's objects hold.

    Locks the project's row until the transaction ends, so two objects created at the same time cannot both take
    a slug they both found free (PostgreSQL; on SQLite every transaction already holds the write lock).
    """
    session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
    connectors = session.scalars(select(Connector.table_prefix).where(Connector.project_id == project_id))
    dbt = session.scalars(select(DbtProject.slug).where(DbtProject.project_id == project_id))
    pipelines = session.scalars(select(Pipeline.slug).where(Pipeline.project_id == project_id))
    return set(connectors) | set(dbt) | set(pipelines)


def new_slug(session: Session, project_id: str, name: str, *, fallback: str, also_taken: Set[str] = frozenset()) -> str:
    """`Shop nightly` -> `shop_nightly` (`shop_nightly_2` if taken). `also_taken`: slugs to avoid as well."""
    return unique_identifier(name, taken_slugs(session, project_id) | set(also_taken), fallback=fallback)
