"""Issue 11, the dbt and platform items: secrets kept from dbt (3), credentials that do not follow a changed host (4),
git sources (6), the last admin (9), tenants (11), run time limits (15), the Dagster UI's bind host (16).

Real backends throughout: the SQLite (or throwaway PostgreSQL) store, real `dbt parse` and runs, git repositories
made with `git init`, HTTP and TCP servers on loopback that record what reaches them.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa
from filelock import FileLock

from api_shim.errors import Conflict
from api_shim.services import users as user_service
from api_shim.services.auth import Role
from rime_dagster.connectors.assets import project_connector_definitions
from rime_dagster.dbt import parse_template, workspace
from rime_dagster.dbt.assets import dbt_definitions
from rime_dagster.resources import IcebergCatalogResource, MetadataStoreResource
from rime_dagster.settings import Settings, get_settings
from rime_dagster.specs import DbtProjectSpec, ProjectSpec, load_specs
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.models import Connector, DbtProject, Project, User
from rime_dagster.store.session import engine_for, session_scope
from tests.conftest import ADMIN_TOKEN
from tests.support.dbt import parsed_spec

pytestmark = pytest.mark.slow  # most of these parse or run dbt

# What `rime up` and the tests' Dagster put in the environment of the platform's processes.
PLATFORM_SECRETS = {
    "RIME_ADMIN_TOKEN": "rime_sentinel_admin_token_4f1c",
    "RIME_SECRET_KEY": "sentinel-secret-key-9d2e",
    "RIME_DATABASE_URL": "postgresql+psycopg://rime:sentinel-store-pw-77a1@store.internal/rime",
    # Anything else the operator's shell holds reaches dbt only when allowed by a setting.
    "AWS_SECRET_ACCESS_KEY": "sentinel-aws-secret-0b3f",
}
ENV_EXPRESSION = " ~ '|' ~ ".join(f"env_var('{name}', 'absent')" for name in PLATFORM_SECRETS)
ENV_PROBE = f"{{{{ {ENV_EXPRESSION} }}}}"


def _url(project: dict, suffix: str = "") -> str:
    return f"/api/v1/projects/{project['id']}/dbt-projects{suffix}"


@pytest.fixture
def project(clients) -> dict:
    response = clients.admin.post("/api/v1/projects", json={"name": "security"})
    assert response.status_code == 201, response.text
    return response.json()


def _register(client, project: dict, name: str, source: dict):
    return client.post(_url(project), json={"name": name, "source": source})


def _dbt_project(folder: Path, models: dict[str, str], name: str = "probe") -> Path:
    (folder / "models").mkdir(parents=True)
    (folder / "dbt_project.yml").write_text(
        f'name: {name}\nversion: "1.0.0"\nprofile: {name}\nmodel-paths: ["models"]\nseed-paths: ["seeds"]\n'
    )
    for path, text in models.items():
        (folder / "models" / path).write_text(text)
    return folder


def _assert_no_secret(text: str) -> None:
    for name, value in PLATFORM_SECRETS.items():
        assert value not in text, f"{name} leaked"
    assert "sentinel" not in text


# 3. Secrets reach dbt ----------------------------------------------------------------------------------------


@pytest.fixture
def platform_secrets_in_environ(monkeypatch) -> None:
    """The API's and the run worker's environment as `rime up` used to fill it."""
    for name, value in PLATFORM_SECRETS.items():
        monkeypatch.setenv(name, value)


def _parses_see_no_platform_secret(clients, project: dict, tmp_path: Path) -> None:
    """A model's description and a compilation error render every platform secret's variable: all absent."""
    folder = _dbt_project(
        tmp_path / "probe",
        {
            "leak.sql": "select 1 as id\n",
            "schema.yml": f'version: 2\nmodels:\n  - name: leak\n    description: "{ENV_PROBE}"\n',
        },
    )
    created = _register(clients.admin, project, "Probe", {"type": "path", "path": str(folder)})
    assert created.status_code == 201, created.text
    models = clients.as_role(Role.viewer).get(_url(project, f"/{created.json()['id']}/models"))
    assert models.status_code == 200
    _assert_no_secret(models.text)
    assert models.json()["data"][0]["description"] == "|".join(["absent"] * len(PLATFORM_SECRETS))

    broken = _dbt_project(
        tmp_path / "broken",
        {"leak.sql": f"{{{{ exceptions.raise_compiler_error('probe: ' ~ {ENV_EXPRESSION}) }}}}\nselect 1 as id\n"},
    )
    refused = _register(clients.admin, project, "Broken", {"type": "path", "path": str(broken)})
    assert refused.status_code == 422
    _assert_no_secret(refused.text)
    assert "probe: absent|absent" in refused.json()["error"]["message"]


def test_dbt_parse_in_the_api_sees_no_platform_secret(clients, project, tmp_path, platform_secrets_in_environ):
    _parses_see_no_platform_secret(clients, project, tmp_path)


def test_dbt_parse_forked_from_the_template_sees_no_platform_secret(
    clients, project, tmp_path, platform_secrets_in_environ
):
    """The same, for parses forked from the warm dbt template (rime_dagster/dbt/parse_template.py), started here
    while the API's environment holds the platform's secrets."""
    parse_template.TEMPLATE.close()
    assert parse_template.TEMPLATE.wait_ready(workspace.dbt_env()), "the dbt parse template did not start"
    template_pid = parse_template.TEMPLATE.pid
    assert template_pid is not None
    _assert_no_secret(Path(f"/proc/{template_pid}/environ").read_bytes().decode(errors="replace"))
    forks = parse_template.TEMPLATE.forks
    _parses_see_no_platform_secret(clients, project, tmp_path)
    assert parse_template.TEMPLATE.forks == forks + 2  # both parses ran in children of the template


def _spec(
    tmp_path: Path,
    name: str,
    models: dict[str, str],
    *,
    target: dict | None = None,
    password: str | None = None,
) -> DbtProjectSpec:
    """A parsed dbt project as the code location builds it (the parse sees no secret: only the run is tested)."""
    source = _dbt_project(tmp_path / f"{name}-source", models, name=name)
    files = workspace.ProjectFiles(tmp_path / f"{name}-files", 1)
    encrypted = CredentialCipher.from_settings(get_settings()).encrypt({"password": password}) if password else None
    return parsed_spec(
        source,
        files,
        name=name,
        profile=name,
        duckdb_file=files.root / "warehouse.duckdb",  # beside the project, as under RIME_HOME/dbt/<project id>
        target=target,
        credentials_encrypted=encrypted,
    )


def _materialize(spec: DbtProjectSpec) -> dg.ExecuteInProcessResult:
    [assets] = dbt_definitions(spec).assets
    return dg.materialize(
        [assets],
        resources={"iceberg": IcebergCatalogResource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _run_text(spec: DbtProjectSpec, result: dg.ExecuteInProcessResult) -> str:
    """Everything a run left where a viewer could read it: its event log and dbt's artifacts and logs."""
    texts = [str(event) for event in result.all_events]
    for path in (spec.root / "runs").rglob("*"):
        if path.is_file() and path.suffix != ".msgpack":
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


