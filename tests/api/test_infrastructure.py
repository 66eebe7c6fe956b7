"""The Infrastructure group over REST on a real SQLite store and Iceberg catalog: declarations validated per field
by their type's provider, roles, audit entries, and plans made from what actually exists (drift included)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api_shim.main import create_app
from tests.conftest import Clients, make_settings, role_clients
from tests.support.infrastructure import api_plan, declare, infra_url

TABLE = {
    "schema": [{"name": "id", "type": "long", "required": True}, {"name": "region", "type": "string"}],
    "partition_spec": [{"source": "region"}],
    "properties": {"write.parquet.compression-codec": "zstd"},
}


@pytest.fixture
def clients(tmp_path) -> Iterator[Clients]:
    settings = make_settings(tmp_path)
    with role_clients(create_app(settings), settings) as clients:
        yield clients


@pytest.fixture
def project(clients) -> dict:
    return clients.admin.post("/api/v1/projects", json={"name": "infra"}).json()


def base(project: dict) -> str:
    return infra_url(project)


def test_declare_read_update_and_delete_a_resource(clients, project):
    lead, viewer = clients.as_role("lead_data_engineer"), clients.as_role("viewer")
    created = declare(clients, project, "iceberg_table", "orders", TABLE)
    assert created["id"].startswith("res_") and created["state"] == "pending" and created["revision"] == 1
    assert created["config"]["schema"][0] == {"name": "id", "type": "long", "required": True, "doc": None}
    assert created["secrets_set"] == [] and created["applied_at"] is None
    assert viewer.get(f"{base(project)}/{created['id']}").json() == created
    assert [r["id"] for r in viewer.get(base(project)).json()["data"]] == [created["id"]]

    wider = {**TABLE, "schema": [*TABLE["schema"], {"name": "channel", "type": "string"}]}
    updated = lead.patch(f"{base(project)}/{created['id']}", json={"config": wider})
    assert updated.status_code == 200 and updated.json()["revision"] == 2
    same = lead.patch(f"{base(project)}/{created['id']}", json={"config": wider})
    assert same.json()["revision"] == 2  # nothing changed: the declaration's revision stays

    assert lead.delete(f"{base(project)}/{created['id']}").status_code == 204
    assert viewer.get(f"{base(project)}/{created['id']}").status_code == 404  # never applied: gone at once


def test_a_plan_compares_declarations_with_what_exists(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    namespace = declare(clients, project, "iceberg_namespace", "marts", {"properties": {"owner": "bi"}})
    table = declare(clients, project, "iceberg_table", "orders", TABLE)
    plan = api_plan(clients, project)
    assert plan["plan_id"].startswith("plan_") and plan["status"] == "planned"
    assert plan["summary"] == {"create": 2, "update": 0, "delete": 0, "unchanged": 0}
    assert [(c["action"], c["resource_id"]) for c in plan["changes"]] == [
        ("create", namespace["id"]),  # a namespace (level 0) before a table (level 20)
        ("create", table["id"]),
    ]
    assert plan["changes"][1]["before"] is None and plan["changes"][1]["after"]["partition_spec"] == [
        {"source": "region", "transform": "identity"}
    ]

    # Made behind the platform's back: the namespace as declared, the table with another property value.
    catalog.create_namespace((project["namespace"], "marts"), {"owner": "bi"})
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType

    catalog.create_table(
        (project["namespace"], "orders"),
        Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "region", StringType())),
        properties={"write.parquet.compression-codec": "snappy"},
    )
    plan = api_plan(clients, project)
    assert plan["summary"] == {"create": 0, "update": 1, "delete": 0, "unchanged": 1}
    [update] = [c for c in plan["changes"] if c["action"] == "update"]
    assert update["resource_id"] == table["id"]
    assert update["before"]["properties"] == {"write.parquet.compression-codec": "snappy"}
    assert (
        update["before"]["partition_spec"] == []
        and update["after"]["properties"]["write.parquet.compression-codec"] == "zstd"
    )
    assert update.get("statements") is None  # Iceberg changes run no SQL

    catalog.drop_table((project["namespace"], "orders"))
    assert api_plan(clients, project)["summary"]["create"] == 1  # dropped behind the back: to create again


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"resource_type": "kafka_topic", "name": "t"}, ["resource_type"]),
        ({"resource_type": "iceberg_table", "name": "Orders", "config": TABLE}, ["name"]),
        ({"resource_type": "iceberg_table", "name": "crm__orders", "config": TABLE}, ["name"]),
        ({"resource_type": "iceberg_table", "name": "orders", "config": {}}, ["config.schema"]),
        (
            {
                "resource_type": "iceberg_table",
                "name": "orders",
                "config": {**TABLE, "partition_spec": [{"source": "x"}]},
            },
            ["config.partition_spec.0.source"],
        ),
        ({"resource_type": "iceberg_namespace", "name": "m", "config": {"owner": "x"}}, ["config.owner"]),
        ({"resource_type": "iceberg_namespace", "name": "", "config": {}}, ["name"]),
        ({"resource_type": "iceberg_namespace", "name": "m", "colour": "x"}, ["colour"]),
    ],
)
def test_bad_declarations_are_400_per_field_and_store_nothing(clients, project, body, fields):
    response = clients.as_role("lead_data_engineer").post(base(project), json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert sorted(d["field"] for d in error["details"]) == fields, error
    assert clients.as_role("viewer").get(base(project)).json()["data"] == []


def test_conflicts_and_unknowns(clients, project):
    lead = clients.as_role("lead_data_engineer")
    declare(clients, project, "iceberg_namespace", "marts")
    again = lead.post(base(project), json={"resource_type": "iceberg_namespace", "name": "marts"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    declare(clients, project, "iceberg_table", "marts", TABLE)  # another type may use the name
    for response in (
        lead.get(f"{base(project)}/res_nope"),
        lead.patch(f"{base(project)}/res_nope", json={"config": {}}),
        lead.delete(f"{base(project)}/res_nope"),
        lead.post("/api/v1/projects/proj_nope/infrastructure/plan"),
    ):
        assert response.status_code == 404, response.text


def test_leads_write_viewers_read_and_writes_and_plans_are_audited(clients, project):
    engineer, viewer = clients.as_role("data_engineer"), clients.as_role("viewer")
    body = {"resource_type": "iceberg_namespace", "name": "marts"}
    assert engineer.post(base(project), json=body).status_code == 403
    assert engineer.post(f"{base(project)}/plan").status_code == 403
    created = declare(clients, project, "iceberg_namespace", "marts")
    assert viewer.get(f"{base(project)}/{created['id']}").status_code == 200
    assert viewer.patch(f"{base(project)}/{created['id']}", json={"config": {}}).status_code == 403
    plan = api_plan(clients, project)
    entries = clients.admin.get(
        f"/api/v1/projects/{project['id']}/audit-logs", params={"resource_type": "infrastructure", "limit": 100}
    ).json()["data"]
    seen = {(e["action"], e["status_code"], e["resource_id"]) for e in entries}
    assert ("infrastructure.create", 201, created["id"]) in seen
    assert ("infrastructure.create", 403, project["id"]) in seen and ("infrastructure.plan", 403, project["id"]) in seen
    assert ("infrastructure.update", 403, created["id"]) in seen
    assert ("infrastructure.plan", 201, plan["plan_id"]) in seen


def test_apply_refuses_what_it_must_and_a_failed_launch_leaves_the_plan_to_retry(clients, project):
    """Dagster is not running here (the settings point at a closed port): the launch fails with 503 and the plan
    is `planned` again. No plan, a stale plan, and a plan applied already are refused before any launch."""
    lead = clients.as_role("lead_data_engineer")
    assert lead.post(f"{base(project)}/apply", json={}).status_code == 404  # no plan yet
    declare(clients, project, "iceberg_namespace", "marts")
    made = api_plan(clients, project)
    down = lead.post(f"{base(project)}/apply", json={"plan_id": made["plan_id"]})
    assert down.status_code == 503, down.text
    with clients.app.state.sessions() as session:
        from rime_dagster.store.models import InfraPlan

        assert session.get(InfraPlan, made["plan_id"]).status == "planned"

    clients.app.state.iceberg.catalog().create_namespace((project["namespace"], "marts"))  # behind its back
    stale = lead.post(f"{base(project)}/apply", json={})  # the latest plan, by default
    assert stale.status_code == 409 and "stale" in stale.json()["error"]["message"]
    assert lead.post(f"{base(project)}/apply", json={"plan_id": "plan_nope"}).status_code == 404
    assert clients.as_role("data_engineer").post(f"{base(project)}/apply", json={}).status_code == 403


def test_a_snowflake_resource_plans_its_ddl_and_apply_is_refused_without_an_account(clients, project):
    database = declare(
        clients, project, "snowflake_database", "analytics", {"comment": "Team's", "data_retention_days": 7}
    )
    plan = api_plan(clients, project)
    [change] = plan["changes"]
    assert change["action"] == "create" and change["resource_id"] == database["id"]
    namespace = project["namespace"].upper()
    assert change["statements"] == [
        f"CREATE DATABASE IF NOT EXISTS \"{namespace}__ANALYTICS\" DATA_RETENTION_TIME_IN_DAYS = 7 COMMENT = 'Team''s'"
    ]
    refused = clients.as_role("lead_data_engineer").post(f"{base(project)}/apply", json={})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["details"] == [
        {
            "field": database["id"],
            "message": "snowflake_database changes cannot be applied here: RIME_SNOWFLAKE_ACCOUNT is not set.",
        }
    ]
    with clients.app.state.sessions() as session:
        from rime_dagster.store.models import InfraPlan

        assert session.get(InfraPlan, plan["plan_id"]).status == "planned"  # nothing was applied or claimed


def test_an_apply_whose_run_ended_unfinished_no_longer_holds_the_project_back(clients, project):
    """What a run worker that died leaves: a plan `applying`, its run ended in Dagster's run storage. The next apply
    fails that plan and goes on (here to the launch, which fails: Dagster is not running); while the run is still
    going, the next apply is a 409."""
    import dagster as dg

    from rime_dagster.store.models import InfraPlan

    lead = clients.as_role("lead_data_engineer")
    declare(clients, project, "iceberg_namespace", "marts")
    stuck = api_plan(clients, project)["plan_id"]

    @dg.op
    def noop() -> None:
        pass

    @dg.job
    def infrastructure_apply() -> None:
        noop()

    instance = clients.app.state.dagster.instance()
    run = instance.create_run_for_job(job_def=infrastructure_apply, run_config={})
    with clients.app.state.sessions.begin() as session:
        session.get(InfraPlan, stuck).status, session.get(InfraPlan, stuck).dagster_run_id = "applying", run.run_id
    fresh = api_plan(clients, project)["plan_id"]
    held = lead.post(f"{base(project)}/apply", json={"plan_id": fresh})
    assert held.status_code == 409 and "Another apply" in held.json()["error"]["message"]  # its run has not ended

    instance.report_run_failed(run)
    released = lead.post(f"{base(project)}/apply", json={"plan_id": fresh})
    assert released.status_code == 503, released.text  # past the lock, to the launch
    with clients.app.state.sessions() as session:
        assert session.get(InfraPlan, stuck).status == "failed"
        assert session.get(InfraPlan, fresh).status == "planned"  # the launch failed: to retry
