"""Connectors API: validation, secrets, partial updates, upload areas, test/schema, deletion."""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest
from sqlalchemy import text

from rime_dagster.platform.naming import identifier
from rime_dagster.store.session import session_scope
from tests.conftest import make_settings

WORKED_EXAMPLE = {
    "name": "Production CRM",
    "connector_type": "postgresql",
    "config": {"host": "crm-db.internal.acme.co.nz", "port": 5432, "database": "crm_production", "schema": "public"},
    "credentials": {"username": "rime_readonly", "password": "secret"},
    "selected_tables": ["customers", "orders", "products"],
    "schedule": "0 2 * * *",
}


def _url(project, suffix=""):
    return f"/api/v1/projects/{project['id']}/connectors{suffix}"


@pytest.fixture
def files_connector(admin, project) -> dict:
    response = admin.post(_url(project), json={"name": "Drop", "connector_type": "files", "config": {}})
    assert response.status_code == 201, response.text
    return response.json()


class TestCreate:
    def test_worked_example_shape_and_no_secret(self, admin, project, settings, caplog):
        caplog.set_level(logging.DEBUG)
        response = admin.post(_url(project), json=WORKED_EXAMPLE)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["id"].startswith("conn_") and body["status"] == "created" and body["credentials_set"] is True
        assert body["connector_type"] == "postgresql" and body["schedule"] == "0 2 * * *"
        assert body["config"]["schema"] == "public" and body["last_sync"] is None
        assert "secret" not in response.text and "rime_readonly" not in response.text
        listed = admin.get(_url(project)).text + admin.get(_url(project, f"/{body['id']}")).text
        assert "secret" not in listed
        assert "secret" not in caplog.text
        with session_scope(settings.metadata_url) as session:
            stored = session.execute(text("SELECT credentials_encrypted, config FROM connectors")).one()
        assert "secret" not in str(stored) and "rime_readonly" not in str(stored)

    @pytest.mark.parametrize(
        ("patch", "field"),
        [
            ({"connector_type": "oracle"}, "connector_type"),
            ({"config": {"host": "h", "database": "d", "colour": "blue"}}, "config.colour"),
            ({"config": {"database": "d"}}, "config.host"),
            ({"config": {"host": "h", "port": 99999, "database": "d"}}, "config.port"),
            ({"credentials": {"username": "u", "password": "p", "token": "t"}}, "credentials.token"),
            ({"schedule": "every day"}, "schedule"),
            ({"schedule": "0 2 * * * *"}, "schedule"),
            ({"schedule": "61 2 * * *"}, "schedule"),
            ({"sync_mode": "incremental"}, "cursor_fields"),
            ({"selected_tables": []}, "selected_tables"),
            ({"selected_tables": ["orders", "orders"]}, "selected_tables"),
            ({"selected_tables": ["orders", " "]}, "selected_tables.1"),
            ({"name": ""}, "name"),
        ],
    )
    def test_invalid_is_400_with_field_and_creates_nothing(self, admin, project, patch, field):
        response = admin.post(_url(project), json={**WORKED_EXAMPLE, **patch})
        assert response.status_code == 400, response.text
        assert field in [d["field"] for d in response.json()["error"]["details"]]
        assert "secret" not in response.text
        assert admin.get(_url(project)).json()["data"] == []

    def test_duplicate_name_409(self, admin, project):
        admin.post(_url(project), json=WORKED_EXAMPLE)
        assert admin.post(_url(project), json=WORKED_EXAMPLE).status_code == 409

    def test_unknown_project_404(self, admin):
        assert admin.post("/api/v1/projects/proj_nope/connectors", json=WORKED_EXAMPLE).status_code == 404


