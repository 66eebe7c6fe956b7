"""The outbox dispatcher (rime_dagster/monitoring/delivery.py) on a migrated store, sending to real receivers:
claims, retries with backoff, giving up, dead channels that do not hold up live ones, concurrent dispatchers,
and the delivery sensor evaluated by Dagster."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from datetime import timedelta

import dagster as dg
import pytest
from sqlalchemy import select, update

from rime_dagster.monitoring import alerts
from rime_dagster.monitoring.delivery import (
    CHANNEL_DELETED,
    DeliveryReport,
    backoff,
    deliver_due,
    delivery_sensor,
    notification_kind,
)
from rime_dagster.monitoring.names import DELIVERY_SENSOR
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import get_settings
from rime_dagster.store.models import AlertDelivery, NotificationChannel
from rime_dagster.store.session import session_factory, session_scope
from rime_dagster.store.types import utcnow
from tests.conftest import closed_port, make_settings, use_settings
from tests.monitoring.outbox import add_channel, add_project, add_rule, fire
from tests.support.receivers import http_receiver, make_certificates, silent_server, smtp_server
from tests.support.waiting import wait_until


@pytest.fixture
def settings(tmp_path):
    return make_settings(
        tmp_path,
        alert_delivery_timeout_seconds=2,
        alert_delivery_backoff_seconds=10,
        alert_delivery_backoff_max_seconds=60,
        alert_delivery_max_attempts=3,
    )


@pytest.fixture
def sessions(settings):
    return session_factory(settings.metadata_url)


def fire_to(settings, channels_config, *, alerts_count=1):
    """A project whose rule sends to one channel per (type, config); fires `alerts_count` alerts. Returns
    (channel ids, alert ids)."""
    with session_scope(settings.metadata_url) as session:
        project = add_project(session)
        channels = [add_channel(session, settings, project, kind, config) for kind, config in channels_config]
        rule = add_rule(session, project, channels)
        fired = [fire(session, rule, target=f"pipeline:p{i}", run=f"{i:06x}") for i in range(alerts_count)]
        return [c.id for c in channels], [a.id for a in fired]


def deliveries(settings, **where):
    with session_scope(settings.metadata_url) as session:
        query = select(AlertDelivery).filter_by(**where).order_by(AlertDelivery.created_at, AlertDelivery.id)
        return list(session.scalars(query))


def by_channel(settings):
    return {d.channel_id: d for d in deliveries(settings)}


class TestSending:
    def test_fired_alert_reaches_every_channel(self, tmp_path):
        """The channels' secrets are decrypted from the store: the webhook signs, Slack's URL is found, the SMTP
        password logs in (over STARTTLS)."""
        certificates = make_certificates(tmp_path / "tls")
        settings = make_settings(tmp_path, alert_ca_file=certificates.ca_file)
        sessions = session_factory(settings.metadata_url)
        with (
            http_receiver() as webhook,
            http_receiver(path="/services/T/B/token") as slack,
            smtp_server(tls=certificates.server_context(), credentials=("rime", "smtp-password")) as smtp,
        ):
            email = {
                "host": "localhost",
                "port": smtp.port,
                "username": "rime",
                "password": "smtp-password",
                "from_address": "a@x.io",
                "to": ["b@x.io"],
            }
            channel_ids, [alert_id] = fire_to(
                settings,
                [
                    ("webhook", {"url": webhook.url, "secret": "s3cret"}),
                    ("slack", {"url": slack.url}),
                    ("email", email),
                ],
            )
            report = deliver_due(sessions, settings=settings)
        assert (report.sent, report.failed, report.retrying, report.waiting) == (3, 0, 0, 0)
        assert report.summary() == "sent 3, 0 waiting"
        rows = by_channel(settings)
        assert set(report.delivered_ids) == {row.id for row in rows.values()}
        for row in rows.values():
            assert (row.status, row.attempts, row.last_error, row.claimed_until) == ("delivered", 1, None, None)
            assert row.delivered_at is not None
        [request] = webhook.received()
        body = request.json()
        assert body["type"] == "alert_fired" and body["alert"]["id"] == alert_id
        assert body["delivery_id"] == request.headers["X-Rime-Delivery"] == rows[channel_ids[0]].id
        timestamp = request.headers["X-Rime-Timestamp"]
        expected = hmac.new(b"s3cret", timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Rime-Signature"] == f"sha256={expected}"
        assert len(slack.received()) == 1
        assert (len(smtp.messages), smtp.logins, smtp.tls_sessions) == (1, ["rime"], 1)
        # Nothing is sent twice: a second pass finds nothing due.
        assert deliver_due(sessions, settings=settings) == DeliveryReport()
        assert len(webhook.received()) == 1

    def test_only_the_given_alerts(self, settings, sessions):
        with http_receiver() as webhook:
            _, alert_ids = fire_to(settings, [("webhook", {"url": webhook.url})], alerts_count=3)
            report = deliver_due(sessions, settings=settings, alert_ids=alert_ids[:1])
            assert (report.sent, report.waiting) == (1, 0)
            assert [r.json()["alert"]["id"] for r in webhook.received()] == alert_ids[:1]
            assert deliver_due(sessions, settings=settings, alert_ids=[]) == DeliveryReport()
            assert deliver_due(sessions, settings=settings).sent == 2
        assert sorted(r.json()["alert"]["id"] for r in webhook.received()) == sorted(alert_ids)

    def test_escalation_and_acknowledgement_kinds(self, settings, sessions):
        with http_receiver() as webhook:
            [channel_id], [alert_id] = fire_to(settings, [("webhook", {"url": webhook.url})])
            with session_scope(settings.metadata_url) as session:
                alert = session.get(alerts.Alert, alert_id)
                alerts.queue_deliveries(session, alert, [channel_id], "escalation:2")
                alerts.queue_deliveries(session, alert, [channel_id], "acknowledged")
            deliver_due(sessions, settings=settings)
        kinds = sorted((r.json()["type"], r.json().get("escalation_step")) for r in webhook.received())
        assert kinds == [("alert_acknowledged", None), ("alert_escalated", 2), ("alert_fired", None)]

    @pytest.mark.parametrize(
        ("reason", "kind"),
        [
            ("fired", ("alert_fired", None)),
            ("escalation:1", ("alert_escalated", 1)),
            ("escalation:12", ("alert_escalated", 12)),
            ("acknowledged", ("alert_acknowledged", None)),
            ("resolved", ("alert_resolved", None)),
        ],
    )
    def test_notification_kind(self, reason, kind):
        assert notification_kind(reason) == kind


class TestDeadChannels:
    @pytest.mark.slow
    def test_dead_channels_do_not_delay_the_live_one(self, settings, sessions):
        """A refused port and a server that never answers (2 s timeout) beside a live receiver: the live
        delivery is received and recorded well before the hanging one times out."""
        with http_receiver() as live, silent_server() as hanging_port:
            dead_url, hanging_url = f"http://127.0.0.1:{closed_port()}/x", f"http://127.0.0.1:{hanging_port}/x"
            channel_ids, _ = fire_to(
                settings,
                [("webhook", {"url": hanging_url}), ("webhook", {"url": dead_url}), ("webhook", {"url": live.url})],
            )
            hanging_id, dead_id, live_id = channel_ids
            recorded: dict[str, float] = {}

            def watch():
                def live_delivered():
                    return by_channel(settings)[live_id].status == "delivered"

                wait_until(live_delivered, timeout=10, what="the live delivery's outcome")
                recorded["live"] = time.monotonic()

            watcher = threading.Thread(target=watch)
            started = time.monotonic()
            watcher.start()
            report = deliver_due(sessions, settings=settings)
            finished = time.monotonic()
            watcher.join()
        assert live.received()[0].at - started < 0.8
        assert recorded["live"] - started < 1.0  # written at once, not after the hanging channel's 2 s
        assert 1.9 < finished - started < 3.5  # the pass itself takes the one timeout, not the sum
        assert (report.sent, report.retrying) == (1, 2)
        rows = by_channel(settings)
        assert rows[hanging_id].last_error.endswith("did not answer within 2 s.")
        assert rows[dead_id].last_error.startswith("Could not connect to http://127.0.0.1:")


class TestRetries:
    def test_backoff_then_success(self, settings, sessions):
        with http_receiver(statuses=[500, 503, 200], answer_body=b"busy") as webhook:
            fire_to(settings, [("webhook", {"url": webhook.url})])
            t0 = utcnow()
            first = deliver_due(sessions, settings=settings, now=t0)
            assert (first.sent, first.retrying, first.waiting) == (0, 1, 1)
            assert first.summary() == "sent 0, 1 to retry, 1 waiting"
            [row] = deliveries(settings)
            assert (row.status, row.attempts, row.claimed_until) == ("pending", 1, None)
            assert row.last_error.startswith("HTTP 500 from http://127.0.0.1:") and row.last_error.endswith(": busy")
            assert t0 + timedelta(seconds=5) <= row.next_attempt_at <= t0 + timedelta(seconds=10)

            # Not due yet: nothing is sent.
            assert deliver_due(sessions, settings=settings, now=row.next_attempt_at - timedelta(seconds=1)).waiting == 1
            assert len(webhook.received()) == 1

            second_at = row.next_attempt_at
            deliver_due(sessions, settings=settings, now=second_at)
            [row] = deliveries(settings)
            assert (row.status, row.attempts) == ("pending", 2)
            assert row.last_error.startswith("HTTP 503")
            assert second_at + timedelta(seconds=10) <= row.next_attempt_at <= second_at + timedelta(seconds=20)

            third = deliver_due(sessions, settings=settings, now=row.next_attempt_at)
        assert (third.sent, third.waiting) == (1, 0)
        [row] = deliveries(settings)
        assert (row.status, row.attempts, row.last_error) == ("delivered", 3, None)
        assert len(webhook.received()) == 3
        assert len({r.headers["X-Rime-Delivery"] for r in webhook.received()}) == 1  # one id on every attempt

    def test_gives_up_after_max_attempts(self, settings, sessions):
        with http_receiver(statuses=[500]) as webhook:
            fire_to(settings, [("webhook", {"url": webhook.url})])
            clock = utcnow()
            reports = []
            for _ in range(5):
                reports.append(deliver_due(sessions, settings=settings, now=clock))
                clock += timedelta(hours=1)
        assert [(r.sent, r.failed, r.retrying) for r in reports] == [
            (0, 0, 1),
            (0, 0, 1),
            (0, 1, 0),
            (0, 0, 0),
            (0, 0, 0),
        ]
        assert reports[2].summary() == "sent 0, 1 failed, 0 waiting"
        [row] = deliveries(settings)
        assert (row.status, row.attempts) == ("failed", 3)
        assert row.last_error.startswith("HTTP 500")
        assert len(webhook.received()) == 3

    def test_backoff_is_capped_and_jittered(self, settings):
        delays = [backoff(attempts, settings).total_seconds() for attempts in range(1, 12)]
        for attempts, delay in enumerate(delays, start=1):
            full = min(60, 10 * 2 ** (attempts - 1))
            assert full / 2 <= delay <= full
        assert len({backoff(1, settings) for _ in range(20)}) > 1

    def test_deleted_channel_fails_at_once_with_a_clear_error(self, settings, sessions):
        with http_receiver() as webhook:
            [channel_id], _ = fire_to(settings, [("webhook", {"url": webhook.url})])
            with session_scope(settings.metadata_url) as session:
                session.delete(session.get(NotificationChannel, channel_id))
            report = deliver_due(sessions, settings=settings)
        assert (report.failed, report.retrying) == (1, 0)
        [row] = deliveries(settings)
        assert (row.status, row.attempts, row.last_error) == ("failed", 1, CHANNEL_DELETED)
        assert webhook.received() == []

    def test_unreadable_secrets_count_as_a_failed_attempt(self, tmp_path, settings, sessions):
        other = make_settings(tmp_path / "other", secret_key="another-key")
        with session_scope(settings.metadata_url) as session:
            project = add_project(session)
            channel = add_channel(session, other, project, "webhook", {"url": "http://127.0.0.1:9/x", "secret": "s"})
            fire(session, add_rule(session, project, [channel]))
        report = deliver_due(sessions, settings=settings)
        assert report.retrying == 1
        [row] = deliveries(settings)
        assert "cannot be decrypted" in row.last_error

    def test_denied_host_is_recorded(self, tmp_path):
        settings = make_settings(tmp_path, connector_hosts_deny=["127.0.0.0/8"], alert_delivery_max_attempts=1)
        with http_receiver() as webhook:
            fire_to(settings, [("webhook", {"url": webhook.url})])
            report = deliver_due(session_factory(settings.metadata_url), settings=settings)
        assert report.failed == 1
        [row] = deliveries(settings)
        assert "RIME_CONNECTOR_HOSTS_DENY" in row.last_error
        assert webhook.received() == []


class TestClaims:
    @pytest.mark.slow
    def test_a_pass_past_its_budget_leaves_the_rest_for_the_next(self, settings, sessions):
        with http_receiver() as live, silent_server() as hanging_port:
            # Queued in this order (delivery ids are time-ordered): the hanging channel's row is sent first.
            hanging_id, live_id = fire_to(
                settings, [("webhook", {"url": f"http://127.0.0.1:{hanging_port}/x"}), ("webhook", {"url": live.url})]
            )[0]
            report = deliver_due(sessions, settings=settings, max_workers=1, budget_seconds=0.5)
            assert (report.sent, report.retrying, report.waiting) == (0, 1, 2)
            rows = by_channel(settings)
            assert (rows[live_id].attempts, rows[live_id].claimed_until, rows[live_id].status) == (0, None, "pending")
            assert live.received() == []
            assert deliver_due(sessions, settings=settings).sent == 1
        assert len(live.received()) == 1

    def test_an_outcome_is_not_written_over_a_claim_taken_meanwhile(self, settings, sessions):
        """A send outlived its claim and another dispatcher claimed the row: the late outcome is dropped (the
        other dispatcher's own outcome counts)."""
        with http_receiver(delay=0.5) as webhook:
            fire_to(settings, [("webhook", {"url": webhook.url})])
            passing = threading.Thread(target=deliver_due, args=(sessions,), kwargs={"settings": settings})
            passing.start()
            wait_until(webhook.received, timeout=10, what="the request")
            other_claim = utcnow() + timedelta(minutes=5)
            with session_scope(settings.metadata_url) as session:
                session.execute(update(AlertDelivery).values(claimed_until=other_claim))
            passing.join()
        [row] = deliveries(settings)
        assert (row.status, row.attempts, row.claimed_until) == (
            "pending",
            0,
            other_claim.replace(tzinfo=row.claimed_until.tzinfo),
        )

    def test_a_row_claimed_by_another_dispatcher_is_left_alone_until_its_claim_expires(self, settings, sessions):
        with http_receiver() as webhook:
            fire_to(settings, [("webhook", {"url": webhook.url})])
            now = utcnow()
            with session_scope(settings.metadata_url) as session:
                session.execute(update(AlertDelivery).values(claimed_until=now + timedelta(minutes=1)))
            assert deliver_due(sessions, settings=settings, now=now) == DeliveryReport(waiting=1)
            assert webhook.received() == []
            # The other dispatcher died mid-send: once its claim expires the row is sent.
            assert deliver_due(sessions, settings=settings, now=now + timedelta(minutes=2)).sent == 1
        assert len(webhook.received()) == 1

    @pytest.mark.slow
    def test_concurrent_dispatchers_send_each_row_once(self, db_url, tmp_path):
        settings = make_settings(tmp_path, database_url=db_url, alert_delivery_timeout_seconds=5)
        sessions = session_factory(db_url)
        with http_receiver(delay=0.05) as webhook:
            _, alert_ids = fire_to(settings, [("webhook", {"url": webhook.url})], alerts_count=12)
            barrier = threading.Barrier(3)
            reports: list[DeliveryReport] = []

            def dispatch(**options):
                barrier.wait()
                reports.append(deliver_due(sessions, settings=settings, max_workers=4, **options))

            threads = [
                threading.Thread(target=dispatch),
                threading.Thread(target=dispatch),
                threading.Thread(target=dispatch, kwargs={"alert_ids": alert_ids[:6]}),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        ids = [r.headers["X-Rime-Delivery"] for r in webhook.received()]
        assert len(ids) == len(set(ids)) == 12
        assert sum(r.sent for r in reports) == 12
        assert {d.status for d in deliveries(settings)} == {"delivered"}


class TestSensor:
    @pytest.mark.slow
    def test_delivery_sensor_sends_what_is_due(self, settings, monkeypatch):
        use_settings(monkeypatch, settings)
        monkeypatch.setenv("RIME_ALERT_DELIVERY_TIMEOUT_SECONDS", "2")
        get_settings.cache_clear()
        try:
            sensor = delivery_sensor()
            assert sensor.name == DELIVERY_SENSOR == "rime_alert_notifications"
            assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
            assert sensor.minimum_interval_seconds == get_settings().alert_sensor_interval_seconds
            with http_receiver() as webhook, http_receiver(statuses=[500]) as failing:
                fire_to(settings, [("webhook", {"url": webhook.url}), ("webhook", {"url": failing.url})])
                with dg.DagsterInstance.ephemeral() as instance:
                    context = dg.build_sensor_context(
                        instance=instance,
                        resources={"metadata_store": MetadataStoreResource(database_url=settings.metadata_url)},
                    )
                    result = sensor(context)
        finally:
            get_settings.cache_clear()
        assert isinstance(result, dg.SkipReason)
        assert result.skip_message == "sent 1, 1 to retry, 1 waiting"
        assert len(webhook.received()) == 1 and len(failing.received()) == 1
