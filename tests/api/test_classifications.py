"""Classifications over the API: CRUD, validation, roles, audit, the masking-policy guard, and the done-when line:
classifying a synced customer table tags its e-mail and phone columns without manual work."""

from __future__ import annotations

import itertools

import dagster as dg
import pytest

from api_shim.main import create_app
from api_shim.services.auth import Role
from rime_dagster.connectors.assets import connector_assets
from rime_dagster.resources import IcebergCatalogResource
from rime_dagster.settings import get_settings
from rime_dagster.specs import ConnectorSpec
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import MaskingPolicy
from rime_dagster.store.session import session_scope
from tests.conftest import make_settings, role_clients, use_settings


def url(project: dict, suffix: str = "") -> str:
    return f"/api/v1/projects/{project['id']}/classifications{suffix}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One app, store and set of role clients for the module's CRUD cases (each makes its own project)."""
    settings = make_settings(tmp_path_factory.mktemp("classifications"))
    with role_clients(create_app(settings), settings) as clients:
        yield clients, settings


@pytest.fixture
def clients(shared):
    return shared[0]


@pytest.fixture
def settings(shared):
    return shared[1]


@pytest.fixture
def admin(clients):
    return clients.admin


@pytest.fixture
def project(admin):
    response = admin.post("/api/v1/projects", json={"name": f"project {next(_projects)}"})
    assert response.status_code == 201, response.text
    return response.json()


_projects = itertools.count()
EMAIL = {"name": "PII e-mail", "sensitivity": "confidential", "rules": [{"detector": "email"}]}


class TestCrud:
    @pytest.mark.slow
    def test_lead_writes_viewer_reads_and_each_write_is_audited(self, clients, project):
        lead, viewer = clients.as_role(Role.lead_data_engineer), clients.as_role(Role.viewer)
        body = {
            **EMAIL,
            "description": "E-mail addresses",
            "rules": [{"detector": "email"}, {"column_pattern": "mail"}],
        }
        created = lead.post(url(project), json=body)
        assert created.status_code == 201, created.text
        item = created.json()
        assert {k: item[k] for k in body} == body
        assert item["assignments"] == []

        assert viewer.get(url(project, f"/{item['id']}")).json() == item
        listed = viewer.get(url(project)).json()
        assert [c["id"] for c in listed["data"]] == [item["id"]]

        patched = lead.patch(url(project, f"/{item['id']}"), json={"sensitivity": "restricted", "description": None})
        assert patched.status_code == 200, patched.text
        assert (patched.json()["sensitivity"], patched.json()["description"]) == ("restricted", None)

        for role in (Role.viewer, Role.data_engineer):
            client = clients.as_role(role)
            assert client.post(url(project), json={**EMAIL, "name": "other"}).status_code == 403
            assert client.patch(url(project, f"/{item['id']}"), json={"name": "x"}).status_code == 403
            assert client.delete(url(project, f"/{item['id']}")).status_code == 403
            assert client.post(url(project, "/run"), json={}).status_code == 403

        assert lead.delete(url(project, f"/{item['id']}")).status_code == 204
        assert viewer.get(url(project, f"/{item['id']}")).status_code == 404
        audit = clients.admin.get(
            f"/api/v1/projects/{project['id']}/audit-logs", params={"resource_type": "classification"}
        )
        actions = [(e["action"], e["status_code"]) for e in audit.json()["data"]]
        for expected in [
            ("classification.create", 201),
            ("classification.update", 200),
            ("classification.delete", 204),
        ]:
            assert expected in actions

    def test_duplicate_names_are_409(self, admin, project):
        first = admin.post(url(project), json=EMAIL).json()
        assert admin.post(url(project), json=EMAIL).status_code == 409
        other = admin.post(url(project), json={**EMAIL, "name": "phone"}).json()
        clash = admin.patch(url(project, f"/{other['id']}"), json={"name": first["name"]})
        assert clash.status_code == 409
        assert clash.json()["error"]["code"] == "conflict"

    @pytest.mark.parametrize(
        ("rules", "field"),
        [
            ([{}], "rules.0"),  # an empty rule
            ([{"column_pattern": "a", "detector": "email"}], "rules.0"),  # two kinds in one rule
            ([{"detector": "ssn"}], "rules.0.detector.detector"),  # an unknown detector
            ([{"value_pattern": "(unclosed"}], "rules.0.value_pattern.value_pattern"),
            ([{"column_pattern": "a" * 301}], "rules.0.column_pattern.column_pattern"),
            ([{"column_pattern": "a", "extra": 1}], "rules.0.column_pattern.extra"),
        ],
    )
    def test_invalid_rules_are_400_naming_the_rule(self, admin, project, rules, field):
        response = admin.post(url(project), json={**EMAIL, "rules": rules})
        assert response.status_code == 400, response.text
        assert field in [d["field"] for d in response.json()["error"]["details"]]
        assert admin.get(url(project)).json()["data"] == []

    def test_null_and_invalid_updates_are_400(self, admin, project):
        item = admin.post(url(project), json=EMAIL).json()
        for body in ({"name": None}, {"rules": None}, {"sensitivity": "secret"}, {"assignments": [{"table": "t"}]}):
            assert admin.patch(url(project, f"/{item['id']}"), json=body).status_code == 400, body

    def test_deleting_a_classification_a_masking_policy_uses_is_409(self, admin, project, settings):
        item = admin.post(url(project), json=EMAIL).json()
        with session_scope(settings.metadata_url) as session:
            session.add(
                MaskingPolicy(
                    id=new_id("masking_policy"),
                    project_id=project["id"],
                    name="hide e-mails",
                    classification_id=item["id"],
                    strategy="redact",
                    options={},
                    exempt_roles=[],
                )
            )
        response = admin.delete(url(project, f"/{item['id']}"))
        assert response.status_code == 409
        assert "'hide e-mails'" in response.json()["error"]["message"]
        assert admin.get(url(project, f"/{item['id']}")).status_code == 200

    def test_run_refuses_unknown_tables(self, admin, project):
        response = admin.post(url(project, "/run"), json={"tables": ["nope"]})
        assert response.status_code == 400
        assert response.json()["error"]["details"] == [
            {"field": "tables.0", "message": "No table 'nope' in this project."}
        ]
        assert admin.post(url(project, "/run")).json() == {"tables": []}  # no body: every table (there are none)