class TestUpdate:
    def test_merge_patch_keeps_unspecified_keys_and_credentials(self, admin, project, settings):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        # (A changed host, port, database or username needs the credentials again: tests/security.)
        patch = {"config": {"schema": "sales"}, "schedule": None}
        patched = admin.patch(_url(project, f"/{created['id']}"), json=patch)
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["config"]["schema"] == "sales" and body["config"]["host"] == "crm-db.internal.acme.co.nz"
        assert body["schedule"] is None and body["credentials_set"] is True

    def test_password_only_credentials_patch(self, admin, project, app):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        admin.patch(_url(project, f"/{created['id']}"), json={"credentials": {"password": "rotated"}})
        from api_shim.services.connectors import credentials_of
        from rime_dagster.store.models import Connector

        with app.state.sessions() as session:
            stored = credentials_of(session.get(Connector, created["id"]), app.state.cipher)
        assert stored == {"username": "rime_readonly", "password": "rotated"}

    def test_invalid_patch_changes_nothing(self, admin, project):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        bad = admin.patch(_url(project, f"/{created['id']}"), json={"config": {"port": "x"}, "name": "new"})
        assert bad.status_code == 400
        assert admin.get(_url(project, f"/{created['id']}")).json() == created

    @pytest.mark.parametrize(
        ("tables", "field"),
        [([], "selected_tables"), (["orders", "orders"], "selected_tables"), (["", "orders"], "selected_tables.0")],
    )
    def test_selected_tables_checked_as_on_create(self, admin, project, tables, field):
        """Found by schemathesis: PATCH took [] and repeated or empty names (then a 422 or an empty selection)."""
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        bad = admin.patch(_url(project, f"/{created['id']}"), json={"selected_tables": tables})
        assert bad.status_code == 400, bad.text
        assert [d["field"] for d in bad.json()["error"]["details"]] == [field]
        assert admin.get(_url(project, f"/{created['id']}")).json() == created

    def test_pause(self, admin, project):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        assert admin.patch(_url(project, f"/{created['id']}"), json={"status": "paused"}).json()["status"] == "paused"


# Source tables whose Iceberg tables would be one and the same: case, punctuation, the 48-character cut.
COLLIDING = [
    pytest.param(["Orders", "orders"], "production_crm__orders", id="case"),
    pytest.param(["order-items", "order_items"], "production_crm__order_items", id="punctuation"),
    pytest.param(["Order Items", "order.items", "ORDER__ITEMS"], "production_crm__order_items", id="three"),
    pytest.param(
        ["events_" + "x" * 41 + "_2024", "events_" + "x" * 41 + "_2025"],
        "production_crm__events_" + "x" * 41,
        id="long-name-cut",
    ),
]


