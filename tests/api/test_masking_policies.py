"""Masking policies over the API: CRUD, validation, roles, audit; and what each strategy does to a preview."""

from __future__ import annotations

import pytest

from api_shim.services.auth import Role
from rime_dagster.governance.masking import hash_key, keyed_hash
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Classification
from tests.support.governed import CLEAR_EMAILS, governed

EMAIL = [{"table": "crm__customer", "column": "email"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with governed(tmp_path_factory.mktemp("masking")) as world:
        yield world


@pytest.fixture
def cleanup(world):
    """Deletes the policies a test made, so each test starts with none."""
    yield
    admin = world.clients.admin
    for policy in admin.get(f"{world.base}/masking-policies").json()["data"]:
        assert admin.delete(f"{world.base}/masking-policies/{policy['id']}").status_code == 204


def _classification(world, name: str, project_id: str | None = None) -> str:
    with world.clients.app.state.sessions.begin() as session:
        row = Classification(
            id=new_id("classification"),
            project_id=project_id or world.project["id"],
            name=name,
            sensitivity="confidential",
            rules=[],
            assignments=[],
        )
        session.add(row)
        return row.id


def _preview_column(world, role: Role, column: str) -> list:
    response = world.as_role(role).get(f"{world.base}/tables/crm__customer/preview")
    assert response.status_code == 200, response.text
    body = response.json()
    index = body["columns"].index(column)
    return [row[index] for row in sorted(body["rows"], key=lambda r: r[0])]


class TestCrud:
    def test_create_get_list_update_delete(self, world, cleanup):
        url = f"{world.base}/masking-policies"
        lead = world.as_role(Role.lead_data_engineer)
        created = lead.post(
            url, json={"name": "cards", "columns": EMAIL * 2, "strategy": "partial", "exempt_roles": ["admin"]}
        )
        assert created.status_code == 201, created.text
        policy = created.json()
        assert policy["id"].startswith("mask_")
        assert policy["columns"] == EMAIL  # each pair once
        assert policy["options"] == {"keep_last": 4} and policy["exempt_roles"] == ["admin"]
        assert policy["classification_id"] is None

        viewer = world.as_role(Role.viewer)
        assert viewer.get(f"{url}/{policy['id']}").json() == policy
        assert [p["id"] for p in viewer.get(url).json()["data"]] == [policy["id"]]

        changed = lead.patch(f"{url}/{policy['id']}", json={"strategy": "redact", "name": "emails"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["strategy"] == "redact" and changed.json()["options"] == {}  # partial's options go
        assert changed.json()["name"] == "emails" and changed.json()["columns"] == EMAIL

        assert lead.delete(f"{url}/{policy['id']}").status_code == 204
        assert viewer.get(f"{url}/{policy['id']}").status_code == 404

        actions = [
            e["action"]
            for e in world.clients.admin.get(f"{world.base}/audit-logs?resource_type=masking_policy").json()["data"]
        ]
        assert {"masking_policy.create", "masking_policy.update", "masking_policy.delete"} <= set(actions)

    def test_switching_to_a_classification(self, world, cleanup):
        class_id = _classification(world, "pii-switch")
        policy = world.policy({"name": "p", "columns": EMAIL, "strategy": "null"})
        url = f"{world.base}/masking-policies/{policy['id']}"
        response = world.clients.admin.patch(url, json={"classification_id": class_id, "columns": None})
        assert response.status_code == 200, response.text
        assert response.json()["classification_id"] == class_id and response.json()["columns"] is None

    @pytest.mark.parametrize("role", [Role.viewer, Role.data_engineer])
    def test_below_lead_cannot_write(self, world, role):
        body = {"name": "x", "columns": EMAIL, "strategy": "null"}
        response = world.as_role(role).post(f"{world.base}/masking-policies", json=body)
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"

    def test_duplicate_name_is_a_conflict(self, world, cleanup):
        world.policy({"name": "dup", "columns": EMAIL, "strategy": "null"})
        other = world.policy({"name": "other", "columns": EMAIL, "strategy": "null"})
        admin = world.clients.admin
        again = admin.post(f"{world.base}/masking-policies", json={"name": "dup", "columns": EMAIL, "strategy": "hash"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        renamed = admin.patch(f"{world.base}/masking-policies/{other['id']}", json={"name": "dup"})
        assert renamed.status_code == 409


INVALID = [
    ({"name": "x", "strategy": "null"}, {"classification_id", "columns"}),
    (
        {"name": "x", "strategy": "null", "columns": EMAIL, "classification_id": "cls_x"},
        {"classification_id", "columns"},
    ),
    ({"name": "x", "strategy": "scramble", "columns": EMAIL}, {"strategy"}),
    ({"name": "x", "strategy": "null", "columns": EMAIL, "exempt_roles": ["root"]}, {"exempt_roles.0"}),
    ({"name": "x", "strategy": "partial", "columns": EMAIL, "options": {"keep_last": 0}}, {"options.keep_last"}),
    ({"name": "x", "strategy": "partial", "columns": EMAIL, "options": {"keep_last": 33}}, {"options.keep_last"}),
    ({"name": "x", "strategy": "redact", "columns": EMAIL, "options": {"keep_last": 4}}, {"options"}),
    ({"name": "x", "strategy": "null", "columns": []}, {"columns"}),
    ({"name": "x", "strategy": "null", "columns": [{"table": "t"}]}, {"columns.0.column"}),
    ({"name": "", "strategy": "null", "columns": EMAIL}, {"name"}),
]


@pytest.mark.parametrize(("body", "fields"), INVALID)
def test_invalid_bodies_name_the_field(world, body, fields):
    response = world.clients.admin.post(f"{world.base}/masking-policies", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert {d["field"].removeprefix("body.") for d in error["details"]} == fields


def test_unknown_classification_is_422_naming_the_field(world, tmp_path):
    other_project = world.clients.admin.post("/api/v1/projects", json={"name": "elsewhere"}).json()
    foreign = _classification(world, "foreign", project_id=other_project["id"])
    for class_id in ("cls_missing", foreign):
        body = {"name": "x", "strategy": "null", "classification_id": class_id}
        response = world.clients.admin.post(f"{world.base}/masking-policies", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == "classification_id"


class TestStrategies:
    """Each strategy as a data_engineer previews the e-mail column; NULL stays NULL."""

    def test_redact(self, world, cleanup):
        world.policy({"name": "p", "columns": EMAIL, "strategy": "redact"})
        assert _preview_column(world, Role.data_engineer, "email") == ["****", "****", None]

    def test_null(self, world, cleanup):
        world.policy({"name": "p", "columns": EMAIL, "strategy": "null"})
        assert _preview_column(world, Role.data_engineer, "email") == [None, None, None]

    def test_partial(self, world, cleanup):
        world.policy({"name": "p", "columns": EMAIL, "strategy": "partial", "options": {"keep_last": 3}})
        assert _preview_column(world, Role.data_engineer, "email") == ["****com", "****org", None]
        phone = [{"table": "crm__customer", "column": "phone"}]
        world.policy({"name": "short", "columns": phone, "strategy": "partial", "options": {"keep_last": 32}})
        assert _preview_column(world, Role.data_engineer, "phone") == ["****"] * 3  # too short to show a part

    def test_hash_is_keyed_per_project_and_stable(self, world, cleanup):
        world.policy({"name": "p", "columns": EMAIL, "strategy": "hash"})
        key = hash_key(world.settings.signing_key(), world.project["id"])
        expected = [keyed_hash(key, CLEAR_EMAILS[0]), keyed_hash(key, CLEAR_EMAILS[1]), None]
        assert _preview_column(world, Role.data_engineer, "email") == expected
        assert _preview_column(world, Role.viewer, "email") == expected
        other_key = hash_key(world.settings.signing_key(), "proj_other")
        assert keyed_hash(other_key, CLEAR_EMAILS[0]) != expected[0]

    def test_strictest_policy_wins_and_exemption_is_per_policy(self, world, cleanup):
        world.policy({"name": "a", "columns": EMAIL, "strategy": "partial", "exempt_roles": ["data_engineer"]})
        world.policy({"name": "b", "columns": EMAIL, "strategy": "redact"})
        world.policy({"name": "c", "columns": EMAIL, "strategy": "hash"})
        assert _preview_column(world, Role.viewer, "email") == ["****", "****", None]  # redact beats the others
        assert _preview_column(world, Role.data_engineer, "email") == ["****", "****", None]  # b still applies

    def test_exempt_role_reads_clear(self, world, cleanup):
        world.policy({"name": "p", "columns": EMAIL, "strategy": "redact", "exempt_roles": ["lead_data_engineer"]})
        assert _preview_column(world, Role.lead_data_engineer, "email") == [*CLEAR_EMAILS, None]
        assert _preview_column(world, Role.admin, "email") == ["****", "****", None]  # exact roles only
