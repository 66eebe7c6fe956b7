"""Issue 11, the API's surface: denial of service through YAML before authentication (item 1), tokens in
logs and WebSocket subprotocol auth (item 5), anonymous traffic, failed-login audit rows, WebSocket
connects and uploads read before authentication (item 7).

Where the event loop or the log output matters, the API runs as `rime up` runs it: a uvicorn process.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from starlette.testclient import WebSocketDenialResponse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from api_shim.main import create_app
from api_shim.services.auth import Role
from tests.conftest import ADMIN_TOKEN, Clients, make_settings
from tests.dagster.conftest import uvicorn_api
from tests.support.waiting import wait_until

YAML = {"Content-Type": "application/yaml"}
PIPELINES = "/api/v1/projects/proj_x/pipelines"
WATCH = "/api/v1/ws/pipelines/pip_x/runs/run_x"
ATTACKER, OTHER = ("203.0.113.7", 40000), ("198.51.100.2", 40000)


@dataclass
class Served:
    url: str
    token: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """The API as a uvicorn process, logging at INFO with uvicorn's access log, its address space capped at
    2 GiB so that a regression of the YAML fix fails the test instead of exhausting the machine."""
    tmp = tmp_path_factory.mktemp("served")
    settings = make_settings(tmp)
    log_path = tmp / "api.log"
    env = {
        "RIME_LOG_LEVEL": "INFO",
        # The floods below measure the event loop, not the anonymous rate limit.
        "RIME_RATE_LIMIT_ANONYMOUS": "1000000/minute",
    }
    with uvicorn_api(settings, log_path, env=env, access_log=True, memory_limit_bytes=2 * 1024**3) as url:
        yield Served(url=url, token=settings.admin_token or "", log_path=log_path)


def alias_bomb(levels: int = 9) -> bytes:
    """The "billion laughs": each level a list of nine aliases of the one before, 9**levels strings in all."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines).encode()


# Item 1: YAML ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("authenticated", [False, True], ids=["without-token", "with-token"])
def test_yaml_alias_bomb_is_refused_while_the_api_keeps_answering(served: Served, authenticated: bool):
    headers = dict(YAML)
    if authenticated:
        headers["Authorization"] = f"Bearer {served.token}"
    bomb, stop = alias_bomb(9), threading.Event()
    assert len(bomb) < 600
    answers: list[list[int]] = [[], []]

    def attack(codes: list[int]) -> list[int]:
        with httpx.Client(timeout=60) as client:
            while not codes or not stop.is_set():
                codes.append(client.post(f"{served.url}{PIPELINES}", content=bomb, headers=headers).status_code)
        return codes

    with ThreadPoolExecutor(2) as pool:
        attacks = [pool.submit(attack, codes) for codes in answers]
        try:
            # Both attackers have had an answer and sent their next bomb: the attack is in flight.
            wait_until(lambda: all(answers), timeout=60, what="an answer to each attacker")
            for _ in range(10):
                started = time.monotonic()
                assert httpx.get(f"{served.url}/health", timeout=1.0).status_code == 200
                assert time.monotonic() - started < 1.0
                time.sleep(0.1)  # ten probes spread over a second of the attack
        finally:
            stop.set()
        codes = {code for attack in attacks for code in attack.result(timeout=120)}
    assert codes == ({400} if authenticated else {401}), codes


class TestYamlBodies:
    def test_anchors_and_aliases_are_refused(self, admin, project):
        body = "name: &name nightly\ndescription: *name\nsteps: []\n"
        response = admin.post(f"/api/v1/projects/{project['id']}/pipelines", content=body, headers=YAML)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert "anchors and aliases" in error["details"][0]["message"]
        assert admin.get(f"/api/v1/projects/{project['id']}/pipelines").json()["data"] == []

    def test_a_deeply_nested_document_is_a_400(self, admin):
        response = admin.post(PIPELINES, content=b"steps: " + b"[" * 5000 + b"]" * 5000, headers=YAML)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"][0]["message"] == "The YAML document is nested too deeply."

    def test_nothing_is_parsed_before_authentication(self, clients: Clients):
        response = clients.anonymous.post(PIPELINES, content=b"steps: [unclosed", headers=YAML)
        assert response.status_code == 401
        forbidden = clients.as_role(Role.viewer).post(PIPELINES, content=b"steps: [unclosed", headers=YAML)
        assert forbidden.status_code == 403

    def test_the_body_limit_applies_to_the_expanded_document(self, tmp_path):
        settings = make_settings(tmp_path, max_body_bytes=400)
        body = "name: n\nsteps: [" + ", ".join(["x"] * 90) + "]\n"
        assert len(body) < 400 < len(json.dumps(yaml.safe_load(body)))
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            response = client.post(PIPELINES, content=body, headers=YAML)
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"