LEAK_MODEL = (
    "{{ config(materialized='table') }}\n"
    f"{{{{ log('probe: ' ~ {ENV_EXPRESSION}, info=True) }}}}\n"
    f"select '{ENV_PROBE}' as probe, "
    "'{{ env_var('RIME_DBT_TARGET_PASSWORD', 'absent') }}' as other_projects_password\n"
)


@pytest.mark.postgres
def test_dbt_runs_see_no_platform_secret_and_only_their_own_password(
    home, tmp_path, monkeypatch, postgres_url, platform_secrets_in_environ
):
    monkeypatch.delenv("RIME_DATABASE_URL")  # the run's own settings read the store's URL from here
    get_settings.cache_clear()
    url = sa.engine.make_url(postgres_url)
    pg_target = {
        "adapter": "postgres",
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "dbname": url.database,
        "schema": "dbt_probe",
    }
    with_password = _spec(
        tmp_path,
        "warehouse",
        {"given.sql": "select '{{ \"set\" if env_var('RIME_DBT_TARGET_PASSWORD', '') else \"unset\" }}' as password"},
        target=pg_target,
        password="pg-password-of-warehouse",
    )
    leak = _spec(tmp_path, "leak", {"leak.sql": LEAK_MODEL})
    monkeypatch.setenv("RIME_DATABASE_URL", PLATFORM_SECRETS["RIME_DATABASE_URL"])

    first = _materialize(with_password)
    assert first.success
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select password from dbt_probe.given")).scalar() == "set"
    finally:
        engine.dispose()
    # The password went to that dbt process only, never into this (shared) worker's environment...
    assert workspace.PASSWORD_ENV not in os.environ

    # ...so a later dbt run in the same worker, of another project, sees neither it nor a platform secret.
    second = _materialize(leak)
    assert second.success
    with duckdb.connect(str(leak.duckdb_file), read_only=True) as conn:
        row = conn.execute("select probe, other_projects_password from leak").fetchone()
    assert row == ("|".join(["absent"] * len(PLATFORM_SECRETS)), "absent")
    text = _run_text(leak, second)
    _assert_no_secret(text)
    assert "pg-password-of-warehouse" not in text


