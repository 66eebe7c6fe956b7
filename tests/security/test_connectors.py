"""Issue 11, connector side: confined paths (2), credentials that never follow a changed host (4), connector
hosts (8), header-only CSV (10), reads that write nothing (12), reused names (13).

Real SQLite stores on tmp_path, a real Iceberg catalog, the throwaway PostgreSQL and real sockets; no mocks.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api_shim.main import create_app
from api_shim.services.auth import Role
from rime_dagster.connectors.sources import SourceError
from rime_dagster.settings import get_settings
from rime_dagster.store.generation import current_generation
from rime_dagster.store.models import Connector
from tests.conftest import ADMIN_TOKEN, closed_port, make_settings

PASSWORD = "s3cret-pw-never-sent-elsewhere"
POSTGRES = {
    "name": "CRM",
    "connector_type": "postgresql",
    "config": {"host": "crm-db.internal.example", "port": 5432, "database": "crm", "schema": "public"},
    "credentials": {"username": "rime_readonly", "password": PASSWORD},
    "selected_tables": ["customers"],
}


@pytest.fixture
def settings(request, tmp_path):
    """The suite's settings (connectors may read under tmp_path), plus a test's overrides (indirect parameter)."""
    return make_settings(tmp_path, **getattr(request, "param", {}))


def with_settings(**overrides):
    return pytest.mark.parametrize("settings", [overrides], indirect=True, ids=["settings"])


@pytest.fixture
def engineer(clients) -> TestClient:
    return clients.as_role(Role.data_engineer)


@pytest.fixture
def viewer(clients) -> TestClient:
    return clients.as_role(Role.viewer)


def _url(project: dict, suffix: str = "") -> str:
    return f"/api/v1/projects/{project['id']}/connectors{suffix}"


def _refused(response, field: str) -> str:
    """The per-field message of a refusal: 400 validation_error naming `field`."""
    assert response.status_code == 400, response.text
    details = {d["field"]: d["message"] for d in response.json()["error"]["details"]}
    assert field in details, details
    return details[field]


def _row(app, connector_id: str) -> Connector:
    with app.state.sessions() as session:
        row = session.get(Connector, connector_id)
        session.expunge(row)
        return row


def _generation(app) -> int:
    with app.state.sessions() as session:
        return current_generation(session)


@contextmanager
def run_worker_env(monkeypatch, settings) -> Iterator[None]:
    """The RIME_* environment a run worker gets for `settings` (what `rime up` and the Dagster fixture pass on)."""
    monkeypatch.setenv("RIME_HOME", str(settings.home))
    monkeypatch.setenv("RIME_SECRET_KEY", settings.secret_key or "")
    monkeypatch.setenv("RIME_CONNECTOR_PATH_ROOTS", json.dumps([str(p) for p in settings.connector_path_roots]))
    monkeypatch.setenv("RIME_CONNECTOR_HOSTS_DENY", json.dumps([str(n) for n in settings.connector_hosts_deny]))
    if settings.database_url:
        monkeypatch.setenv("RIME_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()


def _source_in_a_run(settings, connector_id: str):
    """The connector's source as a Dagster run builds it: specs from the store, settings from RIME_* variables."""
    from rime_dagster.resources import MetadataStoreResource
    from rime_dagster.specs import load_specs

    specs = load_specs(MetadataStoreResource(database_url=settings.metadata_url))
    return next(c for c in specs.connectors if c.id == connector_id).build_source()


# --- 2. path connectors read only inside their roots ---------------------------------------------------


