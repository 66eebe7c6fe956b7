"""The SDK's resource groups against the real API (one server for the module, tests/sdk/conftest.py): each group end to
end (create, list, get by id and by name, update, delete and its own actions), role errors as the SDK's exceptions,
and a keyed trigger that finds its first attempt still being served."""

from __future__ import annotations

import csv
import io
import itertools
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from rime_client import Client, Conflict, Forbidden, NotFound, RequestInProgress, ServiceUnavailable, Unauthorized
from rime_client.governance import AuditEntry
from rime_client.models import Project
from tests.sdk.conftest import Served
from tests.support.governed import CLEAR_EMAILS, land_customers
from tests.support.monitoring import fire_alert
from tests.support.receivers import http_receiver

TINY_DBT = Path(__file__).resolve().parents[1] / "fixtures" / "dbt" / "tiny"
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class World:
    api: Served
    admin: Client  # no retries: a 503 (Dagster is not running here) is raised at once
    viewer: Client
    project: Project  # holds the table crm__customer


@pytest.fixture(scope="module")
def world(api: Served) -> Iterator[World]:
    with Client(api.url, api.admin_token, max_retries=0) as admin, Client(api.url, api.viewer_token) as viewer:
        project = admin.projects.create(unique("resources"))
        land_customers(api.app, project.namespace)
        yield World(api, admin, viewer, project)


def assert_forbidden(caught: pytest.ExceptionInfo[Forbidden]) -> None:
    assert caught.value.code == "forbidden" and caught.value.status == 403
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_connectors_test_schema_uploads_update_and_delete(world: World):
    client, project = world.admin, world.project.id
    connector = client.connectors.create({"name": "Drops", "connector_type": "files", "config": {}}, project=project)
    [uploaded] = client.connectors.upload(connector.id, {"orders.csv": b"id,total\n1,9.5\n2,3.0\n"}, project=project)
    assert (uploaded.name, uploaded.size_bytes) == ("orders.csv", 21)
    assert [f.name for f in client.connectors.files(connector.id, project=project)] == ["orders.csv"]
    checked = client.connectors.test(connector.id, project=project)
    assert checked.success, checked.message
    [table] = client.connectors.schema(connector.id, project=project)
    assert table.name == "orders" and [c["name"] for c in table.columns] == ["id", "total"]

    paused = client.connectors.update(connector.id, {"schedule": "0 3 * * *", "status": "paused"}, project=project)
    assert (paused.schedule, paused.status) == ("0 3 * * *", "paused")
    with pytest.raises(Forbidden) as refused:
        world.viewer.connectors.update(connector.id, {"schedule": None}, project=project)
    assert_forbidden(refused)
    client.connectors.delete(connector.id, project=project, purge_data=True)
    with pytest.raises(NotFound):
        client.connectors.get(connector.id, project=project)


@pytest.mark.slow  # dbt parses the project: a couple of seconds
def test_dbt_projects(world: World, tmp_path: Path):
    client, project = world.admin, world.project.id
    source = shutil.copytree(TINY_DBT, tmp_path / "tiny")
    created = client.dbt_projects.create(
        {"name": "models", "source": {"type": "path", "path": str(source)}}, project=project
    )
    assert created.id.startswith("dbt_") and created.models_count > 0 and created.lineage is not None
    assert [p.id for p in client.dbt_projects.list(project=project)] == [created.id]
    by_name = client.dbt_projects.get("models", project=project)
    assert by_name.id == created.id and by_name.lineage == created.lineage  # the detail view, by name too

    models = list(client.dbt_projects.models("models", project=project))
    assert len(models) == created.models_count and all(m.unique_id and m.schema_ for m in models)
    lineage = client.dbt_projects.lineage(created.id, project=project)
    model_ids = {n.id for n in lineage.nodes if n.type == "model"}
    assert {m.unique_id for m in models if m.resource_type == "model"} == model_ids
    assert all(e.from_ and e.to for e in lineage.edges)

    assert client.dbt_projects.update("models", {"schedule": "0 4 * * *"}, project=project).schedule == "0 4 * * *"
    assert list(client.dbt_projects.runs("models", project=project)) == []
    with pytest.raises(ServiceUnavailable):
        client.dbt_projects.run("models", project=project)
    client.dbt_projects.delete("models", project=project)
    with pytest.raises(NotFound, match="No dbt project with id, name or slug 'models'"):
        client.dbt_projects.get("models", project=project)


