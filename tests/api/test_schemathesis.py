"""The API against its own OpenAPI document, with schemathesis: no 5xx, only documented statuses, bodies that
match their schemas, and invalid input refused (the checks not_a_server_error, status_code_conformance,
response_schema_conformance and negative_data_rejection).

Every operation of /api/docs/openapi.json is called in-process (ASGI) on a real SQLite store and Iceberg
catalog under tmp_path, as the admin. Three cases in four name real objects in their path (a project with a
files connector and its upload, a landed Iceberg table, a parsed dbt project, a pipeline, a user and a token;
DELETE gets objects of its own), so that bodies and query parameters reach the services' own checks; the
fourth keeps its generated ids (unknown objects: the 404s, odd path strings).

The Dagster webserver is not running: routes that need it answer 503 `service_unavailable`, which every API
route documents; the test holds each 503 to that envelope. Nothing is excluded: the pipeline-run WebSocket is
not an OpenAPI operation, and the run-log SSE stream needs a run, which needs Dagster (the route answers 404).

Bounded for CI (make test): the coverage phase's negative cases (every way the schema says a request is
invalid; deterministic) and `max_examples` fuzzed cases per operation, derandomized, so a run is reproducible.
To hunt for new findings, run it with other seeds and more examples:
`RIME_SCHEMATHESIS_SEED=7 RIME_SCHEMATHESIS_EXAMPLES=100 pytest tests/api/test_schemathesis.py`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from api_shim.main import create_app
from api_shim.schemas.dbt import DbtProjectUpdate
from rime_dagster.connectors.landing import land_table
from rime_dagster.dbt import workspace
from rime_dagster.settings import Settings
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import DbtProject
from rime_dagster.store.session import engine_for
from tests.conftest import ADMIN_TOKEN, closed_port, make_settings

pytestmark = pytest.mark.slow  # every operation, fuzzed

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, negative_data_rejection]
TINY_DBT = Path(__file__).resolve().parents[1] / "fixtures" / "dbt" / "tiny"
NO_RUN = "run_" + "0" * 32  # well-formed; no run exists without Dagster
# A change of these fetches and parses the dbt project again: seconds each, so a run spends only a few.
DBT_REPARSE = {"source", "target", "vars", "refresh"}
DBT_PARSES = 2
SEED = os.environ.get("RIME_SCHEMATHESIS_SEED")

CONFIG = {
    "auth": {"openapi": {"HTTPBearer": {"bearer": ADMIN_TOKEN}}},
    # Every case carries the token: calls without one are test_route_matrix.py's (401 on every route).
    "generation": {"with-security-parameters": False},
    # Positive cases come from fuzzing; unexpected methods (405) are no concern of the four checks.
    "phases": {"coverage": {"generation": {"mode": "negative"}, "unexpected-methods": []}},
    # 503: a dependency is down (here Dagster), documented on every API route. Any other 5xx is a failure.
    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
    # A dbt parse takes seconds, several times that on a busy 2-core machine.
    "request-timeout": 60,
    **({"seed": int(SEED)} if SEED else {}),
}
schema = schemathesis.openapi.from_dict(
    create_app(Settings(home=Path(tempfile.mkdtemp()), secret_key="schema")).openapi(),
    config=SchemathesisConfig.from_dict(CONFIG),
)


class HttpOnly:
    """The app as schemathesis' client sees it. That client starts an app's lifespan and keeps it to the end of
    the process; the app's lifespan belongs to the `world` fixture's TestClient instead."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