# The done-when line ------------------------------------------------------------------------------------------

CUSTOMERS = [
    ("id", "name", "email", "phone", "contact"),
    *[(i, f"Customer {i}", f"customer{i}@example.com", f"+1 202-555-01{i:02d}", "ask the desk") for i in range(9)],
    # The contact column holds an e-mail now and then: mostly not e-mails, so it is not an e-mail column.
    (9, "Customer 9", "customer9@example.com", "+44 20 7946 0958", "c9@example.com"),
    (10, "Customer 10", "customer10@example.com", "(202) 555-0110", "c10@example.com"),
]


@pytest.fixture
def synced(tmp_path, monkeypatch):
    """An API and a code location's sync sharing one deployment (RIME_HOME) under tmp_path."""
    monkeypatch.setenv("RIME_CONNECTOR_PATH_ROOTS", str(tmp_path))
    settings = make_settings(tmp_path, home=tmp_path / "home")
    use_settings(monkeypatch, settings)
    with role_clients(create_app(settings), settings) as clients:
        yield clients
    get_settings.cache_clear()


def sync_customers(tmp_path, project: dict) -> dg.MaterializeResult:
    folder = tmp_path / "crm"
    folder.mkdir(exist_ok=True)
    (folder / "customer.csv").write_text("\n".join(",".join(map(str, row)) for row in CUSTOMERS) + "\n")
    spec = ConnectorSpec(
        id="con_crm",
        project_id=project["id"],
        namespace=project["namespace"],
        name="crm",
        connector_type="files",
        config={"path": str(folder)},
        credentials_encrypted=None,
        tables=["customer"],
        schedule=None,
        paused=False,
        sync_mode="full_refresh",
        cursor_fields={},
        table_prefix="crm",
        upload_dir=tmp_path / "uploads",
    )
    assets = connector_assets(spec)
    assert assets is not None
    result = dg.materialize(
        [assets], resources={"iceberg": IcebergCatalogResource()}, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node(assets.op.name)
    return materialization


def column_tags(schema: dict) -> dict[str, list[tuple[str, str]]]:
    return {c["name"]: [(t["name"], t["source"]) for t in c["classifications"]] for c in schema["columns"]}


@pytest.mark.slow
def test_classifying_a_synced_customer_table_tags_its_email_and_phone_columns(synced, tmp_path):
    admin, lead = synced.admin, synced.as_role(Role.lead_data_engineer)
    project = admin.post("/api/v1/projects", json={"name": "shop"}).json()
    email = lead.post(url(project), json=EMAIL).json()
    phone = lead.post(url(project), json={"name": "Phone", "sensitivity": "internal", "rules": [{"detector": "phone"}]})
    assert phone.status_code == 201, phone.text

    # The sync classifies the table it lands: no manual step.
    materialization = sync_customers(tmp_path, project)
    columns = {c.name: c.tags for c in materialization.metadata["dagster/column_schema"].value.columns}
    assert columns == {
        "id": {},
        "name": {},
        "email": {"PII e-mail": "confidential"},
        "phone": {"Phone": "internal"},
        "contact": {},
    }
    schema_url = f"/api/v1/projects/{project['id']}/tables/crm__customer/schema"
    schema = synced.as_role(Role.viewer).get(schema_url).json()
    assert column_tags(schema) == {
        "id": [],
        "name": [],
        "email": [("PII e-mail", "rule")],
        "phone": [("Phone", "rule")],
        "contact": [],
    }
    email_column = next(c for c in schema["columns"] if c["name"] == "email")
    assert email_column["classifications"] == [
        {"id": email["id"], "name": "PII e-mail", "sensitivity": "confidential", "source": "rule"}
    ]

    # A manual assignment is tagged at once and survives re-classification, on demand and by the next sync.
    assign = {"assignments": [{"table": "crm__customer", "column": "contact"}]}
    assert lead.patch(url(project, f"/{email['id']}"), json=assign).status_code == 200
    ran = lead.post(url(project, "/run"), json={"tables": ["crm__customer"]})
    assert ran.status_code == 200, ran.text
    (table,) = ran.json()["tables"]
    assert [c["column"] for c in table["columns"]] == ["contact", "email", "phone"]
    sync_customers(tmp_path, project)
    expected = {**column_tags(schema), "contact": [("PII e-mail", "manual")]}
    assert column_tags(admin.get(schema_url).json()) == expected

    # Removing the assignment removes its tag; the rules' tags stay.
    assert lead.patch(url(project, f"/{email['id']}"), json={"assignments": []}).status_code == 200
    assert column_tags(admin.get(schema_url).json())["contact"] == []
    assert column_tags(admin.get(schema_url).json())["email"] == [("PII e-mail", "rule")]
