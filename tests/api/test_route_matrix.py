"""Every /api/v1 route, generated from the app's route table: authorized, unauthenticated, forbidden.

A new route fails `test_every_route_has_a_case` until it gets an entry in CASES, so no
endpoint can ship without its auth tests.

The resources the cases point at are made once per module (an app, a store, a project with a connector, an
uploaded file, an Iceberg table, a parsed dbt project and a pipeline). Cases that delete make their own object to
delete, so no case changes what a later one sees.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from api_shim.deps import RequireRole
from api_shim.main import create_app
from api_shim.services.auth import Role
from rime_dagster.settings import Settings
from tests.conftest import Clients, closed_port, make_settings, role_clients

pytestmark = pytest.mark.slow  # its set-up parses a dbt project

_counter = itertools.count()


def api_routes() -> list[APIRoute]:
    app = create_app(Settings(home=Path(tempfile.mkdtemp()), secret_key="collect"))
    routes = [context.route for context in iter_route_contexts(app.routes)]
    found = [r for r in routes if isinstance(r, APIRoute) and r.path.startswith("/api/v1")]
    assert len(found) >= 15, "route discovery found too few routes"
    return found


def required_role(route: APIRoute) -> Role | None:
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if isinstance(dependant.call, RequireRole):
            return dependant.call.role
        stack.extend(dependant.dependencies)
    return None


# Routes guarded by ownership rather than a role: a user manages their own tokens, an admin everybody's.
SELF_SERVICE = {
    ("GET", "/api/v1/users/{userId}/tokens"),
    ("POST", "/api/v1/users/{userId}/tokens"),
    ("DELETE", "/api/v1/users/{userId}/tokens/{tokenId}"),
}


@dataclass
class Ctx:
    """Resources the cases point at, created by the admin once for the module."""

    project_id: str
    connector_id: str
    dbt_project_id: str
    pipeline_id: str
    spare_user_id: str
    user_ids: dict[Role, str]
    admin_token_ids: dict[str, str]
    clients: Clients
    dbt_template: Path
    rule_id: str = ""
    channel_id: str = ""
    policy_id: str = ""
    alert_id: str = ""
    masking_policy_id: str = ""
    classification_id: str = ""
    resource_id: str = ""

    def created(self, url: str, body: dict) -> str:
        response = self.clients.admin.post(url, json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def own_token(self, role: Role) -> str:
        """A fresh token of `role`'s own user, for the revoke case."""
        return self.created(f"/api/v1/users/{self.user_ids[role]}/tokens", {"name": "spare"})

    # An object of its own for each delete case.
    def spare_project(self) -> str:
        return self.created("/api/v1/projects", {"name": unique("doomed")})

    def spare_connector(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/connectors"
        return self.created(url, {"name": unique("doomed"), "connector_type": "files", "config": {}})

    def spare_dbt_project(self) -> str:
        return _register_parsed_dbt_project(self.clients, self.project_id, self.dbt_template, unique("doomed"))

    def spare_pipeline(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/pipelines"
        return self.created(url, {"name": unique("doomed"), "steps": sync_step(self)})

    def spare_in(self, environment: str) -> str:
        """A pipeline of its own whose version 1 runs in `environment`: promoted by the admin, each approval given
        by the lead (approvals need a lead other than the requester)."""
        pipeline_id = self.spare_pipeline()
        url = f"/api/v1/projects/{self.project_id}/pipelines/{pipeline_id}/versions/1/promote"
        for step in ("qa", "uat", "production"):
            if step == "qa":
                assert self.clients.admin.post(url).status_code == 200
            else:
                request_id = self.clients.admin.post(url).json()["approval_request_id"]
                approve = f"/api/v1/projects/{self.project_id}/approvals/{request_id}/approve"
                assert self.clients.as_role(Role.lead_data_engineer).post(approve, json={}).status_code == 200
            if step == environment:
                return pipeline_id
        raise ValueError(environment)

    def pending_request(self) -> str:
        """An approval request of a pipeline of its own (qa -> uat), requested by the admin."""
        pipeline_id = self.spare_in("qa")
        url = f"/api/v1/projects/{self.project_id}/pipelines/{pipeline_id}/versions/1/promote"
        response = self.clients.admin.post(url)
        assert response.status_code == 202, response.text
        return response.json()["approval_request_id"]

    def spare_user(self) -> str:
        body = {"email": f"{unique('doomed')}@example.com", "name": "D", "role": "viewer"}
        return self.created("/api/v1/users", body)

    def spare_rule(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/alert-rules"
        return self.created(url, {"name": unique("doomed"), "severity": "low", "condition": {"type": "run_failed"}})

    def spare_channel(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/notification-channels"
        return self.created(url, {"name": unique("doomed"), "type": "webhook", "config": {"url": DEAD_HOOK}})

    def spare_policy(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/escalation-policies"
        steps = [{"after_minutes": 5, "channel_ids": [self.channel_id]}]
        return self.created(url, {"name": unique("doomed"), "steps": steps})

    def spare_classification(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/classifications"
        return self.created(url, {"name": unique("doomed"), "sensitivity": "internal", "rules": []})

    def spare_masking_policy(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/masking-policies"
        body = {"name": unique("doomed"), "columns": [{"table": "matrix__seed", "column": "name"}], "strategy": "hash"}
        return self.created(url, body)

    def fresh_plan(self) -> str:
        response = self.clients.admin.post(f"/api/v1/projects/{self.project_id}/infrastructure/plan")
        assert response.status_code == 201, response.text
        return response.json()["plan_id"]

    def spare_resource(self) -> str:
        url = f"/api/v1/projects/{self.project_id}/infrastructure"
        return self.created(url, {"resource_type": "iceberg_namespace", "name": unique("doomed").replace("-", "_")})

    def spare_alert(self) -> str:
        """A firing alert of the module's rule, raised as its sensor raises one."""
        from rime_dagster.monitoring import alerts
        from rime_dagster.store.models import AlertRule

        with self.clients.app.state.sessions.begin() as session:
            rule = session.get(AlertRule, self.rule_id)
            alert = alerts.fire(session, rule, target=unique("pipeline"), title="failed", message="m", context={})
            assert alert is not None
            return alert.id


Case = Callable[[Ctx, Role], dict]


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


CONN = "/api/v1/projects/{id}/connectors"
DBT = "/api/v1/projects/{id}/dbt-projects"
PIPE = "/api/v1/projects/{id}/pipelines"
NO_RUN = "run_" + "0" * 32  # well-formed, but no such run: past auth, these routes answer 404
TINY_DBT = Path(__file__).resolve().parents[1] / "fixtures" / "dbt" / "tiny"


RULES = "/api/v1/projects/{id}/alert-rules"
ALERTS = "/api/v1/projects/{id}/alerts"
CHANNELS = "/api/v1/projects/{id}/notification-channels"
POLICIES = "/api/v1/projects/{id}/escalation-policies"
CLASSIFICATIONS = "/api/v1/projects/{id}/classifications"
MASKING = "/api/v1/projects/{id}/masking-policies"
INFRA = "/api/v1/projects/{id}/infrastructure"
DEAD_HOOK = f"http://127.0.0.1:{closed_port()}/hook"  # a channel test to it answers success: false


def monitoring_url(c: Ctx, kind: str, object_id: str = "", suffix: str = "") -> str:
    return f"/api/v1/projects/{c.project_id}/{kind}" + (f"/{object_id}" if object_id else "") + suffix


def conn_url(c: Ctx, suffix: str = "") -> str:
    return f"/api/v1/projects/{c.project_id}/connectors/{c.connector_id}{suffix}"


def pipe_url(c: Ctx, suffix: str = "") -> str:
    return f"/api/v1/projects/{c.project_id}/pipelines/{c.pipeline_id}{suffix}"


APPROVALS = "/api/v1/projects/{id}/approvals"


def approval_url(c: Ctx, suffix: str = "") -> str:
    """A pending approval request of its own (approving or rejecting one decides it)."""
    return f"/api/v1/projects/{c.project_id}/approvals/{c.pending_request()}{suffix}"


def sync_step(c: Ctx) -> list[dict]:
    return [{"id": "sync", "type": "connector_sync", "config": {"connector_id": c.connector_id}}]


TABLE = "/api/v1/projects/{id}/tables/{table}"


def table_url(c: Ctx, suffix: str) -> str:
    return f"/api/v1/projects/{c.project_id}/tables/matrix__seed{suffix}"


RETENTION_POLICY = {"schedule": "0 3 * * *", "retain_last": 3}


def retention_url(c: Ctx) -> str:
    """matrix__seed's retention policy, put (again) so that a get or delete finds one."""
    url = table_url(c, "/retention")
    assert c.clients.admin.put(url, json=RETENTION_POLICY).status_code in (200, 201)
    return url


def dbt_url(c: Ctx, suffix: str = "") -> str:
    return f"/api/v1/projects/{c.project_id}/dbt-projects/{c.dbt_project_id}{suffix}"


CASES: dict[tuple[str, str], Case] = {
    ("GET", CONN): lambda c, r: {"url": f"/api/v1/projects/{c.project_id}/connectors"},
    ("POST", CONN): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/connectors",
        "json": {"name": unique("c"), "connector_type": "files", "config": {}},
    },
    ("GET", CONN + "/{connectorId}"): lambda c, r: {"url": conn_url(c)},
    ("PATCH", CONN + "/{connectorId}"): lambda c, r: {"url": conn_url(c), "json": {"schedule": "5 4 * * *"}},
    ("DELETE", CONN + "/{connectorId}"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/connectors/{c.spare_connector()}"
    },
    ("POST", CONN + "/{connectorId}/test"): lambda c, r: {"url": conn_url(c, "/test")},
    ("GET", CONN + "/{connectorId}/schema"): lambda c, r: {"url": conn_url(c, "/schema")},
    ("POST", CONN + "/{connectorId}/sync"): lambda c, r: {"url": conn_url(c, "/sync")},
    ("GET", CONN + "/{connectorId}/runs"): lambda c, r: {"url": conn_url(c, "/runs")},
    ("POST", CONN + "/{connectorId}/files"): lambda c, r: {
        "url": conn_url(c, "/files"),
        "files": {"files": ("more.csv", b"a,b\n1,2\n", "text/csv")},
    },
    ("GET", CONN + "/{connectorId}/files"): lambda c, r: {"url": conn_url(c, "/files")},
    ("GET", DBT): lambda c, r: {"url": f"/api/v1/projects/{c.project_id}/dbt-projects"},
    ("POST", DBT): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/dbt-projects",
        "json": {"name": unique("d"), "source": {"type": "path", "path": str(TINY_DBT)}},
    },
    ("GET", DBT + "/{dbtId}"): lambda c, r: {"url": dbt_url(c)},
    ("PATCH", DBT + "/{dbtId}"): lambda c, r: {"url": dbt_url(c), "json": {"schedule": "5 4 * * *"}},
    ("DELETE", DBT + "/{dbtId}"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/dbt-projects/{c.spare_dbt_project()}"
    },
    ("POST", DBT + "/{dbtId}/run"): lambda c, r: {"url": dbt_url(c, "/run"), "json": {"command": "run"}},
    ("GET", DBT + "/{dbtId}/runs"): lambda c, r: {"url": dbt_url(c, "/runs")},
    ("GET", DBT + "/{dbtId}/models"): lambda c, r: {"url": dbt_url(c, "/models")},
    ("GET", DBT + "/{dbtId}/lineage"): lambda c, r: {"url": dbt_url(c, "/lineage")},
    ("GET", PIPE): lambda c, r: {"url": f"/api/v1/projects/{c.project_id}/pipelines"},
    ("POST", PIPE): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/pipelines",
        "json": {"name": unique("pl"), "steps": sync_step(c)},
    },
    ("GET", PIPE + "/{pipelineId}"): lambda c, r: {"url": pipe_url(c)},
    ("GET", PIPE + "/{pipelineId}/export"): lambda c, r: {"url": pipe_url(c) + "/export"},
    ("POST", PIPE + "/import"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/pipelines/import",
        "json": {"format_version": 1, "pipeline": {"name": unique("imported"), "steps": sync_step(c)}},
    },
    ("PATCH", PIPE + "/{pipelineId}"): lambda c, r: {"url": pipe_url(c), "json": {"retries": 2}},
    ("DELETE", PIPE + "/{pipelineId}"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/pipelines/{c.spare_pipeline()}"
    },
    ("POST", PIPE + "/{pipelineId}/run"): lambda c, r: {"url": pipe_url(c, "/run"), "json": {"dry_run": True}},
    ("GET", PIPE + "/{pipelineId}/versions"): lambda c, r: {"url": pipe_url(c, "/versions")},
    ("GET", PIPE + "/{pipelineId}/versions/diff"): lambda c, r: {
        "url": pipe_url(c, "/versions/diff"),
        "params": {"from": 1, "to": 1},
    },
    ("GET", PIPE + "/{pipelineId}/versions/{version}"): lambda c, r: {"url": pipe_url(c, "/versions/1")},
    ("GET", PIPE + "/{pipelineId}/versions/{version}/export"): lambda c, r: {"url": pipe_url(c, "/versions/1/export")},
    ("GET", PIPE + "/{pipelineId}/environments"): lambda c, r: {"url": pipe_url(c, "/environments")},
    ("POST", PIPE + "/{pipelineId}/versions/{version}/promote"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/pipelines/{c.spare_pipeline()}/versions/1/promote"
    },
    ("POST", PIPE + "/{pipelineId}/versions/{version}/demote"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/pipelines/{c.spare_in('uat')}/versions/1/demote"
    },
    ("POST", PIPE + "/{pipelineId}/versions/{version}/retire"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/pipelines/{c.spare_in('production')}/versions/1/retire"
    },
    ("GET", APPROVALS): lambda c, r: {"url": f"/api/v1/projects/{c.project_id}/approvals"},
    ("GET", APPROVALS + "/{requestId}"): lambda c, r: {"url": approval_url(c)},
    ("POST", APPROVALS + "/{requestId}/approve"): lambda c, r: {"url": approval_url(c, "/approve"), "json": {}},
    ("POST", APPROVALS + "/{requestId}/reject"): lambda c, r: {
        "url": approval_url(c, "/reject"),
        "json": {"reason": "not yet"},
    },
    ("GET", APPROVALS + "/{requestId}/comments"): lambda c, r: {"url": approval_url(c, "/comments")},
    ("POST", APPROVALS + "/{requestId}/comments"): lambda c, r: {
        "url": approval_url(c, "/comments"),
        "json": {"content": "looks fine"},
    },
    ("GET", "/api/v1/notifications/pending-approvals"): lambda c, r: {"url": "/api/v1/notifications/pending-approvals"},
    ("GET", PIPE + "/{pipelineId}/runs"): lambda c, r: {"url": pipe_url(c, "/runs")},
    ("GET", PIPE + "/{pipelineId}/runs/{runId}"): lambda c, r: {"url": pipe_url(c, f"/runs/{NO_RUN}")},
    ("POST", PIPE + "/{pipelineId}/runs/{runId}/cancel"): lambda c, r: {"url": pipe_url(c, f"/runs/{NO_RUN}/cancel")},
    ("POST", PIPE + "/{pipelineId}/runs/{runId}/retry"): lambda c, r: {
        "url": pipe_url(c, f"/runs/{NO_RUN}/retry"),
        "json": {"from_failure": True},
    },
    ("GET", PIPE + "/{pipelineId}/runs/{runId}/logs"): lambda c, r: {"url": pipe_url(c, f"/runs/{NO_RUN}/logs")},
    ("GET", MASKING): lambda c, r: {"url": monitoring_url(c, "masking-policies")},
    ("POST", MASKING): lambda c, r: {
        "url": monitoring_url(c, "masking-policies"),
        "json": {"name": unique("mask"), "columns": [{"table": "matrix__seed", "column": "id"}], "strategy": "null"},
    },
    ("GET", MASKING + "/{policyId}"): lambda c, r: {"url": monitoring_url(c, "masking-policies", c.masking_policy_id)},
    ("PATCH", MASKING + "/{policyId}"): lambda c, r: {
        "url": monitoring_url(c, "masking-policies", c.masking_policy_id),
        "json": {"exempt_roles": ["admin"]},
    },
    ("DELETE", MASKING + "/{policyId}"): lambda c, r: {
        "url": monitoring_url(c, "masking-policies", c.spare_masking_policy())
    },
    ("POST", "/api/v1/projects/{id}/query"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/query",
        "json": {"sql": "SELECT count(*) FROM matrix__seed"},
    },
    ("POST", "/api/v1/projects/{id}/query/export"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/query/export",
        "json": {"sql": "SELECT * FROM matrix__seed", "format": "csv"},
    },
    ("GET", "/api/v1/projects/{id}/tables"): lambda c, r: {"url": f"/api/v1/projects/{c.project_id}/tables"},
    ("GET", "/api/v1/projects/{id}/tables/{table}/schema"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/tables/matrix__seed/schema"
    },
    ("GET", "/api/v1/projects/{id}/tables/{table}/preview"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/tables/matrix__seed/preview"
    },
    ("GET", TABLE + "/health"): lambda c, r: {"url": table_url(c, "/health")},
    ("GET", TABLE + "/snapshots"): lambda c, r: {"url": table_url(c, "/snapshots")},
    ("POST", TABLE + "/compact"): lambda c, r: {"url": table_url(c, "/compact")},
    ("POST", TABLE + "/expire-snapshots"): lambda c, r: {"url": table_url(c, "/expire-snapshots"), "json": {}},
    ("POST", TABLE + "/remove-orphan-files"): lambda c, r: {"url": table_url(c, "/remove-orphan-files")},
    ("POST", TABLE + "/columns"): lambda c, r: {
        "url": table_url(c, "/columns"),
        "json": {"name": "extra", "type": "string"},
    },
    ("PATCH", TABLE + "/columns/{column}"): lambda c, r: {
        "url": table_url(c, "/columns/name"),
        "json": {"name": "label"},
    },
    ("DELETE", TABLE + "/columns/{column}"): lambda c, r: {"url": table_url(c, "/columns/name")},
    ("GET", TABLE + "/retention"): lambda c, r: {"url": retention_url(c)},
    ("PUT", TABLE + "/retention"): lambda c, r: {"url": table_url(c, "/retention"), "json": RETENTION_POLICY},
    ("DELETE", TABLE + "/retention"): lambda c, r: {"url": retention_url(c)},
    ("GET", "/api/v1/projects/{id}/retention-policies"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}/retention-policies"
    },
    ("GET", RULES): lambda c, r: {"url": monitoring_url(c, "alert-rules")},
    ("POST", RULES): lambda c, r: {
        "url": monitoring_url(c, "alert-rules"),
        "json": {"name": unique("rule"), "severity": "high", "condition": {"type": "run_failed"}},
    },
    ("GET", RULES + "/{ruleId}"): lambda c, r: {"url": monitoring_url(c, "alert-rules", c.rule_id)},
    ("PATCH", RULES + "/{ruleId}"): lambda c, r: {
        "url": monitoring_url(c, "alert-rules", c.rule_id),
        "json": {"description": "changed"},
    },
    ("DELETE", RULES + "/{ruleId}"): lambda c, r: {"url": monitoring_url(c, "alert-rules", c.spare_rule())},
    ("POST", RULES + "/{ruleId}/enable"): lambda c, r: {"url": monitoring_url(c, "alert-rules", c.rule_id, "/enable")},
    ("POST", RULES + "/{ruleId}/disable"): lambda c, r: {
        "url": monitoring_url(c, "alert-rules", c.rule_id, "/disable")
    },
    ("GET", ALERTS): lambda c, r: {"url": monitoring_url(c, "alerts"), "params": {"status": "firing"}},
    ("GET", ALERTS + "/{alertId}"): lambda c, r: {"url": monitoring_url(c, "alerts", c.alert_id)},
    ("POST", ALERTS + "/{alertId}/acknowledge"): lambda c, r: {
        "url": monitoring_url(c, "alerts", c.alert_id, "/acknowledge")
    },
    ("POST", ALERTS + "/{alertId}/resolve"): lambda c, r: {
        "url": monitoring_url(c, "alerts", c.spare_alert(), "/resolve")
    },
    ("GET", CHANNELS): lambda c, r: {"url": monitoring_url(c, "notification-channels")},
    ("POST", CHANNELS): lambda c, r: {
        "url": monitoring_url(c, "notification-channels"),
        "json": {"name": unique("chan"), "type": "slack", "config": {"url": "https://hooks.example.com/T/B/x"}},
    },
    ("GET", CHANNELS + "/{channelId}"): lambda c, r: {"url": monitoring_url(c, "notification-channels", c.channel_id)},
    ("PATCH", CHANNELS + "/{channelId}"): lambda c, r: {
        "url": monitoring_url(c, "notification-channels", c.channel_id),
        "json": {"config": {"secret": "rotated"}},
    },
    ("DELETE", CHANNELS + "/{channelId}"): lambda c, r: {
        "url": monitoring_url(c, "notification-channels", c.spare_channel())
    },
    ("POST", CHANNELS + "/{channelId}/test"): lambda c, r: {
        "url": monitoring_url(c, "notification-channels", c.channel_id, "/test")
    },
    ("GET", POLICIES): lambda c, r: {"url": monitoring_url(c, "escalation-policies")},
    ("POST", POLICIES): lambda c, r: {
        "url": monitoring_url(c, "escalation-policies"),
        "json": {"name": unique("esc"), "steps": [{"after_minutes": 1, "channel_ids": [c.channel_id]}]},
    },
    ("GET", POLICIES + "/{policyId}"): lambda c, r: {"url": monitoring_url(c, "escalation-policies", c.policy_id)},
    ("PATCH", POLICIES + "/{policyId}"): lambda c, r: {
        "url": monitoring_url(c, "escalation-policies", c.policy_id),
        "json": {"steps": [{"after_minutes": 2, "channel_ids": [c.channel_id]}]},
    },
    ("DELETE", POLICIES + "/{policyId}"): lambda c, r: {
        "url": monitoring_url(c, "escalation-policies", c.spare_policy())
    },
    ("GET", CLASSIFICATIONS): lambda c, r: {"url": monitoring_url(c, "classifications")},
    ("POST", CLASSIFICATIONS): lambda c, r: {
        "url": monitoring_url(c, "classifications"),
        "json": {"name": unique("cls"), "sensitivity": "confidential", "rules": [{"detector": "email"}]},
    },
    ("POST", CLASSIFICATIONS + "/run"): lambda c, r: {"url": monitoring_url(c, "classifications", "run")},
    ("GET", CLASSIFICATIONS + "/{classificationId}"): lambda c, r: {
        "url": monitoring_url(c, "classifications", c.classification_id)
    },
    ("PATCH", CLASSIFICATIONS + "/{classificationId}"): lambda c, r: {
        "url": monitoring_url(c, "classifications", c.classification_id),
        "json": {"sensitivity": "restricted"},
    },
    ("DELETE", CLASSIFICATIONS + "/{classificationId}"): lambda c, r: {
        "url": monitoring_url(c, "classifications", c.spare_classification())
    },
    ("GET", INFRA): lambda c, r: {"url": monitoring_url(c, "infrastructure")},
    ("POST", INFRA): lambda c, r: {
        "url": monitoring_url(c, "infrastructure"),
        "json": {"resource_type": "iceberg_namespace", "name": unique("ns").replace("-", "_")},
    },
    ("POST", INFRA + "/plan"): lambda c, r: {"url": monitoring_url(c, "infrastructure", "plan")},
    ("POST", INFRA + "/apply"): lambda c, r: {
        "url": monitoring_url(c, "infrastructure", "apply"),
        "json": {"plan_id": c.fresh_plan()},
    },
    ("GET", INFRA + "/{resourceId}"): lambda c, r: {"url": monitoring_url(c, "infrastructure", c.resource_id)},
    ("PATCH", INFRA + "/{resourceId}"): lambda c, r: {
        "url": monitoring_url(c, "infrastructure", c.resource_id),
        "json": {"config": {"properties": {"owner": unique("o")}}},
    },
    ("DELETE", INFRA + "/{resourceId}"): lambda c, r: {"url": monitoring_url(c, "infrastructure", c.spare_resource())},
    ("GET", "/api/v1/projects"): lambda c, r: {"url": "/api/v1/projects"},
    ("POST", "/api/v1/projects"): lambda c, r: {"url": "/api/v1/projects", "json": {"name": unique("p")}},
    ("GET", "/api/v1/projects/{id}"): lambda c, r: {"url": f"/api/v1/projects/{c.project_id}"},
    ("PATCH", "/api/v1/projects/{id}"): lambda c, r: {
        "url": f"/api/v1/projects/{c.project_id}",
        "json": {"description": "changed"},
    },
    ("DELETE", "/api/v1/projects/{id}"): lambda c, r: {"url": f"/api/v1/projects/{c.spare_project()}"},
    ("GET", "/api/v1/projects/{id}/audit-logs"): lambda c, r: {"url": f"/api/v1/projects/{c.project_id}/audit-logs"},
    ("GET", "/api/v1/audit-logs"): lambda c, r: {"url": "/api/v1/audit-logs"},
    ("GET", "/api/v1/users"): lambda c, r: {"url": "/api/v1/users"},
    ("POST", "/api/v1/users"): lambda c, r: {
        "url": "/api/v1/users",
        "json": {"email": f"{unique('u')}@example.com", "name": "N", "role": "viewer"},
    },
    ("GET", "/api/v1/users/{userId}"): lambda c, r: {"url": f"/api/v1/users/{c.spare_user_id}"},
    ("PATCH", "/api/v1/users/{userId}"): lambda c, r: {
        "url": f"/api/v1/users/{c.spare_user_id}",
        "json": {"name": "M"},
    },
    ("DELETE", "/api/v1/users/{userId}"): lambda c, r: {"url": f"/api/v1/users/{c.spare_user()}"},
    ("GET", "/api/v1/users/{userId}/tokens"): lambda c, r: {"url": f"/api/v1/users/{c.user_ids[r]}/tokens"},
    ("POST", "/api/v1/users/{userId}/tokens"): lambda c, r: {
        "url": f"/api/v1/users/{c.user_ids[r]}/tokens",
        "json": {"name": "ci"},
    },
    ("DELETE", "/api/v1/users/{userId}/tokens/{tokenId}"): lambda c, r: {
        "url": f"/api/v1/users/{c.user_ids[r]}/tokens/{c.own_token(r)}"
    },
}

# For self-service routes the forbidden case is a viewer reaching for the admin's tokens.
FORBIDDEN_SELF_SERVICE: dict[tuple[str, str], Case] = {
    ("GET", "/api/v1/users/{userId}/tokens"): lambda c, r: {"url": f"/api/v1/users/{c.user_ids[Role.admin]}/tokens"},
    ("POST", "/api/v1/users/{userId}/tokens"): lambda c, r: {
        "url": f"/api/v1/users/{c.user_ids[Role.admin]}/tokens",
        "json": {"name": "steal"},
    },
    ("DELETE", "/api/v1/users/{userId}/tokens/{tokenId}"): lambda c, r: {
        "url": f"/api/v1/users/{c.user_ids[Role.admin]}/tokens/{c.admin_token_ids['bootstrap']}"
    },
}

ROUTES = [(method, route) for route in api_routes() for method in sorted(route.methods)]
IDS = [f"{method} {route.path}" for method, route in ROUTES]


def test_every_route_has_a_case():
    missing = [f"{m} {r.path}" for m, r in ROUTES if (m, r.path) not in CASES]
    assert not missing, f"add auth matrix cases for: {missing}"


def test_every_route_is_guarded():
    unguarded = [f"{m} {r.path}" for m, r in ROUTES if required_role(r) is None and (m, r.path) not in SELF_SERVICE]
    assert not unguarded, f"routes without a RequireRole guard: {unguarded}"


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> Iterator[Clients]:
    """One app and store for the module; every unauthenticated case calls from the same address."""
    settings = make_settings(tmp_path_factory.mktemp("matrix"), rate_limit_anonymous="100000/minute")
    with role_clients(create_app(settings), settings) as clients:
        yield clients


@pytest.fixture(scope="module")
def ctx(clients, tiny_dbt_template) -> Ctx:
    admin = clients.admin
    project = admin.post("/api/v1/projects", json={"name": "matrix"}).json()
    connector = admin.post(
        f"/api/v1/projects/{project['id']}/connectors",
        json={"name": "matrix", "connector_type": "files", "config": {}, "selected_tables": ["seed"]},
    ).json()
    admin.post(
        f"/api/v1/projects/{project['id']}/connectors/{connector['id']}/files",
        files={"files": ("seed.csv", b"id,name\n1,a\n", "text/csv")},
    )
    _land_seed_table(clients, project["namespace"])
    dbt_project_id = _register_parsed_dbt_project(clients, project["id"], tiny_dbt_template, "matrix")
    pipeline = admin.post(
        f"/api/v1/projects/{project['id']}/pipelines",
        json={
            "name": "matrix",
            "steps": [{"id": "s", "type": "connector_sync", "config": {"connector_id": connector["id"]}}],
        },
    ).json()
    spare = admin.post("/api/v1/users", json={"email": "spare@example.com", "name": "Spare", "role": "viewer"}).json()
    me = admin.get("/api/v1/users", params={"limit": 100}).json()["data"]
    user_ids = dict(clients.user_ids)
    user_ids[Role.admin] = next(u["id"] for u in me if u["role"] == "admin")
    tokens = admin.get(f"/api/v1/users/{user_ids[Role.admin]}/tokens").json()["data"]
    context = Ctx(
        project_id=project["id"],
        connector_id=connector["id"],
        dbt_project_id=dbt_project_id,
        pipeline_id=pipeline["id"],
        spare_user_id=spare["id"],
        user_ids=user_ids,
        admin_token_ids={"bootstrap": tokens[0]["id"]},
        clients=clients,
        dbt_template=tiny_dbt_template,
    )
    context.rule_id = context.spare_rule()
    context.channel_id = context.spare_channel()
    context.policy_id = context.spare_policy()
    context.classification_id = context.spare_classification()
    context.alert_id = context.spare_alert()
    context.masking_policy_id = context.spare_masking_policy()
    context.resource_id = context.spare_resource()
    return context


@pytest.fixture(scope="module")
def tiny_dbt_template(tmp_path_factory) -> Path:
    """tests/fixtures/dbt/tiny fetched and parsed once (dbt parse takes seconds); ctx copies it."""
    from rime_dagster.dbt import workspace

    files = workspace.ProjectFiles(tmp_path_factory.mktemp("dbt-template"), 1)
    files.revision_dir.mkdir(parents=True)
    workspace.fetch({"type": "path", "path": str(TINY_DBT)}, files.project_dir, allowed_roots=[], timeout=60)
    output = workspace.profile_output(
        {"adapter": "duckdb"}, duckdb_file=files.root / "w.duckdb", namespace="matrix", threads=1
    )
    workspace.write_profiles(files, "tiny", output)
    workspace.parse(files, vars={}, timeout=120, confine=None)
    return files.revision_dir


def _register_parsed_dbt_project(clients, project_id: str, template: Path, name: str) -> str:
    """A dbt project row plus a copy of the parsed template, as `POST .../dbt-projects` leaves them."""
    import shutil

    from rime_dagster.dbt import workspace
    from rime_dagster.store.ids import new_id
    from rime_dagster.store.models import DbtProject

    state = clients.app.state
    dbt_id = new_id("dbt_project")
    root = workspace.project_root(state.settings.dbt_home, project_id, dbt_id)
    shutil.copytree(template, root / "rev-1")
    with state.sessions.begin() as session:
        session.add(
            DbtProject(
                id=dbt_id,
                project_id=project_id,
                name=name,
                slug=f"{name.replace('-', '_')}_dbt",
                source={"type": "path", "path": str(TINY_DBT)},
                target={"adapter": "duckdb", "schema": "main"},
                vars={},
                revision=1,
                dbt_project_name="tiny",
                profile_name="tiny",
                models_count=1,
            )
        )
    return dbt_id


def _land_seed_table(clients, namespace: str) -> None:
    """An Iceberg table for the tables routes, landed the way a sync lands it."""
    import pyarrow as pa

    from rime_dagster.connectors.landing import land_table

    batch = pa.record_batch({"id": [1], "name": ["a"]})
    catalog = clients.app.state.iceberg.catalog()
    land_table(
        catalog,
        (namespace, "matrix__seed"),
        batch.schema,
        [batch],
        mode="full_refresh",
        cursor_field=None,
        run_id="matrix",
    )


# Routes that launch Dagster runs: the matrix runs without Dagster, so "authorized" there means
# the request got past auth and validation to Dagster (503); tests/dagster runs them for real.
NEEDS_DAGSTER = {
    ("POST", CONN + "/{connectorId}/sync"),
    ("POST", DBT + "/{dbtId}/run"),
    ("POST", RULES + "/{ruleId}/disable"),  # stops the rule's sensor (enabling the enabled rule asks nothing)
    # Table operations are runs of the project's table maintenance job.
    ("POST", TABLE + "/compact"),
    ("POST", TABLE + "/expire-snapshots"),
    ("POST", TABLE + "/remove-orphan-files"),
    ("POST", TABLE + "/columns"),
    ("PATCH", TABLE + "/columns/{column}"),
    ("DELETE", TABLE + "/columns/{column}"),
    ("POST", INFRA + "/apply"),  # a run of infrastructure_apply
}
NEEDS_RUN = {
    ("GET", PIPE + "/{pipelineId}/runs/{runId}"),
    ("POST", PIPE + "/{pipelineId}/runs/{runId}/cancel"),
    ("POST", PIPE + "/{pipelineId}/runs/{runId}/retry"),
    ("GET", PIPE + "/{pipelineId}/runs/{runId}/logs"),
}


def _minimum_role(method: str, route: APIRoute) -> Role:
    return required_role(route) or Role.viewer


def _assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["X-Request-Id"].startswith("req_")


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=IDS)
def test_authorized(method, route, clients, ctx):
    role = _minimum_role(method, route)
    response = clients.as_role(role).request(method, **CASES[(method, route.path)](ctx, role))
    if (method, route.path) in NEEDS_DAGSTER:
        assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
        return
    if (method, route.path) in NEEDS_RUN:
        assert response.status_code == 404 and response.json()["error"]["code"] == "resource_not_found"
        return
    assert 200 <= response.status_code < 300, response.text


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=IDS)
def test_unauthenticated(method, route, clients, ctx):
    request = CASES[(method, route.path)](ctx, Role.admin)
    _assert_error(clients.anonymous.request(method, **request), 401, "unauthorized")
    bad = clients.anonymous.request(method, **request, headers={"Authorization": "Bearer rime_not_a_real_token"})
    _assert_error(bad, 401, "unauthorized")


# Routes every authenticated user may call have no forbidden case: none is generated for them.
GUARDED = [
    (method, route)
    for method, route in ROUTES
    if (method, route.path) in SELF_SERVICE or _minimum_role(method, route) is not Role.viewer
]


@pytest.mark.parametrize(("method", "route"), GUARDED, ids=[f"{method} {route.path}" for method, route in GUARDED])
def test_forbidden(method, route, clients, ctx):
    key = (method, route.path)
    if key in SELF_SERVICE:
        response = clients.as_role(Role.viewer).request(method, **FORBIDDEN_SELF_SERVICE[key](ctx, Role.viewer))
        _assert_error(response, 403, "forbidden")
        return
    role = _minimum_role(method, route)
    below = list(Role)[role.rank - 1]
    response = clients.as_role(below).request(method, **CASES[key](ctx, below))
    _assert_error(response, 403, "forbidden")
