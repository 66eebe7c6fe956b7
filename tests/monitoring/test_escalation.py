"""Escalation with an injected clock: an alert still firing after a step's delay is queued to that step's
channels, once per step; acknowledging (or resolving) stops it. Then the sensor, sending to a real receiver."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest
from sqlalchemy import select

from rime_dagster.monitoring import alerts
from rime_dagster.monitoring.escalation import escalate_due, escalation_sensor
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.store.models import Alert, AlertDelivery, AlertRule
from rime_dagster.store.session import session_scope
from rime_dagster.store.types import utcnow
from tests.monitoring.rule_support import Store, make_store
from tests.support.receivers import http_receiver


@pytest.fixture
def store(db_url) -> Store:
    return make_store(db_url)


def fire(store: Store, rule_id: str, now, target: str = "pipeline:pipe_orders") -> str:
    with session_scope(store.url) as session:
        alert = alerts.fire(
            session,
            session.get_one(AlertRule, rule_id),
            target=target,
            title="Orders failed",
            message="boom",
            context={},
            now=now,
        )
        assert alert is not None
        return alert.id


def escalate(store: Store, now, tenant_id: str | None = None) -> list[tuple[str, str, str]]:
    with session_scope(store.url) as session:
        return [(d.alert_id, d.channel_id, d.reason) for d in escalate_due(session, now, tenant_id=tenant_id)]


def deliveries(store: Store, alert_id: str) -> list[tuple[str, str]]:
    with session_scope(store.url) as session:
        rows = session.scalars(select(AlertDelivery).where(AlertDelivery.alert_id == alert_id))
        return sorted((d.channel_id, d.reason) for d in rows)


@pytest.fixture
def escalating(store):
    """A rule sending to `first`, whose policy escalates to `second` after 5 min and to `third` after 30."""
    first, second, third = store.add_channel(), store.add_channel(), store.add_channel()
    policy_id = store.add_policy(
        [{"after_minutes": 5, "channel_ids": [second]}, {"after_minutes": 30, "channel_ids": [third]}]
    )
    rule_id = store.add_rule({"type": "run_failed"}, channel_ids=[first], escalation_policy_id=policy_id)
    return rule_id, first, second, third


def test_an_unacknowledged_alert_escalates_once_per_step(store, escalating):
    rule_id, first, second, third = escalating
    fired_at = utcnow()
    alert_id = fire(store, rule_id, fired_at)
    assert deliveries(store, alert_id) == [(first, "fired")]

    assert escalate(store, fired_at + timedelta(minutes=4, seconds=59)) == []
    assert escalate(store, fired_at + timedelta(minutes=5)) == [(alert_id, second, "escalation:1")]
    assert escalate(store, fired_at + timedelta(minutes=6)) == []  # step 1 is sent once
    assert escalate(store, fired_at + timedelta(minutes=29)) == []
    assert escalate(store, fired_at + timedelta(minutes=31)) == [(alert_id, third, "escalation:2")]
    assert escalate(store, fired_at + timedelta(hours=5)) == []  # no step left
    assert deliveries(store, alert_id) == sorted([(first, "fired"), (second, "escalation:1"), (third, "escalation:2")])
    with session_scope(store.url) as session:
        assert session.get_one(Alert, alert_id).escalation_step == 2


def test_overdue_steps_are_all_sent_in_order(store, escalating):
    rule_id, _, second, third = escalating
    fired_at = utcnow()
    alert_id = fire(store, rule_id, fired_at)
    assert escalate(store, fired_at + timedelta(hours=1)) == [
        (alert_id, second, "escalation:1"),
        (alert_id, third, "escalation:2"),
    ]


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_an_acknowledged_or_resolved_alert_does_not_escalate(store, escalating, action):
    rule_id, first, _, _ = escalating
    fired_at = utcnow()
    alert_id = fire(store, rule_id, fired_at)
    with session_scope(store.url) as session:
        alert = session.get_one(Alert, alert_id)
        if action == "acknowledge":
            assert alerts.acknowledge(session, alert, actor="ops@example.com", now=fired_at + timedelta(minutes=1))
        else:
            alerts.resolve(session, alert, actor="ops@example.com", now=fired_at + timedelta(minutes=1))
    assert escalate(store, fired_at + timedelta(hours=1)) == []
    assert deliveries(store, alert_id) == [(first, "fired")]


def test_acknowledging_after_a_step_stops_the_next(store, escalating):
    rule_id, _, second, _ = escalating
    fired_at = utcnow()
    alert_id = fire(store, rule_id, fired_at)
    assert escalate(store, fired_at + timedelta(minutes=5)) == [(alert_id, second, "escalation:1")]
    with session_scope(store.url) as session:
        alerts.acknowledge(session, session.get_one(Alert, alert_id), actor="ops@example.com")
    assert escalate(store, fired_at + timedelta(minutes=31)) == []


def test_a_rule_without_policy_and_other_tenants_do_not_escalate(store, escalating):
    rule_id, _, second, _ = escalating
    plain = store.add_rule({"type": "run_failed"}, name="No policy")
    fired_at = utcnow()
    fire(store, plain, fired_at)
    alert_id = fire(store, rule_id, fired_at)
    assert escalate(store, fired_at + timedelta(minutes=5), tenant_id="another") == []
    assert escalate(store, fired_at + timedelta(minutes=5), tenant_id="default") == [(alert_id, second, "escalation:1")]


def test_the_escalation_sensor_sends_a_due_step_at_once(store):
    with http_receiver() as receiver:
        first, second = store.add_channel(), store.add_channel(receiver.url)
        policy_id = store.add_policy([{"after_minutes": 0, "channel_ids": [second]}])
        rule_id = store.add_rule({"type": "run_failed"}, channel_ids=[first], escalation_policy_id=policy_id)
        context = dg.build_sensor_context(resources={"metadata_store": MetadataStoreResource(database_url=store.url)})
        sensor = escalation_sensor()
        assert sensor(context).skip_message == "nothing to escalate"

        alert_id = fire(store, rule_id, utcnow())
        result = sensor(
            dg.build_sensor_context(resources={"metadata_store": MetadataStoreResource(database_url=store.url)})
        )
        assert result.skip_message.startswith("escalated 1 notifications of 1 alerts")
        [request] = receiver.received()
        body = request.json()
        assert body["alert"]["id"] == alert_id
        assert "escalat" in str(body).lower()
        assert sensor(context).skip_message == "nothing to escalate"
