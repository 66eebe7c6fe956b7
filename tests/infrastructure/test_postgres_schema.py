"""The postgres_schema provider against the tests' throwaway PostgreSQL: the schema is `<namespace>__<name>`, its
grants read back from the catalog in the declaration's shape (a no-op compares equal), grants changed behind the
platform's back planned as an update, a refused GRANT leaves nothing half applied, and the URL never shows."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from rime_dagster.infrastructure.providers import (
    ConfigInvalid,
    Declared,
    NotConfigured,
    ProviderError,
    Target,
    provider,
)
from tests.conftest import make_settings
from tests.support.infrastructure import declared as declared_as
from tests.support.infrastructure import no_catalog, plan

SCHEMA = provider("postgres_schema")


def declared(name: str, config: dict) -> Declared:
    return declared_as("postgres_schema", name, config)


def target_for(tmp_path, url: str | None, namespace: str) -> Target:
    return Target("proj_1", namespace, make_settings(tmp_path, infra_postgres_url=url), no_catalog)


def test_config_is_validated_per_field_and_normalised():
    stored, _ = SCHEMA.validate(
        {
            "grants": [
                {"role": "writer", "privileges": ["USAGE", "CREATE", "USAGE"]},
                {"role": "app", "privileges": ["USAGE"]},
            ]
        }
    )
    assert stored == {
        "grants": [{"role": "app", "privileges": ["USAGE"]}, {"role": "writer", "privileges": ["CREATE", "USAGE"]}],
        "owner": None,
    }
    with pytest.raises(ConfigInvalid) as refused:
        SCHEMA.validate({"grants": [{"role": "Bad Role", "privileges": ["SELECT"]}]})
    assert {d["field"] for d in refused.value.details} == {"config.grants.0.role", "config.grants.0.privileges.0"}
    with pytest.raises(ConfigInvalid, match="one grant only"):
        SCHEMA.validate({"grants": [{"role": "a", "privileges": ["USAGE"]}, {"role": "a", "privileges": ["CREATE"]}]})


def test_statements_quote_the_namespaced_schema_and_change_only_what_differs(tmp_path):
    target = target_for(tmp_path, None, "proj")
    sales = declared("sales", {"owner": "etl", "grants": [{"role": "public", "privileges": ["USAGE"]}]})
    assert SCHEMA.statements(target, sales, "create", None) == [
        'CREATE SCHEMA "proj__sales" AUTHORIZATION "etl"',
        'GRANT USAGE ON SCHEMA "proj__sales" TO "public"',
    ]
    drifted = {"owner": "someone", "grants": [{"role": "intruder", "privileges": ["CREATE", "USAGE"]}]}
    assert SCHEMA.statements(target, sales, "update", drifted) == [
        'ALTER SCHEMA "proj__sales" OWNER TO "etl"',
        'REVOKE CREATE, USAGE ON SCHEMA "proj__sales" FROM "intruder"',
        'GRANT USAGE ON SCHEMA "proj__sales" TO "public"',
    ]
    assert SCHEMA.statements(target, sales, "delete", None) == ['DROP SCHEMA "proj__sales" RESTRICT']
    assert SCHEMA.statements(target, sales, "no-op", SCHEMA.desired(sales)) == []
    with pytest.raises(ProviderError, match="longer than PostgreSQL's 63 bytes"):
        SCHEMA.statements(target_for(tmp_path, None, "p" * 40), declared("s" * 30, {}), "create", None)


def test_without_a_server_reads_and_changes_are_not_configured(tmp_path):
    target, sales = target_for(tmp_path, None, "proj"), declared("sales", {})
    for call in (
        lambda: SCHEMA.read_actual(target, sales),
        lambda: SCHEMA.create(target, sales),
        lambda: SCHEMA.delete(target, sales),
    ):
        with pytest.raises(NotConfigured, match="RIME_INFRA_POSTGRES_URL"):
            call()


def test_an_unreachable_server_is_a_provider_error_without_the_password(tmp_path):
    from tests.conftest import closed_port

    url = f"postgresql+psycopg://rime:hunter2secret@127.0.0.1:{closed_port()}/rime"
    with pytest.raises(ProviderError) as failed:
        SCHEMA.read_actual(target_for(tmp_path, url, "proj"), declared("sales", {}))
    assert "Could not connect to PostgreSQL" in str(failed.value) and "hunter2secret" not in str(failed.value)
    assert failed.value.__cause__ is None


@pytest.fixture
def server(postgres_url):
    """Two roles of this test on the shared server (roles are server-wide), dropped with what they own."""
    suffix = uuid.uuid4().hex[:8]
    roles = {"reader": f"reader_{suffix}", "owner": f"owner_{suffix}"}
    conninfo = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for role in roles.values():
            conn.execute(f'CREATE ROLE "{role}"')
        yield conn, roles, f"t{suffix}"
        for role in roles.values():
            conn.execute(f'DROP OWNED BY "{role}" CASCADE')
            conn.execute(f'DROP ROLE "{role}"')


@pytest.mark.postgres
def test_create_read_back_drift_and_delete(tmp_path, postgres_url, server):
    conn, roles, namespace = server
    target = target_for(tmp_path, postgres_url, namespace)
    sales = declared(
        "sales", {"owner": roles["owner"], "grants": [{"role": roles["reader"], "privileges": ["CREATE", "USAGE"]}]}
    )
    assert plan(target, sales) == ("create", None)
    SCHEMA.create(target, sales)
    assert plan(target, sales) == ("no-op", SCHEMA.desired(sales))
    schema = f"{namespace}__sales"
    owner = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    assert owner == (roles["owner"],)

    conn.execute(f'REVOKE CREATE ON SCHEMA "{schema}" FROM "{roles["reader"]}"')  # behind the platform's back
    conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO PUBLIC')
    action, actual = plan(target, sales)
    assert action == "update"
    assert actual is not None and actual["grants"] == [
        {"role": "public", "privileges": ["USAGE"]},
        {"role": roles["reader"], "privileges": ["USAGE"]},
    ]
    SCHEMA.update(target, sales, actual)
    assert plan(target, sales)[0] == "no-op"
    assert conn.execute("SELECT has_schema_privilege(%s, %s, 'CREATE')", (roles["reader"], schema)).fetchone() == (
        True,
    )

    SCHEMA.delete(target, sales)
    assert plan(target, sales) == ("create", None)


@pytest.mark.postgres
def test_a_refused_grant_is_postgresqls_message_and_nothing_is_half_applied(tmp_path, postgres_url, server):
    conn, roles, namespace = server
    target = target_for(tmp_path, postgres_url, namespace)
    sales = declared(
        "sales",
        {
            "grants": [
                {"role": roles["reader"], "privileges": ["USAGE"]},
                {"role": "no_such_role", "privileges": ["USAGE"]},
            ]
        },
    )
    with pytest.raises(ProviderError, match='role "no_such_role" does not exist') as refused:
        SCHEMA.create(target, sales)
    assert make_url(postgres_url).port is not None and str(make_url(postgres_url).port) not in str(refused.value)
    assert plan(target, sales) == ("create", None)  # the CREATE SCHEMA before it was rolled back too


@pytest.mark.postgres
def test_delete_refuses_a_schema_that_still_holds_objects(tmp_path, postgres_url, server):
    conn, _, namespace = server
    target = target_for(tmp_path, postgres_url, namespace)
    sales = declared("sales", {})
    SCHEMA.create(target, sales)
    conn.execute(f'CREATE TABLE "{namespace}__sales".orders (id int)')
    with pytest.raises(ProviderError, match="depend"):
        SCHEMA.delete(target, sales)
    assert plan(target, sales)[0] == "no-op"
    conn.execute(f'DROP SCHEMA "{namespace}__sales" CASCADE')