@dataclass
class World:
    """The app, the real objects path parameters can name, and the objects DELETE gets of its own."""

    client: TestClient
    http: HttpOnly
    ids: dict[str, str] = field(default_factory=dict)
    victims: dict[str, str] = field(default_factory=dict)
    cases: int = 0
    dbt_parses_left: int = DBT_PARSES
    operations_ran: set[str] = field(default_factory=set)

    def path_parameters(self, case) -> dict[str, str]:
        """Real objects' ids, but one time in four (and for a dbt project change that parses it again, once the
        run spent its DBT_PARSES) the generated ones."""
        self.cases += 1
        if self.cases % 4 == 0:
            return case.path_parameters
        if _parses_dbt(case):
            self.dbt_parses_left -= 1
            if self.dbt_parses_left < 0:
                return case.path_parameters
        real = self.victim_ids(case.path) if case.method.upper() == "DELETE" else self.ids
        return {name: real[name] for name in case.path_parameters}

    def post(self, url: str, **kwargs) -> dict:
        response = self.client.post(url, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()

    def copy_dbt_project(self, name: str) -> str:
        """A registered dbt project: a copy of the world's (its row, its parsed revision's files), as registering
        the same source leaves them, without fetching and parsing it again (seconds)."""
        state = self.client.app.state
        with state.sessions.begin() as session:
            original = session.get_one(DbtProject, self.ids["dbtId"])
            copy = DbtProject(
                id=new_id("dbt_project"),
                project_id=original.project_id,
                name=name,
                slug=name,
                source=dict(original.source),
                target=dict(original.target),
                vars=dict(original.vars),
                revision=original.revision,
                dbt_project_name=original.dbt_project_name,
                profile_name=original.profile_name,
                models_count=original.models_count,
            )
            revision = f"rev-{original.revision}"
            shutil.copytree(
                workspace.project_root(state.settings.dbt_home, original.project_id, original.id) / revision,
                workspace.project_root(state.settings.dbt_home, copy.project_id, copy.id) / revision,
            )
            session.add(copy)
        return copy.id

    def victim_ids(self, path: str) -> dict[str, str]:
        """The ids with a new object for the last path parameter, made once per operation (then it is a 404)."""
        if self.victims:
            return self.victims
        self.victims = dict(self.ids)
        project = f"/api/v1/projects/{self.ids['id']}"
        last = path.rstrip("/").rsplit("/", 1)[-1].strip("{}")
        if last == "id":
            made = self.post("/api/v1/projects", json={"name": "victim"})
        elif last == "connectorId":
            made = self.post(f"{project}/connectors", json={"name": "victim", "connector_type": "files", "config": {}})
        elif last == "dbtId":
            made = {"id": self.copy_dbt_project("victim")}
        elif last == "pipelineId":
            made = self.post(f"{project}/pipelines", json={"name": "victim", "steps": _sync(self.ids["connectorId"])})
        elif last == "userId":
            made = self.post("/api/v1/users", json={"email": "victim@example.com", "name": "Victim", "role": "viewer"})
        elif last == "tokenId":
            made = self.post(f"/api/v1/users/{self.ids['userId']}/tokens", json={"name": "victim"})
        elif last == "ruleId":
            made = self.post(f"{project}/alert-rules", json=_rule("victim"))
        elif last == "channelId":
            made = self.post(f"{project}/notification-channels", json=_channel("victim"))
        elif last == "policyId":
            made = self.post(f"{project}/escalation-policies", json=_policy("victim", self.ids["channelId"]))
        elif last == "classificationId":
            made = self.post(f"{project}/classifications", json={"name": "victim", "sensitivity": "internal"})
        elif last == "resourceId":
            made = self.post(f"{project}/infrastructure", json={"resource_type": "iceberg_namespace", "name": "victim"})
        elif last == "retention":  # a table's one policy: the world's table gets one to delete
            put = self.client.put(f"{project}/tables/{self.ids['table']}/retention", json=_retention())
            assert put.status_code in (200, 201), put.text
            made = {"id": self.ids["table"]}
        elif last == "column":
            made = {"id": "amount"}  # dropping it is a run, which never starts here (no Dagster): it stays
        else:
            raise AssertionError(f"no victim for DELETE {path}: add one")
        self.victims[last] = made["id"]
        return self.victims


def _retention() -> dict:
    return {"schedule": "0 3 * * *", "retain_last": 2}


def _parses_dbt(case) -> bool:
    """Whether `case` is a change of a dbt project that the API accepts and that makes it parse the project."""
    if case.method.upper() != "PATCH" or not case.path.endswith("{dbtId}") or not isinstance(case.body, dict):
        return False
    try:
        DbtProjectUpdate.model_validate(case.body)
    except ValidationError:
        return False
    return bool(DBT_REPARSE & case.body.keys())


def _tiny_dbt() -> dict:
    return {"type": "path", "path": str(TINY_DBT)}


def _sync(connector_id: str) -> list[dict]:
    return [{"id": "sync", "type": "connector_sync", "config": {"connector_id": connector_id}}]


def _rule(name: str) -> dict:
    return {
        "name": name,
        "severity": "high",
        "condition": {"type": "freshness", "table": "shop__orders", "max_age_minutes": 60},
    }


def _channel(name: str) -> dict:
    # A closed port: a channel test fails fast (success: false).
    return {"name": name, "type": "webhook", "config": {"url": f"http://127.0.0.1:{closed_port()}/hook", "secret": "s"}}


def _policy(name: str, channel_id: str) -> dict:
    return {"name": name, "steps": [{"after_minutes": 5, "channel_ids": [channel_id]}]}


def _fire(app, rule_id: str) -> str:
    """A firing alert of the rule, raised as its sensor raises one."""
    from rime_dagster.monitoring import alerts
    from rime_dagster.store.models import AlertRule

    with app.state.sessions.begin() as session:
        alert = alerts.fire(
            session,
            session.get(AlertRule, rule_id),
            target="table:shop__orders",
            title="stale",
            message="m",
            context={},
        )
        assert alert is not None
        return alert.id


@pytest.fixture(scope="module")
def world_base(request, tmp_path_factory) -> Iterator[World]:
    tmp_path = tmp_path_factory.mktemp("schemathesis")
    # Many cases a second from one address: the anonymous limit would answer some with 429.
    settings = make_settings(
        tmp_path, database_url=f"sqlite:///{tmp_path / 'rime.db'}", rate_limit_anonymous="100000/minute"
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:  # runs the lifespan (bootstrap admin)
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        world = World(client=client, http=HttpOnly(app))
        project = world.post("/api/v1/projects", json={"name": "fuzzed", "description": "schemathesis"})
        base = f"/api/v1/projects/{project['id']}"
        connector = world.post(
            f"{base}/connectors",
            json={"name": "shop", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
        )
        world.post(
            f"{base}/connectors/{connector['id']}/files",
            files={"files": ("orders.csv", b"id,amount\n1,2.5\n2,4\n", "text/csv")},
        )
        batch = pa.record_batch({"id": [1, 2], "amount": [2.5, 4.0]})  # landed as a sync lands it
        catalog = app.state.iceberg.catalog()
        table = (project["namespace"], "shop__orders")
        land_table(catalog, table, batch.schema, [batch], mode="full_refresh", cursor_field=None, run_id="seed")
        user = world.post("/api/v1/users", json={"email": "someone@example.com", "name": "Someone", "role": "viewer"})
        world.ids = {
            "id": project["id"],
            "connectorId": connector["id"],
            "dbtId": world.post(f"{base}/dbt-projects", json={"name": "tiny", "source": _tiny_dbt()})["id"],
            "pipelineId": world.post(f"{base}/pipelines", json={"name": "nightly", "steps": _sync(connector["id"])})[
                "id"
            ],
            "runId": NO_RUN,
            "table": "shop__orders",
            "column": "amount",
            "userId": user["id"],
            "tokenId": world.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "ci"})["id"],
        }
        channel = world.post(f"{base}/notification-channels", json=_channel("ops"))
        rule = world.post(f"{base}/alert-rules", json={**_rule("stale orders"), "channel_ids": [channel["id"]]})
        world.ids |= {
            "ruleId": rule["id"],
            "alertId": _fire(app, rule["id"]),
            "channelId": channel["id"],
            "policyId": world.post(f"{base}/escalation-policies", json=_policy("page", channel["id"]))["id"],
        }
        classification = {"name": "e-mail", "sensitivity": "confidential", "rules": [{"detector": "email"}]}
        world.ids["classificationId"] = world.post(f"{base}/classifications", json=classification)["id"]
        marts = {"resource_type": "iceberg_namespace", "name": "marts", "config": {"properties": {"owner": "bi"}}}
        world.ids["resourceId"] = world.post(f"{base}/infrastructure", json=marts)["id"]
        # Version 1 of the pipeline runs in qa, and its move to uat waits for approval.
        promote = f"{base}/pipelines/{world.ids['pipelineId']}/versions/1/promote"
        assert client.post(promote).status_code == 200
        request_id = client.post(promote).json()["approval_request_id"]
        world.ids |= {"version": "1", "requestId": request_id}
        yield world
    for read_only in (False, True):  # schemathesis' client holds on to the app until the process ends
        engine_for(settings.metadata_url, read_only=read_only).dispose()
    # Every selected operation ran: a plugin mix-up (pytest-xdist once ran 1 of 51) must fail, not pass quietly.
    selected = {
        item.operation_label
        for item in request.session.items
        if getattr(item, "operation_label", None) and item.path == request.path
    }
    assert selected <= world.operations_ran, f"operations that never ran: {sorted(selected - world.operations_ran)}"


@pytest.fixture
def world(world_base) -> World:
    world_base.victims = {}
    return world_base


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("RIME_SCHEMATHESIS_EXAMPLES", "10")),
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_matches_its_openapi(case, world: World):
    world.operations_ran.add(case.operation.label)
    if case.path_parameters:
        case.path_parameters = world.path_parameters(case)
    response = case.call_and_validate(app=world.http, checks=CHECKS)
    if response.status_code == 503 and case.path.startswith("/api/"):
        assert response.json()["error"]["code"] == "service_unavailable", response.text
