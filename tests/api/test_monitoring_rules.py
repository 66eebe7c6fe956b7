"""Alert rules through the API: conditions validated per field (400) and against the project's own resources
(422), slugs and sensor names, merge updates, the definitions generation, delete resolving open alerts, and
`enabled` read from the Dagster instance's schedule storage (a real instance under the test's DAGSTER_HOME)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest
from dagster import DagsterInstance
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RemoteInstigatorOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, InstigatorType, SensorInstigatorData
from fastapi.testclient import TestClient

from api_shim.main import create_app
from api_shim.services.auth import Role
from rime_dagster.connectors.landing import land_table
from rime_dagster.store.generation import current_generation
from rime_dagster.store.models import AlertRule
from tests.conftest import make_settings, role_clients
from tests.support.monitoring import Monitored, created, fire_alert, monitored_project, stream_events


@pytest.fixture
def watched(clients) -> Monitored:
    return monitored_project(clients.admin)


@pytest.fixture(scope="module")
def unchanged(tmp_path_factory) -> Iterator[tuple[TestClient, Monitored]]:
    """An admin and a watched project shared by the tests whose requests are all refused (nothing to see for the
    next one): an app, its users and the project's resources are made once for them, not once per case."""
    settings = make_settings(tmp_path_factory.mktemp("refused"))
    with role_clients(create_app(settings), settings) as clients:
        yield clients.admin, monitored_project(clients.admin)


def rule_body(condition: dict, name: str = "Orders failed", **extra) -> dict:
    return {"name": name, "severity": "high", "condition": condition, **extra}


def _generation(app) -> int:
    with app.state.sessions() as session:
        return current_generation(session)


class TestCreate:
    def test_every_condition_type(self, admin, watched):
        conditions = [
            {"type": "run_failed"},
            {"type": "run_failed", "pipeline_id": watched.pipeline_id},
            {"type": "run_failed", "connector_id": watched.connector_id},
            {"type": "run_duration_exceeded", "dbt_project_id": watched.dbt_project_id, "max_seconds": 600},
            {"type": "freshness", "table": "shop__orders", "max_age_minutes": 90},
            {"type": "row_count", "table": "shop__orders", "min": 1},
            {"type": "row_count", "table": "shop__orders", "min": 1, "max": 1},
            {"type": "dbt_test_failed"},
            {"type": "dbt_test_failed", "dbt_project_id": watched.dbt_project_id},
        ]
        for i, condition in enumerate(conditions):
            rule = created(admin, f"{watched.base}/alert-rules", rule_body(condition, name=f"rule {i}"))
            assert {k: v for k, v in rule["condition"].items() if v is not None} == condition
        listed = admin.get(f"{watched.base}/alert-rules", params={"limit": 100}).json()["data"]
        assert len(listed) == len(conditions)

    def test_response_names_the_sensor(self, admin, watched, settings):
        body = rule_body({"type": "run_failed", "pipeline_id": watched.pipeline_id}, description="pager")
        rule = created(admin, f"{watched.base}/alert-rules", body)
        assert rule["id"].startswith("rule_")
        assert (rule["slug"], rule["sensor_name"]) == ("orders_failed", "watched__orders_failed__alert")
        assert rule["dagster_url"] == f"{settings.dagster_ui_base}/locations/rime/sensors/watched__orders_failed__alert"
        assert (rule["enabled"], rule["only_final_retry"], rule["description"]) == (True, False, "pager")
        assert rule["channel_ids"] == [] and rule["escalation_policy_id"] is None
        assert admin.get(f"{watched.base}/alert-rules/{rule['id']}").json() == rule

    def test_slug_unique_in_the_project_and_kept_on_rename(self, admin, watched):
        first = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}, name="Orders failed"))
        second = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}, name="orders-FAILED"))
        numeric = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}, name="42"))
        assert (first["slug"], second["slug"], numeric["slug"]) == ("orders_failed", "orders_failed_2", "rule_42")
        renamed = admin.patch(f"{watched.base}/alert-rules/{first['id']}", json={"name": "Anything else"}).json()
        assert (renamed["name"], renamed["slug"], renamed["sensor_name"]) == (
            "Anything else",
            "orders_failed",
            first["sensor_name"],
        )

    def test_name_taken_is_409(self, admin, watched):
        created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        again = admin.post(f"{watched.base}/alert-rules", json=rule_body({"type": "dbt_test_failed"}))
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"

    def test_a_landed_table_counts(self, admin, watched):
        batch = pa.record_batch({"id": [1]})
        catalog = admin.app.state.iceberg.catalog()
        table = (watched.project["namespace"], "published_orders")
        land_table(catalog, table, batch.schema, [batch], mode="full_refresh", cursor_field=None, run_id="t")
        body = rule_body({"type": "freshness", "table": "published_orders", "max_age_minutes": 5})
        assert admin.post(f"{watched.base}/alert-rules", json=body).status_code == 201


