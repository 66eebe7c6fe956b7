"""Shared fixtures: a migrated metadata store, the app, and a client per role."""

from __future__ import annotations

import atexit
import functools
import gc
import itertools
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.nodeid import coerce_node_id  # see pytest_collection_modifyitems
from fastapi.testclient import TestClient
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import make_url

from api_shim.main import create_app
from api_shim.services import users as user_service
from api_shim.services.auth import Role
from rime_dagster.platform.instance import ensure_dagster_home
from rime_dagster.settings import Settings, get_settings
from rime_dagster.store.migrate import upgrade_to_head
from rime_dagster.store.session import dispose_engines, engine_for, session_scope
from tests.support.postgres import fresh_database, throwaway_postgres

ADMIN_TOKEN = "rime_test_admin_token_0123456789abcdef"
# `make test-postgres` (RIME_TEST_BACKEND=postgresql): the stores the shared fixtures make (the `settings`, `home`
# and `make_settings` ones) are PostgreSQL databases, Rime's tables and Dagster's storage (dagster-postgres, its own
# schema) in each, on a throwaway server per test process. Tests that name their backend keep it.
POSTGRES_BACKEND = os.environ.get("RIME_TEST_BACKEND", "sqlite") == "postgresql"
_test_databases = itertools.count()
_kept: list[object] = []  # the server's context manager, exited at exit
_databases_by_home: dict[Path, str] = {}


@functools.cache
def _postgres_server() -> str:
    """The throwaway server of this test process (stopped and deleted at exit), with a template database migrated
    to head and holding Dagster's storage tables."""
    server = throwaway_postgres()
    _kept.append(server)
    url = server.__enter__()
    atexit.register(server.__exit__, None, None, None)
    template = _new_database(url, "rime_template")
    upgrade_to_head(template)
    folder = Path(tempfile.mkdtemp(prefix="rime-pg-dagster-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    home = ensure_dagster_home(Settings(home=folder, database_url=template))
    _create_dagster_storage(home)
    engine_for(template).dispose()
    return url


def _create_dagster_storage(home: Path) -> None:
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(home))
    try:
        instance.get_run_records(limit=1)
        instance.all_instigator_state()
    finally:
        instance.dispose()


def postgres_test_database() -> str:
    """A new database on this process's throwaway server: a copy of the template (Rime's and Dagster's tables)."""
    return _new_database(_postgres_server(), f"t{os.getpid()}_{next(_test_databases)}", template="rime_template")


def _new_database(server_url: str, name: str, template: str | None = None) -> str:
    """A database on the throwaway server, kept until the server is deleted."""
    url = make_url(server_url)
    DatabaseJanitor(
        user=url.username, host=url.host, port=url.port, dbname=name, template_dbname=template, password=url.password
    ).init()
    return url.set(database=name).render_as_string(hide_password=False)


def pytest_collection_finish(session) -> None:
    """Imports pyiceberg's SQL catalog, which the API imports on first use (the readiness check gives it 2 s in the
    tests, too little for a first import on a busy machine), then freezes what is imported (Dagster, dbt,
    pyiceberg: millions of objects), as the API does at start: Python's full garbage collections, which the
    tests' allocations trigger, then skip all of it."""
    import pyiceberg.catalog.sql  # noqa: F401

    gc.collect()
    gc.freeze()


def pytest_itemcollected(item) -> None:
    """Tests that start Dagster or PostgreSQL are slow tests too: `-m "not slow"` runs the fast layer alone."""
    if item.get_closest_marker("dagster") or item.get_closest_marker("postgres"):
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items) -> None:
    """schemathesis 4.32 names each operation's item (`test_api_matches_its_openapi[GET /health]`) through pytest's
    old `_nodeid` attribute, which pytest 9 no longer reads: all 51 items had the function's node id. pytest-xdist
    sends items to workers by node id, so under `-n 2` one operation ran and the other 50 were dropped without a
    word. Give each item the id its name means (test_schemathesis.py checks that every operation ran)."""
    for item in items:
        if item.name != getattr(item, "originalname", item.name) and not item.nodeid.endswith("]"):
            item._id = coerce_node_id(f"{item.nodeid.rpartition('::')[0]}::{item.name}")


