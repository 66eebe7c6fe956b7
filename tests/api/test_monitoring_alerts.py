"""Alerts through the API: listing newest first with filters and keyset pages, acknowledge (idempotent) and resolve
(409 once resolved) by role, each writing the alert stream's event, and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from api_shim.main import create_app
from api_shim.services.auth import Role
from tests.conftest import make_settings, role_clients
from tests.support.monitoring import Monitored, created, fire_alert, monitored_project, stream_events

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def watched(clients) -> Monitored:
    return monitored_project(clients.admin)


@pytest.fixture(scope="module")
def unchanged(tmp_path_factory) -> Iterator[tuple[TestClient, Monitored]]:
    """An admin and a watched project shared by the cases that only read (a refused filter): one app, its users
    and the project's resources for all of them instead of one per case."""
    settings = make_settings(tmp_path_factory.mktemp("refused"))
    with role_clients(create_app(settings), settings) as clients:
        yield clients.admin, monitored_project(clients.admin)


def _rule(admin, watched: Monitored, name: str, severity: str) -> str:
    body = {"name": name, "severity": severity, "condition": {"type": "run_failed"}}
    return created(admin, f"{watched.base}/alert-rules", body)["id"]


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [alert["id"] for alert in response.json()["data"]]


class TestListing:
    def test_newest_first_filters_and_pages(self, admin, watched):
        app = admin.app
        high, low = _rule(admin, watched, "high", "high"), _rule(admin, watched, "low", "low")
        fired = [
            fire_alert(app, rule, f"pipeline:{i}", now=T0 + timedelta(minutes=i))
            for i, rule in enumerate([high, low, high, low, high])
        ]
        url = f"{watched.base}/alerts"
        assert admin.post(f"{url}/{fired[0]}/acknowledge").status_code == 200
        assert admin.post(f"{url}/{fired[1]}/resolve").status_code == 200
        newest_first = list(reversed(fired))
        assert _ids(admin.get(url)) == newest_first
        assert _ids(admin.get(url, params={"order": "asc"})) == fired
        assert _ids(admin.get(url, params={"severity": "high"})) == [fired[4], fired[2], fired[0]]
        assert _ids(admin.get(url, params={"status": "firing"})) == [fired[4], fired[3], fired[2]]
        assert _ids(admin.get(url, params={"status": "acknowledged"})) == [fired[0]]
        assert _ids(admin.get(url, params={"status": "resolved", "severity": "low"})) == [fired[1]]
        assert _ids(admin.get(url, params={"rule_id": low})) == [fired[3], fired[1]]
        assert _ids(admin.get(url, params={"rule_id": "rule_none"})) == []

        pages, cursor = [], None
        while True:
            page = admin.get(url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            pages.append([a["id"] for a in page["data"]])
            cursor = page["next_cursor"]
            assert page["has_more"] is (cursor is not None)
            if cursor is None:
                break
        assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]

        first = admin.get(url, params={"limit": 1, "severity": "high"}).json()
        moved = admin.get(url, params={"limit": 1, "severity": "low", "cursor": first["next_cursor"]})
        assert moved.status_code == 400 and moved.json()["error"]["details"][0]["field"] == "cursor"

    @pytest.mark.parametrize(
        ("params", "field"),
        [({"status": "open"}, "status"), ({"severity": "urgent"}, "severity"), ({"limit": 101}, "limit")],
    )
    def test_bad_filters_are_400(self, unchanged, params, field):
        admin, watched = unchanged
        response = admin.get(f"{watched.base}/alerts", params=params)
        assert response.status_code == 400
        assert response.json()["error"]["details"][0]["field"] == field

    def test_an_alert_links_to_its_run(self, admin, watched):
        rule = _rule(admin, watched, "runs", "critical")
        dagster_run_id = "0f3c1a2b-1111-4222-8333-944445555666"
        context = {"dagster_run_id": dagster_run_id, "pipeline_id": watched.pipeline_id}
        alert_id = fire_alert(admin.app, rule, f"pipeline:{watched.pipeline_id}", context=context, now=T0)
        alert = admin.get(f"{watched.base}/alerts/{alert_id}").json()
        assert alert["run_id"] == "run_0f3c1a2b111142228333944445555666"
        assert alert["dagster_url"].endswith(f"/runs/{dagster_run_id}")
        assert alert["context"] == context
        assert (alert["rule_id"], alert["severity"], alert["status"], alert["occurrences"]) == (
            rule,
            "critical",
            "firing",
            1,
        )
        assert alert["fired_at"] == alert["last_seen_at"] == "2026-03-01T12:00:00Z"
        assert alert["acknowledged_at"] is alert["resolved_at"] is None
        assert fire_alert(admin.app, rule, f"pipeline:{watched.pipeline_id}", now=T0 + timedelta(minutes=1)) is None
        again = admin.get(f"{watched.base}/alerts/{alert_id}").json()
        assert (again["occurrences"], again["last_seen_at"]) == (2, "2026-03-01T12:01:00Z")

    def test_another_projects_alert_is_not_found(self, admin, watched):
        alert_id = fire_alert(admin.app, _rule(admin, watched, "mine", "low"), "pipeline:x")
        other = created(admin, "/api/v1/projects", {"name": "nosy"})
        for method, suffix in (("GET", ""), ("POST", "/acknowledge"), ("POST", "/resolve")):
            response = admin.request(method, f"/api/v1/projects/{other['id']}/alerts/{alert_id}{suffix}")
            assert response.status_code == 404, response.text
        assert admin.get(f"{watched.base}/alerts/{alert_id}").json()["status"] == "firing"


