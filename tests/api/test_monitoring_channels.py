"""Notification channels and escalation policies through the API: per-type validation, secrets encrypted and never
returned or logged, merge updates, the host deny-list, delete refusals, and real test messages to a local HTTP
receiver and a local SMTP server (tests/support/receivers.py)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api_shim.main import create_app
from api_shim.services.auth import Role
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.models import NotificationChannel
from tests.conftest import closed_port, make_settings, role_clients
from tests.support.monitoring import created
from tests.support.receivers import http_receiver, make_certificates, smtp_server

SECRET = "whsec-0123456789-do-not-show"
SLACK_TOKEN = "T0000/B0000/XXXXsecretXXXXtoken"
PASSWORD = "smtp-pass-do-not-show"


def webhook(url: str, **extra) -> dict:
    return {"name": extra.pop("name", "hook"), "type": "webhook", "config": {"url": url, **extra}}


def email(host: str = "smtp.example.com", port: int = 587, **extra) -> dict:
    config = {"host": host, "port": port, "from_address": "alerts@example.com", "to": ["oncall@example.com"], **extra}
    return {"name": extra.pop("name", "mail"), "type": "email", "config": config}


def _stored(app, channel_id: str) -> tuple[dict, dict]:
    """The channel's stored config and its decrypted secrets."""
    with app.state.sessions() as session:
        row = session.get(NotificationChannel, channel_id)
        assert row is not None
        secrets = (
            CredentialCipher.from_settings(app.state.settings).decrypt(row.secrets_encrypted)
            if row.secrets_encrypted
            else {}
        )
        return dict(row.config), secrets


@pytest.fixture
def base(admin, project) -> str:
    return f"/api/v1/projects/{project['id']}"


@pytest.fixture(scope="module")
def unchanged(tmp_path_factory) -> Iterator[tuple[TestClient, str]]:
    """An admin and a project's URL shared by the cases whose request is refused (each checks that the project
    still has no channel): one app and its users for all of them instead of one per case."""
    settings = make_settings(tmp_path_factory.mktemp("refused"))
    with role_clients(create_app(settings), settings) as clients:
        yield clients.admin, f"/api/v1/projects/{created(clients.admin, '/api/v1/projects', {'name': 'x'})['id']}"