INVALID = [
    ({"severity": "urgent"}, "severity"),
    ({"name": ""}, "name"),
    ({"condition": {"type": "cpu_high"}}, "condition"),
    ({"condition": {"pipeline_id": "pipe_x"}}, "condition"),
    ({"condition": {"type": "run_failed", "pipeline_id": "pipe_x", "connector_id": "conn_x"}}, "condition.run_failed"),
    ({"condition": {"type": "run_failed", "table": "x"}}, "condition.run_failed.table"),
    ({"condition": {"type": "run_duration_exceeded"}}, "condition.run_duration_exceeded.max_seconds"),
    ({"condition": {"type": "run_duration_exceeded", "max_seconds": 0}}, "condition.run_duration_exceeded.max_seconds"),
    ({"condition": {"type": "freshness", "table": "t"}}, "condition.freshness.max_age_minutes"),
    ({"condition": {"type": "freshness", "table": "", "max_age_minutes": 5}}, "condition.freshness.table"),
    ({"condition": {"type": "row_count", "table": "t"}}, "condition.row_count"),
    ({"condition": {"type": "row_count", "table": "t", "min": 5, "max": 2}}, "condition.row_count"),
    ({"condition": {"type": "row_count", "table": "t", "min": -1}}, "condition.row_count.min"),
    ({"channel_ids": ["chan_a", "chan_a"]}, "channel_ids"),
    ({"enabled": "sometimes"}, "enabled"),
    ({"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("change", "field"), INVALID, ids=[field for _, field in INVALID])
def test_invalid_body_is_400_naming_the_field(unchanged, change, field):
    admin, watched = unchanged
    body = {**rule_body({"type": "run_failed"}), **change}
    response = admin.post(f"{watched.base}/alert-rules", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [detail["field"] for detail in error["details"]], error


def test_unknown_targets_are_422_naming_the_field(unchanged):
    admin, watched = unchanged
    other_channel = created(
        admin,
        f"/api/v1/projects/{created(admin, '/api/v1/projects', {'name': 'third'})['id']}/notification-channels",
        {"name": "theirs", "type": "webhook", "config": {"url": "https://example.com/hook"}},
    )
    cases = [
        ({"condition": {"type": "run_failed", "pipeline_id": watched.foreign_pipeline_id}}, "condition.pipeline_id"),
        ({"condition": {"type": "run_failed", "connector_id": "conn_nope"}}, "condition.connector_id"),
        ({"condition": {"type": "dbt_test_failed", "dbt_project_id": "dbt_nope"}}, "condition.dbt_project_id"),
        (
            {"condition": {"type": "run_duration_exceeded", "dbt_project_id": "dbt_x", "max_seconds": 5}},
            "condition.dbt_project_id",
        ),
        ({"condition": {"type": "freshness", "table": "shop__customers", "max_age_minutes": 5}}, "condition.table"),
        ({"condition": {"type": "row_count", "table": "orders", "max": 5}}, "condition.table"),
        ({"channel_ids": [other_channel["id"]]}, "channel_ids"),
        ({"escalation_policy_id": "esc_nope"}, "escalation_policy_id"),
    ]
    for change, field in cases:
        response = admin.post(f"{watched.base}/alert-rules", json={**rule_body({"type": "run_failed"}), **change})
        assert response.status_code == 422, (change, response.text)
        error = response.json()["error"]
        assert error["code"] == "unprocessable_entity" and error["details"][0]["field"] == field, (change, error)
    assert admin.get(f"{watched.base}/alert-rules").json()["data"] == []


class TestUpdate:
    def test_condition_is_merged_unless_its_type_changes(self, admin, watched):
        condition = {"type": "run_duration_exceeded", "pipeline_id": watched.pipeline_id, "max_seconds": 60}
        rule = created(admin, f"{watched.base}/alert-rules", rule_body(condition))
        url = f"{watched.base}/alert-rules/{rule['id']}"
        merged = admin.patch(url, json={"condition": {"max_seconds": 120}, "severity": "critical"})
        assert merged.status_code == 200, merged.text
        assert merged.json()["condition"]["pipeline_id"] == watched.pipeline_id
        assert (merged.json()["condition"]["max_seconds"], merged.json()["severity"]) == (120, "critical")
        # null removes a key: now any run of the project
        widened = admin.patch(url, json={"condition": {"pipeline_id": None}}).json()["condition"]
        assert widened["pipeline_id"] is None and widened["max_seconds"] == 120
        replaced = admin.patch(
            url, json={"condition": {"type": "freshness", "table": "shop__orders", "max_age_minutes": 5}}
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["condition"] == {"type": "freshness", "table": "shop__orders", "max_age_minutes": 5}

    def test_invalid_patches(self, admin, watched):
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        url = f"{watched.base}/alert-rules/{rule['id']}"
        cases = [
            ({"condition": {"type": "row_count", "table": "shop__orders"}}, 400, "condition.row_count"),
            ({"condition": {"type": "run_duration_exceeded"}}, 400, "condition.run_duration_exceeded.max_seconds"),
            ({"condition": {"max_seconds": 5}}, 400, "condition.run_failed.max_seconds"),
            ({"condition": {"pipeline_id": watched.foreign_pipeline_id}}, 422, "condition.pipeline_id"),
            ({"condition": None}, 400, "condition"),
            ({"name": None}, 400, "name"),
            ({"enabled": None}, 400, "enabled"),
            ({"channel_ids": ["chan_missing"]}, 422, "channel_ids"),
            ({"escalation_policy_id": "esc_missing"}, 422, "escalation_policy_id"),
        ]
        for body, status, field in cases:
            response = admin.patch(url, json=body)
            assert response.status_code == status, (body, response.text)
            assert field in [d["field"] for d in response.json()["error"]["details"]], (body, response.text)
        assert admin.get(url).json() == rule

    def test_channels_and_policy_are_set_and_cleared(self, admin, watched):
        channel = created(
            admin,
            f"{watched.base}/notification-channels",
            {"name": "hook", "type": "webhook", "config": {"url": "https://example.com/hook"}},
        )
        policy = created(
            admin,
            f"{watched.base}/escalation-policies",
            {"name": "page", "steps": [{"after_minutes": 10, "channel_ids": [channel["id"]]}]},
        )
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        url = f"{watched.base}/alert-rules/{rule['id']}"
        both = admin.patch(url, json={"channel_ids": [channel["id"]], "escalation_policy_id": policy["id"]}).json()
        assert (both["channel_ids"], both["escalation_policy_id"]) == ([channel["id"]], policy["id"])
        cleared = admin.patch(url, json={"channel_ids": [], "escalation_policy_id": None}).json()
        assert (cleared["channel_ids"], cleared["escalation_policy_id"]) == ([], None)

    def test_creating_and_deleting_reload_the_definitions_editing_does_not(self, admin, watched):
        app = admin.app
        before = _generation(app)
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        after_create = _generation(app)
        assert after_create == before + 1
        url = f"{watched.base}/alert-rules/{rule['id']}"
        assert (
            admin.patch(url, json={"name": "renamed", "severity": "low", "only_final_retry": True}).status_code == 200
        )
        assert admin.patch(url, json={"condition": {"pipeline_id": watched.pipeline_id}}).status_code == 200
        assert _generation(app) == after_create
        assert admin.delete(url).status_code == 204
        assert _generation(app) == after_create + 1


def test_delete_resolves_the_rules_open_alerts(admin, watched):
    rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
    kept = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}, name="kept"))
    firing = fire_alert(admin.app, rule["id"], "pipeline:a")
    acknowledged = fire_alert(admin.app, rule["id"], "pipeline:b")
    other = fire_alert(admin.app, kept["id"], "pipeline:a")
    engineer_ack = admin.post(f"{watched.base}/alerts/{acknowledged}/acknowledge")
    assert engineer_ack.status_code == 200
    assert admin.delete(f"{watched.base}/alert-rules/{rule['id']}").status_code == 204
    assert admin.get(f"{watched.base}/alert-rules/{rule['id']}").status_code == 404
    for alert_id in (firing, acknowledged):
        alert = admin.get(f"{watched.base}/alerts/{alert_id}").json()
        assert (alert["status"], alert["resolved_by"], alert["context"]["resolution"]) == (
            "resolved",
            "system",
            "rule deleted",
        )
        assert stream_events(admin.app, alert_id)[-1][0] == "alert_resolved"
    assert admin.get(f"{watched.base}/alerts/{other}").json()["status"] == "firing"


# `enabled` as Dagster says -----------------------------------------------------------------------------------


def _sensor_state(settings, sensor_name: str, status: InstigatorStatus, *, location: str = "rime") -> None:
    """Writes the sensor's state into the instance's schedule storage, as the Dagster UI's toggle does."""
    origin = RemoteInstigatorOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=GrpcServerCodeLocationOrigin(host="localhost", port=4266, location_name=location),
            repository_name="__repository__",
        ),
        instigator_name=sensor_name,
    )
    instance = DagsterInstance.from_config(str(settings.dagster_home_path))
    try:
        state = InstigatorState(origin, InstigatorType.SENSOR, status, SensorInstigatorData(min_interval=5))
        existing = instance.get_instigator_state(origin.get_id(), state.selector_id)
        (instance.update_instigator_state if existing else instance.add_instigator_state)(state)
    finally:
        instance.dispose()