def test_monitoring(world: World):
    client, project = world.admin, world.project.id
    with http_receiver() as receiver:
        channel = client.notification_channels.create(
            {"name": "ops", "type": "webhook", "config": {"url": receiver.url}}, project=project
        )
        checked = client.notification_channels.test("ops", project=project)
        assert checked.success, checked.message
        assert len(receiver.received()) == 1
    renamed = client.notification_channels.update(channel.id, {"name": "ops-hook"}, project=project)
    assert renamed.name == "ops-hook" and renamed.config["url"] == receiver.url

    policy = client.escalation_policies.create(
        {"name": "page", "steps": [{"after_minutes": 15, "channel_ids": [channel.id]}]}, project=project
    )
    assert client.escalation_policies.get("page", project=project).steps[0].channel_ids == [channel.id]
    longer = client.escalation_policies.update(
        "page", {"steps": [{"after_minutes": 30, "channel_ids": [channel.id]}]}, project=project
    )
    assert longer.steps[0].after_minutes == 30

    rule = client.alert_rules.create(
        {
            "name": "stale orders",
            "severity": "high",
            "condition": {"type": "freshness", "table": "crm__customer", "max_age_minutes": 60},
            "channel_ids": [channel.id],
            "escalation_policy_id": policy.id,
        },
        project=project,
    )
    assert rule.condition["type"] == "freshness" and rule.id.startswith("rule_")
    assert [r.name for r in client.alert_rules.list(project=project)] == ["stale orders"]
    assert client.alert_rules.update("stale orders", {"severity": "low"}, project=project).severity == "low"
    with pytest.raises(ServiceUnavailable):  # the rule's sensor is Dagster's to start or stop
        client.alert_rules.disable("stale orders", project=project)

    first = fire_alert(world.api.app, rule.id, "table:crm__customer")
    second = fire_alert(world.api.app, rule.id, "table:other")
    assert [a.id for a in client.alerts.list(project=project, status="firing")] == [second, first]
    acknowledged = client.alerts.acknowledge(first, project=project)
    assert (acknowledged.status, acknowledged.acknowledged_by) == ("acknowledged", "admin@localhost")
    assert [a.id for a in client.alerts.list(project=project, status="acknowledged", severity="low")] == [first]
    with pytest.raises(Forbidden) as refused:
        world.viewer.alerts.resolve(first, project=project)
    assert_forbidden(refused)
    assert client.alerts.resolve(first, project=project).status == "resolved"
    assert client.alerts.get(first, project=project).deliveries is not None
    with pytest.raises(Conflict) as again:  # the request's own 409: raised at once, not retried
        client.alerts.resolve(first, project=project)
    assert not isinstance(again.value, RequestInProgress)

    client.alert_rules.delete("stale orders", project=project)
    client.escalation_policies.delete(policy.id, project=project)
    client.notification_channels.delete("ops-hook", project=project)
    assert list(client.notification_channels.list(project=project)) == []


