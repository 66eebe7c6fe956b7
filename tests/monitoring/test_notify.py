"""The senders (rime_dagster/monitoring/notify.py) against real receivers: an HTTP(S) server, a Slack-shaped one,
an SMTP server with STARTTLS and AUTH (aiosmtpd), a dead port and a server that never answers."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

import pytest

from rime_dagster.monitoring.alerts import alert_payload
from rime_dagster.monitoring.notify import (
    DeliveryFailed,
    Notification,
    redact_url,
    send,
    send_test,
    split_channel_config,
)
from rime_dagster.store.session import session_scope
from tests.conftest import closed_port, make_settings
from tests.monitoring.outbox import add_channel, add_project, add_rule, fire
from tests.support.receivers import (
    http_receiver,
    make_certificates,
    silent_server,
    smtp_server,
    trickling_server,
)

SECRET = "whsec_0123456789abcdef"
SLACK_TOKEN_PATH = "/services/T0AAA/B0BBB/xoxbSuperSecretToken42"
SMTP_PASSWORD = "smtp-pa55word-never-shown"


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, alert_delivery_timeout_seconds=2)


@pytest.fixture
def notification(settings):
    with session_scope(settings.metadata_url) as session:
        project = add_project(session)
        rule = add_rule(session, project, [])
        alert = fire(session, rule)
        payload = alert_payload(alert)
        return Notification(
            kind="alert_fired",
            alert=payload,
            project={"id": project.id, "name": project.name},
            rule={"id": rule.id, "name": rule.name},
            delivery_id="dlv_0001",
        )


@pytest.fixture
def certificates(tmp_path):
    return make_certificates(tmp_path / "tls")


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class TestWebhook:
    def test_signed_json_post(self, settings, notification):
        with http_receiver() as receiver:
            outcome = send("webhook", {"url": receiver.url}, {"secret": SECRET}, notification, settings=settings)
        assert outcome == "HTTP 200"
        [request] = receiver.received()
        assert request.path == "/hook"
        assert request.headers["Content-Type"] == "application/json"
        body = request.json()
        assert set(body) == {"type", "alert", "project", "rule", "delivery_id", "sent_at"}
        assert body["type"] == "alert_fired"
        assert body["alert"] == notification.alert
        assert body["project"]["name"] == "Sales analytics"
        assert body["rule"]["name"] == "Orders failed"
        assert body["delivery_id"] == request.headers["X-Rime-Delivery"] == "dlv_0001"
        timestamp = request.headers["X-Rime-Timestamp"]
        assert abs(int(timestamp) - time.time()) < 30
        assert request.headers["X-Rime-Signature"] == expected_signature(SECRET, timestamp, request.body)
        # The signature covers the timestamp: replaying the body with another timestamp does not verify.
        assert request.headers["X-Rime-Signature"] != expected_signature(SECRET, str(int(timestamp) + 1), request.body)

    def test_no_secret_no_signature(self, settings, notification):
        with http_receiver() as receiver:
            send("webhook", {"url": receiver.url}, {}, notification, settings=settings)
        [request] = receiver.received()
        assert "X-Rime-Signature" not in request.headers
        assert request.headers["X-Rime-Timestamp"]

    def test_escalation_says_its_step(self, settings, notification):
        escalated = Notification(**{**notification.__dict__, "kind": "alert_escalated", "escalation_step": 2})
        with http_receiver() as receiver:
            send("webhook", {"url": receiver.url}, {}, escalated, settings=settings)
        body = receiver.received()[0].json()
        assert (body["type"], body["escalation_step"]) == ("alert_escalated", 2)

    def test_redirect_is_not_followed(self, settings, notification):
        with http_receiver() as elsewhere, http_receiver(statuses=[302], location=None) as receiver:
            receiver.location = elsewhere.url
            with pytest.raises(DeliveryFailed, match="HTTP 302 .*redirects are not followed"):
                send("webhook", {"url": receiver.url}, {}, notification, settings=settings)
        assert len(receiver.received()) == 1
        assert elsewhere.received() == []

    def test_error_status_fails_and_quotes_the_answer(self, settings, notification):
        with http_receiver(statuses=[500], answer_body=b"database down") as receiver:
            with pytest.raises(DeliveryFailed) as failure:
                send("webhook", {"url": receiver.url}, {"secret": SECRET}, notification, settings=settings)
        assert (
            str(failure.value)
            == f"HTTP 500 from http://127.0.0.1:{receiver.url.split(':')[2].split('/')[0]}: database down"
        )
        assert SECRET not in str(failure.value)

    def test_dead_port(self, settings, notification):
        port = closed_port()
        started = time.monotonic()
        with pytest.raises(DeliveryFailed, match=f"Could not connect to http://127.0.0.1:{port}"):
            send("webhook", {"url": f"http://127.0.0.1:{port}/hook"}, {}, notification, settings=settings)
        assert time.monotonic() - started < 1.5

    def test_server_that_never_answers_costs_the_timeout(self, tmp_path, notification):
        settings = make_settings(tmp_path, alert_delivery_timeout_seconds=0.5)
        with silent_server() as port:
            started = time.monotonic()
            with pytest.raises(DeliveryFailed, match="did not answer within 0.5 s"):
                send("webhook", {"url": f"http://127.0.0.1:{port}/hook"}, {}, notification, settings=settings)
            elapsed = time.monotonic() - started
        assert 0.45 < elapsed < 2

    @pytest.mark.slow
    def test_a_server_trickling_its_answer_is_cut_off(self, tmp_path, notification):
        """Each byte comes within the timeout, so only the deadline of the whole send (3 timeouts) ends it."""
        settings = make_settings(tmp_path, alert_delivery_timeout_seconds=0.5)
        with trickling_server(b"HTTP/1.1 200 OK\r\nX-Slow: ") as port:
            started = time.monotonic()
            with pytest.raises(DeliveryFailed, match="did not finish answering within 1.5 s"):
                send("webhook", {"url": f"http://127.0.0.1:{port}/hook"}, {}, notification, settings=settings)
            assert 1.4 < time.monotonic() - started < 3

    @pytest.mark.slow
    def test_a_tls_server_trickling_its_answer_is_cut_off(self, tmp_path, notification, certificates):
        settings = make_settings(tmp_path, alert_delivery_timeout_seconds=0.5, alert_ca_file=certificates.ca_file)
        with http_receiver(tls=certificates.server_context(), host_in_url="localhost", trickle=0.1) as receiver:
            started = time.monotonic()
            with pytest.raises(DeliveryFailed, match="did not finish answering within 1.5 s"):
                send("webhook", {"url": receiver.url}, {}, notification, settings=settings)
            assert 1.4 < time.monotonic() - started < 3
        assert len(receiver.received()) == 1

    def test_only_http_urls(self, settings, notification):
        with pytest.raises(DeliveryFailed, match="http:// or https://"):
            send("webhook", {"url": "file:///etc/passwd"}, {}, notification, settings=settings)


class TestHostDenyList:
    def test_denied_address_is_refused_before_connecting(self, tmp_path, notification):
        settings = make_settings(tmp_path, connector_hosts_deny=["127.0.0.0/8"])
        with http_receiver(host_in_url="localhost") as receiver:
            with pytest.raises(DeliveryFailed, match="RIME_CONNECTOR_HOSTS_DENY"):
                send("webhook", {"url": receiver.url}, {}, notification, settings=settings)
            with pytest.raises(DeliveryFailed, match="RIME_CONNECTOR_HOSTS_DENY"):
                send("slack", {}, {"url": receiver.url}, notification, settings=settings)
        assert receiver.received() == []

    def test_denied_smtp_host_is_refused(self, tmp_path, notification):
        settings = make_settings(tmp_path, connector_hosts_deny=["127.0.0.0/8"])
        with smtp_server(tls=None) as server:
            config = {
                "host": "localhost",
                "port": server.port,
                "from_address": "a@x.io",
                "to": ["b@x.io"],
                "starttls": False,
            }
            with pytest.raises(DeliveryFailed, match="RIME_CONNECTOR_HOSTS_DENY"):
                send("email", config, {}, notification, settings=settings)
        assert server.messages == []

    def test_checked_address_is_what_gets_connected_with_the_host_header_kept(self, tmp_path, notification):
        # A deny list that does not cover loopback: the name is resolved and checked by Rime, and the
        # connection goes to that address; the receiver still sees the URL's host.
        settings = make_settings(tmp_path, connector_hosts_deny=["10.0.0.0/8"])
        with http_receiver(host_in_url="localhost") as receiver:
            assert send("webhook", {"url": receiver.url}, {}, notification, settings=settings) == "HTTP 200"
        [request] = receiver.received()
        assert request.headers["Host"] == receiver.url.split("/")[2]
        assert request.headers["Host"].startswith("localhost:")

    def test_https_to_a_checked_address_verifies_the_certificate_for_the_name(
        self, tmp_path, notification, certificates
    ):
        trusted = make_settings(tmp_path, connector_hosts_deny=["10.0.0.0/8"], alert_ca_file=certificates.ca_file)
        untrusted = make_settings(tmp_path, connector_hosts_deny=["10.0.0.0/8"])
        with http_receiver(tls=certificates.server_context(), host_in_url="localhost") as receiver:
            assert receiver.url.startswith("https://localhost:")
            assert send("webhook", {"url": receiver.url}, {}, notification, settings=trusted) == "HTTP 200"
            with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
                send("webhook", {"url": receiver.url}, {}, notification, settings=untrusted)
        assert len(receiver.received()) == 1


class TestSlack:
    def test_the_url_never_reaches_a_log_line(self, settings, notification, caplog):
        """httpx logs each request's URL at INFO; a Slack URL is a credential (the code location sends it)."""
        caplog.set_level(logging.DEBUG)
        with http_receiver(path=SLACK_TOKEN_PATH) as receiver:
            assert send("slack", {}, {"url": receiver.url}, notification, settings=settings) == "HTTP 200"
        assert caplog.records, "nothing was logged at all: the check would prove nothing"
        assert not [r.getMessage() for r in caplog.records if "xoxbSuperSecretToken42" in r.getMessage()]

    def test_blocks(self, settings, notification):
        with http_receiver(path=SLACK_TOKEN_PATH) as receiver:
            assert send("slack", {}, {"url": receiver.url}, notification, settings=settings) == "HTTP 200"
        payload = receiver.received()[0].json()
        assert payload["text"] == "[HIGH] Alert: Pipeline orders failed (pipeline:pipe_1)"
        header, fields, message, actions = payload["blocks"]
        assert header["type"] == "header"
        assert header["text"]["type"] == "plain_text"
        assert "Pipeline orders failed" in header["text"]["text"]
        texts = [field["text"] for field in fields["fields"]]
        assert "*Severity*\nhigh" in texts
        assert "*Status*\nfiring" in texts
        assert "*Project*\nSales analytics" in texts
        assert "*Rule*\nOrders failed" in texts
        assert message["text"]["text"] == 'Step load_orders failed: relation "orders" does not exist'
        [button] = actions["elements"]
        assert button["type"] == "button"
        assert button["url"] == notification.alert["dagster_url"]
        assert button["url"].endswith("/runs/0f3c2a-1111-2222-3333-444455556666")

    def test_markup_in_alert_text_is_escaped(self, settings, notification):
        alert = {**notification.alert, "title": "<!here> x", "message": "a <b> & <!channel>", "dagster_url": None}
        with http_receiver() as receiver:
            send(
                "slack",
                {},
                {"url": receiver.url},
                Notification(**{**notification.__dict__, "alert": alert}),
                settings=settings,
            )
        payload = receiver.received()[0].json()
        blocks = payload["blocks"]
        assert payload["text"] == "[HIGH] Alert: &lt;!here&gt; x"
        assert blocks[2]["text"]["text"] == "a &lt;b&gt; &amp; &lt;!channel&gt;"
        assert [block["type"] for block in blocks] == ["header", "section", "section"]  # no button without a URL

    def test_failure_never_shows_the_url_token(self, settings, notification):
        with http_receiver(path=SLACK_TOKEN_PATH, statuses=[403], answer_body=b"invalid_token") as receiver:
            with pytest.raises(DeliveryFailed) as failure:
                send("slack", {}, {"url": receiver.url}, notification, settings=settings)
        message = str(failure.value)
        assert message.startswith("HTTP 403 from http://127.0.0.1:") and message.endswith(": invalid_token")
        assert "xoxbSuperSecretToken42" not in message and "/services/" not in message

    def test_a_receiver_echoing_the_url_is_scrubbed(self, settings, notification):
        with http_receiver(path=SLACK_TOKEN_PATH, statuses=[400]) as receiver:
            receiver.answer_body = f"no such hook {SLACK_TOKEN_PATH}".encode()
            with pytest.raises(DeliveryFailed) as failure:
                send("slack", {}, {"url": receiver.url}, notification, settings=settings)
        assert "xoxbSuperSecretToken42" not in str(failure.value)
        assert str(failure.value).endswith("no such hook ***")