def closed_port() -> int:
    """A loopback port nothing listens on: Dagster calls to it fail fast."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_store_template(postgres_url) -> Iterator[str]:
    """A PostgreSQL database migrated to head once; each test's PostgreSQL store is a copy of it."""
    with fresh_database(postgres_url, "store_template") as url:
        upgrade_to_head(url)
        engine_for(url).dispose()
        yield "store_template"


@functools.cache
def _sqlite_store_template() -> Path:
    """A SQLite metadata store migrated to head once per test process (the migrations take about 0.3 s)."""
    folder = Path(tempfile.mkdtemp(prefix="rime-store-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    url = f"sqlite:///{folder / 'rime.db'}"
    upgrade_to_head(url)
    engine_for(url).dispose()
    return folder / "rime.db"


def migrated_sqlite(path: Path) -> str:
    """A SQLite metadata store at `path`, at head: a copy of the migrated template (SQLite's backup API) when
    there is none yet, else the one there migrated. Returns its URL."""
    url = f"sqlite:///{path}"
    if path.exists():
        upgrade_to_head(url)
        return url
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(_sqlite_store_template())) as source, closing(sqlite3.connect(path)) as target:
        source.backup(target)
    return url


@functools.cache
def _dagster_storage_template() -> Path:
    """A DAGSTER_HOME whose SQLite storages (runs, event log index, schedules) exist, made once per test process.

    Dagster creates each storage on first use and stamps it by loading every one of its migration scripts: about
    0.3 s of CPU per fresh DAGSTER_HOME, which each test app reading run storage paid. Tests start from a copy,
    as they start from a copy of the migrated metadata store.
    """
    from dagster import DagsterInstance

    folder = Path(tempfile.mkdtemp(prefix="rime-dagster-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    home = ensure_dagster_home(Settings(home=folder / "rime"))
    instance = DagsterInstance.from_config(str(home))
    try:
        instance.get_run_records(limit=1)
        instance.all_instigator_state()
    finally:
        instance.dispose()
    return home


def seeded_dagster_home(settings: Settings) -> None:
    """`settings`' DAGSTER_HOME with its storages created (a copy of the template) unless it has them already; on
    PostgreSQL they are in the database (a copy of the template's)."""
    home = settings.dagster_home_path
    if home.exists():
        return
    if settings.metadata_url.startswith("postgresql"):
        ensure_dagster_home(settings)
        return
    shutil.copytree(_dagster_storage_template(), home)


_databases = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, migrated metadata store on each backend."""
    if request.param == "sqlite":
        url = migrated_sqlite(tmp_path / "rime.db")
        yield url
        engine_for(url).dispose()
        return
    server, template = request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_store_template")
    with fresh_database(server, f"store_{next(_databases)}", template=template) as url:
        yield url
        engine_for(url).dispose()


def make_settings(tmp_path, database_url: str | None = None, **overrides) -> Settings:
    if database_url is None and POSTGRES_BACKEND:  # one database per home, as SQLite's file is under it
        home = Path(overrides.get("home") or tmp_path / "rime")
        database_url = _databases_by_home.setdefault(home, "") or postgres_test_database()
        _databases_by_home[home] = database_url
    values = dict(
        home=tmp_path / "rime",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        rate_limit_default="100000/minute",
        dbt_git_schemes=["https", "ssh", "file"],  # the tests' git repositories are local (file://)
        dagster_graphql_url=f"http://127.0.0.1:{closed_port()}/graphql",
        dagster_timeout_seconds=2,
        dagster_launch_timeout_seconds=2,
        dagster_reload_timeout_seconds=2,
        health_timeout_seconds=2,
        secret_key="test-secret-key",
        connector_path_roots=[tmp_path],  # tests keep their source files under tmp_path (RIME_HOME stays off limits)
    )
    values.update(overrides)
    settings = Settings(**values)
    if settings.database_url is None:
        migrated_sqlite(settings.home / "rime.db")
    else:
        upgrade_to_head(settings.database_url)
    seeded_dagster_home(settings)
    return settings


@pytest.fixture(autouse=True)
def _close_test_databases() -> Iterator[None]:
    """On PostgreSQL each test has databases of its own: their engines' connections close with the test (a server
    takes a hundred connections; a process's tests would hold one pool per database until collected)."""
    yield
    if POSTGRES_BACKEND:
        dispose_engines()


def use_settings(monkeypatch, settings: Settings) -> None:
    """The process's settings (get_settings(), what the code location reads) become `settings`' home, key and
    store; the caller clears get_settings' cache when done (or monkeypatch's undo and the next clear do)."""
    monkeypatch.setenv("RIME_HOME", str(settings.home))
    monkeypatch.setenv("RIME_SECRET_KEY", settings.secret_key)
    if settings.database_url:
        monkeypatch.setenv("RIME_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """RIME_HOME under tmp_path for code that reads the settings, with its metadata store migrated as a deployment's
    is (run steps hold write leases there); connectors may read under tmp_path (returns it)."""
    monkeypatch.setenv("RIME_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RIME_CONNECTOR_PATH_ROOTS", str(tmp_path))
    if POSTGRES_BACKEND:
        monkeypatch.setenv("RIME_DATABASE_URL", postgres_test_database())
    get_settings.cache_clear()
    url = get_settings().metadata_url if POSTGRES_BACKEND else migrated_sqlite(tmp_path / "home" / "rime.db")
    yield tmp_path
    engine_for(url).dispose()
    get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def app(settings):
    return create_app(settings)


@dataclass
class Clients:
    """An authenticated TestClient per role, plus an anonymous one."""

    app: object
    anonymous: TestClient
    tokens: dict[Role, str]
    user_ids: dict[Role, str]

    def as_role(self, role: Role) -> TestClient:
        client = TestClient(self.app, raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return client

    @property
    def admin(self) -> TestClient:
        return self.as_role(Role.admin)


@contextmanager
def role_clients(app, settings: Settings) -> Iterator[Clients]:
    """The app running (its lifespan bootstraps the admin), a user and token per other role, and their clients."""
    with TestClient(app, raise_server_exceptions=False) as anonymous:
        tokens: dict[Role, str] = {Role.admin: ADMIN_TOKEN}
        user_ids: dict[Role, str] = {}
        with session_scope(settings.metadata_url) as session:
            for role in Role:
                if role is Role.admin:
                    continue
                user = user_service.create_user(
                    session, tenant_id=settings.tenant, email=f"{role.value}@example.com", name=role.value, role=role
                )
                tokens[role] = user_service.create_token(session, user, name="test", expires_at=None).secret
                user_ids[role] = user.id
        yield Clients(app=app, anonymous=anonymous, tokens=tokens, user_ids=user_ids)
    engine_for(settings.metadata_url).dispose()


@pytest.fixture
def clients(app, settings) -> Iterator[Clients]:
    with role_clients(app, settings) as clients:
        yield clients


@pytest.fixture
def admin(clients) -> TestClient:
    return clients.admin


@pytest.fixture
def project(admin) -> dict:
    response = admin.post("/api/v1/projects", json={"name": "analytics", "description": "test project"})
    assert response.status_code == 201, response.text
    return response.json()


# The session's real Dagster is defined here, at the root, so that every module that asks for it shares one boot:
# a session fixture imported into a test module is that module's own fixture, started again for the module.
@pytest.fixture(scope="session")
def dagster_webserver(tmp_path_factory):
    """The `rime` code server and a dagster-webserver, as `rime up` runs them (tests/dagster/conftest.py)."""
    from tests.dagster.conftest import running_dagster

    with running_dagster(tmp_path_factory.mktemp("dagster-webserver")) as server:
        yield server


@pytest.fixture
def api(dagster_webserver) -> Iterator[TestClient]:
    """The API, as the admin, wired to the session's real Dagster webserver."""
    settings = dagster_webserver.settings
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {settings.admin_token}"
        yield client
