"""`snowflake_warehouse`, `snowflake_database`, `snowflake_schema`: Snowflake objects whose plan is their DDL.

Names: a project's `<name>` is the Snowflake identifier `"<NAMESPACE>__<NAME>"`, upper-case (what Snowflake makes
of an unquoted name, so people can type it unquoted) and always quoted in the DDL; a schema is qualified by its
database's identifier: `"<NAMESPACE>__<DATABASE>"."<NAMESPACE>__<NAME>"`. The namespace prefix keeps projects
apart, as for PostgreSQL schemas. Comments are string literals with `\\` and `'` escaped (Snowflake reads a
backslash in a literal as an escape).

`statements` renders the exact DDL, deterministically (properties in a fixed order): CREATE ... IF NOT EXISTS with
every declared property, ALTER ... SET / UNSET with only the properties that differ from `actual` (plus ENABLE /
DISABLE MANAGED ACCESS, and RENAME TO for a schema moved to another database), DROP ... IF EXISTS. A dropped
Snowflake database or schema stays restorable with UNDROP for its retention time.

What exists cannot be read: this deployment has no Snowflake driver (snowflake-connector-python is not a
dependency), and nothing here pretends to be Snowflake. Without RIME_SNOWFLAKE_ACCOUNT, `read_actual` answers None,
so a plan shows every Snowflake resource as `create` with its DDL (the plan cannot see what the account holds),
and applying raises NotConfigured, which the API answers as a 422. With an account set, reads and changes raise
NotConfigured saying that the driver is missing, rather than planning blind against a real account.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from rime_dagster.infrastructure.providers.base import (
    IDENTIFIER,
    Action,
    Declared,
    NotConfigured,
    SqlProvider,
    State,
    StrictModel,
    Target,
    register,
)

WarehouseSize = Literal[
    "XSMALL", "SMALL", "MEDIUM", "LARGE", "XLARGE", "XXLARGE", "XXXLARGE", "X4LARGE", "X5LARGE", "X6LARGE"
]
NOT_CONFIGURED = (
    "Snowflake is not configured: set RIME_SNOWFLAKE_ACCOUNT (and install a Snowflake driver) to apply Snowflake "
    "resources; their plan shows the DDL that would run."
)
NO_DRIVER = (
    "RIME_SNOWFLAKE_ACCOUNT is set, but this deployment has no Snowflake driver (the snowflake-connector-python "
    "package is not installed): Snowflake resources can be planned as DDL but not read or applied."
)


def identifier(target: Target, name: str) -> str:
    """The quoted Snowflake identifier of a project's `name`: `"<NAMESPACE>__<NAME>"`."""
    return '"' + f"{target.namespace}__{name}".upper().replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def boolean(value: bool) -> str:
    return "TRUE" if value else "FALSE"


def bare(value: str) -> str:
    return value  # a value the config model restricts to Snowflake keywords (warehouse sizes)


def number(value: int) -> str:
    return str(int(value))


class _SnowflakeObject(SqlProvider):
    """One kind of Snowflake object: its DDL keyword and the properties a declaration sets on it."""

    keyword: ClassVar[str]
    required_setting = "snowflake_account"
    # (config key, Snowflake property, how a value is written), in the order the DDL lists them.
    properties: ClassVar[tuple[tuple[str, str, Callable[[Any], str]], ...]]
    create_options: ClassVar[str] = " "  # what comes between the name and the properties in CREATE

    def qualified(self, target: Target, resource: Declared) -> str:
        return identifier(target, resource.name)

    def create_sql(self, name: str, config: State) -> str:
        assignments = self._assignments(config, [key for key, _, _ in self.properties])
        return f"CREATE {self.keyword} IF NOT EXISTS {name}" + (
            f"{self.create_options}{assignments}" if assignments else ""
        )

    def alter_sql(self, target: Target, resource: Declared, actual: State) -> list[str]:
        name, desired = self.qualified(target, resource), self.desired(resource)
        changed = [key for key, _, _ in self.properties if desired.get(key) != actual.get(key)]
        sets = self._assignments(desired, changed)
        unsets = [prop for key, prop, _ in self.properties if key in changed and desired.get(key) is None]
        statements = [f"ALTER {self.keyword} {name} SET {sets}"] if sets else []
        if unsets:
            statements.append(f"ALTER {self.keyword} {name} UNSET {', '.join(unsets)}")
        return statements

    def _assignments(self, config: State, keys: list[str]) -> str:
        return " ".join(
            f"{prop} = {write(config[key])}"
            for key, prop, write in self.properties
            if key in keys and config.get(key) is not None
        )

    @override
    def statements(self, target: Target, resource: Declared, action: Action, actual: State | None) -> list[str]:
        name = self.qualified(target, resource)
        if action == "create":
            return [self.create_sql(name, dict(resource.config))]
        if action == "delete":
            return [f"DROP {self.keyword} IF EXISTS {name}"]
        if action == "no-op":
            return []
        return self.alter_sql(target, resource, actual or {})

    @override
    def read_actual(self, target: Target, resource: Declared) -> State | None:
        if target.settings.snowflake_account:
            raise NotConfigured(NO_DRIVER)
        return None  # no account: nothing can be seen, so the plan is every object's CREATE

    @override
    def create(self, target: Target, resource: Declared) -> None:
        _unavailable(target)

    @override
    def update(self, target: Target, resource: Declared, actual: State) -> None:
        _unavailable(target)

    @override
    def delete(self, target: Target, resource: Declared) -> None:
        _unavailable(target)