class TestEnabledState:
    def test_a_sensor_stopped_in_dagster_shows_disabled(self, admin, watched, settings):
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        other = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}, name="other"))
        url = f"{watched.base}/alert-rules/{rule['id']}"
        _sensor_state(settings, rule["sensor_name"], InstigatorStatus.STOPPED)
        _sensor_state(settings, other["sensor_name"], InstigatorStatus.STOPPED, location="elsewhere")
        assert admin.get(url).json()["enabled"] is False
        listed = {r["id"]: r["enabled"] for r in admin.get(f"{watched.base}/alert-rules").json()["data"]}
        assert listed == {rule["id"]: False, other["id"]: True}  # another location's sensor of that name is not ours
        _sensor_state(settings, rule["sensor_name"], InstigatorStatus.RUNNING)
        assert admin.get(url).json()["enabled"] is True

    def test_a_rule_created_disabled_and_left_to_its_default(self, admin, watched, settings):
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}, enabled=False))
        assert rule["enabled"] is False
        _sensor_state(settings, rule["sensor_name"], InstigatorStatus.DECLARED_IN_CODE)
        assert admin.get(f"{watched.base}/alert-rules/{rule['id']}").json()["enabled"] is False

    def test_patching_enabled_to_what_dagster_says_needs_no_dagster(self, admin, watched, settings):
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        _sensor_state(settings, rule["sensor_name"], InstigatorStatus.STOPPED)
        response = admin.patch(f"{watched.base}/alert-rules/{rule['id']}", json={"enabled": False, "severity": "low"})
        assert response.status_code == 200, response.text
        assert (response.json()["enabled"], response.json()["severity"]) == (False, "low")
        disabled = admin.post(f"{watched.base}/alert-rules/{rule['id']}/disable")
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False

    def test_dagster_down_changes_nothing(self, admin, watched):
        """The tests' Dagster URL is a closed port: starting or stopping the sensor is a 503, and the rule's row,
        the other fields of the same PATCH included, stays as it was."""
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        url = f"{watched.base}/alert-rules/{rule['id']}"
        response = admin.patch(url, json={"enabled": False, "severity": "low"})
        assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
        assert admin.post(f"{url}/disable").status_code == 503
        assert admin.get(url).json() == rule
        with admin.app.state.sessions() as session:
            row = session.get(AlertRule, rule["id"])
            assert (row.enabled, row.severity) == (True, "high")

    def test_a_new_rule_never_takes_the_sensor_name_of_a_deleted_one_dagster_holds_a_state_for(
        self, admin, watched, settings
    ):
        first = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        _sensor_state(settings, first["sensor_name"], InstigatorStatus.STOPPED)
        assert admin.delete(f"{watched.base}/alert-rules/{first['id']}").status_code == 204
        again = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
        assert (again["slug"], again["enabled"]) == ("orders_failed_2", True)

    def test_an_unreadable_instance_falls_back_to_the_rule(self, admin, watched, settings):
        rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}, enabled=False))
        _sensor_state(settings, rule["sensor_name"], InstigatorStatus.RUNNING)
        dagster = admin.app.state.dagster
        dagster.close()
        (settings.dagster_home_path / "dagster.yaml").write_text("storage: {not: [valid\n")
        assert admin.get(f"{watched.base}/alert-rules/{rule['id']}").json()["enabled"] is False