def test_dbt_env_is_an_allow_list(monkeypatch):
    monkeypatch.setenv("RIME_ADMIN_TOKEN", PLATFORM_SECRETS["RIME_ADMIN_TOKEN"])
    monkeypatch.setenv("DBT_ENV_CUSTOM_ENV_TEAM", "analytics")
    monkeypatch.setenv("SNOWFLAKE_ACCOUNT", "xy123")
    settings = Settings(home=Path("/srv/rime"), env_passthrough=["SNOWFLAKE_*"])
    env = workspace.dbt_env(settings, password="pw")
    assert "RIME_ADMIN_TOKEN" not in env and "RIME_SECRET_KEY" not in env and "RIME_DATABASE_URL" not in env
    assert env[workspace.PASSWORD_ENV] == "pw"
    assert (env["DBT_ENV_CUSTOM_ENV_TEAM"], env["SNOWFLAKE_ACCOUNT"]) == ("analytics", "xy123")
    assert not [name for name in env if name.startswith("RIME_") and name != workspace.PASSWORD_ENV]
    assert env["PATH"] == os.environ["PATH"]


# 4. Stored credentials follow a changed host -------------------------------------------------------------------


def test_postgres_target_change_of_address_requires_the_password_again(clients, project, tmp_path):
    """Host, port, dbname and user, each on its own: one registered project moved one address field at a time
    (each accepted move is a new revision, one dbt parse)."""
    folder = _dbt_project(tmp_path / "pg", {"one.sql": "select 1 as id\n"})
    target = {"adapter": "postgres", "host": "db.internal", "user": "dbt", "dbname": "wh", "schema": "analytics"}
    created = clients.admin.post(
        _url(project),
        json={"name": "PG", "source": {"type": "path", "path": str(folder)}, "target": {**target, "password": "pw"}},
    )
    assert created.status_code == 201, created.text
    url = _url(project, f"/{created.json()['id']}")

    # Changing anything else keeps the stored password.
    target["schema"] = "marts"
    same_place = clients.admin.patch(url, json={"target": target})
    assert same_place.status_code == 200, same_place.text
    assert same_place.json()["target_credentials_set"] is True
    for change in ({"host": "attacker.example"}, {"port": 6543}, {"dbname": "other"}, {"user": "someone"}):
        before = clients.admin.get(url).json()
        moved = clients.admin.patch(url, json={"target": {**target, **change}})
        assert moved.status_code == 422, (change, moved.text)
        assert [d["field"] for d in moved.json()["error"].get("details", [])] == ["target.password"], change
        after = clients.admin.get(url).json()
        assert (after["target"], after["revision"]) == (before["target"], before["revision"]), change

        # A new address with its password is fine.
        target.update(change)
        with_password = clients.admin.patch(url, json={"target": {**target, "password": "new"}})
        assert with_password.status_code == 200, (change, with_password.text)
        assert with_password.json()["revision"] == before["revision"] + 1
        assert with_password.json()["target"] == {**before["target"], **change}, change


# 6. git sources ------------------------------------------------------------------------------------------------

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@e",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@e",
    "PATH": "/usr/bin:/bin",
}


def _git_repo(folder: Path) -> Path:
    _dbt_project(folder, {"one.sql": "select 1 as id\n"}, name="tiny")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", *args], cwd=folder, check=True, env=GIT_ENV, capture_output=True)
    return folder


class _Recorder:
    def __init__(self):
        self.requests: list[str] = []


