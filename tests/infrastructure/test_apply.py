"""Applying stored plans (the infrastructure_apply job, run in process) on a real store and Iceberg catalog, declared
and planned through the API: everything made for real, a second plan all no-op, a column added applied as a schema
change, deletions in order, a failed change keeping what completed and the next plan showing exactly what remains,
stale and finished plans refused."""

from __future__ import annotations

import dagster as dg
import pytest
from pyiceberg.exceptions import NoSuchNamespaceError

from rime_dagster.infrastructure.jobs import apply_run_config, infrastructure_definitions
from rime_dagster.resources import MetadataStoreResource
from tests.conftest import Clients
from tests.support.infrastructure import api_plan, declare, infra_url

TABLE = {
    "namespace": "marts",
    "schema": [{"name": "id", "type": "long", "required": True}, {"name": "region", "type": "string"}],
    "partition_spec": [{"source": "region"}],
}


def run(clients: Clients, project: dict, plan_id: str) -> dg.ExecuteInProcessResult:
    """The plan applied as Dagster runs it, in this process (the API launches the same job on the instance)."""
    store = MetadataStoreResource(database_url=clients.app.state.settings.metadata_url)
    defs = dg.Definitions.merge(infrastructure_definitions(), dg.Definitions(resources={"metadata_store": store}))
    return defs.resolve_job_def("infrastructure_apply").execute_in_process(
        run_config=apply_run_config(project["id"], plan_id),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def start_error(result: dg.ExecuteInProcessResult) -> str:
    failure = result.failure_data_for_node("start")
    return str(failure.error) if failure is not None else ""


def resource(clients: Clients, project: dict, resource_id: str) -> dict:
    return clients.as_role("viewer").get(infra_url(project, resource_id)).json()


def test_apply_makes_everything_then_a_second_plan_is_all_no_op(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    namespace = declare(clients, project, "iceberg_namespace", "marts")
    table = declare(clients, project, "iceberg_table", "orders", TABLE)
    first = api_plan(clients, project)
    assert run(clients, project, first["plan_id"]).success
    assert catalog.load_table((project["namespace"], "marts", "orders")).spec().fields[0].name == "region"
    for declared in (namespace, table):
        now = resource(clients, project, declared["id"])
        assert now["state"] == "applied" and now["applied_revision"] == 1 and now["applied_at"]
    second = api_plan(clients, project)
    assert second["summary"] == {"create": 0, "update": 0, "delete": 0, "unchanged": 2}
    assert "is applied" in start_error(run(clients, project, first["plan_id"]))  # never twice

    # A column added to the declaration: one update, applied as a schema change.
    wider = {**TABLE, "schema": [*TABLE["schema"], {"name": "channel", "type": "string"}]}
    patched = clients.as_role("lead_data_engineer").patch(infra_url(project, table["id"]), json={"config": wider})
    assert patched.json()["state"] == "pending" and patched.json()["revision"] == 2
    third = api_plan(clients, project)
    assert third["summary"] == {"create": 0, "update": 1, "delete": 0, "unchanged": 1}
    assert run(clients, project, third["plan_id"]).success
    columns = catalog.load_table((project["namespace"], "marts", "orders")).schema().column_names
    assert columns == ["id", "region", "channel"]
    assert api_plan(clients, project)["summary"]["unchanged"] == 2

    # Deleting the declarations: the plan deletes the table before its namespace; the apply removes both.
    for declared in (table, namespace):
        assert clients.as_role("lead_data_engineer").delete(infra_url(project, declared["id"])).status_code == 204
        assert resource(clients, project, declared["id"])["state"] == "deleting"
    fourth = api_plan(clients, project)
    assert [(c["action"], c["name"]) for c in fourth["changes"]] == [("delete", "orders"), ("delete", "marts")]
    assert run(clients, project, fourth["plan_id"]).success
    with pytest.raises(NoSuchNamespaceError):
        catalog.load_namespace_properties((project["namespace"], "marts"))
    assert clients.as_role("viewer").get(infra_url(project)).json()["data"] == []


def test_a_failed_change_stops_its_dependents_keeps_the_rest_and_the_next_plan_shows_what_remains(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    declare(clients, project, "iceberg_namespace", "marts")
    declare(clients, project, "iceberg_table", "orders", TABLE)
    loose = declare(clients, project, "iceberg_table", "events", {**TABLE, "namespace": None})
    made = api_plan(clients, project)
    # Behind the platform's back, after the plan: the namespace appears. The plan is stale: nothing is applied.
    catalog.create_namespace((project["namespace"], "marts"))
    assert "is stale" in start_error(run(clients, project, made["plan_id"]))
    assert catalog.list_tables(project["namespace"]) == []
    assert clients.as_role("viewer").get(infra_url(project)).json()["data"][0]["state"] == "pending"

    # Applied for real, then a change Iceberg refuses (a required column added to a table that exists) beside one
    # that does not depend on it.
    catalog.drop_namespace((project["namespace"], "marts"))
    first = api_plan(clients, project)
    assert run(clients, project, first["plan_id"]).success
    stricter = {**TABLE, "schema": [*TABLE["schema"], {"name": "tier", "type": "string", "required": True}]}
    lead = clients.as_role("lead_data_engineer")
    orders = [r for r in lead.get(infra_url(project)).json()["data"] if r["name"] == "orders"][0]
    lead.patch(infra_url(project, orders["id"]), json={"config": stricter})
    lead.patch(infra_url(project, loose["id"]), json={"config": {**TABLE, "namespace": None, "properties": {"a": "b"}}})
    second = api_plan(clients, project)
    assert second["summary"] == {"create": 0, "update": 2, "delete": 0, "unchanged": 1}
    assert not run(clients, project, second["plan_id"]).success
    failed = resource(clients, project, orders["id"])
    assert failed["state"] == "failed" and "cannot be added as required" in failed["last_error"]
    assert resource(clients, project, loose["id"])["state"] == "applied"  # its own step, beside the failed one
    assert catalog.load_table((project["namespace"], "events")).properties["a"] == "b"
    remaining = api_plan(clients, project)
    assert [(c["action"], c["name"]) for c in remaining["changes"] if c["action"] != "no-op"] == [("update", "orders")]
