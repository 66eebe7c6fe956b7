"""The infrastructure_apply job run in process on the API's own store, catalog and settings (as a deployment's run
process reads them): one step per change in dependency order, the plan and resources recorded, a failed change
failing its step and the plan while the changes before it stay made."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from api_shim.main import create_app
from rime_dagster.infrastructure.jobs import LEVELS, infrastructure_definitions
from rime_dagster.infrastructure.providers import KNOWN_TYPES, provider
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import get_settings
from tests.conftest import Clients, make_settings, role_clients
from tests.infrastructure.test_apply import TABLE, declare, plan, resource, url


@pytest.fixture
def clients(tmp_path, monkeypatch) -> Iterator[Clients]:
    settings = make_settings(tmp_path)
    monkeypatch.setenv("RIME_HOME", str(settings.home))  # the run reads the settings as a deployment's run does
    monkeypatch.setenv("RIME_SECRET_KEY", settings.secret_key)
    get_settings.cache_clear()
    with role_clients(create_app(settings), settings) as clients:
        yield clients
    get_settings.cache_clear()


@pytest.fixture
def project(clients) -> dict:
    return clients.admin.post("/api/v1/projects", json={"name": "infra"}).json()


def run(clients: Clients, project: dict, plan_id: str) -> dg.ExecuteInProcessResult:
    store = MetadataStoreResource(database_url=clients.app.state.settings.metadata_url)
    defs = dg.Definitions.merge(infrastructure_definitions(), dg.Definitions(resources={"metadata_store": store}))
    return defs.resolve_job_def("infrastructure_apply").execute_in_process(
        run_config={"ops": {"start": {"config": {"project_id": project["id"], "plan_id": plan_id}}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_every_providers_level_is_a_wave():
    assert {provider(kind).level for kind in KNOWN_TYPES} <= set(LEVELS)


def test_one_step_per_change_in_dependency_order(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    namespace = declare(clients, project, "iceberg_namespace", "marts")
    declare(clients, project, "iceberg_table", "orders", TABLE)
    made = plan(clients, project)
    result = run(clients, project, made["plan_id"])
    assert result.success
    steps = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS]
    # One step per change (`apply_change_<wave>[<change>]`), the namespace's wave before the table's.
    changes = [s.split("[", 1)[1].rstrip("]") for s in steps if s.startswith("apply_change")]
    assert changes == ["create_iceberg_namespace_marts", "create_iceberg_table_orders"]
    assert catalog.load_table((project["namespace"], "marts", "orders"))
    assert resource(clients, project, namespace["id"])["state"] == "applied"
    assert plan(clients, project)["summary"]["unchanged"] == 2
    stale = run(clients, project, made["plan_id"])  # applied already: refused, nothing runs
    assert not stale.success and "is applied" in str(stale.failure_data_for_node("start").error)


def test_a_failed_change_fails_its_step_and_the_plan_and_stops_what_follows(clients, project):
    catalog = clients.app.state.iceberg.catalog()
    declare(clients, project, "iceberg_namespace", "marts")
    orders = declare(clients, project, "iceberg_table", "orders", TABLE)
    assert run(clients, project, plan(clients, project)["plan_id"]).success
    # Iceberg refuses a required column added to a table that exists; the namespace's new property is fine.
    lead = clients.as_role("lead_data_engineer")
    stricter = {**TABLE, "schema": [*TABLE["schema"], {"name": "tier", "type": "string", "required": True}]}
    lead.patch(url(project, orders["id"]), json={"config": stricter})
    made = plan(clients, project)
    result = run(clients, project, made["plan_id"])
    assert not result.success
    failures = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert [f.split("[", 1)[1] for f in failures] == ["update_iceberg_table_orders]"]
    assert resource(clients, project, orders["id"])["state"] == "failed"
    assert clients.as_role("viewer").get(url(project)).status_code == 200
    with clients.app.state.sessions() as session:
        from rime_dagster.store.models import InfraPlan

        assert session.get(InfraPlan, made["plan_id"]).status == "failed"
    assert "tier" not in catalog.load_table((project["namespace"], "marts", "orders")).schema().column_names
    assert [c["action"] for c in plan(clients, project)["changes"]] == ["update", "no-op"]