# Item 5: tokens in logs, WebSocket subprotocol auth ------------------------------------------------


@pytest.mark.slow
def test_tokens_in_urls_never_reach_the_logs(served: Served):
    ws_base = served.url.replace("http://", "ws://", 1)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{ws_base}{WATCH}?token={served.token}", open_timeout=10).close()
    assert refused.value.response.status_code == 404  # authenticated; only the pipeline is unknown
    plain = httpx.get(f"{served.url}/api/v1/projects", params={"token": served.token, "limit": 1})
    assert plain.status_code == 401  # a query token is no credential for plain HTTP
    deadline = time.monotonic() + 5
    while f'"WebSocket {WATCH}' not in served.log() or "GET /api/v1/projects?" not in served.log():
        assert time.monotonic() < deadline, served.log()[-3000:]
        time.sleep(0.1)
    log = served.log()
    assert served.token not in log
    assert f'"WebSocket {WATCH}?token=***" 404' in log


class TestWebSocketSubprotocolAuth:
    def test_a_bearer_subprotocol_authenticates(self, clients: Clients):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with clients.anonymous.websocket_connect(WATCH, subprotocols=["bearer", ADMIN_TOKEN]):
                pass
        assert denied.value.status_code == 404  # authenticated; only the pipeline is unknown

    @pytest.mark.parametrize(
        "subprotocols",
        [["bearer", "rime_not_a_token"], ["bearer"], [ADMIN_TOKEN], ["chat", "bearer.x"]],
        ids=["bad-token", "no-token", "token-without-bearer", "other-protocols"],
    )
    def test_a_bad_subprotocol_token_is_refused_before_the_upgrade(self, clients: Clients, subprotocols):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with clients.anonymous.websocket_connect(WATCH, subprotocols=subprotocols):
                pass
        assert denied.value.status_code == 401


# Item 7: anonymous traffic, failed-login audit rows, WebSocket connects, uploads -------------------


@pytest.fixture
def limited_app(tmp_path) -> Iterator[Callable[..., FastAPI]]:
    """Makes an app with settings overridden, its lifespan running until the test ends."""
    with ExitStack() as running:

        def make(**overrides) -> FastAPI:
            app = create_app(make_settings(tmp_path, **overrides))
            running.enter_context(TestClient(app, raise_server_exceptions=False))
            return app

        yield make


def client_at(app, address: tuple[str, int], token: str | None = None) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False, client=address)
    if token:
        client.headers["Authorization"] = f"Bearer {token}"
    return client


def denial_status(client: TestClient, url: str, **kwargs) -> int:
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect(url, **kwargs):
            pass
    return denied.value.status_code


