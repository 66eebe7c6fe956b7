"""POST .../query and its export: read-only SQL over the project's tables, masked, refused with 400 for anything
else, and nothing of the masked data or the hash key in any answer."""

from __future__ import annotations

import csv
import io

import pyarrow.parquet as pq
import pytest

from api_shim.services.auth import Role
from rime_dagster.governance.masking import hash_key, keyed_hash
from tests.support.governed import CLEAR_EMAILS, CLEAR_PHONES, governed, land_customers


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with governed(tmp_path_factory.mktemp("query"), query_timeout_seconds=2) as world:
        world.policy({"name": "emails", "columns": [{"table": "crm__customer", "column": "email"}], "strategy": "hash"})
        world.policy(
            {"name": "phones", "columns": [{"table": "crm__customer", "column": "phone"}], "strategy": "redact"}
        )
        other = world.clients.admin.post("/api/v1/projects", json={"name": "neighbour"}).json()
        land_customers(world.clients.app, other["namespace"], table="crm__secret")
        yield world


def _query(world, sql: str, role: Role = Role.data_engineer, **extra):
    return world.as_role(role).post(f"{world.base}/query", json={"sql": sql, **extra})


def test_query_returns_masked_rows(world):
    response = _query(world, "SELECT id, email, phone, amount FROM crm__customer ORDER BY id")
    assert response.status_code == 200, response.text
    body = response.json()
    key = hash_key(world.settings.signing_key(), world.project["id"])
    assert body == {
        "columns": ["id", "email", "phone", "amount"],
        "rows": [
            [1, keyed_hash(key, CLEAR_EMAILS[0]), "****", "10.50"],
            [2, keyed_hash(key, CLEAR_EMAILS[1]), "****", "0.01"],
            [3, None, "****", "99.99"],
        ],
        "truncated": False,
    }


def test_masking_holds_whatever_the_query_does(world):
    """Filters and joins see the masked values: a guess at a clear value matches nothing, a hash joins a hash."""
    guess = _query(world, f"SELECT count(*) FROM crm__customer WHERE email = '{CLEAR_EMAILS[0]}'")
    assert guess.json()["rows"] == [[0]]
    joined = _query(world, "SELECT count(*) FROM crm__customer a JOIN crm__customer b ON a.email = b.email")
    assert joined.json()["rows"] == [[2]]
    assert _query(world, "SELECT max(length(phone)) FROM crm__customer").json()["rows"] == [[4]]


def test_limit_and_truncated_and_duplicate_column_names(world):
    body = _query(world, "SELECT a.id, b.id FROM crm__customer a, crm__customer b ORDER BY 1, 2", limit=4).json()
    assert body["columns"] == ["id", "id"] and body["truncated"] is True
    assert body["rows"] == [[1, 1], [1, 2], [1, 3], [2, 1]]


def test_viewers_may_not_query(world):
    assert _query(world, "SELECT 1", role=Role.viewer).status_code == 403


