"""Every route that returns table data reads through the one read path: with a masking policy on a classification,
a data_engineer reads masked values and an exempt role reads clear ones, and the exempt read is in the audit log.

The routes are found in the app's route table (by name, path or a `rows` field in the response model): a new
table-data route fails `test_every_table_data_route_is_covered` until it has a case here, so none can ship that
bypasses the read path unnoticed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pyarrow.parquet as pq
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from api_shim.services.auth import Role
from tests.support.governed import CLEAR_EMAILS, Governed, governed

DATA_WORDS = ("preview", "query", "export", "rows", "data")
PREVIEW = ("GET", "/api/v1/projects/{id}/tables/{table}/preview")
QUERY = ("POST", "/api/v1/projects/{id}/query")
EXPORT = ("POST", "/api/v1/projects/{id}/query/export")


def _json_values(response) -> list:
    return [value for row in response.json()["rows"] for value in row]


def _csv_values(response) -> list:
    return [value for row in csv.reader(io.StringIO(response.text)) for value in row]


def _parquet_values(response) -> list:
    table = pq.read_table(io.BytesIO(response.content))
    return [value for column in table.columns for value in column.to_pylist()]


Request = Callable[[Governed], dict]
COVERED: dict[tuple[str, str], tuple[Request, Callable]] = {
    PREVIEW: (lambda w: {"url": f"{w.base}/tables/crm__customer/preview"}, _json_values),
    QUERY: (lambda w: {"url": f"{w.base}/query", "json": {"sql": "SELECT * FROM crm__customer"}}, _json_values),
    EXPORT: (
        lambda w: {"url": f"{w.base}/query/export", "json": {"sql": "SELECT * FROM crm__customer"}},
        _csv_values,
    ),
    ("POST", "/api/v1/projects/{id}/query/export#parquet"): (
        lambda w: {
            "url": f"{w.base}/query/export",
            "json": {"sql": "SELECT id, email FROM crm__customer", "format": "parquet"},
        },
        _parquet_values,
    ),
}


# Routes whose name says export or preview but which return no table rows: checked by hand, listed by name.
NOT_TABLE_DATA = {"pipeline.export", "pipeline_version.export"}  # a pipeline (version)'s definition as a document


def _returns_table_data(route: APIRoute) -> bool:
    if route.name in NOT_TABLE_DATA:
        return False
    model = route.response_model
    has_rows = hasattr(model, "model_fields") and "rows" in model.model_fields
    text = f"{route.name} {route.path}".lower()
    return has_rows or any(word in text.replace("metadata", "") for word in DATA_WORDS)


def test_every_table_data_route_is_covered(world):
    routes = [context.route for context in iter_route_contexts(world.clients.app.routes)]
    found = {
        (method, route.path)
        for route in routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/v1") and _returns_table_data(route)
        for method in route.methods
    }
    assert found == {(method, path.split("#")[0]) for method, path in COVERED}  # "#...": a second case


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with governed(tmp_path_factory.mktemp("data-routes")) as world:
        admin = world.clients.admin
        created = admin.post(
            f"{world.base}/classifications",
            json={
                "name": "pii-email",
                "sensitivity": "confidential",
                "assignments": [{"table": "crm__customer", "column": "email"}],
            },
        )
        assert created.status_code == 201, created.text
        world.policy(
            {
                "name": "emails",
                "classification_id": created.json()["id"],
                "strategy": "redact",
                "exempt_roles": ["lead_data_engineer"],
            }
        )
        yield world


def _unmasked_reads(world, request_id: str) -> list[dict]:
    entries = world.clients.admin.get(
        f"{world.base}/audit-logs", params={"action": "table.read_unmasked", "limit": 100}
    ).json()["data"]
    return [e for e in entries if e["request_id"] == request_id]


@pytest.mark.parametrize("key", list(COVERED), ids=[f"{m} {p}" for m, p in COVERED])
def test_masked_for_data_engineer(world, key):
    request, values = COVERED[key]
    response = world.as_role(Role.data_engineer).request(key[0], **request(world))
    assert response.status_code == 200, response.text
    found = values(response)
    assert "****" in found
    assert not set(CLEAR_EMAILS) & set(found)
    assert _unmasked_reads(world, response.headers["X-Request-Id"]) == []


@pytest.mark.parametrize("key", list(COVERED), ids=[f"{m} {p}" for m, p in COVERED])
def test_clear_and_audited_for_exempt_role(world, key):
    request, values = COVERED[key]
    response = world.as_role(Role.lead_data_engineer).request(key[0], **request(world))
    assert response.status_code == 200, response.text
    assert set(CLEAR_EMAILS) <= set(values(response))
    [entry] = _unmasked_reads(world, response.headers["X-Request-Id"])
    assert entry["actor"] == "lead_data_engineer@example.com"
    assert entry["resource_type"] == "table" and entry["resource_id"] == "crm__customer"
    assert entry["details"] == {"tables": {"crm__customer": ["email"]}}
