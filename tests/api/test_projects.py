"""Projects: create, read, partial update, delete; names unique per tenant."""

from __future__ import annotations

import pytest

from api_shim.services.auth import Role


class TestCreate:
    def test_created_shape(self, admin):
        response = admin.post("/api/v1/projects", json={"name": "  sales  ", "description": "d"})
        assert response.status_code == 201
        body = response.json()
        assert body["id"].startswith("proj_") and body["name"] == "sales" and body["description"] == "d"
        assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")
        assert admin.get(f"/api/v1/projects/{body['id']}").json() == body

    def test_duplicate_name_409(self, admin, project):
        response = admin.post("/api/v1/projects", json={"name": project["name"]})
        assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({}, "name"),
            ({"name": ""}, "name"),
            ({"name": "x" * 201}, "name"),
            ({"name": 5}, "name"),
            ({"name": "ok", "description": "d" * 2001}, "description"),
        ],
    )
    def test_invalid_body_400_per_field(self, admin, body, field):
        response = admin.post("/api/v1/projects", json=body)
        assert response.status_code == 400
        assert [d["field"] for d in response.json()["error"]["details"]] == [field]


class TestUpdate:
    def test_partial_update(self, admin, project):
        patched = admin.patch(f"/api/v1/projects/{project['id']}", json={"description": "new"}).json()
        assert patched["name"] == project["name"] and patched["description"] == "new"
        assert patched["updated_at"] >= project["updated_at"]
        cleared = admin.patch(f"/api/v1/projects/{project['id']}", json={"description": None}).json()
        assert cleared["description"] is None

    def test_rename_to_taken_name_409(self, admin, project):
        other = admin.post("/api/v1/projects", json={"name": "other"}).json()
        assert admin.patch(f"/api/v1/projects/{other['id']}", json={"name": project["name"]}).status_code == 409
        assert admin.patch(f"/api/v1/projects/{other['id']}", json={"name": "other"}).status_code == 200

    def test_null_name_400(self, admin, project):
        assert admin.patch(f"/api/v1/projects/{project['id']}", json={"name": None}).status_code == 400

    def test_lead_may_update_engineer_may_not(self, clients, project):
        url = f"/api/v1/projects/{project['id']}"
        assert clients.as_role(Role.lead_data_engineer).patch(url, json={"description": "l"}).status_code == 200
        assert clients.as_role(Role.data_engineer).patch(url, json={"description": "e"}).status_code == 403


class TestDelete:
    def test_delete_then_404_everywhere(self, admin, project):
        assert admin.delete(f"/api/v1/projects/{project['id']}").status_code == 204
        assert admin.get(f"/api/v1/projects/{project['id']}").status_code == 404
        assert admin.delete(f"/api/v1/projects/{project['id']}").status_code == 404
        assert admin.get(f"/api/v1/projects/{project['id']}/audit-logs").status_code == 404

    def test_name_free_again_after_delete(self, admin, project):
        admin.delete(f"/api/v1/projects/{project['id']}")
        assert admin.post("/api/v1/projects", json={"name": project["name"]}).status_code == 201

    def test_audit_trail_outlives_the_project(self, admin, project):
        admin.delete(f"/api/v1/projects/{project['id']}")
        entries = admin.get("/api/v1/audit-logs", params={"resource_id": project["id"]}).json()["data"]
        assert [e["action"] for e in entries] == ["project.delete", "project.create"]
