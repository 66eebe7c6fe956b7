"""Applying stored plans (rime_dagster.infrastructure.apply) on a real store and Iceberg catalog, declared and
planned through the API: everything made for real, a second plan all no-op, a column added applied as a schema
change, a failed change keeping what completed and the next plan showing exactly what remains, stale plans refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyiceberg.exceptions import NoSuchNamespaceError

from api_shim.main import create_app
from api_shim.services import infrastructure as service
from rime_dagster.infrastructure.apply import PlanNotApplicable, StalePlan, apply_plan
from rime_dagster.store.models import Project
from tests.conftest import Clients, make_settings, role_clients

TABLE = {
    "namespace": "marts",
    "schema": [{"name": "id", "type": "long", "required": True}, {"name": "region", "type": "string"}],
    "partition_spec": [{"source": "region"}],
}


@pytest.fixture
def clients(tmp_path) -> Iterator[Clients]:
    settings = make_settings(tmp_path)
    with role_clients(create_app(settings), settings) as clients:
        yield clients


@pytest.fixture
def project(clients) -> dict:
    return clients.admin.post("/api/v1/projects", json={"name": "infra"}).json()


def url(project: dict, *parts: str) -> str:
    return "/".join([f"/api/v1/projects/{project['id']}/infrastructure", *parts])


def declare(clients: Clients, project: dict, resource_type: str, name: str, config: dict | None = None) -> dict:
    response = clients.as_role("lead_data_engineer").post(
        url(project), json={"resource_type": resource_type, "name": name, "config": config or {}}
    )
    assert response.status_code == 201, response.text
    return response.json()


def plan(clients: Clients, project: dict) -> dict:
    response = clients.as_role("lead_data_engineer").post(url(project, "plan"))
    assert response.status_code == 201, response.text
    return response.json()


def apply(clients: Clients, project: dict, plan_id: str) -> list:
    app = clients.app
    with app.state.sessions() as session:
        row = session.get(Project, project["id"])
        target = service.target(app.state.settings, app.state.iceberg, row)
    return apply_plan(app.state.sessions, app.state.cipher, target, plan_id)


def resource(clients: Clients, project: dict, resource_id: str) -> dict:
    return clients.as_role("viewer").get(url(project, resource_id)).json()


def test_apply_makes_everything_then_a_second_plan_is_all_no_op(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    namespace = declare(clients, project, "iceberg_namespace", "marts")
    table = declare(clients, project, "iceberg_table", "orders", TABLE)
    first = plan(clients, project)
    outcomes = apply(clients, project, first["plan_id"])
    assert [(o.name, o.action, o.status) for o in outcomes] == [
        ("marts", "create", "succeeded"),
        ("orders", "create", "succeeded"),
    ]
    assert catalog.load_table((project["namespace"], "marts", "orders")).spec().fields[0].name == "region"
    for declared in (namespace, table):
        now = resource(clients, project, declared["id"])
        assert now["state"] == "applied" and now["applied_revision"] == 1 and now["applied_at"]
    second = plan(clients, project)
    assert second["summary"] == {"create": 0, "update": 0, "delete": 0, "unchanged": 2}
    with pytest.raises(PlanNotApplicable, match="applied"):
        apply(clients, project, first["plan_id"])

    # A column added to the declaration: one update, applied as a schema change.
    wider = {**TABLE, "schema": [*TABLE["schema"], {"name": "channel", "type": "string"}]}
    patched = clients.as_role("lead_data_engineer").patch(url(project, table["id"]), json={"config": wider})
    assert patched.json()["state"] == "pending" and patched.json()["revision"] == 2
    third = plan(clients, project)
    assert third["summary"] == {"create": 0, "update": 1, "delete": 0, "unchanged": 1}
    assert [o.status for o in apply(clients, project, third["plan_id"]) if o.action == "update"] == ["succeeded"]
    columns = catalog.load_table((project["namespace"], "marts", "orders")).schema().column_names
    assert columns == ["id", "region", "channel"]
    assert plan(clients, project)["summary"]["unchanged"] == 2

    # Deleting the declarations: the plan deletes the table before its namespace; the apply removes both.
    for declared in (table, namespace):
        assert clients.as_role("lead_data_engineer").delete(url(project, declared["id"])).status_code == 204
        assert resource(clients, project, declared["id"])["state"] == "deleting"
    fourth = plan(clients, project)
    assert [(c["action"], c["name"]) for c in fourth["changes"]] == [("delete", "orders"), ("delete", "marts")]
    assert all(o.status == "succeeded" for o in apply(clients, project, fourth["plan_id"]))
    with pytest.raises(NoSuchNamespaceError):
        catalog.load_namespace_properties((project["namespace"], "marts"))
    assert clients.as_role("viewer").get(url(project)).json()["data"] == []


def test_a_failed_change_stops_its_dependents_keeps_the_rest_and_the_next_plan_shows_what_remains(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    declare(clients, project, "iceberg_namespace", "marts")
    declare(clients, project, "iceberg_table", "orders", TABLE)
    loose = declare(clients, project, "iceberg_table", "events", {**TABLE, "namespace": None})
    made = plan(clients, project)
    # Behind the platform's back, after the plan: the namespace appears. The plan is stale: nothing is applied.
    catalog.create_namespace((project["namespace"], "marts"))
    with pytest.raises(StalePlan):
        apply(clients, project, made["plan_id"])
    assert catalog.list_tables(project["namespace"]) == []
    assert clients.as_role("viewer").get(url(project)).json()["data"][0]["state"] == "pending"

    # Applied for real, then a change Iceberg refuses (a required column added to a table that exists) beside one
    # that does not depend on it.
    catalog.drop_namespace((project["namespace"], "marts"))
    first = plan(clients, project)
    assert all(o.status == "succeeded" for o in apply(clients, project, first["plan_id"]))
    stricter = {**TABLE, "schema": [*TABLE["schema"], {"name": "tier", "type": "string", "required": True}]}
    lead = clients.as_role("lead_data_engineer")
    orders = [r for r in lead.get(url(project)).json()["data"] if r["name"] == "orders"][0]
    lead.patch(url(project, orders["id"]), json={"config": stricter})
    lead.patch(url(project, loose["id"]), json={"config": {**TABLE, "namespace": None, "properties": {"a": "b"}}})
    second = plan(clients, project)
    assert second["summary"] == {"create": 0, "update": 2, "delete": 0, "unchanged": 1}
    outcomes = {o.name: o for o in apply(clients, project, second["plan_id"])}
    assert outcomes["orders"].status == "failed" and "cannot be added as required" in outcomes["orders"].message
    assert outcomes["events"].status == "succeeded"  # does not depend on the failed change: applied
    failed = resource(clients, project, orders["id"])
    assert failed["state"] == "failed" and "required" in failed["last_error"]
    assert catalog.load_table((project["namespace"], "events")).properties["a"] == "b"
    remaining = plan(clients, project)
    assert [(c["action"], c["name"]) for c in remaining["changes"] if c["action"] != "no-op"] == [("update", "orders")]
