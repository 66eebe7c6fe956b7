"""The definitions generation on both backends: what bumps it, what does not, and commit order."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from rime_dagster.store.generation import current_generation, on_commit
from rime_dagster.store.models import Connector, DbtProject, Pipeline, Project, User
from rime_dagster.store.session import BUSY_TIMEOUT_SECONDS, read_scope, session_factory, session_scope


def _generation(url: str) -> int:
    with session_scope(url) as session:
        return current_generation(session)


def _project_generation(url: str, project_id: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(Project.definitions_generation).where(Project.id == project_id))


def _project(session, name: str) -> Project:
    project = Project(id=f"proj_{name}", tenant_id="default", name=name, namespace=name)
    session.add(project)
    return project


def _connector(project_id: str, name: str = "crm") -> Connector:
    return Connector(
        id=f"conn_{project_id}_{name}",
        project_id=project_id,
        name=name,
        connector_type="files",
        config={},
        selected_tables=["orders"],
        cursor_fields={},
        table_prefix=name,
        known_tables=[],
    )


def test_each_change_to_what_dagster_builds_bumps_once_and_stamps_its_project(db_url):
    start = _generation(db_url)
    with session_scope(db_url) as session:
        _project(session, "sales")
        _project(session, "ops")
    assert _generation(db_url) == start + 1  # one transaction, one bump, however many rows
    assert _project_generation(db_url, "proj_sales") == _project_generation(db_url, "proj_ops") == start + 1

    def dbt_project(session):
        session.add(
            DbtProject(
                id="dbt_1",
                project_id="proj_ops",
                name="m",
                slug="m",
                source={},
                target={},
                vars={},
                dbt_project_name="m",
                profile_name="m",
            )
        )

    changes = [
        ("connector created", "proj_sales", lambda s: s.add(_connector("proj_sales"))),
        ("connector changed", "proj_sales", lambda s: setattr(s.get(Connector, "conn_proj_sales_crm"), "paused", True)),
        (
            "pipeline created",
            "proj_ops",
            lambda s: s.add(
                Pipeline(
                    id="pipe_1",
                    project_id="proj_ops",
                    name="p",
                    slug="p",
                    steps=[],
                    variables={},
                    paused=False,
                    retries=0,
                )
            ),
        ),
        ("dbt project created", "proj_ops", dbt_project),
        ("project renamed", "proj_sales", lambda s: setattr(s.get(Project, "proj_sales"), "name", "Sales")),
        ("connector deleted", "proj_sales", lambda s: s.delete(s.get(Connector, "conn_proj_sales_crm"))),
    ]
    for what, project_id, change in changes:
        before = _generation(db_url)
        other = "proj_ops" if project_id == "proj_sales" else "proj_sales"
        other_before = _project_generation(db_url, other)
        with session_scope(db_url) as session:
            change(session)
        assert _generation(db_url) == before + 1, what
        assert _project_generation(db_url, project_id) == before + 1, what
        assert _project_generation(db_url, other) == other_before, what


def test_changes_dagster_does_not_build_from_leave_it_alone(db_url):
    with session_scope(db_url) as session:
        _project(session, "sales")
    before = _generation(db_url)
    with session_scope(db_url) as session:
        session.add(User(id="usr_1", tenant_id="default", email="a@example.com", name="a", role="viewer"))
    with session_scope(db_url) as session:
        session.get(Project, "proj_sales")  # read only
    with session_scope(db_url) as session:
        project = session.get(Project, "proj_sales")
        project.description = project.description  # assigned, not changed
    with pytest.raises(RuntimeError), session_scope(db_url) as session:
        session.add(_connector("proj_sales"))
        session.flush()
        raise RuntimeError("rolled back")
    assert _generation(db_url) == before
    with session_scope(db_url) as session:
        assert session.get(Connector, "conn_proj_sales_crm") is None


def test_listeners_hear_each_bump_after_its_commit(db_url):
    heard: list[int] = []
    remove = on_commit(lambda url, generation: heard.append(generation))
    try:
        with session_scope(db_url) as session:
            _project(session, "sales")
        with session_scope(db_url) as session:
            session.add(User(id="usr_1", tenant_id="default", email="a@example.com", name="a", role="viewer"))
        with session_scope(db_url) as session:
            session.add(_connector("proj_sales"))
    finally:
        remove()
    assert heard == [_generation(db_url) - 1, _generation(db_url)]


def test_generation_order_is_commit_order_under_concurrent_writers(db_url):
    """A reader that sees generation N (read first, as the code location does) sees every change up to N."""
    writers = 24
    with session_scope(db_url) as session:
        for i in range(writers):
            _project(session, f"p{i}")
    start = _generation(db_url)
    sessions = session_factory(db_url)
    snapshots: list[tuple[int, set[str]]] = []
    done = threading.Event()

    def write(i: int) -> None:
        with session_scope(db_url) as session:
            session.add(_connector(f"proj_p{i}"))

    def read() -> None:
        while not done.is_set():
            with sessions() as session:
                generation = current_generation(session)
                snapshots.append((generation, set(session.scalars(select(Connector.project_id)))))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(writers)))
    finally:
        done.set()
        reader.join()
    assert _generation(db_url) == start + writers
    with session_scope(db_url) as session:
        # Each writer touched its own project, so the project carries the generation of that write.
        committed = dict(session.execute(select(Project.id, Project.definitions_generation)).all())
    assert sorted(committed.values()) == list(range(start + 1, start + writers + 1))
    assert snapshots
    for generation, seen in snapshots:
        assert {p for p, g in committed.items() if g <= generation} <= seen, generation


def test_a_read_only_snapshot_never_makes_a_writer_wait(db_url):
    """The code location reads every row to build its definitions; writers must not queue behind it."""
    with session_scope(db_url) as session:
        _project(session, "sales")
    with read_scope(db_url) as reader:
        before = current_generation(reader)
        started = time.monotonic()
        with session_scope(db_url) as writer:
            writer.add(_connector("proj_sales"))
        # Queued behind the reader, the write would wait out the busy timeout (10 s) and fail; half of it leaves
        # a busy machine room without letting a lock wait pass.
        assert time.monotonic() - started < BUSY_TIMEOUT_SECONDS / 2
        if db_url.startswith("sqlite"):
            # SQLite's reader keeps its snapshot. PostgreSQL reads committed rows statement by
            # statement, which is why the generation is read first: the rows are never older.
            assert current_generation(reader) == before
            assert reader.scalars(select(Connector.id)).all() == []
    assert _generation(db_url) == before + 1