class TestEmail:
    def config(self, server, **overrides):
        return {
            "host": "localhost",
            "port": server.port,
            "username": "rime",
            "from_address": "alerts@rime.example",
            "to": ["oncall@example.com", "data@example.com"],
            "starttls": True,
            **overrides,
        }

    def test_starttls_auth_and_both_parts(self, tmp_path, notification, certificates):
        settings = make_settings(tmp_path, alert_ca_file=certificates.ca_file, alert_delivery_timeout_seconds=5)
        with smtp_server(tls=certificates.server_context(), credentials=("rime", SMTP_PASSWORD)) as server:
            outcome = send("email", self.config(server), {"password": SMTP_PASSWORD}, notification, settings=settings)
        assert outcome == "250 OK: accepted for 2 recipients"
        assert server.logins == ["rime"]
        assert server.tls_sessions == 1
        [(mail_from, rcpt_tos)] = server.envelopes
        assert (mail_from, rcpt_tos) == ("alerts@rime.example", ["oncall@example.com", "data@example.com"])
        [message] = server.messages
        assert message["Subject"] == "[Rime] [HIGH] Alert: Pipeline orders failed (pipeline:pipe_1)"
        assert message["X-Rime-Delivery"] == "dlv_0001"
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        assert 'relation "orders" does not exist' in text
        assert notification.alert["dagster_url"] in text
        assert "relation &quot;orders&quot; does not exist" in html
        assert f"href='{notification.alert['dagster_url']}'" in html

    def test_a_title_on_several_lines_is_one_subject_line(self, settings, notification):
        alert = {**notification.alert, "title": "first\r\nBcc: someone@evil.example"}
        with smtp_server(tls=None) as server:
            config = self.config(server, starttls=False, username=None)
            send("email", config, {}, Notification(**{**notification.__dict__, "alert": alert}), settings=settings)
        [message] = server.messages
        assert message["Subject"] == "[Rime] [HIGH] Alert: first Bcc: someone@evil.example"
        assert message["Bcc"] is None
        assert server.envelopes[0][1] == ["oncall@example.com", "data@example.com"]

    @pytest.mark.slow
    def test_a_server_trickling_its_greeting_is_cut_off(self, tmp_path, notification):
        settings = make_settings(tmp_path, alert_delivery_timeout_seconds=0.5)
        with trickling_server(b"220 ") as port:
            config = {"host": "127.0.0.1", "port": port, "from_address": "a@x.io", "to": ["b@x.io"]}
            started = time.monotonic()
            with pytest.raises(DeliveryFailed, match="did not finish within 2 s"):
                send("email", config, {}, notification, settings=settings)
            assert 1.9 < time.monotonic() - started < 3.5

    def test_wrong_password_fails_without_showing_it(self, tmp_path, notification, certificates):
        settings = make_settings(tmp_path, alert_ca_file=certificates.ca_file)
        with smtp_server(tls=certificates.server_context(), credentials=("rime", "the-right-one")) as server:
            with pytest.raises(DeliveryFailed, match="answered 535") as failure:
                send("email", self.config(server), {"password": SMTP_PASSWORD}, notification, settings=settings)
        assert SMTP_PASSWORD not in str(failure.value)
        assert server.messages == []

    def test_untrusted_certificate_fails_before_credentials_are_sent(self, settings, notification, certificates):
        with smtp_server(tls=certificates.server_context(), credentials=("rime", SMTP_PASSWORD)) as server:
            with pytest.raises(
                DeliveryFailed, match="TLS with SMTP server localhost:.* failed.*CERTIFICATE_VERIFY_FAILED"
            ):
                send("email", self.config(server), {"password": SMTP_PASSWORD}, notification, settings=settings)
        assert server.logins == [] and server.messages == []

    def test_server_without_starttls_is_refused(self, settings, notification):
        with smtp_server(tls=None) as server:
            with pytest.raises(DeliveryFailed, match="STARTTLS extension not supported"):
                send("email", self.config(server), {"password": SMTP_PASSWORD}, notification, settings=settings)
        assert server.messages == []

    def test_credentials_are_never_sent_without_tls(self, settings, notification):
        with smtp_server(tls=None) as server:
            with pytest.raises(DeliveryFailed, match="only sent over TLS"):
                send(
                    "email",
                    self.config(server, starttls=False),
                    {"password": SMTP_PASSWORD},
                    notification,
                    settings=settings,
                )
        assert server.messages == []

    def test_plain_relay_without_credentials(self, settings, notification):
        with smtp_server(tls=None) as server:
            config = self.config(server, starttls=False, username=None)
            assert send("email", config, {}, notification, settings=settings) == "250 OK: accepted for 2 recipients"
        assert len(server.messages) == 1

    def test_dead_smtp_port(self, settings, notification):
        port = closed_port()
        config = {"host": "127.0.0.1", "port": port, "from_address": "a@x.io", "to": ["b@x.io"], "starttls": False}
        with pytest.raises(DeliveryFailed, match=f"Could not send through SMTP server 127.0.0.1:{port}"):
            send("email", config, {}, notification, settings=settings)

    def test_silent_smtp_server_costs_the_timeout(self, tmp_path, notification):
        settings = make_settings(tmp_path, alert_delivery_timeout_seconds=0.5)
        with silent_server() as port:
            config = {"host": "127.0.0.1", "port": port, "from_address": "a@x.io", "to": ["b@x.io"]}
            started = time.monotonic()
            with pytest.raises(DeliveryFailed, match="did not answer within 0.5 s"):
                send("email", config, {}, notification, settings=settings)
            assert 0.45 < time.monotonic() - started < 2


