"""Users and tokens: invitations, roles, disabling, revocation, the last-admin rule, secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from api_shim.services.auth import Role
from rime_dagster.store.session import session_scope
from tests.conftest import ADMIN_TOKEN


def _invite(admin, email="vera@example.com", role="viewer") -> dict:
    response = admin.post("/api/v1/users", json={"email": email, "name": "Vera", "role": role})
    assert response.status_code == 201, response.text
    return response.json()


def _client_with(clients, secret: str) -> TestClient:
    client = TestClient(clients.app, raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


class TestInvite:
    def test_invited_then_active_on_first_use(self, clients):
        user = _invite(clients.admin)
        assert user["status"] == "invited" and user["role"] == "viewer" and user["last_seen_at"] is None
        token = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "laptop"}).json()
        assert _client_with(clients, token["token"]).get("/api/v1/projects").status_code == 200
        after = clients.admin.get(f"/api/v1/users/{user['id']}").json()
        assert after["status"] == "active" and after["last_seen_at"] is not None

    def test_duplicate_email_case_insensitive_409(self, admin):
        _invite(admin, "Dup@Example.com")
        response = admin.post("/api/v1/users", json={"email": "dup@example.com", "name": "D", "role": "viewer"})
        assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"

    def test_unknown_user_404(self, admin):
        response = admin.get("/api/v1/users/usr_nope")
        assert response.status_code == 404 and response.json()["error"]["code"] == "resource_not_found"


class TestUpdate:
    def test_patch_is_partial(self, admin):
        user = _invite(admin)
        patched = admin.patch(f"/api/v1/users/{user['id']}", json={"role": "data_engineer"}).json()
        assert patched["role"] == "data_engineer" and patched["name"] == "Vera"

    @pytest.mark.parametrize("body", [{"role": "root"}, {"status": "invited"}, {"name": None}, {"email": "x@y.z"}])
    def test_invalid_patch_400_changes_nothing(self, admin, body):
        user = _invite(admin)
        response = admin.patch(f"/api/v1/users/{user['id']}", json=body)
        assert response.status_code == 400, response.text
        assert admin.get(f"/api/v1/users/{user['id']}").json() == user

    def test_disabled_user_stops_at_once(self, clients):
        user = _invite(clients.admin)
        secret = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t"}).json()["token"]
        client = _client_with(clients, secret)
        assert client.get("/api/v1/projects").status_code == 200
        clients.admin.patch(f"/api/v1/users/{user['id']}", json={"status": "disabled"})
        refused = client.get("/api/v1/projects")
        assert refused.status_code == 401 and "disabled" in refused.json()["error"]["message"]
        clients.admin.patch(f"/api/v1/users/{user['id']}", json={"status": "active"})
        assert client.get("/api/v1/projects").status_code == 200

    def test_role_change_applies_at_once(self, clients, project):
        user = _invite(clients.admin)
        secret = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t"}).json()["token"]
        client = _client_with(clients, secret)
        url = f"/api/v1/projects/{project['id']}"
        assert client.patch(url, json={"description": "x"}).status_code == 403
        clients.admin.patch(f"/api/v1/users/{user['id']}", json={"role": "lead_data_engineer"})
        assert client.patch(url, json={"description": "x"}).status_code == 200


class TestLastAdmin:
    def _admin_id(self, admin) -> str:
        users = admin.get("/api/v1/users").json()["data"]
        return next(u["id"] for u in users if u["email"] == "admin@localhost")

    @pytest.mark.parametrize("body", [{"role": "viewer"}, {"status": "disabled"}])
    def test_cannot_demote_or_disable_last_admin(self, admin, body):
        response = admin.patch(f"/api/v1/users/{self._admin_id(admin)}", json=body)
        assert response.status_code == 409
        assert admin.get("/api/v1/projects").status_code == 200

    def test_cannot_delete_last_admin(self, admin):
        assert admin.delete(f"/api/v1/users/{self._admin_id(admin)}").status_code == 409

    def test_can_demote_when_another_admin_exists(self, admin):
        second = _invite(admin, "second@example.com", role="admin")
        assert admin.patch(f"/api/v1/users/{second['id']}", json={"role": "viewer"}).status_code == 200
        # ...and that makes the bootstrap admin the last one again.
        assert admin.patch(f"/api/v1/users/{self._admin_id(admin)}", json={"role": "viewer"}).status_code == 409

    def test_disabled_admin_does_not_count(self, admin):
        second = _invite(admin, "second@example.com", role="admin")
        admin.patch(f"/api/v1/users/{second['id']}", json={"status": "disabled"})
        assert admin.delete(f"/api/v1/users/{self._admin_id(admin)}").status_code == 409


class TestDelete:
    def test_delete_removes_user_and_tokens(self, clients):
        user = _invite(clients.admin)
        secret = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t"}).json()["token"]
        assert clients.admin.delete(f"/api/v1/users/{user['id']}").status_code == 204
        assert clients.admin.get(f"/api/v1/users/{user['id']}").status_code == 404
        assert _client_with(clients, secret).get("/api/v1/projects").status_code == 401


class TestTokens:
    def test_secret_shown_once_and_stored_hashed(self, clients, settings):
        user = _invite(clients.admin)
        created = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "ci"}).json()
        secret = created["token"]
        assert secret.startswith("rime_") and len(secret) > 40
        listed = clients.admin.get(f"/api/v1/users/{user['id']}/tokens").text
        assert secret not in listed and created["prefix"] in listed
        from sqlalchemy import text

        with session_scope(settings.metadata_url) as session:
            dump = " ".join(str(row) for row in session.execute(text("SELECT * FROM api_tokens")))
        assert secret not in dump

    def test_revoked_token_stops_at_once(self, clients):
        user = _invite(clients.admin)
        token = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t"}).json()
        client = _client_with(clients, token["token"])
        assert client.get("/api/v1/projects").status_code == 200
        assert clients.admin.delete(f"/api/v1/users/{user['id']}/tokens/{token['id']}").status_code == 204
        refused = client.get("/api/v1/projects")
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]

    def test_expired_token_refused(self, clients, settings):
        user = _invite(clients.admin)
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        token = clients.admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t", "expires_at": soon}).json()
        from sqlalchemy import update

        from rime_dagster.store.models import ApiToken

        with session_scope(settings.metadata_url) as session:
            session.execute(
                update(ApiToken)
                .where(ApiToken.id == token["id"])
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        refused = _client_with(clients, token["token"]).get("/api/v1/projects")
        assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]

    @pytest.mark.parametrize("expires_at", ["2020-01-01T00:00:00Z", "2030-01-01T00:00:00", "soon"])
    def test_bad_expiry_400(self, admin, expires_at):
        user = _invite(admin)
        response = admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t", "expires_at": expires_at})
        assert response.status_code == 400
        assert response.json()["error"]["details"][0]["field"] == "expires_at"

    def test_users_manage_their_own_tokens_only(self, clients):
        viewer = clients.as_role(Role.viewer)
        own = clients.user_ids[Role.viewer]
        created = viewer.post(f"/api/v1/users/{own}/tokens", json={"name": "mine"})
        assert created.status_code == 201
        assert viewer.delete(f"/api/v1/users/{own}/tokens/{created.json()['id']}").status_code == 204
        other = clients.user_ids[Role.auditor]
        assert viewer.get(f"/api/v1/users/{other}/tokens").status_code == 403

    def test_token_of_another_user_is_404(self, clients):
        token = clients.admin.post(f"/api/v1/users/{clients.user_ids[Role.viewer]}/tokens", json={"name": "t"}).json()
        response = clients.admin.delete(f"/api/v1/users/{clients.user_ids[Role.auditor]}/tokens/{token['id']}")
        assert response.status_code == 404


class TestBootstrap:
    def test_admin_token_restored_on_start(self, clients, settings, app):
        from api_shim.main import bootstrap

        admin_id = next(u["id"] for u in clients.admin.get("/api/v1/users").json()["data"] if u["role"] == "admin")
        tokens = clients.admin.get(f"/api/v1/users/{admin_id}/tokens").json()["data"]
        clients.admin.delete(f"/api/v1/users/{admin_id}/tokens/{tokens[0]['id']}")
        assert clients.admin.get("/api/v1/projects").status_code == 401
        bootstrap(settings)
        assert clients.admin.get("/api/v1/projects").status_code == 200
        assert settings.admin_token == ADMIN_TOKEN
