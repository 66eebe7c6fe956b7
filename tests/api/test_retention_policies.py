"""Table retention policies over REST on a real Iceberg table and SQLite store: put, get, delete and the project's
list, their checks, roles and audit entries, and the Dagster schedule the code location builds from what they
store (tests/tables/test_retention.py runs one)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import pytest
from sqlalchemy import select

from api_shim.main import create_app
from rime_dagster.code_location import build_definitions
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import get_settings
from rime_dagster.specs import load_specs
from rime_dagster.store.models import Project
from tests.conftest import Clients, make_settings, role_clients, use_settings
from tests.tables.conftest import append

TABLES = ("shop__orders", "shop__customers", "shop__items")
POLICY = {"schedule": "0 3 * * *", "retain_last": 5, "older_than": "P7D"}


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> Iterator[Clients]:
    settings = make_settings(tmp_path_factory.mktemp("retention"))
    with role_clients(create_app(settings), settings) as clients:
        yield clients


@pytest.fixture(scope="module")
def project(clients) -> dict:
    project = clients.admin.post("/api/v1/projects", json={"name": "retention"}).json()
    catalog = clients.app.state.iceberg.catalog()
    for table in TABLES:
        append(catalog, 0, 10, identifier=(project["namespace"], table))
    return project


def url(project: dict, table: str = TABLES[0]) -> str:
    return f"/api/v1/projects/{project['id']}/tables/{table}/retention"


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def generation(clients: Clients, project: dict) -> int:
    with clients.app.state.sessions() as session:
        return session.scalar(select(Project.definitions_generation).where(Project.id == project["id"]))


def code_location(clients: Clients) -> dg.Definitions:
    """The `rime` code location built from the API's store, as Dagster would load it."""
    with clients.app.state.sessions() as session:
        database_url = session.get_bind().engine.url.render_as_string(hide_password=False)
    store = MetadataStoreResource(database_url=database_url)
    return build_definitions(load_specs(store), store)


def location_schedules(clients: Clients) -> dict[str, dg.ScheduleDefinition]:
    """The retention schedules of the code location."""
    repository = code_location(clients).get_repository_def()
    return {s.name: s for s in repository.schedule_defs if s.name.startswith("table_retention_")}


@pytest.mark.slow  # builds the code location three times (~1 s)
def test_put_creates_then_replaces_and_dagster_gets_the_schedule(clients, project):
    engineer, before = clients.as_role("data_engineer"), generation(clients, project)
    body = {**POLICY, "remove_orphan_files": {"older_than": "P2D"}, "compact": {"min_files": 4}}
    created = engineer.put(url(project), json=body)
    assert created.status_code == 201, created.text
    policy = created.json()
    assert policy["id"].startswith("ret_") and policy["table"] == TABLES[0] and policy["enabled"]
    assert (policy["retain_last"], policy["older_than"]) == (5, "P7D")
    assert policy["remove_orphan_files"] == {"older_than": "P2D"}
    assert policy["compact"] == {"target_file_rows": None, "min_files": 4}
    name = f"table_retention_{project['namespace']}__{TABLES[0]}"
    assert policy["dagster_schedule"] == name
    assert policy["next_run_at"].endswith("T03:00:00Z") and policy["created_at"].endswith("Z")
    assert generation(clients, project) > before  # the running Dagster reloads on this
    schedule = location_schedules(clients)[name]
    assert schedule.cron_schedule == "0 3 * * *" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    replaced = engineer.put(url(project), json={"schedule": "30 1 * * 0", "older_than": "PT12H", "enabled": False})
    assert replaced.status_code == 200, replaced.text
    again = replaced.json()
    assert again["id"] == policy["id"] and again["retain_last"] is None and again["older_than"] == "PT12H"
    assert again["remove_orphan_files"] is None and again["compact"] is None and again["next_run_at"] is None
    assert clients.as_role("viewer").get(url(project)).json() == again
    schedule = location_schedules(clients)[name]
    assert schedule.cron_schedule == "30 1 * * 0" and schedule.default_status == dg.DefaultScheduleStatus.STOPPED

    generation_before_delete = generation(clients, project)
    assert engineer.delete(url(project)).status_code == 204
    assert generation(clients, project) > generation_before_delete
    assert name not in location_schedules(clients)
    assert error(engineer.get(url(project)), 404)["code"] == "resource_not_found"


@pytest.mark.slow  # a real maintenance run, in this process (~2 s)
def test_the_policy_shows_its_newest_run_from_dagsters_run_storage(clients, project, monkeypatch):
    """A tick of the policy's schedule, run as Dagster runs it (in process, on the API's Dagster instance): the
    policy then answers the run, by its id, in its get and in the project's list."""
    settings = clients.app.state.settings
    use_settings(monkeypatch, settings)  # the run reads the settings as a deployment's run does
    try:
        table = "shop__events"
        catalog = clients.app.state.iceberg.catalog()
        for i in range(3):
            append(catalog, i * 10, 10, identifier=(project["namespace"], table))
        engineer, viewer = clients.as_role("data_engineer"), clients.as_role("viewer")
        put = engineer.put(url(project, table), json={"schedule": "0 3 * * *", "retain_last": 1, "older_than": "PT0S"})
        assert put.status_code == 201 and put.json()["last_run"] is None  # before its first tick

        defs = code_location(clients)
        schedule = defs.get_schedule_def(put.json()["dagster_schedule"])
        with dg.build_schedule_context(scheduled_execution_time=datetime.now(UTC)) as context:
            [request] = schedule.evaluate_tick(context).run_requests or []
        result = defs.resolve_job_def(schedule.job_name).execute_in_process(
            run_config=request.run_config, tags=request.tags, instance=clients.app.state.dagster.instance()
        )
        assert result.success
        assert len(catalog.load_table((project["namespace"], table)).metadata.snapshots) == 1

        policy = viewer.get(url(project, table)).json()
        last = policy["last_run"]
        assert last["dagster_run_id"] == result.run_id and last["run_id"] == "run_" + result.run_id.replace("-", "")
        assert last["status"] == "succeeded" and last["started_at"] <= last["finished_at"]
        assert last["dagster_url"].endswith(f"/runs/{result.run_id}")
        listing = viewer.get(f"/api/v1/projects/{project['id']}/retention-policies").json()["data"]
        assert [p["last_run"] for p in listing if p["table"] == table] == [last]
        assert engineer.delete(url(project, table)).status_code == 204
    finally:
        get_settings.cache_clear()