def test_governance(world: World):
    client, project, table = world.admin, world.project.id, "crm__customer"
    emails = client.classifications.create(
        {"name": "email", "sensitivity": "confidential", "rules": [{"column_pattern": "^email$"}]}, project=project
    )
    [classified] = client.classifications.run(project=project, tables=[table])
    assert classified.table == table and any(c["column"] == "email" for c in classified.columns)
    noted = client.classifications.update("email", {"description": "personal"}, project=project)
    assert (noted.id, noted.description) == (emails.id, "personal")

    masking = client.masking_policies.create(
        {"name": "no emails", "classification_id": emails.id, "strategy": "redact"}, project=project
    )
    preview = client.tables.preview(table, project=project)
    email_at = preview.columns.index("email")
    assert not {row[email_at] for row in preview.rows} & set(CLEAR_EMAILS)
    client.masking_policies.update("no emails", {"exempt_roles": ["admin"]}, project=project)
    clear = client.tables.preview(table, project=project)
    assert set(CLEAR_EMAILS) <= {row[email_at] for row in clear.rows}  # the admin is exempt now

    entries = list(client.audit_logs.list(project=project, action="masking_policy.update"))
    assert [e.resource_id for e in entries] == [masking.id] and isinstance(entries[0], AuditEntry)
    assert any(e.action == "classification.create" for e in client.audit_logs.list(all_projects=True, limit=50))
    with pytest.raises(Forbidden) as refused:
        next(world.viewer.audit_logs.list(project=project))
    assert_forbidden(refused)

    retention = client.retention_policies.put(table, {"schedule": "0 1 * * *", "retain_last": 5}, project=project)
    assert (retention.table, retention.retain_last) == (table, 5)
    assert [p.table for p in client.retention_policies.list(project=project)] == [table]
    assert client.retention_policies.get(table, project=project).schedule == "0 1 * * *"
    client.retention_policies.delete(table, project=project)
    with pytest.raises(NotFound):
        client.retention_policies.get(table, project=project)

    client.masking_policies.delete(masking.id, project=project)
    client.classifications.delete("email", project=project)
    assert list(client.masking_policies.list(project=project)) == []


def test_tables_queries_exports_and_operations(world: World, tmp_path: Path):
    client, project, table = world.admin, world.project.id, "crm__customer"
    [listed] = [t for t in client.tables.list(project=project) if t.name == table]
    assert listed.row_count == 3
    assert [c.name for c in client.tables.schema(table, project=project).columns] == ["id", "email", "phone", "amount"]
    assert len(client.tables.preview(table, project=project, limit=2).rows) == 2
    [snapshot] = client.tables.snapshots(table, project=project)
    assert snapshot.is_current
    assert client.tables.health(table, project=project).total_records == 3

    sql = "SELECT id, amount FROM crm__customer ORDER BY id"
    result = client.tables.query(sql, project=project, limit=2)
    assert result.columns == ["id", "amount"] and result.rows == [[1, "10.50"], [2, "0.01"]] and result.truncated
    written = client.tables.export(sql, tmp_path / "out.csv", project=project)
    exported = (tmp_path / "out.csv").read_text()
    assert written == len(exported.encode()) and list(csv.reader(io.StringIO(exported)))[1] == ["1", "10.50"]
    buffer = io.BytesIO()
    client.tables.export(sql, buffer, project=project, format="parquet")
    assert pq.read_table(io.BytesIO(buffer.getvalue())).num_rows == 3
    with pytest.raises(Forbidden) as refused:  # arbitrary SQL needs data_engineer
        world.viewer.tables.query("SELECT 1", project=project)
    assert_forbidden(refused)
    with pytest.raises(Forbidden):
        world.viewer.tables.export("SELECT 1", tmp_path / "refused.csv", project=project)

    with pytest.raises(ServiceUnavailable):  # the operation is a Dagster run; Dagster is not running here
        client.tables.compact(table, project=project)
    with pytest.raises(NotFound):
        client.tables.add_column("missing", "note", "string", project=project)


def test_infrastructure(world: World):
    client, project = world.admin, world.project.id
    name = unique("landing").replace("-", "_")
    declared = client.infrastructure.create(
        {"resource_type": "iceberg_namespace", "name": name, "config": {}}, project=project
    )
    assert declared.state == "pending" and declared.id.startswith("res_")
    assert client.infrastructure.get(name, project=project).id == declared.id
    changed = client.infrastructure.update_config(name, {"properties": {"owner": "data"}}, project=project)
    assert changed.revision > declared.revision

    plan = client.infrastructure.plan(project=project)
    [change] = [c for c in plan.changes if c.resource_id == declared.id]
    assert change.action == "create" and plan.summary.create >= 1
    with pytest.raises(ServiceUnavailable):  # the apply is a Dagster run
        client.infrastructure.apply(plan.plan_id, project=project)
    with pytest.raises(Forbidden) as refused:
        world.viewer.infrastructure.plan(project=project)
    assert_forbidden(refused)
    client.infrastructure.delete(name, project=project)
    assert [r.id for r in client.infrastructure.list(project=project)] == []