@pytest.fixture
def git_over_http(tmp_path) -> Iterator[tuple[str, _Recorder]]:
    """A bare clone of a dbt project served by git's dumb HTTP protocol on loopback, behind Basic auth
    (user `rime`, password `git-token-5e1d`); yields its address without credentials and what it was asked."""
    bare = tmp_path / "served" / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(_git_repo(tmp_path / "work")), str(bare)], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    recorder = _Recorder()
    expected = "Basic " + base64.b64encode(b"rime:git-token-5e1d").decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "served"), **kwargs)

        def do_GET(self):
            recorder.requests.append(self.path)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/repo.git", recorder
    finally:
        server.shutdown()
        server.server_close()


def test_git_url_credentials_are_encrypted_and_never_returned(clients, project, settings, git_over_http):
    address, recorder = git_over_http
    settings.dbt_git_schemes = ["http"]
    settings.dbt_git_allow_local_hosts = True
    with_credentials = address.replace("http://", "http://rime:git-token-5e1d@")
    created = _register(clients.admin, project, "Git", {"type": "git", "url": with_credentials})
    assert created.status_code == 201, created.text
    redacted = address.replace("http://", "http://***@")
    assert created.json()["source"]["url"] == redacted
    url = _url(project, f"/{created.json()['id']}")
    for client in (clients.admin, clients.as_role(Role.viewer)):
        for path in (url, _url(project)):
            response = client.get(path)
            assert response.status_code == 200 and "git-token-5e1d" not in response.text
    with session_scope(settings.metadata_url) as session:
        stored = session.get(DbtProject, created.json()["id"])
        assert "git-token-5e1d" not in repr(stored.source)
    for path in (settings.dbt_home / project["id"]).rglob("*"):
        if path.is_file():
            assert b"git-token-5e1d" not in path.read_bytes(), path

    # A refresh fetches with the stored credentials (the server refuses anyone else).
    recorder.requests.clear()
    refreshed = clients.admin.patch(url, json={"refresh": True})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["revision"] == 2 and refreshed.json()["source"]["url"] == redacted
    assert recorder.requests


def test_git_schemes_come_from_a_setting(clients, project, settings, tmp_path):
    assert Settings().dbt_git_schemes == ["https", "ssh"]
    repo = _git_repo(tmp_path / "repo")
    settings.dbt_git_schemes = ["https", "ssh"]
    for url in (repo.as_uri(), str(repo), "http://example.com/repo.git", "ext::sh -c touch% /tmp/pwned"):
        response = _register(clients.admin, project, "Git", {"type": "git", "url": url})
        assert response.status_code == 422, (url, response.text)
        assert "source.url" in response.json()["error"]["message"]
    assert clients.admin.get(_url(project)).json()["data"] == []


def test_git_file_urls_and_paths_stay_in_the_project_roots(clients, project, settings, tmp_path):
    repo = _git_repo(tmp_path / "elsewhere" / "repo")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to(repo)
    settings.dbt_project_roots = [allowed]
    for url in (repo.as_uri(), str(repo), (allowed / "link").as_uri(), str(allowed / ".." / "elsewhere" / "repo")):
        response = _register(clients.admin, project, "Git", {"type": "git", "url": url})
        assert response.status_code == 422, (url, response.text)
        assert "outside the folders" in response.json()["error"]["message"]
    inside = _git_repo(allowed / "repo")
    created = _register(clients.admin, project, "Git", {"type": "git", "url": inside.as_uri()})
    assert created.status_code == 201, created.text


@pytest.fixture
def tcp_listener() -> Iterator[tuple[int, list]]:
    """A loopback TCP port that records every connection made to it (Dagster's webserver stands in for it)."""
    connections: list = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            connections.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], connections
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def test_git_urls_to_loopback_or_link_local_hosts_are_refused(clients, project, settings, tcp_listener):
    port, connections = tcp_listener
    settings.dbt_timeout_seconds = 10
    mutation = "graphql?query=mutation%7BreloadWorkspace%7B__typename%7D%7D"
    for url in (
        f"https://127.0.0.1:{port}/{mutation}",
        f"https://localhost:{port}/{mutation}",
        f"ssh://git@127.0.0.1:{port}/repo.git",
        f"https://0.0.0.0:{port}/{mutation}",
        f"https://[::1]:{port}/repo.git",
        "https://169.254.169.254/latest/meta-data",
    ):
        response = _register(clients.admin, project, "Git", {"type": "git", "url": url})
        assert response.status_code == 422, (url, response.text)
        assert "loopback or link-local" in response.json()["error"]["message"], url
    assert connections == []


