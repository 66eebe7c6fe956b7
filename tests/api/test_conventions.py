"""API conventions shared by every endpoint: envelope, request ids, rate limits, idempotency, docs, health."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from api_shim.main import create_app
from api_shim.services.auth import Role
from tests.conftest import Clients, make_settings

REQUEST_ID = re.compile(r"^req_[0-9A-Z]{26}$")


class TestErrorEnvelope:
    def test_malformed_json_is_400(self, admin):
        response = admin.post("/api/v1/projects", content=b'{"name": ', headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"][0]["field"] == "body"
        assert "Malformed JSON" in error["details"][0]["message"]

    def test_missing_and_invalid_fields_each_get_a_detail(self, admin):
        response = admin.post("/api/v1/users", json={"email": "not-an-email", "role": "wizard"})
        assert response.status_code == 400
        fields = {d["field"] for d in response.json()["error"]["details"]}
        assert fields == {"email", "name", "role"}

    def test_unknown_field_rejected(self, admin):
        response = admin.post("/api/v1/projects", json={"name": "x", "colour": "blue"})
        assert response.status_code == 400
        assert response.json()["error"]["details"] == [{"field": "colour", "message": "Unknown field."}]

    def test_query_validation_is_400_not_422(self, admin):
        response = admin.get("/api/v1/projects", params={"limit": 101})
        assert response.status_code == 400
        assert response.json()["error"]["details"][0]["field"] == "limit"
        assert admin.get("/api/v1/projects", params={"limit": 0}).status_code == 400

    def test_unknown_route_and_method(self, admin):
        missing = admin.get("/api/v1/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_not_found"
        wrong = admin.put("/api/v1/projects")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"

    def test_bad_input_changes_nothing(self, admin):
        before = admin.get("/api/v1/projects").json()["data"]
        admin.post("/api/v1/projects", json={"name": ""})
        admin.post("/api/v1/projects", json={"name": "ok", "extra": 1})
        assert admin.get("/api/v1/projects").json()["data"] == before

    def test_unhandled_error_is_enveloped_500_without_trace(self, settings):
        app = create_app(settings)

        @app.get("/api/v1/boom")
        def boom():
            raise RuntimeError("secret internals: password=hunter2")

        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/api/v1/boom")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert "hunter2" not in response.text and "Traceback" not in response.text
        assert REQUEST_ID.match(response.headers["X-Request-Id"])


class TestRequestIds:
    def test_every_response_has_one(self, clients):
        for response in (
            clients.anonymous.get("/health"),
            clients.anonymous.get("/api/v1/projects"),
            clients.admin.get("/api/v1/projects"),
            clients.admin.get("/api/v1/nope"),
        ):
            assert REQUEST_ID.match(response.headers["X-Request-Id"])

    def test_unique(self, admin):
        ids = {admin.get("/api/v1/projects").headers["X-Request-Id"] for _ in range(20)}
        assert len(ids) == 20

    def test_incoming_id_honoured_and_audited(self, admin, project):
        response = admin.patch(
            f"/api/v1/projects/{project['id']}", json={"description": "d"}, headers={"X-Request-Id": "trace-123"}
        )
        assert response.headers["X-Request-Id"] == "trace-123"
        logs = admin.get(f"/api/v1/projects/{project['id']}/audit-logs", params={"action": "project.update"})
        assert logs.json()["data"][0]["request_id"] == "trace-123"

    def test_unsafe_incoming_id_replaced(self, admin):
        response = admin.get("/api/v1/projects", headers={"X-Request-Id": "bad id\twith spaces"})
        assert REQUEST_ID.match(response.headers["X-Request-Id"])


class TestRateLimits:
    # In this process's memory (one API worker), and in the metadata store (what several workers share). The store
    # counts in fixed windows, weighting the previous one: hourly ones, so that no test straddles two.
    @pytest.fixture(params=[("memory://", "minute"), ("rime-store://", "hour")], ids=["memory", "store"])
    def limited(self, tmp_path, request):
        storage, per = request.param
        settings = make_settings(
            tmp_path,
            rate_limit_default=f"5/{per}",
            rate_limits=f'{{"users": "2/{per}"}}',
            rate_limit_storage=storage,
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            client.headers["Authorization"] = f"Bearer {settings.admin_token}"
            yield client

    def test_headers_then_429(self, limited):
        remaining = []
        for _ in range(5):
            response = limited.get("/api/v1/projects")
            assert response.status_code == 200
            assert response.headers["RateLimit-Limit"] == "5"
            remaining.append(int(response.headers["RateLimit-Remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        refused = limited.get("/api/v1/projects")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        window = 60 if "minute" in limited.app.state.settings.rate_limit_default else 3600
        assert 1 <= int(refused.headers["Retry-After"]) <= window
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert REQUEST_ID.match(refused.headers["X-Request-Id"])

    def test_groups_are_separate_and_configurable(self, limited):
        assert [limited.get("/api/v1/users").status_code for _ in range(3)] == [200, 200, 429]
        assert limited.get("/api/v1/projects").status_code == 200  # another group's quota

    def test_tenant_wide_not_per_user(self, limited):
        # Authenticated callers share the tenant's quota; unauthenticated ones have their own, per address
        # (tests/security/test_api_surface.py).
        viewer = limited.post("/api/v1/users", json={"email": "q@example.com", "name": "Q", "role": "viewer"})
        token = limited.post(f"/api/v1/users/{viewer.json()['id']}/tokens", json={"name": "t"}).json()["token"]
        other = TestClient(limited.app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {token}"})
        anonymous = TestClient(limited.app, raise_server_exceptions=False)
        assert [anonymous.get("/api/v1/projects").status_code for _ in range(3)] == [401] * 3
        assert [limited.get("/api/v1/projects").status_code for _ in range(3)] == [200] * 3
        assert [other.get("/api/v1/projects").status_code for _ in range(3)] == [200, 200, 429]

    def test_health_and_docs_unlimited(self, limited):
        for _ in range(10):
            assert limited.get("/health").status_code == 200
        assert "RateLimit-Limit" not in limited.get("/health").headers


class TestIdempotency:
    def test_repeat_returns_first_response_and_creates_nothing(self, admin):
        headers = {"Idempotency-Key": "create-analytics-1"}
        first = admin.post("/api/v1/projects", json={"name": "once"}, headers=headers)
        second = admin.post("/api/v1/projects", json={"name": "once"}, headers=headers)
        assert first.status_code == second.status_code == 201
        assert first.json() == second.json()
        assert second.headers["Idempotent-Replayed"] == "true"
        names = [p["name"] for p in admin.get("/api/v1/projects").json()["data"]]
        assert names.count("once") == 1

    def test_same_key_different_body_is_422(self, admin):
        headers = {"Idempotency-Key": "k2"}
        assert admin.post("/api/v1/projects", json={"name": "a"}, headers=headers).status_code == 201
        reused = admin.post("/api/v1/projects", json={"name": "b"}, headers=headers)
        assert reused.status_code == 422
        assert reused.json()["error"]["code"] == "unprocessable_entity"

    def test_failed_request_not_stored(self, admin):
        headers = {"Idempotency-Key": "k3"}
        assert admin.post("/api/v1/projects", json={"name": "dup"}).status_code == 201
        assert admin.post("/api/v1/projects", json={"name": "dup"}, headers=headers).status_code == 409
        admin.delete(f"/api/v1/projects/{self._id(admin, 'dup')}")
        retried = admin.post("/api/v1/projects", json={"name": "dup"}, headers=headers)
        assert retried.status_code == 201

    def test_keys_are_scoped_per_caller(self, clients: Clients, settings):
        from api_shim.services import users
        from rime_dagster.store.session import session_scope

        with session_scope(settings.metadata_url) as session:
            other = users.create_user(
                session, tenant_id=settings.tenant, email="a2@example.com", name="A2", role=Role.admin
            )
            secret = users.create_token(session, other, name="t", expires_at=None).secret
        second_admin = TestClient(clients.app, raise_server_exceptions=False)
        second_admin.headers["Authorization"] = f"Bearer {secret}"
        headers = {"Idempotency-Key": "shared"}
        assert clients.admin.post("/api/v1/projects", json={"name": "p1"}, headers=headers).status_code == 201
        response = second_admin.post("/api/v1/projects", json={"name": "p2"}, headers=headers)
        assert response.status_code == 201 and response.json()["name"] == "p2"

    def test_invalid_key(self, admin):
        response = admin.post("/api/v1/projects", json={"name": "z"}, headers={"Idempotency-Key": "x" * 300})
        assert response.status_code == 400
        assert response.json()["error"]["details"][0]["field"] == "Idempotency-Key"

    @staticmethod
    def _id(client, name: str) -> str:
        return next(p["id"] for p in client.get("/api/v1/projects").json()["data"] if p["name"] == name)


class TestOpenAPI:
    def test_valid_document_with_error_schemas(self, clients):
        spec = clients.anonymous.get("/api/docs/openapi.json").json()
        validate(spec)
        assert spec["openapi"].startswith("3.1")
        assert "HTTPValidationError" not in str(spec)
        for path, operations in spec["paths"].items():
            if not path.startswith("/api/v1"):
                continue
            for method, operation in operations.items():
                responses = operation["responses"]
                success = [code for code in responses if code.startswith("2")]
                assert success, f"{method} {path} documents no success response"
                for code in ("400", "401", "403", "429"):
                    assert responses[code]["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"
                    }, f"{method} {path} lacks {code}"
                if "{" in path:  # an unknown id in the path is a 404, lists under a project included
                    assert "404" in responses, f"{method} {path} can answer 404 but does not document it"
                if "requestBody" in operation:
                    content = operation["requestBody"]["content"]
                    body = content.get("application/json") or content.get("multipart/form-data")
                    assert body and body["schema"], f"{method} {path} documents no request schema"
                assert operation["security"] == [{"HTTPBearer": []}]

    def test_swagger_ui(self, clients):
        page = clients.anonymous.get("/api/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()

    def test_the_docs_page_needs_nothing_from_the_internet(self, clients):
        """Every script, style sheet, icon and spec the page references is served by the API itself (a machine
        with no internet rendered a blank page while they came from a CDN)."""
        page = clients.anonymous.get("/api/docs").text
        referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: *["']([^"']+)["']""", page)
        urls = [url for pair in referenced for url in pair if url]
        assert {u.rsplit(".", 1)[-1] for u in urls} >= {"js", "css", "json"}, urls
        for url in urls:
            assert not re.match(r"(https?:)?//", url), f"{url} is not served by the API"
            asset = clients.anonymous.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, (url, asset.status_code)
        spec = clients.anonymous.get("/api/docs/openapi.json").json()
        assert "/api/docs/static" not in str(spec["paths"])  # the assets are not API operations