def test_roles(clients, watched):
    body = rule_body({"type": "run_failed"})
    url = f"{watched.base}/alert-rules"
    assert clients.as_role(Role.auditor).post(url, json=body).status_code == 403
    rule = created(clients.as_role(Role.data_engineer), url, body)
    assert clients.as_role(Role.viewer).get(f"{url}/{rule['id']}").status_code == 200
    assert clients.as_role(Role.viewer).patch(f"{url}/{rule['id']}", json={"severity": "low"}).status_code == 403
    assert clients.as_role(Role.data_engineer).delete(f"{url}/{rule['id']}").status_code == 204
    entries = clients.admin.get(
        f"{watched.base}/audit-logs", params={"resource_type": "alert_rule", "limit": 100}
    ).json()["data"]
    assert {(e["action"], e["status_code"], e["actor"]) for e in entries} == {
        ("alert_rule.create", 403, "auditor@example.com"),
        ("alert_rule.create", 201, "data_engineer@example.com"),
        ("alert_rule.update", 403, "viewer@example.com"),
        ("alert_rule.delete", 204, "data_engineer@example.com"),
    }
    created_entry = next(e for e in entries if e["status_code"] == 201)
    assert created_entry["resource_id"] == rule["id"]


def test_rules_of_another_project_are_not_found(admin, watched):
    rule = created(admin, f"{watched.base}/alert-rules", rule_body({"type": "run_failed"}))
    other = admin.post("/api/v1/projects", json={"name": "nosy"}).json()
    for method in ("GET", "PATCH", "DELETE"):
        kwargs = {"json": {"severity": "low"}} if method == "PATCH" else {}
        response = admin.request(method, f"/api/v1/projects/{other['id']}/alert-rules/{rule['id']}", **kwargs)
        assert response.status_code == 404, response.text
    assert admin.get(f"{watched.base}/alert-rules/{rule['id']}").json() == rule