def test_project_copy_follows_no_link_out_of_the_tree(clients, project, settings, tmp_path):
    server_file = tmp_path / "server" / "secret.txt"
    server_file.parent.mkdir()
    server_file.write_text("select 'sentinel-server-file' as x\n")
    folder = _dbt_project(tmp_path / "linked", {"one.sql": "select 1 as id\n"})
    (folder / "shared").mkdir()
    (folder / "shared" / "two.sql").write_text("select 2 as id\n")
    (folder / "models" / "two.sql").symlink_to("../shared/two.sql")  # inside the tree: copied
    (folder / "models" / "leak.sql").symlink_to(server_file)
    response = _register(clients.admin, project, "Linked", {"type": "path", "path": str(folder)})
    assert response.status_code == 422, response.text
    assert "models/leak.sql" in response.json()["error"]["message"]
    assert not list((settings.dbt_home / project["id"]).rglob("leak.sql"))

    (folder / "models" / "leak.sql").unlink()
    (folder / "models" / "zero.sql").symlink_to("/dev/zero")  # would fill the disk
    started = time.monotonic()
    response = _register(clients.admin, project, "Linked", {"type": "path", "path": str(folder)})
    assert response.status_code == 422 and "models/zero.sql" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10

    (folder / "models" / "zero.sql").unlink()
    created = _register(clients.admin, project, "Linked", {"type": "path", "path": str(folder)})
    assert created.status_code == 201, created.text
    assert created.json()["models_count"] == 2


def test_project_copy_has_a_size_limit(clients, project, settings, tmp_path):
    folder = _dbt_project(tmp_path / "big", {"one.sql": "select 1 as id\n"})
    (folder / "seeds").mkdir()
    (folder / "seeds" / "big.csv").write_text("id\n" + "1\n" * 20_000)
    settings.dbt_project_max_bytes = 10_000
    response = _register(clients.admin, project, "Big", {"type": "path", "path": str(folder)})
    assert response.status_code == 422, response.text
    assert "10000 bytes" in response.json()["error"]["message"]
    assert not list((settings.dbt_home / project["id"]).glob("*/rev-*"))


# 9. The last admin ---------------------------------------------------------------------------------------------


def _admins(url: str, tenant: str) -> tuple[str, str]:
    with session_scope(url) as session:
        first = user_service.ensure_bootstrap_admin(
            session, tenant_id=tenant, email="a@example.com", secret=ADMIN_TOKEN
        )
        second = user_service.create_user(session, tenant_id=tenant, email="b@example.com", name="B", role=Role.admin)
        second.status = "active"
        return first.id, second.id


def test_two_concurrent_demotions_leave_one_admin(db_url):
    first, second = _admins(db_url, "default")
    outcome: dict[str, object] = {}

    def demote_second():
        try:
            with session_scope(db_url) as session:
                user = user_service.get_user(session, second, tenant_id="default")
                user_service.update_user(session, user, changes={"role": "viewer"})
            outcome["second"] = "demoted"
        except Conflict:
            outcome["second"] = "refused"

    with session_scope(db_url) as session:
        user = user_service.get_user(session, first, tenant_id="default")
        user_service.update_user(session, user, changes={"role": "viewer"})
        # The other demotion runs while this one has checked and changed, but not yet committed.
        other = threading.Thread(target=demote_second)
        other.start()
        other.join(timeout=1.5)
    other.join(timeout=30)
    assert outcome == {"second": "refused"}
    with session_scope(db_url) as session:
        admins = session.scalars(sa.select(User.id).where(User.role == "admin", User.status == "active")).all()
    assert admins == [second]