class TestAcknowledgeAndResolve:
    def test_acknowledge_is_idempotent_and_resolve_twice_is_409(self, clients, watched):
        engineer, lead = clients.as_role(Role.data_engineer), clients.as_role(Role.lead_data_engineer)
        alert_id = fire_alert(clients.app, _rule(clients.admin, watched, "r", "high"), "pipeline:x")
        url = f"{watched.base}/alerts/{alert_id}"

        acknowledged = engineer.post(f"{url}/acknowledge")
        assert acknowledged.status_code == 200, acknowledged.text
        body = acknowledged.json()
        assert (body["status"], body["acknowledged_by"]) == ("acknowledged", "data_engineer@example.com")
        assert body["acknowledged_at"].endswith("Z")
        again = lead.post(f"{url}/acknowledge")
        assert again.status_code == 200 and again.json() == body  # not acknowledged again, not by the lead

        resolved = lead.post(f"{url}/resolve")
        assert resolved.status_code == 200, resolved.text
        assert (resolved.json()["status"], resolved.json()["resolved_by"]) == (
            "resolved",
            "lead_data_engineer@example.com",
        )
        assert resolved.json()["acknowledged_by"] == "data_engineer@example.com"
        twice = lead.post(f"{url}/resolve")
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "conflict"
        late_ack = engineer.post(f"{url}/acknowledge")
        assert late_ack.status_code == 200 and late_ack.json() == resolved.json()

        events = stream_events(clients.app, alert_id)
        assert [kind for kind, _ in events] == ["alert_fired", "alert_acknowledged", "alert_resolved"]
        assert events[1][1] == body  # the stream's payload is the alert as the API answered it
        assert events[2][1] == resolved.json()

    def test_a_firing_alert_resolves_directly(self, clients, watched):
        alert_id = fire_alert(clients.app, _rule(clients.admin, watched, "r", "high"), "pipeline:x")
        response = clients.as_role(Role.lead_data_engineer).post(f"{watched.base}/alerts/{alert_id}/resolve")
        assert response.status_code == 200 and response.json()["acknowledged_at"] is None
        assert [kind for kind, _ in stream_events(clients.app, alert_id)] == ["alert_fired", "alert_resolved"]

    def test_roles_and_audit(self, clients, watched):
        alert_id = fire_alert(clients.app, _rule(clients.admin, watched, "r", "high"), "pipeline:x")
        url = f"{watched.base}/alerts/{alert_id}"
        assert clients.as_role(Role.viewer).get(url).status_code == 200
        assert clients.as_role(Role.auditor).post(f"{url}/acknowledge").status_code == 403
        assert clients.as_role(Role.data_engineer).post(f"{url}/resolve").status_code == 403
        assert clients.as_role(Role.viewer).get(url).json()["status"] == "firing"
        assert clients.as_role(Role.data_engineer).post(f"{url}/acknowledge").status_code == 200
        assert clients.as_role(Role.lead_data_engineer).post(f"{url}/resolve").status_code == 200
        entries = clients.admin.get(
            f"{watched.base}/audit-logs", params={"resource_type": "alert", "limit": 100}
        ).json()["data"]
        assert sorted((e["action"], e["status_code"], e["actor"], e["resource_id"]) for e in entries) == [
            ("alert.acknowledge", 200, "data_engineer@example.com", alert_id),
            ("alert.acknowledge", 403, "auditor@example.com", alert_id),
            ("alert.resolve", 200, "lead_data_engineer@example.com", alert_id),
            ("alert.resolve", 403, "data_engineer@example.com", alert_id),
        ]
        assert [kind for kind, _ in stream_events(clients.app, alert_id)] == [
            "alert_fired",
            "alert_acknowledged",
            "alert_resolved",
        ]