class TestChannels:
    def test_secrets_are_encrypted_never_returned_nor_logged(self, admin, base, caplog):
        caplog.set_level(logging.DEBUG)
        responses = []
        hook = admin.post(f"{base}/notification-channels", json=webhook("https://example.com/hook", secret=SECRET))
        slack_url = f"https://hooks.slack.com/services/{SLACK_TOKEN}"
        slack = admin.post(
            f"{base}/notification-channels", json={"name": "s", "type": "slack", "config": {"url": slack_url}}
        )
        mail = admin.post(f"{base}/notification-channels", json=email(username="alerts", password=PASSWORD))
        responses += [hook, slack, mail]
        assert [r.status_code for r in responses] == [201, 201, 201], [r.text for r in responses]
        assert hook.json()["config"] == {"url": "https://example.com/hook", "secret_set": True}
        assert slack.json()["config"] == {"url": "https://hooks.slack.com/services/***"}
        assert mail.json()["config"] == {
            "host": "smtp.example.com",
            "port": 587,
            "username": "alerts",
            "from_address": "alerts@example.com",
            "to": ["oncall@example.com"],
            "starttls": True,
            "password_set": True,
        }
        for made in (hook, slack, mail):
            responses.append(admin.get(f"{base}/notification-channels/{made.json()['id']}"))
        responses.append(admin.get(f"{base}/notification-channels"))
        responses.append(admin.patch(f"{base}/notification-channels/{hook.json()['id']}", json={"name": "renamed"}))
        assert [item["config"] for item in responses[-2].json()["data"]] == [
            mail.json()["config"],
            slack.json()["config"],
            hook.json()["config"],
        ]
        for secret in (SECRET, SLACK_TOKEN, "XXXXsecretXXXXtoken", PASSWORD):
            assert all(secret not in r.text for r in responses), secret
            assert secret not in caplog.text
        assert _stored(admin.app, hook.json()["id"]) == ({"url": "https://example.com/hook"}, {"secret": SECRET})
        assert _stored(admin.app, slack.json()["id"]) == (slack.json()["config"], {"url": slack_url})
        assert _stored(admin.app, mail.json()["id"])[1] == {"password": PASSWORD}

    def test_updates_merge_into_the_config_and_its_secrets(self, admin, base):
        hook = created(admin, f"{base}/notification-channels", webhook("https://example.com/a", secret=SECRET))
        url = f"{base}/notification-channels/{hook['id']}"
        moved = admin.patch(url, json={"config": {"url": "https://example.com/b"}})
        assert moved.status_code == 200, moved.text
        assert moved.json()["config"] == {"url": "https://example.com/b", "secret_set": True}
        assert _stored(admin.app, hook["id"])[1] == {"secret": SECRET}
        unsigned = admin.patch(url, json={"config": {"secret": None}}).json()
        assert unsigned["config"] == {"url": "https://example.com/b", "secret_set": False}
        assert _stored(admin.app, hook["id"]) == ({"url": "https://example.com/b"}, {})

        slack_url = f"https://hooks.slack.com/services/{SLACK_TOKEN}"
        slack = created(
            admin, f"{base}/notification-channels", {"name": "s", "type": "slack", "config": {"url": slack_url}}
        )
        renamed = admin.patch(f"{base}/notification-channels/{slack['id']}", json={"name": "team", "config": {}})
        assert renamed.status_code == 200 and renamed.json()["name"] == "team"
        assert _stored(admin.app, slack["id"])[1] == {"url": slack_url}  # not its redacted form

    def test_secrets_the_key_cannot_read_must_be_sent_again(self, admin, base):
        hook = created(admin, f"{base}/notification-channels", webhook("https://example.com/a", secret=SECRET))
        other_key = CredentialCipher("another deployment's secret key").encrypt({"secret": SECRET})
        with admin.app.state.sessions.begin() as session:
            session.get(NotificationChannel, hook["id"]).secrets_encrypted = other_key
        url = f"{base}/notification-channels/{hook['id']}"
        refused = admin.patch(url, json={"config": {"url": "https://example.com/b"}})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"] == [{"field": "config", "message": "Send config.secret again."}]
        assert admin.patch(url, json={"name": "renamed"}).status_code == 200  # the config untouched: no need
        tested = admin.post(f"{url}/test")
        assert tested.status_code == 200 and tested.json()["success"] is False
        assert "RIME_SECRET_KEY" in tested.json()["message"]
        fixed = admin.patch(url, json={"config": {"url": "https://example.com/b", "secret": "fresh"}})
        assert fixed.status_code == 200, fixed.text
        assert _stored(admin.app, hook["id"]) == ({"url": "https://example.com/b"}, {"secret": "fresh"})

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            (webhook("ftp://example.com/x"), "config.url"),
            (webhook("https:///no-host"), "config.url"),
            (webhook("https://example.com:99999/x"), "config.url"),
            (webhook("https://exa mple.com/x"), "config.url"),
            (webhook("https://example.com/x", secret=""), "config.secret"),
            (webhook("https://example.com/x", signing="yes"), "config.signing"),
            ({"name": "x", "type": "webhook", "config": {}}, "config.url"),
            ({"name": "x", "type": "slack", "config": {"url": "hooks.slack.com/services/x"}}, "config.url"),
            (email(port=0), "config.port"),
            (email(port=65536), "config.port"),
            (email(host="smtp example.com"), "config.host"),
            (email(from_address="not-an-address"), "config.from_address"),
            (email(to=[]), "config.to"),
            (email(to=["oncall@example.com", "nobody"]), "config.to.1"),
            (email(starttls="yes"), "config.starttls"),
            ({"name": "x", "type": "pager", "config": {}}, "type"),
            ({"name": "", "type": "slack", "config": {"url": "https://example.com"}}, "name"),
        ],
    )
    def test_invalid_config_is_400_naming_the_field(self, unchanged, body, field):
        admin, base = unchanged
        response = admin.post(f"{base}/notification-channels", json=body)
        assert response.status_code == 400, response.text
        assert field in [detail["field"] for detail in response.json()["error"]["details"]]
        assert admin.get(f"{base}/notification-channels").json()["data"] == []

    def test_invalid_patch_is_400_and_changes_nothing(self, admin, base):
        hook = created(admin, f"{base}/notification-channels", webhook("https://example.com/a", secret=SECRET))
        url = f"{base}/notification-channels/{hook['id']}"
        for body, field in (
            ({"config": {"url": "mailto:x@example.com"}}, "config.url"),
            ({"config": {"url": None}}, "config.url"),
            ({"config": None}, "config"),
            ({"type": "slack"}, "type"),
        ):
            response = admin.patch(url, json=body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["details"][0]["field"] == field
        assert admin.get(url).json() == hook

    def test_name_taken_is_409(self, admin, base):
        created(admin, f"{base}/notification-channels", webhook("https://example.com/a"))
        again = admin.post(f"{base}/notification-channels", json=webhook("https://example.com/b"))
        assert again.status_code == 409
        other = created(admin, f"{base}/notification-channels", webhook("https://example.com/b", name="other"))
        clash = admin.patch(f"{base}/notification-channels/{other['id']}", json={"name": "hook"})
        assert clash.status_code == 409

    def test_delete_refused_while_rules_or_policies_use_it(self, admin, base):
        hook = created(admin, f"{base}/notification-channels", webhook("https://example.com/a"))
        url = f"{base}/notification-channels/{hook['id']}"
        rule = created(
            admin,
            f"{base}/alert-rules",
            {"name": "failures", "severity": "high", "condition": {"type": "run_failed"}, "channel_ids": [hook["id"]]},
        )
        policy = created(
            admin,
            f"{base}/escalation-policies",
            {"name": "page", "steps": [{"after_minutes": 5, "channel_ids": [hook["id"]]}]},
        )
        refused = admin.delete(url)
        assert refused.status_code == 409
        assert "'failures'" in refused.json()["error"]["message"] and "'page'" in refused.json()["error"]["message"]
        assert admin.patch(f"{base}/alert-rules/{rule['id']}", json={"channel_ids": []}).status_code == 200
        refused = admin.delete(url)
        assert refused.status_code == 409 and "'failures'" not in refused.json()["error"]["message"]
        assert admin.delete(f"{base}/escalation-policies/{policy['id']}").status_code == 204
        assert admin.delete(url).status_code == 204
        assert admin.get(url).status_code == 404

    def test_roles(self, clients, base):
        url = f"{base}/notification-channels"
        assert clients.as_role(Role.auditor).post(url, json=webhook("https://example.com/a")).status_code == 403
        hook = created(clients.as_role(Role.data_engineer), url, webhook("https://example.com/a", secret=SECRET))
        assert clients.as_role(Role.viewer).get(f"{url}/{hook['id']}").json() == hook
        assert clients.as_role(Role.viewer).post(f"{url}/{hook['id']}/test").status_code == 403
        assert clients.as_role(Role.auditor).delete(f"{url}/{hook['id']}").status_code == 403
        assert clients.as_role(Role.data_engineer).delete(f"{url}/{hook['id']}").status_code == 204


class TestHostDenyList:
    @pytest.fixture
    def denying(self, tmp_path):
        settings = make_settings(tmp_path, connector_hosts_deny=["127.0.0.0/8", "169.254.0.0/16"])
        with role_clients(create_app(settings), settings) as clients:
            project = created(clients.admin, "/api/v1/projects", {"name": "denied"})
            yield clients.admin, f"/api/v1/projects/{project['id']}/notification-channels"

    def test_denied_hosts_are_400_naming_the_field(self, denying):
        admin, url = denying
        for body, field in (
            (webhook("http://127.0.0.1:8080/hook"), "config.url"),
            (webhook("http://localhost/hook"), "config.url"),
            ({"name": "s", "type": "slack", "config": {"url": "http://169.254.169.254/latest"}}, "config.url"),
            (email(host="127.0.0.1"), "config.host"),
        ):
            response = admin.post(url, json=body)
            assert response.status_code == 400, (body, response.text)
            detail = response.json()["error"]["details"][0]
            assert detail["field"] == field and "RIME_CONNECTOR_HOSTS_DENY" in detail["message"]
        allowed = created(admin, url, webhook("http://192.0.2.10/hook"))  # TEST-NET-1: not denied
        moved = admin.patch(f"{url}/{allowed['id']}", json={"config": {"url": "http://127.0.0.2/x"}})
        assert moved.status_code == 400 and moved.json()["error"]["details"][0]["field"] == "config.url"


class TestSendTest:
    def test_webhook_gets_a_signed_test_message_once_per_idempotency_key(self, admin, base):
        with http_receiver() as receiver:
            hook = created(admin, f"{base}/notification-channels", webhook(receiver.url, secret=SECRET))
            url = f"{base}/notification-channels/{hook['id']}/test"
            first = admin.post(url, headers={"Idempotency-Key": "test-1"})
            assert first.status_code == 200, first.text
            assert first.json()["success"] is True and "HTTP 200" in first.json()["message"]
            repeat = admin.post(url, headers={"Idempotency-Key": "test-1"})
            assert repeat.json() == first.json() and repeat.headers["Idempotent-Replayed"] == "true"
            assert len(receiver.received()) == 1
            request = receiver.received()[0]
            assert request.json()["type"] == "test"
            timestamp = request.headers["X-Rime-Timestamp"]
            expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
            assert request.headers["X-Rime-Signature"] == f"sha256={expected}"
            assert admin.post(url).status_code == 200
            assert len(receiver.received()) == 2
        entries = admin.get(f"{base}/audit-logs", params={"action": "notification_channel.test"}).json()["data"]
        # Every call is audited, the replayed one included.
        assert len(entries) == 3 and {e["resource_id"] for e in entries} == {hook["id"]}

    def test_a_failed_delivery_is_success_false(self, admin, base):
        with http_receiver(statuses=[500]) as receiver:
            hook = created(admin, f"{base}/notification-channels", webhook(receiver.url))
            response = admin.post(f"{base}/notification-channels/{hook['id']}/test")
        assert response.status_code == 200, response.text
        assert response.json()["success"] is False and "500" in response.json()["message"]
        dead = created(admin, f"{base}/notification-channels", webhook(f"http://127.0.0.1:{closed_port()}/x", name="d"))
        response = admin.post(f"{base}/notification-channels/{dead['id']}/test")
        assert response.status_code == 200 and response.json()["success"] is False

    def test_slack_url_stays_secret_in_the_answer(self, admin, base, caplog):
        caplog.set_level(logging.DEBUG)
        # As the API runs it (main.configure_logging): httpx's INFO line names every URL it requests.
        caplog.set_level(logging.WARNING, logger="httpx")
        with http_receiver(path=f"/services/{SLACK_TOKEN}", statuses=[404], answer_body=b"no_service") as receiver:
            slack = created(
                admin, f"{base}/notification-channels", {"name": "s", "type": "slack", "config": {"url": receiver.url}}
            )
            response = admin.post(f"{base}/notification-channels/{slack['id']}/test")
            assert receiver.received()[0].path == f"/services/{SLACK_TOKEN}"
        assert response.status_code == 200 and response.json()["success"] is False
        assert "XXXXsecretXXXXtoken" not in response.text and "XXXXsecretXXXXtoken" not in caplog.text

    def test_email_through_a_local_smtp_server(self, tmp_path):
        certificates = make_certificates(tmp_path / "certs")
        settings = make_settings(tmp_path, alert_ca_file=certificates.ca_file)
        with (
            smtp_server(tls=certificates.server_context(), credentials=("alerts", PASSWORD)) as server,
            role_clients(create_app(settings), settings) as clients,
        ):
            project = created(clients.admin, "/api/v1/projects", {"name": "mail"})
            base = f"/api/v1/projects/{project['id']}/notification-channels"
            body = email(host="localhost", port=server.port, username="alerts", password=PASSWORD)
            mail = created(clients.admin, base, body)
            engineer = clients.as_role(Role.data_engineer)
            response = engineer.post(f"{base}/{mail['id']}/test")
            assert response.status_code == 200 and response.json()["success"] is True, response.text
            assert server.logins == ["alerts"] and server.tls_sessions == 1
            assert server.envelopes == [("alerts@example.com", ["oncall@example.com"])]
            wrong = clients.admin.patch(f"{base}/{mail['id']}", json={"config": {"password": "wrong"}})
            assert wrong.status_code == 200
            failed = engineer.post(f"{base}/{mail['id']}/test")
            assert failed.status_code == 200 and failed.json()["success"] is False
            assert PASSWORD not in failed.text and "wrong" not in failed.json()["message"]


class TestEscalationPolicies:
    @pytest.fixture
    def channels(self, admin, base) -> list[str]:
        return [
            created(admin, f"{base}/notification-channels", webhook(f"https://example.com/{i}", name=f"c{i}"))["id"]
            for i in range(2)
        ]

    def test_crud(self, clients, base, channels):
        lead = clients.as_role(Role.lead_data_engineer)
        steps = [{"after_minutes": 15, "channel_ids": [channels[0]]}, {"after_minutes": 60, "channel_ids": channels}]
        policy = created(lead, f"{base}/escalation-policies", {"name": "page", "steps": steps})
        assert policy["id"].startswith("esc_") and policy["steps"] == steps
        url = f"{base}/escalation-policies/{policy['id']}"
        assert clients.as_role(Role.viewer).get(url).json() == policy
        assert clients.as_role(Role.viewer).get(f"{base}/escalation-policies").json()["data"] == [policy]
        changed = lead.patch(url, json={"name": "wake", "steps": steps[1:]})
        assert changed.status_code == 200 and (changed.json()["name"], changed.json()["steps"]) == ("wake", steps[1:])
        assert lead.patch(url, json={"name": "sleep"}).json()["steps"] == steps[1:]
        assert lead.delete(url).status_code == 204 and lead.get(url).status_code == 404

    def test_writes_need_a_lead(self, clients, base, channels):
        body = {"name": "page", "steps": [{"after_minutes": 5, "channel_ids": channels[:1]}]}
        engineer = clients.as_role(Role.data_engineer)
        assert engineer.post(f"{base}/escalation-policies", json=body).status_code == 403
        policy = created(clients.admin, f"{base}/escalation-policies", body)
        assert engineer.patch(f"{base}/escalation-policies/{policy['id']}", json={"name": "x"}).status_code == 403
        assert engineer.delete(f"{base}/escalation-policies/{policy['id']}").status_code == 403
        entries = clients.admin.get(
            f"{base}/audit-logs", params={"resource_type": "escalation_policy", "limit": 100}
        ).json()["data"]
        assert sorted((e["action"], e["status_code"]) for e in entries) == [
            ("escalation_policy.create", 201),
            ("escalation_policy.create", 403),
            ("escalation_policy.delete", 403),
            ("escalation_policy.update", 403),
        ]

    def test_invalid_steps(self, admin, base, channels):
        one = channels[:1]
        cases = [
            ([], 400, "steps"),
            ([{"after_minutes": 0, "channel_ids": one}], 400, "steps.0.after_minutes"),
            ([{"after_minutes": 5, "channel_ids": []}], 400, "steps.0.channel_ids"),
            ([{"after_minutes": 5}], 400, "steps.0.channel_ids"),
            ([{"after_minutes": 5, "channel_ids": one * 2}], 400, "steps.0.channel_ids"),
            ([{"after_minutes": 5, "channel_ids": one}] * 11, 400, "steps"),
            (
                [{"after_minutes": 5, "channel_ids": one}, {"after_minutes": 9, "channel_ids": one}]
                + [{"after_minutes": 9, "channel_ids": one}],
                400,
                "steps.2.after_minutes",
            ),
            (
                [{"after_minutes": 5, "channel_ids": one}, {"after_minutes": 10, "channel_ids": ["chan_x"]}],
                422,
                "steps.1.channel_ids",
            ),
        ]
        for steps, status, field in cases:
            response = admin.post(f"{base}/escalation-policies", json={"name": "p", "steps": steps})
            assert response.status_code == status, (steps, response.text)
            assert response.json()["error"]["details"][0]["field"] == field, (steps, response.text)
        assert admin.get(f"{base}/escalation-policies").json()["data"] == []

    def test_delete_refused_while_rules_use_it(self, admin, base, channels):
        policy = created(
            admin,
            f"{base}/escalation-policies",
            {"name": "page", "steps": [{"after_minutes": 5, "channel_ids": channels}]},
        )
        rule = created(
            admin,
            f"{base}/alert-rules",
            {
                "name": "failures",
                "severity": "critical",
                "condition": {"type": "run_failed"},
                "escalation_policy_id": policy["id"],
            },
        )
        refused = admin.delete(f"{base}/escalation-policies/{policy['id']}")
        assert refused.status_code == 409 and "'failures'" in refused.json()["error"]["message"]
        assert admin.delete(f"{base}/alert-rules/{rule['id']}").status_code == 204
        assert admin.delete(f"{base}/escalation-policies/{policy['id']}").status_code == 204
