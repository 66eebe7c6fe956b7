"""The Rime reference's worked example, verbatim, against a real PostgreSQL and a real Dagster."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from rime_dagster.connectors.landing import preview
from tests.dagster.conftest import Webserver, wait_for_run

pytestmark = [pytest.mark.dagster, pytest.mark.postgres]

SECRET = "s3cr3t-Hunter2-pw"


@pytest.fixture(scope="module")
def crm(postgres_url):
    """A `crm_production` database with the three tables of the worked example."""
    url = make_url(postgres_url)
    admin = f"host={url.host} port={url.port} user={url.username} dbname={url.database}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS crm_production")
        conn.execute("CREATE DATABASE crm_production")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rime_readonly'").fetchone():
            conn.execute("CREATE ROLE rime_readonly LOGIN PASSWORD 'x'")
    dsn = f"host={url.host} port={url.port} user={url.username} dbname=crm_production"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text, vip boolean,
                                    balance numeric(12,2), signed_up timestamptz, born date, tags text[],
                                    profile jsonb, external_id uuid, avatar bytea);
            CREATE TABLE orders (id integer PRIMARY KEY, customer_id bigint, total numeric(10,2),
                                 placed_at timestamp, status text);
            CREATE TABLE products (sku text PRIMARY KEY, title text, price numeric(8,2), stock smallint);
            INSERT INTO customers
            SELECT i, 'Customer ' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'c' || i || '@example.com' END,
                   i % 2 = 0, round((i * 13.37)::numeric, 2),
                   timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute 1.5 second',
                   date '1980-01-01' + i, ARRAY['t' || (i % 3), NULL], jsonb_build_object('n', i, 'tier', i % 4),
                   md5(i::text)::uuid, CASE WHEN i % 5 = 0 THEN NULL ELSE decode(lpad(to_hex(i), 8, '0'), 'hex') END
            FROM generate_series(1, 2500) AS i;
            INSERT INTO orders SELECT i, 1 + i % 2500, round((i * 1.1)::numeric, 2),
                   timestamp '2026-02-01 00:00:00' + i * interval '1 second', (ARRAY['new','paid','shipped'])[1 + i % 3]
            FROM generate_series(1, 10000) AS i;
            INSERT INTO products VALUES ('A-1', 'Anvil', 99.95, 3), ('B-2', 'Bell', 5.00, NULL), ('C-3', NULL, NULL, 0);
            GRANT SELECT ON ALL TABLES IN SCHEMA public TO rime_readonly;
            """
        )
    return url, dsn


JSON_COLUMNS = {"profile"}  # jsonb lands as its JSON text


def _normalise(value):
    if isinstance(value, uuid.UUID):
        return str(value)  # uuid lands as its canonical text
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _source_rows(dsn: str, table: str, key: str) -> list[dict]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT * FROM {table} ORDER BY {key}")
        return [{k: _normalise(v) for k, v in row.items()} for row in cur.fetchall()]


def _landed_rows(catalog, identifier, key: str) -> list[dict]:
    rows = preview(catalog, identifier, 1_000_000).to_pylist()
    return sorted(({k: _normalise(v) for k, v in row.items()} for row in rows), key=lambda r: (r[key] is None, r[key]))


def test_worked_example_verbatim_then_row_for_row_then_wrong_credentials_fail_cleanly_and_keep_data(
    api, crm, dagster_webserver: Webserver
):
    url, dsn = crm
    project = api.post("/api/v1/projects", json={"name": "ACME CRM"}).json()
    body = {
        "name": "Production CRM",
        "connector_type": "postgresql",
        "config": {"host": url.host, "port": url.port, "database": "crm_production", "schema": "public"},
        "credentials": {"username": "rime_readonly", "password": SECRET},
        "selected_tables": ["customers", "orders", "products"],
        "schedule": "0 2 * * *",
    }
    created = api.post(f"/api/v1/projects/{project['id']}/connectors", json=body)
    assert created.status_code == 201, created.text
    connector = created.json()
    assert (connector["name"], connector["connector_type"], connector["status"]) == (
        "Production CRM",
        "postgresql",
        "created",
    )
    base = f"/api/v1/projects/{project['id']}/connectors/{connector['id']}"

    tested = api.post(f"{base}/test")
    assert tested.json() == {"success": True, "message": "Connection successful. 3 tables accessible."}

    schema = {t["name"]: t for t in api.get(f"{base}/schema").json()["tables"]}
    assert schema["customers"]["primary_key"] == ["id"] and schema["orders"]["row_estimate"] is not None

    started = api.post(f"{base}/sync")  # it waits for Dagster to load the new connector's job
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("queued", "running") and started.json()["run_id"].startswith("run_")
    run = wait_for_run(api, base, started.json()["run_id"])
    assert run["status"] == "succeeded", run
    assert {t["name"]: t["rows"] for t in run["tables"]} == {"customers": 2500, "orders": 10000, "products": 3}

    catalog = api.app.state.iceberg.catalog()
    for table, key in (("customers", "id"), ("orders", "id"), ("products", "sku")):
        landed = _landed_rows(catalog, (project["namespace"], f"production_crm__{table}"), key)
        assert landed == _source_rows(dsn, table, key), table

    everything = (
        api.get(base).text + api.get(f"{base}/runs").text + api.get(f"/api/v1/projects/{project['id']}/tables").text
    )
    assert SECRET not in everything and SECRET not in dagster_webserver.log_tail(10**7)

    # Wrong credentials then fail cleanly and keep the data landed above (this connector's successful sync is the
    # "before", instead of a second project and connector syncing once more for it).
    patched = api.patch(base, json={"credentials": {"username": "no_such_user", "password": SECRET + "-wrong"}})
    assert patched.status_code == 200, patched.text
    assert api.post(f"{base}/test").json()["success"] is False
    failed = wait_for_run(api, base, api.post(f"{base}/sync").json()["run_id"])
    assert failed["status"] == "failed" and failed["error"]
    assert "no_such_user" in failed["error"] or "authentication" in failed["error"].lower()
    tables = api.get(f"/api/v1/projects/{project['id']}/tables").json()["data"]
    assert sorted((t["name"], t["row_count"]) for t in tables) == [
        ("production_crm__customers", 2500),
        ("production_crm__orders", 10000),
        ("production_crm__products", 3),
    ]
    everything = api.get(base).text + api.get(f"{base}/runs").text
    assert SECRET not in everything and SECRET not in dagster_webserver.log_tail(10**7)
