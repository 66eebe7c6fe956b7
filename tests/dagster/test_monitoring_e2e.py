"""Monitoring end to end (issue 13): a pipeline run fails on a real Dagster webserver and daemon; the rule's sensor
fires once for it, the webhook receiver gets the signed message and the SMTP server the email, the alert shows in
the API with its run and on the alert stream, and acknowledging and resolving through the API show on the stream
too."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import pytest

from tests.api.test_alert_stream import listen, receive
from tests.dagster.conftest import Webserver, graphql, running_daemon
from tests.dagster.test_pipeline_runs import wait_for_pipeline_run
from tests.support.receivers import http_receiver, smtp_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.dagster

SECRET = "whsec_e2e_0123456789"
SENSORS_QUERY = """
query ($selector: RepositorySelector!) {
  sensorsOrError(repositorySelector: $selector) { ... on Sensors { results { name sensorState { status } } } }
}
"""


def _sensors(server: Webserver) -> dict[str, str]:
    selector = {"repositoryLocationName": server.settings.dagster_location, "repositoryName": "__repository__"}
    found = graphql(server.settings, SENSORS_QUERY, {"selector": selector})["sensorsOrError"].get("results") or []
    return {s["name"]: s["sensorState"]["status"] for s in found}


def _failing_pipeline(api, pid: str, folder: Path) -> dict:
    folder.mkdir()
    (folder / "orders.csv").write_text("id,amount\n1,2.5\n")
    connector = api.post(
        f"/api/v1/projects/{pid}/connectors",
        json={
            "name": "Inbox",
            "connector_type": "files",
            "config": {"path": str(folder)},
            "selected_tables": ["orders"],
        },
    ).json()
    (folder / "orders.csv").unlink()  # every sync of it fails: its selected table has no file
    steps = [{"id": "sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}}]
    response = api.post(f"/api/v1/projects/{pid}/pipelines", json={"name": "fragile", "steps": steps})
    assert response.status_code == 201, response.text
    return response.json()


def _signed(received, secret: str) -> bool:
    timestamp = received.headers["X-Rime-Timestamp"]
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    expected = f"sha256={digest}"
    return hmac.compare_digest(expected, received.headers.get("X-Rime-Signature", ""))


def test_a_failing_run_reaches_the_webhook_the_api_and_the_stream(api, dagster_webserver: Webserver, tmp_path):
    token = dagster_webserver.settings.admin_token
    # The SMTP server takes plain SMTP: the code server the session started trusts no test CA (STARTTLS with
    # AUTH is proven against aiosmtpd in tests/monitoring/test_notify.py); no password travels here.
    with http_receiver() as receiver, smtp_server(tls=None) as mailbox, running_daemon(dagster_webserver):
        project = api.post("/api/v1/projects", json={"name": "alerting end to end"}).json()
        base = f"/api/v1/projects/{project['id']}"
        pipeline = _failing_pipeline(api, project["id"], tmp_path / "inbox")
        channel = api.post(
            f"{base}/notification-channels",
            json={"name": "on-call hook", "type": "webhook", "config": {"url": receiver.url, "secret": SECRET}},
        )
        assert channel.status_code == 201, channel.text
        email = api.post(
            f"{base}/notification-channels",
            json={
                "name": "on-call mail",
                "type": "email",
                "config": {
                    "host": "127.0.0.1",
                    "port": mailbox.port,
                    "from_address": "rime@example.com",
                    "to": ["oncall@example.com"],
                    "starttls": False,
                },
            },
        )
        assert email.status_code == 201, email.text
        rule = api.post(
            f"{base}/alert-rules",
            json={
                "name": "Fragile failed",
                "severity": "high",
                "condition": {"type": "run_failed", "pipeline_id": pipeline["id"]},
                "channel_ids": [channel.json()["id"], email.json()["id"]],
            },
        )
        assert rule.status_code == 201, rule.text
        rule = rule.json()
        # The rule's sensor shows in Dagster under a readable name, running.
        sensor = f"{project['namespace']}__fragile_failed__alert"
        assert rule["sensor_name"] == sensor
        wait_until(lambda: _sensors(dagster_webserver).get(sensor) == "RUNNING", timeout=120, what=f"sensor {sensor}")

        with listen(api, token) as ws:
            runs = []
            for attempt in (1, 2):
                launched = api.post(f"{base}/pipelines/{pipeline['id']}/run")
                assert launched.status_code == 202, launched.text
                run_id = launched.json()["run_id"]
                run = wait_for_pipeline_run(api, f"{base}/pipelines/{pipeline['id']}", run_id)
                assert run["status"] == "failed"
                runs.append(run_id)
                fired = receive(ws, timeout=90)
                assert fired["type"] == "alert_fired" and fired["alert"]["rule_id"] == rule["id"]
                assert fired["alert"]["run_id"] == run_id
                wait_until(lambda n=attempt: len(receiver.received()) >= n, timeout=60, what="the webhook")
                hook = receiver.received()[attempt - 1]
                assert _signed(hook, SECRET)
                body = hook.json()
                assert body["type"] == "alert_fired" and body["alert"]["id"] == fired["alert"]["id"]
                assert body["alert"]["run_id"] == run_id and body["alert"]["dagster_url"].endswith(
                    run["dagster_run_id"]
                )
                wait_until(lambda n=attempt: len(mailbox.messages) >= n, timeout=60, what="the email")
                mail = mailbox.messages[attempt - 1]
                assert mail["To"] == "oncall@example.com" and mail["Subject"].startswith("[Rime] [HIGH] Alert")
                assert mail["X-Rime-Delivery"] != hook.headers["X-Rime-Delivery"]  # one delivery per channel
                assert run["dagster_run_id"] in mail.get_body(preferencelist=("plain",)).get_content()
                alerts = api.get(f"{base}/alerts", params={"status": "firing"}).json()["data"]
                assert [a["id"] for a in alerts] == [fired["alert"]["id"]]
                assert alerts[0]["run_id"] == run_id and alerts[0]["dagster_url"] == body["alert"]["dagster_url"]
                # Acknowledge, then resolve: each shows on the stream once.
                alert_url = f"{base}/alerts/{fired['alert']['id']}"
                assert api.post(f"{alert_url}/acknowledge").status_code == 200
                assert api.post(f"{alert_url}/acknowledge").status_code == 200  # idempotent: no second event
                acknowledged = receive(ws, timeout=30)
                assert (acknowledged["type"], acknowledged["alert"]["status"]) == ("alert_acknowledged", "acknowledged")
                assert api.post(f"{alert_url}/resolve").status_code == 200
                assert api.post(f"{alert_url}/resolve").status_code == 409
                resolved = receive(ws, timeout=30)
                assert (resolved["type"], resolved["alert"]["status"]) == ("alert_resolved", "resolved")

            # Once per failing run: two failures, two alerts and two webhooks, and nothing more after further
            # evaluations of the sensor.
            time.sleep(2 * dagster_webserver.settings.alert_sensor_interval_seconds + 1)
            assert len(receiver.received()) == 2 and len(mailbox.messages) == 2
            everything = api.get(f"{base}/alerts").json()["data"]
            assert sorted(a["run_id"] for a in everything) == sorted(runs)