class TestAnonymousTraffic:
    def test_anonymous_requests_do_not_spend_the_tenants_quota(self, limited_app):
        app = limited_app(rate_limit_default="10/minute", rate_limit_anonymous="3/minute")
        attacker = client_at(app, ATTACKER)
        codes = [attacker.get("/api/v1/projects").status_code for _ in range(12)]
        assert codes == [401] * 3 + [429] * 9
        assert attacker.get("/api/v1/projects").headers["RateLimit-Limit"] == "3"
        # A token that verifies nothing is no token: the same address, the same quota.
        assert client_at(app, ATTACKER, "rime_made_up").get("/api/v1/users").status_code == 429
        admin = client_at(app, ATTACKER, ADMIN_TOKEN)  # even from the attacker's address
        response = admin.get("/api/v1/projects")
        assert response.status_code == 200 and response.headers["RateLimit-Limit"] == "10"
        assert client_at(app, OTHER).get("/api/v1/projects").status_code == 401  # its own quota

    def test_failed_logins_write_a_bounded_number_of_audit_rows(self, limited_app, caplog):
        app = limited_app(audit_failed_auth_limit="5/minute")
        dropped_before = REGISTRY.get_sample_value("rime_audit_dropped_total") or 0
        attacker = client_at(app, ATTACKER, "rime_made_up")
        with caplog.at_level(logging.WARNING, logger="api_shim.middleware"):
            for _ in range(15):
                assert attacker.post("/api/v1/projects", json={"name": "x"}).status_code == 401
                assert denial_status(attacker, WATCH) == 401
        admin = client_at(app, ("testclient", 50000), ADMIN_TOKEN)

        def entries(**params) -> list[dict]:
            return admin.get("/api/v1/audit-logs", params={"limit": 100, **params}).json()["data"]

        assert len(entries(actor="anonymous")) == 5
        assert REGISTRY.get_sample_value("rime_audit_dropped_total") - dropped_before == 25
        assert any(ATTACKER[0] in r.getMessage() for r in caplog.records), caplog.text
        # Another address's failed login is still recorded,
        assert client_at(app, OTHER).post("/api/v1/projects", json={"name": "x"}).status_code == 401
        assert len(entries(actor="anonymous")) == 6
        # and so is every denied call of an authenticated user, from any address.
        user = admin.post("/api/v1/users", json={"email": "v@example.com", "name": "V", "role": "viewer"}).json()
        token = admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t"}).json()["token"]
        viewer = client_at(app, ATTACKER, token)
        for _ in range(10):
            assert viewer.post("/api/v1/projects", json={"name": "x"}).status_code == 403
        assert len(entries(actor="v@example.com")) == 10

    def test_websocket_connects_are_rate_limited_per_address_and_per_principal(self, limited_app):
        app = limited_app(rate_limit_websocket="3/minute")
        attacker = client_at(app, ATTACKER)
        assert [denial_status(attacker, f"{WATCH}?token=rime_x") for _ in range(5)] == [401] * 3 + [429] * 2
        # Per principal: the admin's connects from two addresses share one quota.
        first, second = client_at(app, OTHER), client_at(app, ("192.0.2.9", 40000))
        assert [denial_status(first, f"{WATCH}?token={ADMIN_TOKEN}") for _ in range(3)] == [404] * 3
        assert denial_status(second, f"{WATCH}?token={ADMIN_TOKEN}") == 429

    @pytest.mark.slow
    def test_an_upload_is_refused_before_its_body_is_read(self, served: Served):
        """Headers that announce 10 MB and a first part: the 401 must come without waiting for the rest."""
        url = urlsplit(served.url)
        head = (
            "POST /api/v1/projects/proj_x/connectors/con_x/files HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n"
        )
        part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.csv"\r\n\r\n' + b"a\n" * 500
        with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
            sock.sendall(head.encode() + part)
            sock.settimeout(3)
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                pytest.fail("the API waited for the upload's body before authenticating")
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]

    def test_malformed_uploads_of_strangers_are_401_and_the_upload_cap_holds(self, clients: Clients, tmp_path):
        url = "/api/v1/projects/proj_x/connectors/con_x/files"
        garbage = {"Content-Type": "multipart/form-data; boundary=b"}
        assert clients.anonymous.post(url, content=b"--b\r\nnot a part", headers=garbage).status_code == 401
        viewer = clients.as_role(Role.viewer)
        assert viewer.post(url, files=[("files", ("a.csv", b"a\n1\n", "text/csv"))]).status_code == 403
        settings = make_settings(tmp_path / "capped", upload_max_request_bytes=1000)
        with TestClient(create_app(settings), raise_server_exceptions=False) as admin:
            admin.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            project = admin.post("/api/v1/projects", json={"name": "uploads"}).json()
            base = f"/api/v1/projects/{project['id']}/connectors"
            connector = admin.post(base, json={"name": "f", "connector_type": "files", "config": {}}).json()
            files = f"{base}/{connector['id']}/files"
            ok = admin.post(files, files=[("files", ("a.csv", b"a\n1\n", "text/csv"))])
            assert ok.status_code == 201, ok.text
            big = admin.post(files, files=[("files", ("b.csv", b"a\n" + b"1\n" * 1000, "text/csv"))])
            assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
