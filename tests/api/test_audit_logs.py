"""Audit trail: mutations, denials and their outcomes are recorded; filters; append-only."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from api_shim.services.auth import Role
from rime_dagster.store.session import session_scope


def _logs(client, project_id: str, **params) -> list[dict]:
    response = client.get(f"/api/v1/projects/{project_id}/audit-logs", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


class TestRecording:
    def test_mutation_recorded_with_context(self, admin, project):
        response = admin.patch(f"/api/v1/projects/{project['id']}", json={"description": "x"})
        entry = _logs(admin, project["id"], action="project.update")[0]
        assert entry["actor"] == "admin@localhost"
        assert entry["resource_type"] == "project" and entry["resource_id"] == project["id"]
        assert entry["status_code"] == 200 and entry["method"] == "PATCH"
        assert entry["request_id"] == response.headers["X-Request-Id"]
        assert entry["ip"] and entry["timestamp"].endswith("Z") and entry["id"].startswith("aud_")

    def test_denied_write_and_read_recorded(self, clients, project):
        viewer = clients.as_role(Role.viewer)
        denied = viewer.delete(f"/api/v1/projects/{project['id']}")
        assert denied.status_code == 403
        viewer.get(f"/api/v1/projects/{project['id']}/audit-logs")  # viewers may not read audit logs
        entries = _logs(clients.admin, project["id"], actor="viewer@example.com")
        assert {(e["action"], e["status_code"]) for e in entries} == {("project.delete", 403), ("audit_log.list", 403)}

    def test_failed_and_unauthenticated_mutations_recorded(self, clients, project):
        clients.admin.patch(f"/api/v1/projects/{project['id']}", json={"name": ""})
        clients.anonymous.patch(f"/api/v1/projects/{project['id']}", json={"name": "x"})
        codes = {(e["actor"], e["status_code"]) for e in _logs(clients.admin, project["id"], action="project.update")}
        assert ("admin@localhost", 400) in codes and ("anonymous", 401) in codes

    def test_reads_not_recorded(self, admin, project):
        before = len(_logs(admin, project["id"], limit=100))
        admin.get(f"/api/v1/projects/{project['id']}")
        assert len(_logs(admin, project["id"], limit=100)) == before

    def test_user_and_token_changes_in_tenant_log(self, clients):
        user = clients.admin.post(
            "/api/v1/users", json={"email": "n@example.com", "name": "N", "role": "viewer"}
        ).json()
        token = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t"}).json()
        entries = clients.admin.get("/api/v1/audit-logs", params={"limit": 5}).json()["data"]
        assert [(e["action"], e["resource_id"]) for e in entries[:2]] == [
            ("token.create", token["id"]),
            ("user.create", user["id"]),
        ]
        assert token["token"] not in clients.admin.get("/api/v1/audit-logs").text


class TestQuery:
    def test_filters(self, admin, project):
        admin.patch(f"/api/v1/projects/{project['id']}", json={"description": "a"})
        all_entries = _logs(admin, project["id"])
        assert {e["action"] for e in all_entries} == {"project.create", "project.update"}
        assert all(e["action"] == "project.create" for e in _logs(admin, project["id"], action="project.create"))
        assert _logs(admin, project["id"], resource_type="user") == []
        assert len(_logs(admin, project["id"], resource_id=project["id"])) == 2
        newest = all_entries[0]["timestamp"]
        assert [e["id"] for e in _logs(admin, project["id"], **{"from": newest})] == [all_entries[0]["id"]]
        assert all_entries[0]["id"] not in [e["id"] for e in _logs(admin, project["id"], to=newest)]
        admin_id = all_entries[0]["actor_id"]
        assert len(_logs(admin, project["id"], actor=admin_id)) == 2

    @pytest.mark.parametrize(
        "params",
        [
            {"from": "yesterday"},
            {"from": "2026-01-01T00:00:00"},
            {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            {"to": "0.5"},  # a number is not a date (pydantic read it as Unix seconds)
            {"from": "1767225600"},
        ],
    )
    def test_bad_time_filters_400(self, admin, project, params):
        response = admin.get(f"/api/v1/projects/{project['id']}/audit-logs", params=params)
        assert response.status_code == 400
        assert {d["field"] for d in response.json()["error"]["details"]} <= {"from", "to"}

    def test_paginated(self, admin, project):
        for i in range(5):
            admin.patch(f"/api/v1/projects/{project['id']}", json={"description": str(i)})
        first = admin.get(f"/api/v1/projects/{project['id']}/audit-logs", params={"limit": 4}).json()
        second = admin.get(
            f"/api/v1/projects/{project['id']}/audit-logs", params={"limit": 4, "cursor": first["next_cursor"]}
        ).json()
        ids = [e["id"] for e in first["data"] + second["data"]]
        assert len(ids) == len(set(ids)) == 6 and not second["has_more"]

    def test_auditor_reads_viewer_cannot(self, clients, project):
        assert clients.as_role(Role.auditor).get(f"/api/v1/projects/{project['id']}/audit-logs").status_code == 200
        assert clients.as_role(Role.viewer).get(f"/api/v1/projects/{project['id']}/audit-logs").status_code == 403


class TestAppendOnly:
    def test_api_offers_no_mutation(self, admin, project):
        url = f"/api/v1/projects/{project['id']}/audit-logs"
        assert admin.delete(url).status_code == 405
        assert admin.post(url, json={}).status_code == 405

    @pytest.mark.parametrize("statement", ["UPDATE audit_logs SET actor = 'x'", "DELETE FROM audit_logs"])
    def test_database_refuses_update_and_delete(self, admin, project, settings, statement):
        with pytest.raises(DBAPIError, match="append-only"):
            with session_scope(settings.metadata_url) as session:
                session.execute(text(statement))
        assert len(_logs(admin, project["id"])) == 1
