"""Issue 11, item 14: once Dagster accepted a launch, its Idempotency-Key never launches another run."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api_shim.main import create_app
from tests.dagster.conftest import Webserver

pytestmark = pytest.mark.dagster


def admin_client(settings) -> TestClient:
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {settings.admin_token}"
    return client


def test_a_retry_after_a_failure_past_the_launch_returns_the_launched_run(dagster_webserver: Webserver, tmp_path):
    settings = dagster_webserver.settings
    # An API whose Dagster run storage cannot be read once it runs: its launches reach Dagster (GraphQL),
    # and building the 202 from the new run's record then fails (503).
    unreadable = settings.model_copy(update={"dagster_home": tmp_path / "unreadable"})
    with admin_client(unreadable) as api:
        (unreadable.dagster_home_path / "dagster.yaml").unlink()  # written by the app's start-up
        project = api.post("/api/v1/projects", json={"name": "idempotent launches"}).json()
        connectors = f"/api/v1/projects/{project['id']}/connectors"
        created = api.post(
            connectors,
            json={"name": "Orders", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
        )
        assert created.status_code == 201, created.text
        connector_id = created.json()["id"]
        uploaded = api.post(
            f"{connectors}/{connector_id}/files", files=[("files", ("orders.csv", b"id,amount\n1,10\n", "text/csv"))]
        )
        assert uploaded.status_code == 201, uploaded.text
        sync, key = f"{connectors}/{connector_id}/sync", {"Idempotency-Key": "sync-orders-once"}

        first = api.post(sync, headers=key)
        assert first.status_code == 503, first.text
        again = api.post(sync, headers=key)  # the run storage is still unreadable: no answer, and no new run
        assert again.status_code == 503, again.text

    def launched() -> list[str]:
        records = dagster_webserver.client.run_records(tags={"rime/connector_id": connector_id}, limit=10)
        return [r.dagster_run.run_id for r in records]

    assert len(launched()) == 1
    with admin_client(settings) as api:  # the run storage readable again
        retry = api.post(sync, headers=key)
        assert retry.status_code == 202, retry.text
        assert retry.json()["dagster_run_id"] == launched()[0]
        replay = api.post(sync, headers=key)
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.json() == retry.json()
    assert len(launched()) == 1
