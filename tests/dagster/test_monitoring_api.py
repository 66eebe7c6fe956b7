"""Alert rules' sensors through the API on a real Dagster webserver: PATCH `enabled` (and enable/disable) starts and
stops the rule's sensor with Dagster's own mutations, and a toggle made in Dagster (as its UI makes one) shows in
the API."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api_shim.main import create_app
from tests.dagster.conftest import Webserver, graphql
from tests.support.waiting import wait_until

pytestmark = pytest.mark.dagster

_names = itertools.count()

SENSOR_STATUS = """
query RuleSensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { id sensorState { status } }
  }
}
"""
START = """
mutation Start($selector: SensorSelector!) { startSensor(sensorSelector: $selector) { __typename } }
"""


def _selector(server: Webserver, sensor_name: str) -> dict:
    return {
        "repositoryLocationName": server.settings.dagster_location,
        "repositoryName": "__repository__",
        "sensorName": sensor_name,
    }


def _dagster_status(server: Webserver, sensor_name: str) -> str:
    found = graphql(server.settings, SENSOR_STATUS, {"selector": _selector(server, sensor_name)})["sensorOrError"]
    assert found["__typename"] == "Sensor", found
    return found["sensorState"]["status"]


def _rule(api, base: str, **extra) -> dict:
    body = {"name": f"failures {next(_names)}", "severity": "high", "condition": {"type": "run_failed"}, **extra}
    response = api.post(f"{base}/alert-rules", json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def rules(dagster_webserver: Webserver) -> Iterator[dict[str, tuple[str, dict]]]:
    """Both tests' projects and rules (an enabled one, a disabled one), created in one burst of writes: Dagster
    reloads its definitions once for both instead of once per test. name -> (the project's base URL, the rule)."""
    settings = dagster_webserver.settings
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        api.headers["Authorization"] = f"Bearer {settings.admin_token}"
        made = {}
        for name, extra in (("watch", {}), ("quiet", {"enabled": False})):
            project = api.post("/api/v1/projects", json={"name": f"{name} {next(_names)}"}).json()
            base = f"/api/v1/projects/{project['id']}"
            made[name] = (base, _rule(api, base, **extra))
        yield made


def test_enabled_is_dagsters_sensor_state_both_ways(api, dagster_webserver: Webserver, rules):
    base, rule = rules["watch"]
    url = f"{base}/alert-rules/{rule['id']}"

    # The first change waits for Dagster to serve the definitions that have the new sensor, then stops it.
    stopped = api.patch(url, json={"enabled": False, "severity": "low"})
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["enabled"], stopped.json()["severity"]) == (False, "low")
    assert _dagster_status(dagster_webserver, rule["sensor_name"]) == "STOPPED"
    assert api.get(url).json()["enabled"] is False

    # Started in Dagster, as its UI's toggle does: the API says so, although the rule's row says disabled.
    started = graphql(
        dagster_webserver.settings, START, {"selector": _selector(dagster_webserver, rule["sensor_name"])}
    )
    assert started["startSensor"]["__typename"] == "Sensor", started
    assert api.get(url).json()["enabled"] is True
    listed = {r["id"]: r["enabled"] for r in api.get(f"{base}/alert-rules").json()["data"]}
    assert listed == {rule["id"]: True}

    disabled = api.post(f"{url}/disable")
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False, disabled.text
    assert _dagster_status(dagster_webserver, rule["sensor_name"]) == "STOPPED"
    enabled = api.post(f"{url}/enable")
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True, enabled.text
    assert _dagster_status(dagster_webserver, rule["sensor_name"]) == "RUNNING"


def test_a_rule_created_disabled_has_a_stopped_sensor(api, dagster_webserver: Webserver, rules):
    base, rule = rules["quiet"]
    url = f"{base}/alert-rules/{rule['id']}"
    selector = {"selector": _selector(dagster_webserver, rule["sensor_name"])}
    wait_until(
        lambda: graphql(dagster_webserver.settings, SENSOR_STATUS, selector)["sensorOrError"]["__typename"] == "Sensor",
        timeout=120,
        what="Dagster serving the new rule's sensor",
    )
    assert _dagster_status(dagster_webserver, rule["sensor_name"]) == "STOPPED"  # its default status in code
    assert api.get(url).json()["enabled"] is False
    enabled = api.patch(url, json={"enabled": True})
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True, enabled.text
    assert _dagster_status(dagster_webserver, rule["sensor_name"]) == "RUNNING"