class TestPathConfinement:
    @with_settings(secret_key=None)  # the key is generated into RIME_HOME/secret.key
    def test_a_files_connector_over_the_platform_home_is_refused(self, engineer, project, settings):
        assert (settings.home / "secret.key").is_file()
        for config in (
            {"path": str(settings.home)},
            # the attack: the home's secrets read as CSV tables
            {"path": str(settings.home), "format": "csv", "tables": {"key": "secret.key", "db": "rime.db"}},
            {"path": str(settings.home / "uploads")},  # other connectors' (other projects') uploads
            {"path": str(settings.home.parent)},  # a folder holding the home
        ):
            response = engineer.post(_url(project), json={"name": "Steal", "connector_type": "files", "config": config})
            assert "RIME_HOME" in _refused(response, "config.path")
        assert engineer.get(_url(project)).json()["data"] == []

    def test_a_sqlite_connector_over_the_metadata_store_or_proc_is_refused(self, engineer, project, settings):
        for path in (settings.home / "rime.db", "/proc/self/environ"):
            body = {"name": "Steal", "connector_type": "sqlite", "config": {"path": str(path)}}
            _refused(engineer.post(_url(project), json=body), "config.path")
        assert engineer.get(_url(project)).json()["data"] == []

    @with_settings(connector_path_roots=["/"])
    def test_the_home_and_proc_stay_refused_whatever_the_roots(self, engineer, project, settings, tmp_path):
        for path in (settings.home, "/proc/self", "/proc", "/"):
            body = {"name": "Steal", "connector_type": "files", "config": {"path": str(path)}}
            _refused(engineer.post(_url(project), json=body), "config.path")
        (tmp_path / "data").mkdir()
        body = {"name": "Fine", "connector_type": "files", "config": {"path": str(tmp_path / "data")}}
        assert engineer.post(_url(project), json=body).status_code == 201

    def test_a_folder_outside_the_roots_is_refused(self, tmp_path):
        allowed, other = tmp_path / "allowed", tmp_path / "other"
        for folder in (allowed / "inbox", other):
            folder.mkdir(parents=True)
        settings = make_settings(tmp_path, connector_path_roots=[allowed])
        with TestClient(create_app(settings), raise_server_exceptions=False) as admin:
            admin.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            project = admin.post("/api/v1/projects", json={"name": "p"}).json()
            refused = admin.post(
                _url(project), json={"name": "Other", "connector_type": "files", "config": {"path": str(other)}}
            )
            assert "RIME_CONNECTOR_PATH_ROOTS" in _refused(refused, "config.path")
            inbox = {"name": "Inbox", "connector_type": "files", "config": {"path": str(allowed / "inbox")}}
            created = admin.post(_url(project), json=inbox)
            assert created.status_code == 201, created.text
            moved = admin.patch(_url(project, f"/{created.json()['id']}"), json={"config": {"path": str(other)}})
            _refused(moved, "config.path")
            assert admin.get(_url(project, f"/{created.json()['id']}")).json() == created.json()

    @with_settings(connector_path_roots=[])
    def test_by_default_only_the_upload_area_is_readable(self, engineer, project, tmp_path):
        (tmp_path / "data").mkdir()
        body = {"name": "Folder", "connector_type": "files", "config": {"path": str(tmp_path / "data")}}
        assert "RIME_CONNECTOR_PATH_ROOTS" in _refused(engineer.post(_url(project), json=body), "config.path")
        created = engineer.post(_url(project), json={"name": "Drop", "connector_type": "files", "config": {}})
        assert created.status_code == 201, created.text
        base = _url(project, f"/{created.json()['id']}")
        uploaded = engineer.post(f"{base}/files", files=[("files", ("people.csv", b"id\n1\n", "text/csv"))])
        assert uploaded.status_code == 201, uploaded.text
        assert [t["name"] for t in engineer.get(f"{base}/schema").json()["tables"]] == ["people"]

    @with_settings(secret_key=None)
    def test_symlinks_out_of_an_allowed_root_are_refused(self, engineer, project, settings, tmp_path):
        data = tmp_path / "data"
        data.mkdir()
        (data / "orders.csv").write_text("id\n1\n")
        (data / "keys.csv").symlink_to(settings.home / "secret.key")
        (tmp_path / "home_link").symlink_to(settings.home, target_is_directory=True)
        (tmp_path / "shop.db").symlink_to(settings.home / "rime.db")
        for connector_type, path, shown in (
            ("files", data, "keys.csv"),  # a file of the folder leads out
            ("files", tmp_path / "home_link", "RIME_HOME"),  # the folder itself does
            ("sqlite", tmp_path / "shop.db", "RIME_HOME"),
        ):
            body = {"name": "Links", "connector_type": connector_type, "config": {"path": str(path)}}
            assert shown in _refused(engineer.post(_url(project), json=body), "config.path")
        assert engineer.get(_url(project)).json()["data"] == []

    @with_settings(secret_key=None)
    def test_a_file_swapped_for_a_symlink_after_validation_is_refused_when_read(
        self, engineer, project, settings, tmp_path, monkeypatch
    ):
        data = tmp_path / "data"
        data.mkdir()
        (data / "orders.csv").write_text("id\n1\n")
        db = tmp_path / "shop.db"
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE orders (id INTEGER)")
        made = {}
        for connector_type, path in (("files", data), ("sqlite", db)):
            body = {"name": connector_type, "connector_type": connector_type, "config": {"path": str(path)}}
            created = engineer.post(_url(project), json={**body, "selected_tables": ["orders"]})
            assert created.status_code == 201, created.text
            made[connector_type] = created.json()["id"]
        # Swapped once validated: the files' table now reads the secret key, the database is the metadata store.
        (data / "orders.csv").unlink()
        (data / "orders.csv").symlink_to(settings.home / "secret.key")
        db.unlink()
        store = settings.home / "rime.db"  # on PostgreSQL (make test-postgres) there is no store file: the key
        db.symlink_to(store if store.exists() else settings.home / "secret.key")
        secret = (settings.home / "secret.key").read_text().strip()
        for connector_id in made.values():
            base = _url(project, f"/{connector_id}")
            schema = engineer.get(f"{base}/schema")
            assert schema.status_code == 422 and secret not in schema.text, schema.text
            tested = engineer.post(f"{base}/test").json()
            assert tested["success"] is False and "may not read" in tested["message"], tested
        with run_worker_env(monkeypatch, settings):
            for connector_id in made.values():
                source = _source_in_a_run(settings, connector_id)
                with pytest.raises(SourceError, match="may not read"):
                    list(source.read("orders"))