def _unavailable(target: Target) -> None:
    raise NotConfigured(NO_DRIVER if target.settings.snowflake_account else NOT_CONFIGURED)


class WarehouseConfig(StrictModel):
    size: WarehouseSize = "XSMALL"
    auto_suspend_seconds: int = Field(600, ge=0, le=30 * 86400, description="Idle time before it suspends; 0: never.")
    auto_resume: bool = True
    initially_suspended: bool | None = Field(None, description="At creation only: start suspended (not compared).")


@register
class SnowflakeWarehouse(_SnowflakeObject):
    resource_type = "snowflake_warehouse"
    config_model = WarehouseConfig
    level = 0
    description = 'A Snowflake warehouse "<NAMESPACE>__<NAME>" (size, auto-suspend, auto-resume).'
    keyword = "WAREHOUSE"
    properties = (
        ("size", "WAREHOUSE_SIZE", bare),
        ("auto_suspend_seconds", "AUTO_SUSPEND", number),
        ("auto_resume", "AUTO_RESUME", boolean),
        ("initially_suspended", "INITIALLY_SUSPENDED", boolean),
    )
    create_options = " WITH "

    @override
    def desired(self, resource: Declared) -> State:
        return {key: value for key, value in resource.config.items() if key != "initially_suspended"}


class DatabaseConfig(StrictModel):
    comment: str | None = Field(None, max_length=256)
    data_retention_days: int | None = Field(None, ge=0, le=90, description="Time Travel days; unset: the account's.")


@register
class SnowflakeDatabase(_SnowflakeObject):
    resource_type = "snowflake_database"
    config_model = DatabaseConfig
    level = 10
    description = 'A Snowflake database "<NAMESPACE>__<NAME>" (comment, data retention).'
    keyword = "DATABASE"
    properties = (("data_retention_days", "DATA_RETENTION_TIME_IN_DAYS", number), ("comment", "COMMENT", literal))


class SchemaConfig(StrictModel):
    database: str = Field(pattern=rf"^{IDENTIFIER.pattern}$", description="A declared snowflake_database's name.")
    comment: str | None = Field(None, max_length=256)
    managed_access: bool = False


@register
class SnowflakeSchema(_SnowflakeObject):
    resource_type = "snowflake_schema"
    config_model = SchemaConfig
    level = 20
    dependency_fields = (("snowflake_database", "database"),)
    description = 'A Snowflake schema "<NAMESPACE>__<NAME>" in a declared database (comment, managed access).'
    keyword = "SCHEMA"
    properties = (("comment", "COMMENT", literal),)

    @override
    def qualified(self, target: Target, resource: Declared) -> str:
        return f"{identifier(target, resource.config['database'])}.{identifier(target, resource.name)}"

    @override
    def create_sql(self, name: str, config: State) -> str:
        managed = " WITH MANAGED ACCESS" if config.get("managed_access") else ""
        comment = f" COMMENT = {literal(config['comment'])}" if config.get("comment") is not None else ""
        return f"CREATE SCHEMA IF NOT EXISTS {name}{managed}{comment}"

    @override
    def alter_sql(self, target: Target, resource: Declared, actual: State) -> list[str]:
        name, desired = self.qualified(target, resource), self.desired(resource)
        statements = []
        if actual.get("database", desired["database"]) != desired["database"]:
            was = f"{identifier(target, actual['database'])}.{identifier(target, resource.name)}"
            statements.append(f"ALTER SCHEMA {was} RENAME TO {name}")
        if bool(actual.get("managed_access")) != desired["managed_access"]:
            change = "ENABLE" if desired["managed_access"] else "DISABLE"
            statements.append(f"ALTER SCHEMA {name} {change} MANAGED ACCESS")
        return statements + super().alter_sql(target, resource, actual)