def _assert_collision_refused(response, tables: list[str], landing: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unprocessable_entity"
    assert [d["field"] for d in error["details"]] == ["selected_tables"]
    for said in (error["message"], error["details"][0]["message"]):
        assert all(f"'{t}'" in said for t in tables) and f"'{landing}'" in said, said


class TestDistinctLandingTables:
    @pytest.mark.parametrize(("tables", "landing"), COLLIDING)
    def test_create_refuses_tables_landing_in_one_iceberg_table(self, admin, project, tables, landing):
        response = admin.post(_url(project), json={**WORKED_EXAMPLE, "selected_tables": ["customers", *tables]})
        _assert_collision_refused(response, tables, landing)
        assert admin.get(_url(project)).json()["data"] == []

    @pytest.mark.parametrize(("tables", "landing"), COLLIDING)
    def test_update_refuses_them_and_changes_nothing(self, admin, project, tables, landing):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        response = admin.patch(
            _url(project, f"/{created['id']}"), json={"selected_tables": [*tables, "products"], "schedule": None}
        )
        _assert_collision_refused(response, tables, landing)
        assert admin.get(_url(project, f"/{created['id']}")).json() == created

    def test_alike_names_that_land_apart_are_fine(self, admin, project):
        tables = ["orders", "orders_2", "Orders2", "order_items_", "x" * 48, "x" * 47 + "y"]
        response = admin.post(_url(project), json={**WORKED_EXAMPLE, "selected_tables": tables})
        assert response.status_code == 201, response.text
        patched = admin.patch(_url(project, f"/{response.json()['id']}"), json={"selected_tables": ["Orders"]})
        assert patched.status_code == 200 and patched.json()["selected_tables"] == ["Orders"]

    def test_colliding_discovered_tables_are_left_out_and_the_test_says_so(self, admin, project, app, tmp_path):
        db = tmp_path / "shop.db"
        with sqlite3.connect(db) as con:
            for table in ("order-items", "order_items", "people"):
                con.execute(f'CREATE TABLE "{table}" (id INTEGER)')
        created = admin.post(
            _url(project), json={"name": "Shop", "connector_type": "sqlite", "config": {"path": str(db)}}
        ).json()
        base = _url(project, f"/{created['id']}")
        discovered = admin.get(f"{base}/schema").json()["tables"]
        assert sorted(t["name"] for t in discovered) == ["order-items", "order_items", "people"]
        from rime_dagster.store.models import Connector

        with app.state.sessions() as session:
            assert session.get(Connector, created["id"]).tables == ["people"]
        result = admin.post(f"{base}/test").json()
        assert result["success"] is True
        assert (
            "Not synced: 'order-items' and 'order_items' would both land in Iceberg table 'shop__order_items'."
            in result["message"]
        )
        # Selecting one of them syncs it.
        assert admin.patch(base, json={"selected_tables": ["order_items", "people"]}).status_code == 200
        assert "Not synced" not in admin.post(f"{base}/test").json()["message"]


@pytest.mark.slow
class TestPrefixesSharedWithDbtProjects:
    """`<namespace>.<connector prefix>__<table>` and `<namespace>.<dbt slug>__<model>` share one namespace."""

    @pytest.mark.parametrize("first", ["connector", "dbt"])
    @pytest.mark.parametrize(("connector_name", "dbt_name"), [("Shop", "Shop"), ("Order Items", "order-items!")])
    def test_a_dbt_slug_never_equals_a_connector_prefix(
        self, admin, project, app, tmp_path, first, connector_name, dbt_name
    ):
        import shutil

        from rime_dagster.store.models import Connector
        from tests.api.test_dbt_projects import TINY

        dbt_source = tmp_path / "tiny"
        shutil.copytree(TINY, dbt_source)

        def create_connector():
            body = {**WORKED_EXAMPLE, "name": connector_name, "selected_tables": ["one"]}
            response = admin.post(_url(project), json=body)
            assert response.status_code == 201, response.text
            return response.json()

        def create_dbt():
            body = {"name": dbt_name, "source": {"type": "path", "path": str(dbt_source)}}
            response = admin.post(f"/api/v1/projects/{project['id']}/dbt-projects", json=body)
            assert response.status_code == 201, response.text
            return response.json()

        if first == "connector":
            connector, dbt = create_connector(), create_dbt()
        else:
            dbt, connector = create_dbt(), create_connector()
        models = admin.get(f"/api/v1/projects/{project['id']}/dbt-projects/{dbt['id']}/models").json()["data"]
        slug = models[0]["asset_key"][1]
        with app.state.sessions() as session:
            prefix = session.get(Connector, connector["id"]).table_prefix
        # So the model `one` and the connector's table `one` land in two Iceberg tables. The first keeps the plain name.
        assert slug != prefix
        assert (prefix, slug)[first == "dbt"] == identifier(connector_name)


class TestUploads:
    def test_upload_list_and_schema(self, admin, project, files_connector):
        base = _url(project, f"/{files_connector['id']}")
        csv = b"id,name\n1,a\n2,b\n"
        response = admin.post(f"{base}/files", files=[("files", ("people.csv", csv, "text/csv"))])
        assert response.status_code == 201, response.text
        assert [f["name"] for f in admin.get(f"{base}/files").json()["files"]] == ["people.csv"]
        schema = admin.get(f"{base}/schema").json()["tables"]
        assert [t["name"] for t in schema] == ["people"]
        assert admin.post(f"{base}/test").json()["success"] is True

    @pytest.mark.parametrize("name", ["../../etc/passwd.csv", "notes.txt", ".hidden.csv", "a b.csv"])
    def test_unsafe_or_unsupported_names_refused(self, admin, project, files_connector, name):
        base = _url(project, f"/{files_connector['id']}")
        response = admin.post(f"{base}/files", files=[("files", (name, b"x\n1\n", "text/csv"))])
        assert response.status_code == 400
        assert admin.get(f"{base}/files").json()["files"] == []

    def test_file_over_limit_is_413_and_nothing_written(self, tmp_path, clients):
        settings = make_settings(tmp_path / "small", upload_max_file_bytes=1024)
        from fastapi.testclient import TestClient

        from api_shim.main import create_app

        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            client.headers["Authorization"] = f"Bearer {settings.admin_token}"
            project = client.post("/api/v1/projects", json={"name": "p"}).json()
            connector = client.post(_url(project), json={"name": "f", "connector_type": "files", "config": {}}).json()
            base = _url(project, f"/{connector['id']}")
            response = client.post(
                f"{base}/files",
                files=[
                    ("files", ("small.csv", b"a\n1\n", "text/csv")),
                    ("files", ("big.csv", b"a\n" + b"1\n" * 2000, "text/csv")),
                ],
            )
            assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
            assert client.get(f"{base}/files").json()["files"] == []

    def test_upload_to_non_files_connector_422(self, admin, project):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        response = admin.post(
            _url(project, f"/{created['id']}/files"), files=[("files", ("a.csv", b"a\n1\n", "text/csv"))]
        )
        assert response.status_code == 422


class TestConnection:
    def test_unreachable_source_is_success_false_not_5xx(self, admin, project):
        example = {**WORKED_EXAMPLE, "config": {**WORKED_EXAMPLE["config"], "host": "127.0.0.1", "port": 1}}
        created = admin.post(_url(project), json=example).json()
        response = admin.post(_url(project, f"/{created['id']}/test"))
        assert response.status_code == 200
        assert response.json()["success"] is False and "secret" not in response.text

    def test_schema_of_unreachable_source_is_422(self, admin, project):
        example = {**WORKED_EXAMPLE, "config": {**WORKED_EXAMPLE["config"], "host": "127.0.0.1", "port": 1}}
        created = admin.post(_url(project), json=example).json()
        response = admin.get(_url(project, f"/{created['id']}/schema"))
        assert response.status_code == 422 and "secret" not in response.text


class TestRunsAndSync:
    def test_no_runs_yet(self, admin, project, files_connector):
        body = admin.get(_url(project, f"/{files_connector['id']}/runs")).json()
        assert body == {"data": [], "next_cursor": None, "has_more": False}

    def test_sync_without_tables_is_422(self, admin, project, files_connector):
        response = admin.post(_url(project, f"/{files_connector['id']}/sync"))
        assert response.status_code == 422

    def test_sync_with_dagster_down_is_503(self, admin, project):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        response = admin.post(_url(project, f"/{created['id']}/sync"), json={"full_refresh": True})
        assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"


class TestDelete:
    def test_delete_connector_and_with_project(self, admin, project, files_connector, settings):
        base = _url(project, f"/{files_connector['id']}")
        admin.post(f"{base}/files", files=[("files", ("people.csv", b"id\n1\n", "text/csv"))])
        upload_dir = settings.home / "uploads" / project["id"] / files_connector["id"]
        assert upload_dir.is_dir()
        assert admin.delete(base).status_code == 204
        assert admin.get(base).status_code == 404 and not upload_dir.exists()

    def test_project_delete_cascades_and_purges(self, admin, project, app):
        created = admin.post(_url(project), json=WORKED_EXAMPLE).json()
        import pyarrow as pa

        from rime_dagster.connectors.landing import land_table

        batch = pa.record_batch({"id": [1, 2]})
        catalog = app.state.iceberg.catalog()
        land_table(
            catalog,
            (project["namespace"], "production_crm__customers"),
            batch.schema,
            [batch],
            mode="full_refresh",
            cursor_field=None,
            run_id="t",
        )
        assert admin.delete(f"/api/v1/projects/{project['id']}", params={"purge_data": "true"}).status_code == 204
        assert admin.get(_url(project, f"/{created['id']}")).status_code == 404
        with app.state.sessions() as session:
            assert session.execute(text("SELECT count(*) FROM connectors")).scalar() == 0
        assert project["namespace"] not in [ns[0] for ns in catalog.list_namespaces()]
        assert (
            json.dumps(admin.get("/api/v1/audit-logs", params={"resource_type": "project"}).json()).count(
                "project.delete"
            )
            == 1
        )


def test_connector_changes_are_audited_against_the_connector(admin, project, files_connector):
    base = _url(project, f"/{files_connector['id']}")
    admin.patch(base, json={"schedule": "0 3 * * *"})
    admin.post(f"{base}/files", files=[("files", ("people.csv", b"id\n1\n", "text/csv"))])
    admin.post(f"{base}/sync")  # refused by Dagster being down, still a recorded attempt
    entries = admin.get(f"/api/v1/projects/{project['id']}/audit-logs", params={"resource_type": "connector"}).json()
    got = [(e["action"], e["resource_id"], e["status_code"]) for e in entries["data"]]
    assert got == [
        ("connector.sync", files_connector["id"], 503),
        ("connector.upload", files_connector["id"], 201),
        ("connector.update", files_connector["id"], 200),
        ("connector.create", files_connector["id"], 201),
    ]


def test_a_source_gone_since_it_was_validated_is_a_422_naming_the_field(admin, project, tmp_path):
    """A SQLite file deleted after the connector was created: its schema is a 422 saying why, its test a failed
    test, never a 500."""
    db = tmp_path / "gone.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE orders (id INTEGER)")
    body = {"name": "gone", "connector_type": "sqlite", "config": {"path": str(db)}, "selected_tables": ["orders"]}
    created = admin.post(_url(project), json=body)
    assert created.status_code == 201, created.text
    db.unlink()
    base = _url(project, f"/{created.json()['id']}")
    schema = admin.get(f"{base}/schema")
    assert schema.status_code == 422, schema.text
    assert schema.json()["error"]["message"] == "The connector's config is no longer usable: path: no such file."
    tested = admin.post(f"{base}/test").json()
    assert tested == {"success": False, "message": "The connector's config is no longer usable: path: no such file."}