# --- 4. a stored password never follows a changed destination ------------------------------------------


@contextmanager
def password_catcher() -> Iterator[tuple[int, list[bytes]]]:
    """A PostgreSQL look-alike on loopback that asks for a cleartext password and keeps what it is sent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    caught: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    length = struct.unpack("!I", conn.recv(4))[0]
                    if conn.recv(length - 4) == struct.pack("!I", 80877103):  # SSLRequest: no TLS here
                        conn.sendall(b"N")
                        length = struct.unpack("!I", conn.recv(4))[0]
                        conn.recv(length - 4)  # the startup message
                    conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
                    caught.append(conn.recv(4096))
                except (OSError, struct.error):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], caught
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.mark.slow
class TestCredentialsFollowTheirDestination:
    @pytest.mark.parametrize(
        ("patch", "changed"),
        [
            ({"config": {"host": "127.0.0.1"}}, "config.host"),
            ({"config": {"port": 6543}}, "config.port"),
            ({"config": {"database": "postgres"}}, "config.database"),
            ({"credentials": {"username": "postgres"}}, "credentials.username"),
        ],
    )
    def test_changing_where_the_password_goes_needs_the_credentials_again(self, engineer, project, app, patch, changed):
        created = engineer.post(_url(project), json=POSTGRES).json()
        base = _url(project, f"/{created['id']}")
        refused = engineer.patch(base, json={**patch, "schedule": "0 1 * * *"})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert [d["field"] for d in error["details"]] == ["credentials"] and changed in error["message"]
        assert PASSWORD not in refused.text
        assert engineer.get(base).json() == created
        # With the credentials again, the change goes through and only the new ones are stored.
        credentials = {"username": "other", "password": "new-pw"}
        accepted = engineer.patch(base, json={**patch, "credentials": credentials})
        assert accepted.status_code == 200, accepted.text
        from api_shim.services.connectors import credentials_of

        assert credentials_of(_row(app, created["id"]), app.state.cipher) == credentials

    def test_other_changes_keep_the_stored_credentials(self, engineer, project, app):
        created = engineer.post(_url(project), json=POSTGRES).json()
        patched = engineer.patch(_url(project, f"/{created['id']}"), json={"config": {"schema": "sales"}})
        assert patched.status_code == 200, patched.text
        from api_shim.services.connectors import credentials_of

        assert credentials_of(_row(app, created["id"]), app.state.cipher)["password"] == PASSWORD

    def test_the_password_does_not_reach_a_host_an_engineer_points_the_connector_at(self, engineer, project):
        created = engineer.post(_url(project), json=POSTGRES).json()
        base = _url(project, f"/{created['id']}")
        with password_catcher() as (port, caught):
            engineer.patch(base, json={"config": {"host": "127.0.0.1", "port": port, "connect_timeout_seconds": 2}})
            engineer.post(f"{base}/test")
        assert not any(PASSWORD.encode() in c for c in caught), caught

    def test_plugins_declare_the_fields_their_secret_is_bound_to(self):
        from rime_dagster.connectors.sources import known_types, source_class

        bound = {t: source_class(t).credentials_bound_to for t in known_types()}
        assert set(bound["postgresql"]) == {"config.host", "config.port", "config.database", "credentials.username"}
        assert bound["files"] == bound["sqlite"] == ()


# --- 8. connector hosts --------------------------------------------------------------------------------


def _server(postgres_url: str) -> dict:
    url = make_url(postgres_url)
    return {"host": url.host, "port": url.port, "database": url.database, "schema": "public"}


def _postgres(postgres_url: str, **config) -> dict:
    # The throwaway server trusts every local connection: any password will do.
    return {
        **POSTGRES,
        "config": {**_server(postgres_url), **config},
        "credentials": {"username": "rime", "password": "x"},
    }


@pytest.mark.postgres
class TestConnectorHosts:
    @with_settings(connector_hosts_deny=["127.0.0.0/8", "::1/128"])
    def test_denied_hosts_are_refused_by_address_after_dns_resolution(self, engineer, project, postgres_url):
        for host in ("127.0.0.1", "localhost", "127.0.0.2", "::1"):
            response = engineer.post(_url(project), json=_postgres(postgres_url, host=host))
            assert "RIME_CONNECTOR_HOSTS_DENY" in _refused(response, "config.host")
        assert engineer.get(_url(project)).json()["data"] == []
        # Not resolvable now: nothing to refuse yet, and it is checked again at every connection.
        created = engineer.post(_url(project), json=POSTGRES)
        assert created.status_code == 201, created.text
        base = _url(project, f"/{created.json()['id']}")
        moved = engineer.patch(
            base, json={"config": {"host": "localhost"}, "credentials": {"username": "rime", "password": "x"}}
        )
        _refused(moved, "config.host")
        assert engineer.get(base).json() == created.json()

    def test_a_connector_made_before_the_host_was_denied_cannot_connect(
        self, engineer, project, postgres_url, tmp_path, monkeypatch
    ):
        created = engineer.post(_url(project), json=_postgres(postgres_url))
        assert created.status_code == 201, created.text
        base = _url(project, f"/{created.json()['id']}")
        assert engineer.post(f"{base}/test").json()["success"] is True
        denied = make_settings(tmp_path, connector_hosts_deny=["127.0.0.0/8"])  # the same store, now with a deny list
        with TestClient(create_app(denied), raise_server_exceptions=False) as admin:
            admin.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            tested = admin.post(f"{base}/test").json()
            assert tested["success"] is False and "RIME_CONNECTOR_HOSTS_DENY" in tested["message"], tested
            assert admin.get(f"{base}/schema").status_code == 422
        with run_worker_env(monkeypatch, denied):
            source = _source_in_a_run(denied, created.json()["id"])
            with pytest.raises(SourceError, match="RIME_CONNECTOR_HOSTS_DENY"):
                source.arrow_schema("customers")
            with pytest.raises(SourceError, match="RIME_CONNECTOR_HOSTS_DENY"):
                list(source.read("customers"))

    def test_unix_socket_hosts_are_refused_unless_allowed(self, engineer, project, postgres_url, tmp_path):
        engine = create_engine(postgres_url)
        with engine.connect() as conn:
            sockets = conn.execute(text("SHOW unix_socket_directories")).scalar().split(",")[0].strip()
        engine.dispose()
        for host in (sockets, "@abstract-socket"):
            response = engineer.post(_url(project), json=_postgres(postgres_url, host=host))
            assert "RIME_CONNECTOR_ALLOW_UNIX_SOCKETS" in _refused(response, "config.host")
        assert engineer.get(_url(project)).json()["data"] == []
        allowed = make_settings(tmp_path, connector_allow_unix_sockets=True)
        with TestClient(create_app(allowed), raise_server_exceptions=False) as admin:
            admin.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            created = admin.post(_url(project), json=_postgres(postgres_url, host=sockets))
            assert created.status_code == 201, created.text
            # Why it is off by default: over the socket the server trusts the platform's own OS user.
            assert admin.post(_url(project, f"/{created.json()['id']}/test")).json()["success"] is True

    def test_connection_failures_do_not_tell_refused_from_timed_out_or_unknown(self, engineer, project, postgres_url):
        silent = socket.socket()  # accepts (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        chatty = socket.socket()  # some other service on the port
        chatty.bind(("127.0.0.1", 0))
        chatty.listen(4)

        def answer_http() -> None:
            try:
                conn, _ = chatty.accept()
                with conn:
                    conn.recv(64)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            except OSError:
                pass

        threading.Thread(target=answer_http, daemon=True).start()
        cases = {
            "refused": ("127.0.0.1", closed_port()),
            "timed out": ("127.0.0.1", silent.getsockname()[1]),
            "another service": ("127.0.0.1", chatty.getsockname()[1]),
            "non-routable": ("10.255.255.1", 5432),
            "unknown host": ("no-such-host.invalid", 5432),
        }
        messages = {}
        try:
            for i, (case, (host, port)) in enumerate(cases.items()):
                body = {**_postgres(postgres_url, host=host, port=port, connect_timeout_seconds=2), "name": f"c{i}"}
                created = engineer.post(_url(project), json=body)
                assert created.status_code == 201, created.text
                started = time.monotonic()
                result = engineer.post(_url(project, f"/{created.json()['id']}/test")).json()
                assert result["success"] is False and time.monotonic() - started < 12, (case, result)
                messages[case] = result["message"].replace(f"{host}:{port}", "HOST:PORT")
        finally:
            silent.close()
            chatty.close()
        assert set(messages.values()) == {"Could not connect to HOST:PORT."}, messages


# --- 10. a CSV with a header and no rows --------------------------------------------------------------


def test_a_header_only_csv_has_a_schema_and_lands_an_empty_table(engineer, project, app, settings):
    from api_shim.services.connectors import build_source
    from rime_dagster.connectors.sync import TableSync, sync_table

    created = engineer.post(_url(project), json={"name": "Drop", "connector_type": "files", "config": {}}).json()
    base = _url(project, f"/{created['id']}")
    upload = engineer.post(f"{base}/files", files=[("files", ("empty.csv", b"id,name\n", "text/csv"))])
    assert upload.status_code == 201, upload.text
    schema = engineer.get(f"{base}/schema")
    assert schema.status_code == 200, schema.text
    (table,) = schema.json()["tables"]
    assert table["name"] == "empty" and [c["name"] for c in table["columns"]] == ["id", "name"]
    assert table["row_estimate"] == 0
    source = build_source(_row(app, created["id"]), app.state.cipher, settings)
    catalog = app.state.iceberg.catalog()
    spec = TableSync("empty", project["namespace"], "drop__empty", "full_refresh", None, {})
    result = sync_table(source, catalog, spec, run_id="run_empty", full_refresh=False)
    assert result.rows_written == 0
    landed = catalog.load_table((project["namespace"], "drop__empty"))
    assert landed.scan().to_arrow().num_rows == 0 and landed.schema().column_names == ["id", "name"]


# --- 12. reading a schema writes nothing ---------------------------------------------------------------


def test_a_viewer_reading_the_schema_changes_neither_the_connector_nor_the_definitions(
    engineer, viewer, project, app, settings
):
    created = engineer.post(_url(project), json={"name": "Drop", "connector_type": "files", "config": {}}).json()
    base = _url(project, f"/{created['id']}")
    engineer.post(f"{base}/files", files=[("files", ("orders.csv", b"id\n1\n", "text/csv"))])
    # A file that arrived without the API (as in a server folder): the live schema now differs from the stored one.
    (settings.home / "uploads" / project["id"] / created["id"] / "people.csv").write_text("id\n1\n")
    before, generation = _row(app, created["id"]), _generation(app)
    assert before.known_tables == ["orders"]
    for reader in (viewer, engineer):
        schema = reader.get(f"{base}/schema")
        assert schema.status_code == 200 and [t["name"] for t in schema.json()["tables"]] == ["orders", "people"]
    after = _row(app, created["id"])
    assert (after.known_tables, after.updated_at, _generation(app)) == (
        before.known_tables,
        before.updated_at,
        generation,
    )
    # A data engineer's explicit refresh (the connection test) stores what it found.
    assert viewer.post(f"{base}/test").status_code == 403
    assert engineer.post(f"{base}/test").json()["success"] is True
    assert _row(app, created["id"]).known_tables == ["orders", "people"] and _generation(app) == generation + 1


# --- 13. a reused name lands in fresh tables ------------------------------------------------------------


def test_a_connector_recreated_under_a_deleted_ones_name_does_not_inherit_its_tables_or_cursor(
    engineer, project, app, tmp_path
):
    from rime_dagster.connectors.landing import land_table, read_cursor

    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE events (id INTEGER)")
    body = {
        "name": "Shop",
        "connector_type": "sqlite",
        "config": {"path": str(db)},
        "selected_tables": ["events"],
        "sync_mode": "incremental",
        "cursor_fields": {"events": "id"},
    }
    first = engineer.post(_url(project), json=body).json()
    old_prefix = _row(app, first["id"]).table_prefix
    # What its syncs left behind: the landed table, with the incremental cursor at 1000.
    catalog = app.state.iceberg.catalog()
    batch = pa.record_batch({"id": pa.array(range(1, 1001), pa.int64())})
    old_table = (project["namespace"], f"{old_prefix}__events")
    land_table(catalog, old_table, batch.schema, [batch], mode="incremental", cursor_field="id", run_id="old")
    assert read_cursor(catalog, old_table, "id") == 1000
    assert engineer.delete(_url(project, f"/{first['id']}")).status_code == 204  # the data is kept

    second = engineer.post(_url(project), json=body)
    assert second.status_code == 201, second.text
    new_prefix = _row(app, second.json()["id"]).table_prefix
    assert new_prefix != old_prefix
    assert read_cursor(catalog, (project["namespace"], f"{new_prefix}__events"), "id") is None
    assert catalog.load_table(old_table).scan().to_arrow().num_rows == 1000  # the old data stays where it was


# --- the demo under item 2's default: no folder but the upload area ------------------------------------


@pytest.mark.slow
def test_the_demo_connector_needs_no_path_root(tmp_path):
    from sqlalchemy import select

    from api_shim.demo import DEMO_DATA, ensure_demo
    from api_shim.services.connectors import build_source
    from rime_dagster.store.crypto import CredentialCipher
    from rime_dagster.store.session import session_scope

    settings = make_settings(tmp_path, connector_path_roots=[])
    ensure_demo(settings)
    with session_scope(settings.metadata_url) as session:
        shop = session.scalar(select(Connector).where(Connector.name == "Demo Shop"))
        # As `make up` loaded it before issue 11: over the repository's demo/data, now outside every root.
        shop.config = {**shop.config, "path": str(DEMO_DATA)}
    ensure_demo(settings)  # moves it into its upload area
    with session_scope(settings.metadata_url) as session:
        shop = session.scalar(select(Connector).where(Connector.name == "Demo Shop"))
        source = build_source(shop, CredentialCipher.from_settings(settings), settings)
        assert shop.config["path"] is None
    assert [t.name for t in source.discover(10)] == ["customers", "orders"]
    assert sum(batch.num_rows for batch in source.read("orders")) > 0