class TestChannelConfig:
    @pytest.mark.parametrize(
        ("channel_type", "config", "public", "secrets"),
        [
            (
                "webhook",
                {"url": "https://hooks.example.com/rime", "secret": SECRET},
                {"url": "https://hooks.example.com/rime"},
                {"secret": SECRET},
            ),
            (
                "webhook",
                {"url": "https://hooks.example.com/rime", "secret": None},
                {"url": "https://hooks.example.com/rime"},
                {},
            ),
            (
                "slack",
                {"url": "https://hooks.slack.com" + SLACK_TOKEN_PATH},
                {"url": "https://hooks.slack.com/services/***"},
                {"url": "https://hooks.slack.com" + SLACK_TOKEN_PATH},
            ),
            (
                "email",
                {
                    "host": "smtp.example.com",
                    "port": 587,
                    "username": "rime",
                    "password": SMTP_PASSWORD,
                    "to": ["a@b.c"],
                },
                {"host": "smtp.example.com", "port": 587, "username": "rime", "to": ["a@b.c"]},
                {"password": SMTP_PASSWORD},
            ),
        ],
    )
    def test_split(self, channel_type, config, public, secrets):
        assert split_channel_config(channel_type, config) == (public, secrets)

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("https://hooks.slack.com/services/T0/B0/XYZ", "https://hooks.slack.com/services/***"),
            ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/***"),
            ("https://user:pw@example.com/a/b?token=1", "https://example.com/a/***"),
            ("https://[::1]:9000/a/b", "https://[::1]:9000/a/***"),
            ("not a url at all", "***"),
        ],
    )
    def test_redact_url(self, url, shown):
        assert redact_url(url) == shown


class TestSendTest:
    def test_real_test_message(self, settings):
        with http_receiver() as receiver, session_scope(settings.metadata_url) as session:
            project = add_project(session)
            channel = add_channel(session, settings, project, "webhook", {"url": receiver.url, "secret": SECRET})
            assert send_test(channel, settings=settings) == (True, "Test message delivered (HTTP 200).")
        [request] = receiver.received()
        body = request.json()
        assert body["type"] == "test"
        assert body["alert"] is None and body["rule"] is None and body["delivery_id"] is None
        assert body["project"] == {"id": project.id, "name": "Sales analytics"}
        assert request.headers["X-Rime-Signature"] == expected_signature(
            SECRET, request.headers["X-Rime-Timestamp"], request.body
        )

    def test_slack_test_message(self, settings):
        with http_receiver(path=SLACK_TOKEN_PATH) as receiver, session_scope(settings.metadata_url) as session:
            channel = add_channel(session, settings, add_project(session), "slack", {"url": receiver.url})
            assert SLACK_TOKEN_PATH not in json.dumps(channel.config)
            ok, _ = send_test(channel, settings=settings)
        assert ok
        payload = receiver.received()[0].json()
        assert payload["text"] == "Test notification from Rime (project Sales analytics)"

    def test_failure_is_reported_not_raised(self, settings):
        port = closed_port()
        with session_scope(settings.metadata_url) as session:
            channel = add_channel(
                session, settings, add_project(session), "webhook", {"url": f"http://127.0.0.1:{port}/x"}
            )
            ok, message = send_test(channel, settings=settings)
        assert not ok
        assert message.startswith(f"Could not connect to http://127.0.0.1:{port}")

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"host": "smtp.example.com", "port": "x", "from_address": "a@x.io", "to": ["b@x.io"]}, "port must be"),
            ({"host": "smtp.example.com", "port": 25, "from_address": "a@x.io", "to": []}, "needs host, from_address"),
            (
                {"host": "smtp.example.com", "port": 25, "from_address": "a@x.io", "to": [None]},
                "must be email addresses",
            ),
        ],
    )
    def test_a_broken_email_config_is_reported(self, settings, config, message):
        with session_scope(settings.metadata_url) as session:
            channel = add_channel(session, settings, add_project(session), "email", config)
            ok, said = send_test(channel, settings=settings)
        assert not ok
        assert message in said

    def test_secrets_encrypted_with_another_key(self, tmp_path, settings):
        other = make_settings(tmp_path / "other", secret_key="another-key")
        with session_scope(settings.metadata_url) as session:
            channel = add_channel(
                session, other, add_project(session), "webhook", {"url": "http://127.0.0.1:9/x", "secret": SECRET}
            )
            ok, message = send_test(channel, settings=settings)
        assert not ok
        assert "cannot be decrypted" in message