def test_only_active_admins_count(clients, settings):
    invited = clients.admin.post("/api/v1/users", json={"email": "inv@example.com", "name": "I", "role": "admin"})
    assert invited.status_code == 201 and invited.json()["status"] == "invited"
    disabled = clients.admin.post("/api/v1/users", json={"email": "off@example.com", "name": "O", "role": "admin"})
    clients.admin.patch(f"/api/v1/users/{disabled.json()['id']}", json={"status": "disabled"})
    users = clients.admin.get("/api/v1/users").json()["data"]
    bootstrap = next(u["id"] for u in users if u["email"] == "admin@localhost")
    # An admin that never signed in is no admin anyone can act as: the bootstrap admin is the last one.
    assert clients.admin.patch(f"/api/v1/users/{bootstrap}", json={"role": "viewer"}).status_code == 409
    assert clients.admin.patch(f"/api/v1/users/{bootstrap}", json={"status": "disabled"}).status_code == 409


# 11. Tenants ---------------------------------------------------------------------------------------------------


def test_the_code_location_builds_only_its_tenants_projects(home, monkeypatch):
    url = f"sqlite:///{home / 'store.db'}"
    from rime_dagster.store.migrate import upgrade_to_head

    upgrade_to_head(url)
    with session_scope(url) as session:
        for tenant in ("acme", "globex"):
            session.add(Project(id=f"prj_{tenant}", tenant_id=tenant, name="Shop", namespace=f"{tenant}_shop"))
            session.flush()
            session.add(
                Connector(
                    id=f"con_{tenant}",
                    project_id=f"prj_{tenant}",
                    name="Orders",
                    connector_type="files",
                    config={"path": "/srv/files"},
                    selected_tables=["orders"],
                    table_prefix="orders",
                )
            )
    monkeypatch.setenv("RIME_TENANT", "acme")
    get_settings.cache_clear()
    specs = load_specs(MetadataStoreResource(database_url=url))
    engine_for(url).dispose()
    assert [p.id for p in specs.projects] == ["prj_acme"]
    assert [c.id for c in specs.connectors] == ["con_acme"]


# 15. Runs without a time limit ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_model(tmp_path_factory) -> DbtProjectSpec:
    """A parsed one-model DuckDB project, shared by the tests below: they only build its definitions, or run it
    while its warehouse is locked (the run fails before dbt starts), so none changes it."""
    tmp = tmp_path_factory.mktemp("one_model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RIME_HOME", str(tmp / "home"))
        get_settings.cache_clear()
        try:
            return _spec(tmp, "one", {"one.sql": "select 1 as id\n"})
        finally:
            get_settings.cache_clear()


def test_connector_and_dbt_jobs_have_a_default_max_runtime(home, one_model, monkeypatch):
    monkeypatch.setenv("RIME_DEFAULT_RUN_TIMEOUT_SECONDS", "5400")
    get_settings.cache_clear()
    from tests.pipelines.test_jobs import connector

    (home / "files").mkdir()
    (home / "files" / "orders.csv").write_text("id\n1\n")
    connectors = project_connector_definitions(
        ProjectSpec(id="prj_1", name="Shop", namespace="ns"), [connector(home, "files", "files")]
    )
    dbt = dbt_definitions(one_model)
    for job in [*connectors.jobs, *dbt.jobs]:
        assert job.tags.get("dagster/max_runtime") == "5400", job.name


def test_a_dbt_run_waiting_for_the_warehouse_lock_fails_after_a_timeout(home, one_model, monkeypatch):
    monkeypatch.setenv("RIME_DBT_LOCK_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    spec = one_model
    holder = FileLock(str(spec.duckdb_file) + ".lock")
    holder.acquire()
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run=_materialize(spec)), daemon=True)
    try:
        runner.start()
        runner.join(timeout=60)
        finished = not runner.is_alive()
    finally:
        holder.release()
        runner.join(timeout=120)
    assert finished, "the run still waits for the lock"
    run = result["run"]
    assert not run.success
    failure = run.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "Another dbt run held this project's DuckDB database for more than 1 s" in failure


# 16. The Dagster UI --------------------------------------------------------------------------------------------


def test_the_dagster_ui_and_code_server_listen_on_loopback_by_default(monkeypatch):
    for name in ("RIME_DAGSTER_HOST", "RIME_CODE_SERVER_HOST", "RIME_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.dagster_host, settings.code_server_host, settings.api_host) == ("127.0.0.1",) * 3
    from api_shim.cli import webserver_command

    argv = webserver_command(settings, Path("/venv/bin"), Path("/w.yaml"))
    assert argv[argv.index("-h") + 1] == "127.0.0.1"