def test_acknowledge_and_resolve_through_the_api_reach_the_alert_stream(clients, watched):
    """The WebSocket `/api/v1/ws/alerts` (api_shim/alert_stream.py) pushes the API's changes as it answered them."""
    app_client = clients.anonymous  # the entered TestClient: the app's own event loop, as under uvicorn
    auth = {"Authorization": f"Bearer {clients.tokens[Role.lead_data_engineer]}"}
    rule = _rule(clients.admin, watched, "streamed", "critical")
    with app_client.websocket_connect(f"/api/v1/ws/alerts?token={clients.tokens[Role.viewer]}") as stream:
        alert_id = fire_alert(clients.app, rule, "pipeline:x")
        fired = stream.receive_json()
        assert (fired["type"], fired["alert"]["id"], fired["alert"]["status"]) == ("alert_fired", alert_id, "firing")
        url = f"{watched.base}/alerts/{alert_id}"
        acknowledged = app_client.post(f"{url}/acknowledge", headers=auth)
        assert acknowledged.status_code == 200
        assert stream.receive_json() == {"type": "alert_acknowledged", "alert": acknowledged.json()}
        resolved = app_client.post(f"{url}/resolve", headers=auth)
        assert resolved.status_code == 200
        assert stream.receive_json() == {"type": "alert_resolved", "alert": resolved.json()}


def test_an_alerts_detail_lists_its_deliveries_with_attempts_and_outcome(admin, watched):
    """The outbox is visible: per channel, what was sent, how often it was tried and why it failed."""
    from rime_dagster.monitoring.delivery import deliver_due
    from tests.conftest import closed_port

    dead = created(
        admin,
        f"{watched.base}/notification-channels",
        {"name": "dead hook", "type": "webhook", "config": {"url": f"http://127.0.0.1:{closed_port()}/hook"}},
    )["id"]
    rule = created(
        admin,
        f"{watched.base}/alert-rules",
        {"name": "runs", "severity": "high", "condition": {"type": "run_failed"}, "channel_ids": [dead]},
    )["id"]
    alert_id = fire_alert(admin.app, rule, f"pipeline:{watched.pipeline_id}")
    [queued] = admin.get(f"{watched.base}/alerts/{alert_id}").json()["deliveries"]
    assert (queued["channel_id"], queued["reason"], queued["status"], queued["attempts"]) == (
        dead,
        "fired",
        "pending",
        0,
    )
    report = deliver_due(admin.app.state.sessions, settings=admin.app.state.settings, alert_ids=[alert_id])
    assert report.retrying == 1
    [tried] = admin.get(f"{watched.base}/alerts/{alert_id}").json()["deliveries"]
    assert (tried["status"], tried["attempts"], tried["delivered_at"]) == ("pending", 1, None)
    assert tried["last_error"] and tried["next_attempt_at"] > tried["created_at"]
    # The list stays light: deliveries are the detail's.
    assert "deliveries" not in admin.get(f"{watched.base}/alerts").json()["data"][0]
