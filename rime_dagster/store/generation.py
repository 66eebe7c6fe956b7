"""The definitions generation: a counter that every committed change to what Dagster builds moves on.

A transaction that adds, changes or deletes a project, connector, dbt project, pipeline or table retention policy
(or adds or deletes an alert rule) bumps
`definitions_state.generation` by one just before it commits, and stamps the new value on each
project it touched (`projects.definitions_generation`). The code location reports the generation it
was built from, so "has Dagster caught up with this change?" is one integer comparison, across any
number of API processes sharing the store.

The bump is a single-row UPDATE inside the committing transaction: its row lock (PostgreSQL) or the
write lock (SQLite) orders commits, so generation order is commit order and a code location that
read generation N sees every change numbered N or lower.

Local listeners (`on_commit`) hear about each bump after the commit, so the API's reload loop starts
at once instead of on its next poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction

from rime_dagster.store.models import (
    AlertRule,
    Connector,
    DbtProject,
    DefinitionsState,
    Pipeline,
    PipelineEnvironment,
    Project,
    TableRetentionPolicy,
)
from rime_dagster.store.types import utcnow

STATE_ID = 1
# The rows the code location builds definitions from: any change to one of these needs a reload.
# A retention policy is a schedule; a pipeline's environment past development is a job and schedule of its own.
TRACKED = (Project, Connector, DbtProject, Pipeline, PipelineEnvironment, TableRetentionPolicy)
# Rows whose definitions depend only on their existence (an alert rule's sensor reads the rule's row at each
# evaluation): adding or deleting one needs a reload, editing it does not.
TRACKED_EXISTENCE = (AlertRule,)
_TOUCHED = "rime.definitions.touched_projects"
_BUMPED = "rime.definitions.generation"

_listeners: list[Callable[[str, int], None]] = []
_listeners_lock = threading.Lock()


def on_commit(listener: Callable[[str, int], None]) -> Callable[[], None]:
    """Calls `listener(database_url, generation)` after each commit that bumped the generation.

    Returns a function that removes the listener.
    """
    with _listeners_lock:
        _listeners.append(listener)

    def remove() -> None:
        with _listeners_lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def current_generation(session: Session) -> int:
    return session.scalar(select(DefinitionsState.generation).where(DefinitionsState.id == STATE_ID)) or 0


def _project_of(obj: object) -> str | None:
    return obj.id if isinstance(obj, Project) else getattr(obj, "project_id", None)


@event.listens_for(Session, "after_flush")
def _collect(session: Session, _flush_context: UOWTransaction) -> None:
    # new/dirty/deleted still hold the pre-flush state here.
    touched: set[str] = session.info.setdefault(_TOUCHED, set())
    for obj in (*session.new, *session.deleted):
        if isinstance(obj, (*TRACKED, *TRACKED_EXISTENCE)) and (project_id := _project_of(obj)):
            touched.add(project_id)
    for obj in session.dirty:
        modified = isinstance(obj, TRACKED) and session.is_modified(obj, include_collections=False)
        if modified and (project_id := _project_of(obj)):
            touched.add(project_id)


@event.listens_for(Session, "before_commit")
def _bump(session: Session) -> None:
    # before_commit runs before the commit's own flush: flush now so every change is collected.
    session.flush()
    touched = session.info.pop(_TOUCHED, None)
    if not touched:
        return
    state = DefinitionsState.__table__
    generation: int = session.execute(
        update(state)
        .where(state.c.id == STATE_ID)
        .values(generation=state.c.generation + 1, changed_at=utcnow())
        .returning(state.c.generation)
    ).scalar_one()
    projects = Project.__table__
    session.execute(
        update(projects)
        .where(projects.c.id.in_(sorted(touched)))
        # updated_at is an ORM onupdate: keep it, this is bookkeeping, not an edit of the project.
        .values(definitions_generation=generation, updated_at=projects.c.updated_at)
    )
    session.info[_BUMPED] = generation


@event.listens_for(Session, "after_commit")
def _announce(session: Session) -> None:
    generation = session.info.pop(_BUMPED, None)
    if generation is None:
        return
    url = session.get_bind().engine.url.render_as_string(hide_password=True)
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(url, generation)


@event.listens_for(Session, "after_soft_rollback")
def _forget(session: Session, _previous_transaction: SessionTransaction) -> None:
    session.info.pop(_TOUCHED, None)
    session.info.pop(_BUMPED, None)
