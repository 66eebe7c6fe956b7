"""The infrastructure_apply job run in process on the API's own store, catalog and settings (as a deployment's run
process reads them): one step per change in dependency order, the plan and resources recorded, a failed change
failing its step and the plan while the changes before it stay made."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from sqlalchemy.engine import make_url

from rime_dagster.infrastructure.jobs import LEVELS
from rime_dagster.infrastructure.providers import KNOWN_TYPES, provider
from tests.conftest import Clients
from tests.infrastructure.test_apply import TABLE, resource, run
from tests.support.infrastructure import api_plan, declare, infra_url


def test_every_providers_level_is_a_wave():
    assert {provider(kind).level for kind in KNOWN_TYPES} <= set(LEVELS)


def test_one_step_per_change_in_dependency_order(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    namespace = declare(clients, project, "iceberg_namespace", "marts")
    declare(clients, project, "iceberg_table", "orders", TABLE)
    made = api_plan(clients, project)
    result = run(clients, project, made["plan_id"])
    assert result.success
    steps = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS]
    # One step per change (`apply_change_<wave>[<change>]`), the namespace's wave before the table's.
    changes = [s.split("[", 1)[1].rstrip("]") for s in steps if s.startswith("apply_change")]
    assert changes == ["create_iceberg_namespace_marts", "create_iceberg_table_orders"]
    assert catalog.load_table((project["namespace"], "marts", "orders"))
    assert resource(clients, project, namespace["id"])["state"] == "applied"
    assert api_plan(clients, project)["summary"]["unchanged"] == 2
    stale = run(clients, project, made["plan_id"])  # applied already: refused, nothing runs
    assert not stale.success and "is applied" in str(stale.failure_data_for_node("start").error)


def test_a_failed_change_fails_its_step_and_the_plan_and_stops_what_follows(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    declare(clients, project, "iceberg_namespace", "marts")
    orders = declare(clients, project, "iceberg_table", "orders", TABLE)
    assert run(clients, project, api_plan(clients, project)["plan_id"]).success
    # Iceberg refuses a required column added to a table that exists; the namespace's new property is fine.
    lead = clients.as_role("lead_data_engineer")
    stricter = {**TABLE, "schema": [*TABLE["schema"], {"name": "tier", "type": "string", "required": True}]}
    lead.patch(infra_url(project, orders["id"]), json={"config": stricter})
    made = api_plan(clients, project)
    result = run(clients, project, made["plan_id"])
    assert not result.success
    failures = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert [f.split("[", 1)[1] for f in failures] == ["update_iceberg_table_orders]"]
    assert resource(clients, project, orders["id"])["state"] == "failed"
    assert clients.as_role("viewer").get(infra_url(project)).status_code == 200
    with clients.app.state.sessions() as session:
        from rime_dagster.store.models import InfraPlan

        assert session.get(InfraPlan, made["plan_id"]).status == "failed"
    assert "tier" not in catalog.load_table((project["namespace"], "marts", "orders")).schema().column_names
    assert [c["action"] for c in api_plan(clients, project)["changes"]] == ["update", "no-op"]


@pytest.fixture
def pg(postgres_url) -> Iterator[tuple[psycopg.Connection, str]]:
    """A connection to the throwaway server and a role of this test's own (roles are server-wide)."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    conninfo = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}"')
        yield conn, role
        conn.execute(f'DROP OWNED BY "{role}" CASCADE')
        conn.execute(f'DROP ROLE "{role}"')


def four_kinds(clients: Clients, project: dict, grant_to: str) -> dict[str, dict]:
    return {
        "marts": declare(clients, project, "iceberg_namespace", "marts"),
        "orders": declare(clients, project, "iceberg_table", "orders", TABLE),
        "landing": declare(clients, project, "storage_location", "landing", {"kind": "local", "path": "landing"}),
        "sales": declare(
            clients, project, "postgres_schema", "sales", {"grants": [{"role": grant_to, "privileges": ["USAGE"]}]}
        ),
    }


def schema_grants(conn: psycopg.Connection, schema: str) -> list[tuple]:
    return conn.execute(
        "SELECT grantee::regrole::text, privilege_type FROM pg_namespace, aclexplode(nspacl) WHERE nspname = %s "
        "AND grantee <> nspowner",
        (schema,),
    ).fetchall()


@pytest.mark.postgres
def test_a_namespace_a_partitioned_table_a_storage_location_and_a_postgres_schema_for_real(clients, project, pg):
    conn, role = pg
    catalog = clients.app.state.iceberg.catalog()
    declared = four_kinds(clients, project, role)
    made = api_plan(clients, project)
    assert made["summary"] == {"create": 4, "update": 0, "delete": 0, "unchanged": 0}
    assert run(clients, project, made["plan_id"]).success
    assert [str(f.transform) for f in catalog.load_table((project["namespace"], "marts", "orders")).spec().fields] == [
        "identity"
    ]
    assert (clients.app.state.settings.home / "storage" / project["namespace"] / "landing").is_dir()
    schema = f"{project['namespace']}__sales"
    assert schema_grants(conn, schema) == [(role, "USAGE")]
    assert api_plan(clients, project)["summary"] == {"create": 0, "update": 0, "delete": 0, "unchanged": 4}

    wider = {**TABLE, "schema": [*TABLE["schema"], {"name": "channel", "type": "string"}]}
    lead = clients.as_role("lead_data_engineer")
    assert lead.patch(infra_url(project, declared["orders"]["id"]), json={"config": wider}).status_code == 200
    update = api_plan(clients, project)
    assert update["summary"] == {"create": 0, "update": 1, "delete": 0, "unchanged": 3}
    assert run(clients, project, update["plan_id"]).success
    columns = catalog.load_table((project["namespace"], "marts", "orders")).schema().column_names
    assert columns == ["id", "region", "channel"]

    catalog.drop_table((project["namespace"], "marts", "orders"))  # behind the platform's back
    dropped = api_plan(clients, project)
    assert [(c["action"], c["name"]) for c in dropped["changes"] if c["action"] != "no-op"] == [("create", "orders")]
    conn.execute(f'DROP SCHEMA "{schema}"')


@pytest.mark.postgres
def test_a_refused_grant_fails_its_step_keeps_what_completed_and_the_next_plan_shows_what_remains(clients, project, pg):
    conn, _ = pg
    catalog = clients.app.state.iceberg.catalog()
    declared = four_kinds(clients, project, f"nobody_{uuid.uuid4().hex[:8]}")  # a role the server does not have
    result = run(clients, project, api_plan(clients, project)["plan_id"])
    assert not result.success
    failures = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert [f.split("[", 1)[1] for f in failures] == ["create_postgres_schema_sales]"]
    sales = resource(clients, project, declared["sales"]["id"])
    assert sales["state"] == "failed" and "does not exist" in sales["last_error"]
    # Level 0 went first and stays made; the table (level 20) comes after the failed wave and was not attempted.
    assert catalog.load_namespace_properties((project["namespace"], "marts")) is not None
    assert (clients.app.state.settings.home / "storage" / project["namespace"] / "landing").is_dir()
    assert resource(clients, project, declared["orders"]["id"])["state"] == "pending"
    schema = f"{project['namespace']}__sales"
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() == (0,)
    remaining = api_plan(clients, project)
    assert sorted((c["action"], c["name"]) for c in remaining["changes"] if c["action"] != "no-op") == [
        ("create", "orders"),
        ("create", "sales"),
    ]
    assert remaining["summary"]["unchanged"] == 2