def test_viewers_read_and_data_engineers_write_and_each_write_is_audited(clients, project):
    viewer, engineer = clients.as_role("viewer"), clients.as_role("data_engineer")
    table_url = url(project, TABLES[1])
    assert error(viewer.put(table_url, json=POLICY), 403)["code"] == "forbidden"
    assert engineer.put(table_url, json=POLICY).status_code == 201
    assert viewer.get(table_url).status_code == 200
    assert viewer.get(f"/api/v1/projects/{project['id']}/retention-policies").status_code == 200
    assert error(viewer.delete(table_url), 403)
    assert engineer.delete(table_url).status_code == 204
    entries = clients.admin.get(
        f"/api/v1/projects/{project['id']}/audit-logs", params={"resource_type": "retention_policy", "limit": 100}
    ).json()["data"]
    seen = [(e["action"], e["status_code"], e["resource_id"]) for e in entries if e["resource_id"] == TABLES[1]]
    assert ("retention_policy.put", 201, TABLES[1]) in seen
    assert ("retention_policy.put", 403, TABLES[1]) in seen
    assert ("retention_policy.delete", 204, TABLES[1]) in seen


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"retain_last": 5}, ["schedule"]),
        ({**POLICY, "schedule": "every day"}, ["schedule"]),
        ({**POLICY, "schedule": "61 * * * *"}, ["schedule"]),
        ({"schedule": "0 3 * * *"}, ["retain_last", "older_than"]),
        ({**POLICY, "retain_last": 0}, ["retain_last"]),
        ({**POLICY, "retain_last": 1001}, ["retain_last"]),
        ({**POLICY, "older_than": "yesterday"}, ["older_than"]),
        ({**POLICY, "older_than": 604800}, ["older_than"]),
        ({**POLICY, "older_than": "-P1D"}, ["older_than"]),
        ({**POLICY, "older_than": "P4000D"}, ["older_than"]),
        ({**POLICY, "remove_orphan_files": {"older_than": "PT5M"}}, ["remove_orphan_files.older_than"]),
        ({**POLICY, "compact": {"target_file_rows": 5}}, ["compact.target_file_rows"]),
        ({**POLICY, "compact": {"min_files": 1}}, ["compact.min_files"]),
        ({**POLICY, "keep": "forever"}, ["keep"]),
        ({**POLICY, "enabled": "sometimes"}, ["enabled"]),
    ],
)
def test_bad_input_is_400_per_field(clients, project, body, fields):
    refused = error(clients.as_role("data_engineer").put(url(project, TABLES[2]), json=body), 400)
    assert refused["code"] == "validation_error"
    assert sorted(d["field"] for d in refused["details"]) == sorted(fields), refused
    assert clients.as_role("viewer").get(url(project, TABLES[2])).status_code == 404  # nothing was stored


def test_unknown_project_table_or_policy_is_404(clients, project):
    engineer = clients.as_role("data_engineer")
    for response in (
        engineer.put(url(project, "shop__nope"), json=POLICY),
        engineer.put(url({"id": "proj_nope"}), json=POLICY),
        engineer.get(url({"id": "proj_nope"})),
        engineer.get("/api/v1/projects/proj_nope/retention-policies"),
        engineer.get(url(project, TABLES[2])),
        engineer.delete(url(project, TABLES[2])),
    ):
        assert error(response, 404)["code"] == "resource_not_found"


def test_the_project_list_pages_without_gaps_or_repeats(clients, project):
    engineer = clients.as_role("data_engineer")
    for table in TABLES:
        assert engineer.put(url(project, table), json=POLICY).status_code in (200, 201)
    listing = f"/api/v1/projects/{project['id']}/retention-policies"
    first = engineer.get(listing, params={"limit": 2}).json()
    assert first["has_more"] and len(first["data"]) == 2
    rest = engineer.get(listing, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert not rest["has_more"] and rest["next_cursor"] is None
    tables = [p["table"] for p in first["data"] + rest["data"]]
    assert tables == list(reversed(TABLES))  # newest first
    by_table = engineer.get(listing, params={"sort": "table", "order": "asc"}).json()["data"]
    assert [p["table"] for p in by_table] == sorted(TABLES)
    assert error(engineer.get(listing, params={"cursor": "tampered"}), 400)["code"] == "validation_error"
    assert error(engineer.get(listing, params={"limit": 101}), 400)
    for table in TABLES:
        engineer.delete(url(project, table))
