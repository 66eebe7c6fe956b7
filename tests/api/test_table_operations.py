"""Table operations over REST on a real Iceberg table: health and history, and every operation's checks, made before
a run is launched. (The app here has no Dagster: a request that passes its checks reaches the launch and gets 503;
tests/dagster/test_table_operations_e2e.py launches one for real, tests/tables runs the operations themselves.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from api_shim.main import create_app
from tests.conftest import Clients, make_settings, role_clients
from tests.tables.conftest import append

TABLE = "shop__orders"


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> Iterator[Clients]:
    """One app, store, project and table for the module: no case changes the table (nothing is launched)."""
    settings = make_settings(tmp_path_factory.mktemp("table-ops"))
    with role_clients(create_app(settings), settings) as clients:
        yield clients


@pytest.fixture(scope="module")
def project(clients) -> dict:
    return clients.admin.post("/api/v1/projects", json={"name": "table ops"}).json()


@pytest.fixture(scope="module")
def table_url(clients, project) -> str:
    catalog = clients.app.state.iceberg.catalog()
    for i in range(3):
        append(catalog, i * 10, 10, identifier=(project["namespace"], TABLE))
    return f"/api/v1/projects/{project['id']}/tables/{TABLE}"


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_health(clients, table_url):
    response = clients.as_role("viewer").get(f"{table_url}/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["table"] == TABLE
    assert (body["snapshot_count"], body["data_file_count"], body["small_file_count"]) == (3, 3, 3)
    assert body["delete_file_count"] == 0 and body["total_records"] == 30
    assert body["avg_file_size_bytes"] == body["total_size_bytes"] // 3
    assert body["recommendation"] == "compact: 3 small files" == body["recommendations"][0]


def test_snapshot_history_pages_newest_first(clients, table_url):
    viewer = clients.as_role("viewer")
    first = viewer.get(f"{table_url}/snapshots", params={"limit": 2}).json()
    assert first["has_more"] and [s["total_records"] for s in first["data"]] == [30, 20]
    assert first["data"][0]["is_current"] and first["data"][0]["operation"] == "append"
    assert first["data"][0]["parent_id"] == first["data"][1]["snapshot_id"]
    assert first["data"][0]["committed_at"].endswith("Z") and first["data"][0]["run_id"] == "sync-20"
    rest = viewer.get(f"{table_url}/snapshots", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [s["total_records"] for s in rest["data"]] == [10] and not rest["has_more"]
    oldest_first = viewer.get(f"{table_url}/snapshots", params={"order": "asc"}).json()["data"]
    assert [s["added_records"] for s in oldest_first] == [10, 10, 10]
    error(viewer.get(f"{table_url}/snapshots", params={"cursor": "tampered"}), 400)


def test_unknown_project_or_table_is_404(clients, project):
    viewer = clients.as_role("viewer")
    for url in (
        f"/api/v1/projects/{project['id']}/tables/nope/health",
        f"/api/v1/projects/{project['id']}/tables/nope/snapshots",
        "/api/v1/projects/proj_nope/tables/x/health",
    ):
        assert error(viewer.get(url), 404)["code"] == "resource_not_found"
    engineer = clients.as_role("data_engineer")
    assert error(engineer.post(f"/api/v1/projects/{project['id']}/tables/nope/compact"), 404)


def test_operations_need_a_data_engineer(clients, table_url):
    viewer = clients.as_role("viewer")
    assert error(viewer.post(f"{table_url}/compact"), 403)["code"] == "forbidden"
    assert error(viewer.delete(f"{table_url}/columns/email"), 403)


@pytest.mark.parametrize(
    ("method", "suffix", "body", "status", "field"),
    [
        ("post", "/columns", {"name": "bad name", "type": "string"}, 400, "name"),
        ("post", "/columns", {"name": "ok", "type": "map<string, int>"}, 400, "type"),
        ("post", "/columns", {"name": "ok", "type": "decimal(50, 2)"}, 400, "type"),
        ("post", "/columns", {"name": "ok", "type": "string", "nullable": False}, 400, "nullable"),
        ("post", "/columns", {"name": "ok"}, 400, "type"),
        ("post", "/columns", {"name": "ok", "type": "string", "after": "id"}, 400, "after"),
        ("post", "/columns", {"name": "EMAIL", "type": "string"}, 409, "name"),
        ("patch", "/columns/email", {"name": "amount"}, 409, "name"),
        ("patch", "/columns/email", {"name": "9lives"}, 400, "name"),
        ("patch", "/columns/id", {"name": "key"}, 400, "column"),  # the incremental cursor
        ("patch", "/columns/nope", {"name": "x"}, 404, None),
        ("delete", "/columns/id", None, 400, "column"),
        ("delete", "/columns/nope", None, 404, None),
        ("post", "/expire-snapshots", {"retain_last": 0}, 400, "retain_last"),
        ("post", "/expire-snapshots", {"older_than": "yesterday"}, 400, "older_than"),
        ("post", "/compact", {"target_file_rows": 5}, 400, "target_file_rows"),
        ("post", "/remove-orphan-files", {"older_than": datetime.now(UTC).isoformat()}, 400, "older_than"),
    ],
)
def test_refused_before_any_run(clients, table_url, method, suffix, body, status, field):
    engineer = clients.as_role("data_engineer")
    kwargs = {"json": body} if body is not None else {}
    refused = error(getattr(engineer, method)(f"{table_url}{suffix}", **kwargs), status)
    if field is not None:
        assert field in [d["field"] for d in refused["details"]], refused
    assert "Dagster" not in refused["message"]


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("post", "/compact", None),
        ("post", "/compact", {"target_file_rows": 5000, "min_files": 3}),
        ("post", "/expire-snapshots", {"retain_last": 2, "older_than": "2026-01-01T00:00:00Z"}),
        ("post", "/remove-orphan-files", {"older_than": (datetime.now(UTC) - timedelta(days=1)).isoformat()}),
        ("post", "/columns", {"name": "channel", "type": "varchar", "comment": "where from"}),
        ("patch", "/columns/email", {"name": "contact"}),
        ("patch", "/columns/email", {"name": "Email"}),  # a change of case only is no clash with itself
        ("delete", "/columns/amount", None),
    ],
)
def test_valid_operations_reach_the_launch(clients, table_url, method, suffix, body):
    engineer = clients.as_role("data_engineer")
    kwargs = {"json": body} if body is not None else {}
    assert error(getattr(engineer, method)(f"{table_url}{suffix}", **kwargs), 503)["code"] == "service_unavailable"


def test_operations_are_documented(clients):
    spec = clients.anonymous.get("/api/docs/openapi.json").json()
    operations = spec["paths"]["/api/v1/projects/{id}/tables/{table}/columns/{column}"]
    assert {"202", "400", "404", "409"} <= set(operations["delete"]["responses"])
    assert "TableHealthResponse" in spec["components"]["schemas"]


def test_preview_at_a_snapshot(clients, table_url):
    viewer = clients.as_role("viewer")
    history = viewer.get(f"{table_url}/snapshots", params={"order": "asc"}).json()["data"]
    first = viewer.get(f"{table_url}/preview", params={"snapshot_id": history[0]["snapshot_id"]})
    assert first.status_code == 200, first.text
    assert sorted(row[0] for row in first.json()["rows"]) == list(range(10))
    now = viewer.get(f"{table_url}/preview").json()
    assert len(now["rows"]) == 30
    missing = error(viewer.get(f"{table_url}/preview", params={"snapshot_id": 12345}), 404)
    assert "12345" in missing["message"]
    assert error(viewer.get(f"{table_url}/preview", params={"snapshot_id": "latest"}), 400)["details"]