def test_users_and_tokens(world: World):
    client = world.admin
    email = f"{unique('analyst')}@example.com"
    user = client.users.create(email, "Analyst", "viewer")
    assert (user.status, user.role) == ("invited", "viewer")
    assert client.users.get(email).id == user.id and email in {u.email for u in client.users.list()}
    assert client.users.update(email, role="data_engineer").role == "data_engineer"

    issued = client.tokens.create(email, "laptop")
    assert issued.token and issued.prefix and issued.token.startswith(issued.prefix)
    with Client(world.api.url, issued.token, max_retries=0) as analyst:
        assert analyst.projects.get(world.project.id).id == world.project.id
        assert [t.id for t in analyst.tokens.list(user.id)] == [issued.id]
        assert not hasattr(next(analyst.tokens.list(user.id)), "token")  # never the secret again
        with pytest.raises(Forbidden) as refused:
            analyst.users.create(f"{unique('nope')}@example.com", "Nope", "admin")
        assert_forbidden(refused)
        client.tokens.revoke(email, issued.id)
        with pytest.raises(Unauthorized):
            analyst.projects.get(world.project.id)
    client.users.delete(user.id)
    with pytest.raises(NotFound, match=email):
        client.users.get(email)


@pytest.mark.slow  # two attempts that time out (0.3 s each) and the backoffs after them: about a second
def test_a_keyed_trigger_waits_out_its_first_attempt_still_in_flight(world: World):
    """The channel test's first attempt outlives the client's timeout; its retry, under the same key, is answered
    409 "still being processed" (RequestInProgress) and retried after a backoff until the first attempt's answer is
    stored, which it then gets: one delivery. Out of retries first, the SDK raises RequestInProgress with the key,
    and a call with that key gets the first attempt's answer."""
    with http_receiver(gate=threading.Event()) as hook:
        assert hook.gate is not None
        channel = world.admin.notification_channels.create(
            {"name": unique("gated"), "type": "webhook", "config": {"url": hook.url}}, project=world.project.id
        )
        seen: list[tuple[str | None, int, str | None]] = []

        def record(response: httpx.Response) -> None:
            key = response.request.headers.get("Idempotency-Key")
            seen.append((key, response.status_code, response.headers.get("Idempotent-Replayed")))
            if response.status_code == 409:
                hook.gate.set()  # the first attempt may finish now

        hooks = {"response": [record]}
        patient = Client(
            world.api.url, world.api.admin_token, timeout=0.3, max_retries=6, backoff=0.05, event_hooks=hooks
        )
        with patient:
            checked = patient.notification_channels.test(channel.id, project=world.project.id)
        assert checked.success, checked.message
        keyed = [(key, status, replayed) for key, status, replayed in seen if key]
        assert len({key for key, _, _ in keyed}) == 1  # one key: the timed-out attempt (no response) and its retries
        assert keyed[0][1] == 409 and keyed[-1][1:] == (200, "true")  # the first attempt's answer, replayed
        assert len(hook.received()) == 1

        hook.gate.clear()
        impatient = Client(world.api.url, world.api.admin_token, timeout=0.3, max_retries=2, backoff=0.01)
        with impatient, pytest.raises(RequestInProgress) as caught:
            impatient.notification_channels.test(channel.id, project=world.project.id)
        assert caught.value.code == "conflict" and caught.value.status == 409 and caught.value.idempotency_key
        assert "still being processed" in caught.value.message
        hook.gate.set()
        with Client(world.api.url, world.api.admin_token, max_retries=6, backoff=0.05) as later:
            replayed = later.notification_channels.test(
                channel.id, project=world.project.id, idempotency_key=caught.value.idempotency_key
            )
        assert replayed.success and len(hook.received()) == 2  # the first attempt's delivery, not a third
