"""The Snowflake providers render their exact DDL (quoted per-project identifiers, escaped comments, only what
changed in an ALTER) and, with no Snowflake here, plan as `create` without an account and refuse to apply with a
message that says what to configure; with an account set they say the driver is missing."""

from __future__ import annotations

import pytest

from rime_dagster.infrastructure.providers import ConfigInvalid, NotConfigured, Target, provider
from tests.conftest import make_settings
from tests.support.infrastructure import declared, no_catalog

WAREHOUSE, DATABASE, SCHEMA = (provider(f"snowflake_{kind}") for kind in ("warehouse", "database", "schema"))


@pytest.fixture
def target(tmp_path) -> Target:
    return Target("proj_1", "sales_proj", make_settings(tmp_path), no_catalog)


class TestWarehouse:
    def test_create_update_delete_ddl(self, target):
        wh = declared(
            "snowflake_warehouse",
            "etl",
            {"size": "MEDIUM", "auto_suspend_seconds": 60, "auto_resume": False, "initially_suspended": True},
        )
        assert WAREHOUSE.statements(target, wh, "create", None) == [
            'CREATE WAREHOUSE IF NOT EXISTS "SALES_PROJ__ETL" WITH WAREHOUSE_SIZE = MEDIUM AUTO_SUSPEND = 60 '
            "AUTO_RESUME = FALSE INITIALLY_SUSPENDED = TRUE"
        ]
        actual = {"size": "XSMALL", "auto_suspend_seconds": 60, "auto_resume": True}
        assert WAREHOUSE.statements(target, wh, "update", actual) == [
            'ALTER WAREHOUSE "SALES_PROJ__ETL" SET WAREHOUSE_SIZE = MEDIUM AUTO_RESUME = FALSE'
        ]
        assert WAREHOUSE.statements(target, wh, "delete", None) == ['DROP WAREHOUSE IF EXISTS "SALES_PROJ__ETL"']
        assert WAREHOUSE.statements(target, wh, "no-op", WAREHOUSE.desired(wh)) == []
        assert "initially_suspended" not in WAREHOUSE.desired(wh)  # a creation option, not state

    def test_defaults_and_refusals(self, target):
        wh = declared("snowflake_warehouse", "adhoc", {})
        assert WAREHOUSE.statements(target, wh, "create", None) == [
            'CREATE WAREHOUSE IF NOT EXISTS "SALES_PROJ__ADHOC" WITH WAREHOUSE_SIZE = XSMALL AUTO_SUSPEND = 600 '
            "AUTO_RESUME = TRUE"
        ]
        with pytest.raises(ConfigInvalid) as refused:
            WAREHOUSE.validate({"size": "HUGE; DROP DATABASE x", "auto_suspend_seconds": -1})
        assert {d["field"] for d in refused.value.details} == {"config.size", "config.auto_suspend_seconds"}
        with pytest.raises(ConfigInvalid):
            WAREHOUSE.validate_name('etl"; DROP')


class TestDatabase:
    def test_create_update_delete_ddl_with_escaped_comment(self, target):
        db = declared("snowflake_database", "raw", {"comment": "Bob's \\ raw data", "data_retention_days": 7})
        assert DATABASE.statements(target, db, "create", None) == [
            'CREATE DATABASE IF NOT EXISTS "SALES_PROJ__RAW" DATA_RETENTION_TIME_IN_DAYS = 7 '
            "COMMENT = 'Bob''s \\\\ raw data'"
        ]
        assert DATABASE.statements(target, db, "update", {"comment": "old", "data_retention_days": 7}) == [
            "ALTER DATABASE \"SALES_PROJ__RAW\" SET COMMENT = 'Bob''s \\\\ raw data'"
        ]
        assert DATABASE.statements(target, db, "delete", None) == ['DROP DATABASE IF EXISTS "SALES_PROJ__RAW"']

    def test_a_property_no_longer_declared_is_unset(self, target):
        db = declared("snowflake_database", "raw", {})
        assert DATABASE.statements(target, db, "create", None) == ['CREATE DATABASE IF NOT EXISTS "SALES_PROJ__RAW"']
        assert DATABASE.statements(target, db, "update", {"comment": "old", "data_retention_days": 3}) == [
            'ALTER DATABASE "SALES_PROJ__RAW" UNSET DATA_RETENTION_TIME_IN_DAYS, COMMENT'
        ]


class TestSchema:
    def test_create_update_delete_ddl_qualified_by_its_database(self, target):
        marts = declared("snowflake_schema", "marts", {"database": "raw", "comment": "it's", "managed_access": True})
        assert SCHEMA.depends_on(marts) == [("snowflake_database", "raw")]
        assert SCHEMA.statements(target, marts, "create", None) == [
            'CREATE SCHEMA IF NOT EXISTS "SALES_PROJ__RAW"."SALES_PROJ__MARTS" WITH MANAGED ACCESS '
            "COMMENT = 'it''s'"
        ]
        actual = {"database": "old_db", "comment": None, "managed_access": False}
        assert SCHEMA.statements(target, marts, "update", actual) == [
            'ALTER SCHEMA "SALES_PROJ__OLD_DB"."SALES_PROJ__MARTS" RENAME TO "SALES_PROJ__RAW"."SALES_PROJ__MARTS"',
            'ALTER SCHEMA "SALES_PROJ__RAW"."SALES_PROJ__MARTS" ENABLE MANAGED ACCESS',
            "ALTER SCHEMA \"SALES_PROJ__RAW\".\"SALES_PROJ__MARTS\" SET COMMENT = 'it''s'",
        ]
        assert SCHEMA.statements(target, marts, "delete", None) == [
            'DROP SCHEMA IF EXISTS "SALES_PROJ__RAW"."SALES_PROJ__MARTS"'
        ]
        with pytest.raises(ConfigInvalid) as refused:
            SCHEMA.validate({"database": 'Raw"."x'})
        assert [d["field"] for d in refused.value.details] == ["config.database"]


class TestWithoutSnowflake:
    @pytest.mark.parametrize(
        ("resource_type", "config"),
        [("snowflake_warehouse", {}), ("snowflake_database", {}), ("snowflake_schema", {"database": "raw"})],
    )
    def test_no_account_plans_create_and_refuses_apply(self, target, resource_type, config):
        p, resource = provider(resource_type), declared(resource_type, "thing", config)
        assert p.diff(p.desired(resource), p.read_actual(target, resource)) == "create"
        for call in (
            lambda: p.create(target, resource),
            lambda: p.update(target, resource, {}),
            lambda: p.delete(target, resource),
        ):
            with pytest.raises(NotConfigured, match="Snowflake is not configured: set RIME_SNOWFLAKE_ACCOUNT"):
                call()

    def test_with_an_account_the_missing_driver_is_said(self, tmp_path):
        target = Target("proj_1", "p", make_settings(tmp_path, snowflake_account="xy12345.eu-west-1"), no_catalog)
        db = declared("snowflake_database", "raw", {})
        for call in (lambda: DATABASE.read_actual(target, db), lambda: DATABASE.create(target, db)):
            with pytest.raises(NotConfigured, match="snowflake-connector-python"):
                call()