class TestHealth:
    def test_liveness(self, clients):
        # instance_id: what `rime up` gave its API (RIME_INSTANCE_ID), so it reads its own; none here.
        assert clients.anonymous.get("/health").json() == {"status": "ok", "instance_id": None}

    def test_ready_reports_each_dependency_and_503_when_dagster_down(self, clients):
        response = clients.anonymous.get("/health/ready")
        assert response.status_code == 503  # the test settings point Dagster at a closed port
        deps = response.json()["dependencies"]
        assert set(deps) == {"metadata_db", "dagster", "dagster_definitions", "iceberg_catalog"}
        assert deps["metadata_db"]["status"] == "ok"
        assert deps["iceberg_catalog"]["status"] == "ok"
        assert deps["dagster"]["status"] == "error"

    def test_ready_503_when_metadata_store_down(self, tmp_path):
        settings = make_settings(tmp_path)
        broken = settings.model_copy(update={"database_url": "postgresql+psycopg://x@127.0.0.1:1/none"})
        with TestClient(create_app(broken), raise_server_exceptions=False) as client:
            report = client.get("/health/ready")
            assert report.status_code == 503
            assert report.json()["dependencies"]["metadata_db"]["status"] == "error"
            api = client.get("/api/v1/projects", headers={"Authorization": f"Bearer {settings.admin_token}"})
            assert api.status_code == 503
            assert api.json()["error"]["code"] == "service_unavailable"
            assert "psycopg" not in api.text and "127.0.0.1" not in api.text

    def test_metrics(self, clients):
        clients.admin.get("/api/v1/projects")
        text = clients.anonymous.get("/metrics").text
        assert 'rime_http_requests_total{method="GET",route="/api/v1/projects",status="200"}' in text


class TestBodyLimit:
    def test_declared_oversize_body_413(self, admin):
        body = b'{"name": "' + b"x" * 1_100_000 + b'"}'
        response = admin.post("/api/v1/projects", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert REQUEST_ID.match(response.headers["X-Request-Id"])

    @pytest.mark.parametrize("headers", [{}, {"Idempotency-Key": "big"}])
    def test_streamed_oversize_body_413_and_nothing_created(self, admin, headers):
        def chunks():
            yield b'{"name": "'
            for _ in range(12):
                yield b"x" * 100_000
            yield b'"}'

        response = admin.post(
            "/api/v1/projects", content=chunks(), headers={"Content-Type": "application/json", **headers}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert admin.get("/api/v1/projects").json()["data"] == []