REFUSED = [
    "INSERT INTO crm__customer VALUES (4, 'x', 'y', 1)",
    "UPDATE crm__customer SET email = 'x'",
    "DELETE FROM crm__customer",
    "CREATE TABLE copy AS SELECT * FROM crm__customer",
    "CREATE OR REPLACE VIEW crm__customer AS SELECT 1",
    "DROP VIEW crm__customer",
    "ATTACH ':memory:' AS other",
    "DETACH memory",
    "COPY crm__customer TO '/tmp/leak.csv'",
    "COPY (SELECT * FROM crm__customer) TO '/tmp/leak.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '/tmp/leak'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA version",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "CALL pragma_version()",
    "EXPLAIN SELECT * FROM crm__customer",
    "DESCRIBE crm__customer",
    "SUMMARIZE crm__customer",
    "SHOW TABLES",
    "CHECKPOINT",
    "SELECT 1; SELECT 2",
    "SELECT * FROM crm__customer; DROP VIEW crm__customer",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'https://example.com/data.csv'",
    "SELECT * FROM read_parquet('{location}/data/*.parquet')",
    "SELECT * FROM iceberg_scan('{location}')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM duckdb_views()",
    "SELECT sql FROM duckdb_views",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_functions()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM memory.main.crm__customer",
    "SELECT * FROM main.crm__customer",
    "SELECT * FROM crm__customer AT (VERSION => 1)",
    "SELECT current_setting('allowed_directories')",
    "SELECT getenv('RIME_SECRET_KEY')",
    "SELECT __rime_mask_hash('ada@example.com')",
    "SELECT __RIME_MASK_HASH(email) FROM crm__customer",
    "SELECT list_transform(['ada@example.com'], x -> __rime_mask_hash(x))",
    "SELECT system.main.__rime_mask_hash(email) FROM crm__customer",
    "SELECT * FROM crm__secret",  # the neighbouring project's table
    "SELECT * FROM no_such_table",
    "WITH a AS (SELECT * FROM sqlite_master), sqlite_master AS (SELECT 1) SELECT * FROM a",
    "WITH sqlite_master AS (SELECT * FROM sqlite_master) SELECT * FROM sqlite_master",
    "SELECT * FROM crm__customer WHERE id IN (SELECT id FROM read_csv('/etc/passwd'))",
    "SELECT (SELECT count(*) FROM duckdb_tables())",
    "SELEC * FROM crm__customer",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused_with_400_and_nothing_leaks(world, sql):
    location = world.clients.app.state.iceberg.catalog().load_table((world.project["namespace"], world.table))
    sql = sql.format(location=location.location().removeprefix("file://"))
    for path in ("query", "query/export"):
        response = world.as_role(Role.admin).post(f"{world.base}/{path}", json={"sql": sql})
        assert response.status_code == 400, (sql, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["details"][0]["field"] == "sql"
        _assert_nothing_leaks(world, response.text)
    # Nothing changed: the view is still there and still masked.
    assert _query(world, "SELECT count(*), max(phone) FROM crm__customer").json()["rows"] == [[3, "****"]]


def _trail(world, request_id: str) -> list[dict]:
    entries = world.clients.admin.get(f"{world.base}/audit-logs", params={"limit": 100}).json()["data"]
    return [e for e in entries if e["request_id"] == request_id]


def test_a_query_is_a_read_in_the_trail_only_when_denied_or_in_clear(world):
    """A POST that only reads: not a mutation in the audit trail (a preview is not either); a denied one is. (A read
    in clear by exemption is, as `table.read_unmasked`: test_table_data_routes.py.)"""
    sql = "SELECT count(*) FROM crm__customer"
    for path in ("query", "query/export"):
        masked = world.as_role(Role.data_engineer).post(f"{world.base}/{path}", json={"sql": sql})
        assert masked.status_code == 200 and _trail(world, masked.headers["X-Request-Id"]) == []
        refused = world.as_role(Role.data_engineer).post(f"{world.base}/{path}", json={"sql": "DELETE FROM x"})
        assert refused.status_code == 400 and _trail(world, refused.headers["X-Request-Id"]) == []
        denied = world.as_role(Role.viewer).post(f"{world.base}/{path}", json={"sql": sql})
        assert denied.status_code == 403
        [entry] = _trail(world, denied.headers["X-Request-Id"])
        assert entry["status_code"] == 403 and entry["actor"] == "viewer@example.com"


def test_table_names_match_whatever_their_case(world):
    """A name the query reads is looked up directly in the catalog, and only then, for a table whose own name has
    capitals (landed by hand, not by a sync), in the namespace's listing; a name in neither is refused."""
    land_customers(world.clients.app, world.project["namespace"], table="Crm__Mixed")
    for name in ("crm__mixed", "CRM__MIXED", "Crm__Mixed"):
        response = _query(world, f"SELECT count(*), max(email) FROM {name}")
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == [[3, "grace@example.org"]]  # no policy names this table's columns
    for sql in ('SELECT * FROM "crm mixed"', "SELECT * FROM crm__mixed2", 'SELECT * FROM "crm__secret"'):
        response = _query(world, sql)
        assert response.status_code == 400 and "Unknown table" in response.json()["error"]["details"][0]["message"], sql


def _assert_nothing_leaks(world, text: str) -> None:
    key = hash_key(world.settings.signing_key(), world.project["id"])
    for secret in (*CLEAR_EMAILS, *CLEAR_PHONES, key.hex(), world.settings.signing_key(), "iceberg_scan('/"):
        assert secret not in text


@pytest.mark.slow  # waits out the 2 s timeout
def test_statement_timeout_is_422(world):
    sql = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000) SELECT count(*) FROM r"
    response = _query(world, sql)
    assert response.status_code == 422, response.text
    assert "longer than 2 s" in response.json()["error"]["message"]
    assert _query(world, "SELECT count(*) FROM crm__customer").json()["rows"] == [[3]]  # the next query runs


def test_runtime_errors_are_400_naming_sql(world):
    response = _query(world, "SELECT no_such_column FROM crm__customer")
    assert response.status_code == 400 and response.json()["error"]["details"][0]["field"] == "sql"
    cast = _query(world, "SELECT CAST(email AS INTEGER) FROM crm__customer")
    assert cast.status_code == 400
    _assert_nothing_leaks(world, cast.text)  # the failed cast names a masked value, if any


class TestExport:
    def test_csv_is_masked(self, world):
        response = world.as_role(Role.data_engineer).post(
            f"{world.base}/query/export", json={"sql": "SELECT id, email, phone FROM crm__customer ORDER BY id"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert 'filename="query.csv"' in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r["id"] for r in rows] == ["1", "2", "3"] and {r["phone"] for r in rows} == {"****"}
        _assert_nothing_leaks(world, response.text)

    def test_parquet_is_masked(self, world):
        response = world.as_role(Role.data_engineer).post(
            f"{world.base}/query/export", json={"sql": "SELECT * FROM crm__customer", "format": "parquet"}
        )
        assert response.status_code == 200, response.text
        table = pq.read_table(io.BytesIO(response.content))
        assert table.num_rows == 3 and set(table.column("phone").to_pylist()) == {"****"}
        assert not set(CLEAR_EMAILS) & set(table.column("email").to_pylist())

    def test_csv_refuses_nested_columns(self, world):
        sql = "SELECT [id] AS ids FROM crm__customer"
        response = world.as_role(Role.data_engineer).post(f"{world.base}/query/export", json={"sql": sql})
        assert response.status_code == 400 and "Parquet" in response.json()["error"]["message"] + response.text