def test_the_monitoring_endpoints_on_each_store(db_url, tmp_path):
    """SQLite and PostgreSQL: the slug's project lock, JSON channel lists, keyset pages of alerts, the lifecycle."""
    settings = make_settings(tmp_path, database_url=db_url)
    with role_clients(create_app(settings), settings) as clients:
        admin = clients.admin
        watched = monitored_project(admin, "stores")
        hook = created(
            admin,
            f"{watched.base}/notification-channels",
            {"name": "hook", "type": "webhook", "config": {"url": "https://example.com/h", "secret": "s"}},
        )
        policy = created(
            admin,
            f"{watched.base}/escalation-policies",
            {"name": "page", "steps": [{"after_minutes": 5, "channel_ids": [hook["id"]]}]},
        )
        body = rule_body(
            {"type": "run_failed", "pipeline_id": watched.pipeline_id},
            channel_ids=[hook["id"]],
            escalation_policy_id=policy["id"],
        )
        rules = [
            created(admin, f"{watched.base}/alert-rules", {**body, "name": f"Orders failed {i}"}) for i in range(3)
        ]
        assert [r["slug"] for r in rules] == ["orders_failed_0", "orders_failed_1", "orders_failed_2"]
        fired = [fire_alert(clients.app, rules[0]["id"], f"pipeline:{i}") for i in range(3)]
        page = admin.get(f"{watched.base}/alerts", params={"limit": 2, "status": "firing"}).json()
        rest = admin.get(
            f"{watched.base}/alerts", params={"limit": 2, "status": "firing", "cursor": page["next_cursor"]}
        )
        assert sorted(a["id"] for a in page["data"] + rest.json()["data"]) == sorted(fired)
        assert admin.post(f"{watched.base}/alerts/{fired[0]}/acknowledge").json()["status"] == "acknowledged"
        assert admin.post(f"{watched.base}/alerts/{fired[0]}/resolve").json()["status"] == "resolved"
        assert admin.post(f"{watched.base}/alerts/{fired[0]}/resolve").status_code == 409
        assert admin.delete(f"{watched.base}/notification-channels/{hook['id']}").status_code == 409
        assert admin.delete(f"{watched.base}/escalation-policies/{policy['id']}").status_code == 409
        for rule in rules:
            assert admin.delete(f"{watched.base}/alert-rules/{rule['id']}").status_code == 204
        assert admin.get(f"{watched.base}/alerts", params={"status": "firing"}).json()["data"] == []
        assert admin.delete(f"{watched.base}/escalation-policies/{policy['id']}").status_code == 204
        assert admin.delete(f"{watched.base}/notification-channels/{hook['id']}").status_code == 204
