"""What the Monitoring API tests build on: a project with the resources rules can watch, and alerts raised the way
the rules' sensors raise them (rime_dagster.monitoring.alerts.fire, in a transaction of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from rime_dagster.monitoring import alerts as lifecycle
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import AlertEvent, AlertRule, DbtProject


@dataclass
class Monitored:
    """A project with a files connector syncing `orders` (its table `shop__orders`), a pipeline, a dbt project
    row; and another project with a pipeline of its own."""

    project: dict
    connector_id: str
    pipeline_id: str
    dbt_project_id: str
    foreign_pipeline_id: str

    @property
    def base(self) -> str:
        return f"/api/v1/projects/{self.project['id']}"


def created(client: TestClient, url: str, body: dict) -> dict:
    response = client.post(url, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def add_dbt_project(app: Any, project_id: str, slug: str) -> str:
    """A dbt project row, as registering one leaves it (rules only check that it is the project's)."""
    dbt_id = new_id("dbt_project")
    with app.state.sessions.begin() as session:
        session.add(
            DbtProject(
                id=dbt_id,
                project_id=project_id,
                name=slug,
                slug=slug,
                source={"type": "path", "path": "/nowhere"},
                target={"adapter": "duckdb"},
                vars={},
                dbt_project_name=slug,
                profile_name=slug,
            )
        )
    return dbt_id


def monitored_project(admin: TestClient, name: str = "watched") -> Monitored:
    project = created(admin, "/api/v1/projects", {"name": name})
    base = f"/api/v1/projects/{project['id']}"
    connector = created(
        admin,
        f"{base}/connectors",
        {"name": "Shop", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
    )
    steps = [{"id": "sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}}]
    pipeline = created(admin, f"{base}/pipelines", {"name": "nightly", "steps": steps})
    other = created(admin, "/api/v1/projects", {"name": f"{name}-other"})
    other_connector = created(
        admin, f"/api/v1/projects/{other['id']}/connectors", {"name": "Else", "connector_type": "files", "config": {}}
    )
    other_steps = [{"id": "sync", "type": "connector_sync", "config": {"connector_id": other_connector["id"]}}]
    foreign = created(admin, f"/api/v1/projects/{other['id']}/pipelines", {"name": "theirs", "steps": other_steps})
    return Monitored(
        project=project,
        connector_id=connector["id"],
        pipeline_id=pipeline["id"],
        dbt_project_id=add_dbt_project(admin.app, project["id"], "models"),
        foreign_pipeline_id=foreign["id"],
    )


def fire_alert(
    app: Any, rule_id: str, target: str, *, context: dict | None = None, now: datetime | None = None
) -> str | None:
    """Raises an alert of the rule as its sensor would; the new alert's id (None: one was open for the target)."""
    with app.state.sessions.begin() as session:
        rule = session.get(AlertRule, rule_id)
        assert rule is not None
        alert = lifecycle.fire(
            session,
            rule,
            target=target,
            title=f"{rule.name}: {target}",
            message=f"{target} failed",
            context=context or {},
            now=now,
        )
        return alert.id if alert is not None else None


def stream_events(app: Any, alert_id: str) -> list[tuple[str, dict]]:
    """The alert stream's events of an alert, oldest first: (type, payload)."""
    with app.state.sessions() as session:
        rows = session.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id))
        return [(row.event_type, row.payload) for row in rows]
