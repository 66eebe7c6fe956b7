"""Pipeline versions, environments and approvals, as a team uses them: edits make versions; development -> qa
directly; qa -> uat -> production through requests another lead approves; production keeps running its version
(its own Dagster job and schedule) while development changes; demote, retire, and what each refuses."""

from __future__ import annotations

import dagster as dg
import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import select

from rime_dagster.code_location import build_definitions
from rime_dagster.platform import run_tags
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import get_settings
from rime_dagster.specs import load_specs
from rime_dagster.store.migrate import alembic_config, downgrade_to_base, upgrade_to_head
from rime_dagster.store.models import PipelineVersion
from rime_dagster.store.session import session_scope
from tests.api.test_pipelines import sync
from tests.conftest import use_settings
from tests.store.test_readable_names import _rows_at_0005


@pytest.fixture
def pipeline(clients, setup) -> dict:
    body = {"name": "nightly", "schedule": "0 2 * * *", "steps": [sync(setup["connector"]["id"])]}
    created = clients.as_role("data_engineer").post(setup["url"], json=body)
    assert created.status_code == 201, created.text
    return created.json()


@pytest.fixture
def second_lead(clients) -> TestClient:
    """Another lead_data_engineer: approvals need a lead other than the requester."""
    admin = clients.admin
    user = admin.post(
        "/api/v1/users", json={"email": "lead2@example.com", "name": "Lead 2", "role": "lead_data_engineer"}
    )
    assert user.status_code == 201, user.text
    token = admin.post(f"/api/v1/users/{user.json()['id']}/tokens", json={"name": "t"}).json()
    client = TestClient(clients.app, raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {token['token']}"
    return client


def edit(client, setup, pipeline, **changes) -> dict:
    response = client.patch(f"{setup['url']}/{pipeline['id']}", json=changes)
    assert response.status_code == 200, response.text
    return response.json()


def versions(client, setup, pipeline) -> list[dict]:
    response = client.get(f"{setup['url']}/{pipeline['id']}/versions", params={"limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def promote(client, setup, pipeline, version: int, expect: int) -> dict:
    response = client.post(f"{setup['url']}/{pipeline['id']}/versions/{version}/promote")
    assert response.status_code == expect, response.text
    return response.json()


def environments(client, setup, pipeline) -> dict[str, dict]:
    response = client.get(f"{setup['url']}/{pipeline['id']}/environments")
    assert response.status_code == 200, response.text
    return {e["environment"]: e for e in response.json()["environments"]}


def approvals_url(setup) -> str:
    return f"/api/v1/projects/{setup['project']['id']}/approvals"


def to_production(clients, setup, pipeline, version: int, second_lead) -> None:
    """dev -> qa by an engineer; qa -> uat and uat -> production requested by the lead, approved by another."""
    engineer, lead = clients.as_role("data_engineer"), clients.as_role("lead_data_engineer")
    assert promote(engineer, setup, pipeline, version, 200)["environment"] == "qa"
    for target in ("uat", "production"):
        request = promote(lead, setup, pipeline, version, 202)
        approved = second_lead.post(f"{approvals_url(setup)}/{request['approval_request_id']}/approve", json={})
        assert approved.status_code == 200, approved.text
        assert approved.json()["to_environment"] == target


def built_repository(settings, monkeypatch) -> dg.RepositoryDefinition:
    """What the code location builds from the app's store."""
    use_settings(monkeypatch, settings)
    try:
        store = MetadataStoreResource()
        return build_definitions(load_specs(store), store).get_repository_def()
    finally:
        get_settings.cache_clear()


def test_each_edit_of_the_definition_is_a_version(clients, setup, pipeline):
    engineer = clients.as_role("data_engineer")
    assert pipeline["version"] == 1  # creating it made version 1
    edit(engineer, setup, pipeline, description="three edits")
    edit(
        engineer,
        setup,
        pipeline,
        steps=[sync(setup["connector"]["id"]), {**sync(setup["connector"]["id"], "again"), "depends_on": ["sync"]}],
    )
    after = edit(engineer, setup, pipeline, schedule="30 3 * * *")
    # Neither a pause nor a change to the same values is a new version.
    edit(engineer, setup, pipeline, status="paused")
    edit(engineer, setup, pipeline, schedule="30 3 * * *")

    listed = versions(clients.as_role("viewer"), setup, pipeline)
    assert [v["version"] for v in listed] == [1, 2, 3, 4] and after["version"] == 4
    edits = [v for v in listed if v["version"] > 1]
    assert len(edits) == 3 and {v["created_by"] for v in listed} == {"data_engineer@example.com"}
    assert [v["environment"] for v in listed] == ["superseded", "superseded", "superseded", "development"]

    viewer = clients.as_role("viewer")
    second = viewer.get(f"{setup['url']}/{pipeline['id']}/versions/2").json()
    assert second["definition"]["description"] == "three edits" and len(second["definition"]["steps"]) == 1
    by_id = viewer.get(f"{setup['url']}/{pipeline['id']}/versions/{second['id']}").json()
    assert by_id == second
    diff = viewer.get(f"{setup['url']}/{pipeline['id']}/versions/diff", params={"from": 1, "to": 4}).json()
    assert {c["field"] for c in diff["fields"]} == {"description", "schedule"}
    assert [(s["step_id"], s["change"]) for s in diff["steps"]] == [("again", "added")]
    exported = viewer.get(f"{setup['url']}/{pipeline['id']}/versions/1/export", params={"format": "yaml"})
    assert exported.status_code == 200 and "schedule: 0 2 * * *" in exported.text
    newest_first = viewer.get(f"{setup['url']}/{pipeline['id']}/versions", params={"order": "desc"}).json()
    assert [v["version"] for v in newest_first["data"]] == [4, 3, 2, 1]
    assert viewer.get(f"{setup['url']}/{pipeline['id']}/versions/9").status_code == 404
    huge = "9" * 30  # past any database's integer: still a 404, not a driver error
    assert viewer.get(f"{setup['url']}/{pipeline['id']}/versions/{huge}").status_code == 404


def test_production_needs_another_leads_approval(clients, setup, pipeline, second_lead):
    engineer, lead, viewer = (clients.as_role(r) for r in ("data_engineer", "lead_data_engineer", "viewer"))
    assert promote(engineer, setup, pipeline, 1, 200) == {
        "status": "promoted",
        "environment": "qa",
        "version": 1,
        "approval_request_id": None,
    }
    request = promote(engineer, setup, pipeline, 1, 202)
    assert request["status"] == "pending_approval" and request["environment"] == "qa"
    promote(engineer, setup, pipeline, 1, 409)  # already waiting
    url = f"{approvals_url(setup)}/{request['approval_request_id']}"

    # Leads only; an engineer may comment.
    assert viewer.get(approvals_url(setup)).status_code == 403
    assert engineer.post(f"{url}/approve", json={}).status_code == 403
    comment = engineer.post(f"{url}/comments", json={"content": "Ready for uat"})
    assert comment.status_code == 201 and comment.json()["author"] == "data_engineer@example.com"
    assert engineer.post(f"{url}/comments", json={"content": ""}).status_code == 400

    pending = lead.get("/api/v1/notifications/pending-approvals").json()
    assert pending["count"] == 1 and pending["requests"][0]["to_environment"] == "uat"
    detail = lead.get(url).json()
    assert detail["snapshot"]["version"] == 1 and detail["comments"] == 1
    assert detail["snapshot"]["definition"]["steps"][0]["id"] == "sync"

    approved = lead.post(f"{url}/approve", json={"reason": "Looks good"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert lead.post(f"{url}/approve", json={}).status_code == 409  # decided

    # uat -> production: requested by this lead, who cannot approve it; another lead can.
    request = promote(lead, setup, pipeline, 1, 202)
    url = f"{approvals_url(setup)}/{request['approval_request_id']}"
    refused = lead.post(f"{url}/approve", json={})
    assert refused.status_code == 403 and "another lead" in refused.json()["error"]["message"]
    no_reason = second_lead.post(f"{url}/reject", json={})
    assert no_reason.status_code == 400 and no_reason.json()["error"]["details"][0]["field"] == "reason"
    assert environments(viewer, setup, pipeline)["production"]["version"] is None
    assert second_lead.post(f"{url}/approve", json={"reason": "ship it"}).status_code == 200
    state = environments(viewer, setup, pipeline)
    assert state["production"]["version"] == 1 and state["production"]["live"] and not state["development"]["live"]
    assert lead.get("/api/v1/notifications/pending-approvals").json()["count"] == 0
    decided = lead.get(approvals_url(setup), params={"status": "approved", "order": "asc"}).json()["data"]
    assert [(a["to_environment"], a["decided_by"]) for a in decided] == [
        ("uat", "lead_data_engineer@example.com"),
        ("production", "lead2@example.com"),
    ]
    trail = (
        clients.as_role("auditor")
        .get("/api/v1/audit-logs", params={"action": "approval.approve", "limit": 100})
        .json()["data"]
    )
    assert sorted(e["status_code"] for e in trail) == [200, 200, 403, 403, 409]


def test_a_rejected_request_moves_nothing_and_a_stale_one_cannot_be_approved(clients, setup, pipeline, second_lead):
    engineer, lead = clients.as_role("data_engineer"), clients.as_role("lead_data_engineer")
    promote(engineer, setup, pipeline, 1, 200)
    first = promote(engineer, setup, pipeline, 1, 202)["approval_request_id"]
    rejected = lead.post(f"{approvals_url(setup)}/{first}/reject", json={"reason": "Needs a fix in the sync step"})
    assert rejected.status_code == 200 and rejected.json()["reason"] == "Needs a fix in the sync step"
    assert environments(lead, setup, pipeline)["uat"]["version"] is None

    stale = promote(engineer, setup, pipeline, 1, 202)["approval_request_id"]
    edit(engineer, setup, pipeline, description="fixed")
    promote(engineer, setup, pipeline, 2, 200)  # qa now runs version 2: the request for version 1 is stale
    refused = lead.post(f"{approvals_url(setup)}/{stale}/approve", json={})
    assert refused.status_code == 409 and "no longer runs in qa" in refused.json()["error"]["message"]
    promote(engineer, setup, pipeline, 1, 409)  # superseded: runs nowhere


def test_production_keeps_its_version_while_development_changes(
    clients, setup, pipeline, second_lead, settings, monkeypatch
):
    engineer = clients.as_role("data_engineer")
    to_production(clients, setup, pipeline, 1, second_lead)
    connector = setup["connector"]["id"]
    edit(
        engineer,
        setup,
        pipeline,
        steps=[sync(connector, "first"), {**sync(connector, "second"), "depends_on": ["first"]}],
    )
    edit(engineer, setup, pipeline, schedule="15 * * * *")
    state = environments(engineer, setup, pipeline)
    assert (state["development"]["version"], state["production"]["version"]) == (3, 1)
    assert state["production"]["job_name"] == state["development"]["job_name"] + "__production"

    # A run names its environment; the plan of production's run is version 1's.
    plan = engineer.post(
        f"{setup['url']}/{pipeline['id']}/run", json={"dry_run": True, "environment": "production"}
    ).json()
    assert plan["version"] == 1 and plan["execution_order"] == ["sync"]
    dev_plan = engineer.post(f"{setup['url']}/{pipeline['id']}/run", json={"dry_run": True}).json()
    assert dev_plan["version"] == 3 and dev_plan["execution_order"] == ["first", "second"]
    no_uat = engineer.post(f"{setup['url']}/{pipeline['id']}/run", json={"dry_run": True, "environment": "nope"})
    assert no_uat.status_code == 400

    # What Dagster builds: a job per environment, each from its own version; only production's schedule runs.
    repository = built_repository(settings, monkeypatch)
    dev_job = repository.get_job(state["development"]["job_name"])
    production_job = repository.get_job(state["production"]["job_name"])
    assert {n.name for n in production_job.graph.nodes} == {"step_sync", "done"}
    assert {n.name for n in dev_job.graph.nodes} == {"step_first", "step_second", "done"}
    assert (
        production_job.tags[run_tags.PIPELINE_VERSION] == "1"
        and production_job.tags[run_tags.ENVIRONMENT] == "production"
    )
    assert dev_job.tags[run_tags.PIPELINE_VERSION] == "3"
    schedules = {s.job_name: s for s in repository.schedule_defs}
    assert schedules[production_job.name].cron_schedule == "0 2 * * *"
    assert schedules[production_job.name].default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedules[dev_job.name].cron_schedule == "15 * * * *"
    assert schedules[dev_job.name].default_status == dg.DefaultScheduleStatus.STOPPED
    assert state["qa"]["job_name"] in {j.name for j in repository.get_all_jobs()}

    # Retired, production runs nothing and development is live again; a pipeline in production is not deleted.
    assert clients.admin.delete(f"{setup['url']}/{pipeline['id']}").status_code == 409
    lead = clients.as_role("lead_data_engineer")
    assert engineer.post(f"{setup['url']}/{pipeline['id']}/versions/1/retire").status_code == 403
    retired = lead.post(f"{setup['url']}/{pipeline['id']}/versions/1/retire")
    assert retired.status_code == 200 and retired.json()["environment"] == "uat"  # uat still runs it
    state = environments(engineer, setup, pipeline)
    assert state["production"]["version"] is None and state["development"]["live"]
    demoted = lead.post(f"{setup['url']}/{pipeline['id']}/versions/1/demote")
    assert demoted.status_code == 200 and demoted.json()["environment"] == "qa"
    assert lead.post(f"{setup['url']}/{pipeline['id']}/versions/1/demote").status_code == 409
    assert clients.admin.delete(f"{setup['url']}/{pipeline['id']}").status_code == 204


def test_an_embedded_pipeline_must_be_in_the_environment_first(clients, setup, pipeline):
    engineer = clients.as_role("data_engineer")
    outer = engineer.post(
        setup["url"],
        json={
            "name": "outer",
            "steps": [{"id": "inner", "type": "pipeline", "config": {"pipeline_id": pipeline["id"]}}],
        },
    ).json()
    refused = promote(engineer, setup, outer, 1, 409)
    assert "nightly" in refused["error"]["message"] and "qa" in refused["error"]["message"]
    promote(engineer, setup, pipeline, 1, 200)
    promote(engineer, setup, outer, 1, 200)


def test_existing_pipelines_get_version_1_on_upgrade(db_url):
    downgrade_to_base(db_url)
    command.upgrade(alembic_config(db_url), "0005")
    _rows_at_0005(db_url)
    upgrade_to_head(db_url)
    with session_scope(db_url) as session:
        rows = session.scalars(select(PipelineVersion).order_by(PipelineVersion.pipeline_id)).all()
    assert [(v.pipeline_id, v.version) for v in rows] == [("pipe_a", 1), ("pipe_b", 1), ("pipe_c", 1)]
    assert rows[0].definition["name"] == "Nightly" and rows[0].definition["steps"] == []
