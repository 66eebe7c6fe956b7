"""`postgres_schema`: a schema, its owner and its USAGE/CREATE grants on the configured PostgreSQL.

Where: the one server of RIME_INFRA_POSTGRES_URL (a SQLAlchemy URL, a secret: it is never logged, and no message
of this module quotes it, nor its password). Without it, reads and changes raise NotConfigured.

Names: a project's schema `<name>` is the PostgreSQL schema `<project namespace>__<name>`, so two projects
declaring the same name get two schemas, and no declaration can name (and so grant on, or drop) a schema of
another project or one the platform does not manage. PostgreSQL cuts longer identifiers to 63 bytes without a
word: a longer `<namespace>__<name>` is refused instead.

Grants are authoritative, like Terraform's `postgresql_grant`: the declaration lists every role that holds USAGE
or CREATE on the schema, so a grant made or revoked behind the platform's back is drift (an `update` that puts the
declared grants back). The owner holds both by default and is left out of the comparison unless the declaration
names it among the grants. `owner`, when declared, is compared; when not, whoever made the schema keeps it.
Grants are read from the catalog (`aclexplode` of `pg_namespace.nspacl`, the owner's default when it is null),
PUBLIC as the role `public` (PostgreSQL reads the identifier "public" as PUBLIC).

Changes run exactly the plan's `statements` in one transaction: PostgreSQL's DDL is transactional, so a refused
statement (a GRANT to a role that does not exist) leaves nothing half done, and the ProviderError carries
PostgreSQL's own message. A schema is dropped RESTRICT: one that still holds objects is refused, not emptied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql
from pydantic import Field, field_validator, model_validator

from rime_dagster.infrastructure.providers.base import (
    IDENTIFIER,
    Action,
    Declared,
    NotConfigured,
    ProviderError,
    SqlProvider,
    State,
    StrictModel,
    Target,
    register,
)

Privilege = Literal["CREATE", "USAGE"]
R = TypeVar("R")
ROLE = rf"^{IDENTIFIER.pattern}$"  # pydantic searches a pattern: anchored, it must match whole
MAX_IDENTIFIER_BYTES = 63
CONNECT_TIMEOUT_SECONDS = 10

# Each role holding a privilege on the schema, with the schema's owner (rows: owner, grantee, privilege).
ACL_QUERY = """
SELECT pg_get_userbyid(n.nspowner),
       CASE WHEN a.grantee = 0 THEN 'public' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
FROM pg_namespace n
LEFT JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a ON true
WHERE n.nspname = %s
"""


class Grant(StrictModel):
    role: str = Field(pattern=ROLE, description="A role (lower-case identifier), or `public`.")
    privileges: list[Privilege] = Field(min_length=1)

    @field_validator("privileges")
    @classmethod
    def _sorted(cls, value: list[Privilege]) -> list[Privilege]:
        return sorted(set(value))


class PostgresSchemaConfig(StrictModel):
    grants: list[Grant] = Field(default_factory=list)
    owner: str | None = Field(None, pattern=ROLE, description="The owning role; unset: the platform's login.")

    @model_validator(mode="after")
    def _one_grant_per_role(self) -> PostgresSchemaConfig:
        roles = [grant.role for grant in self.grants]
        if len(set(roles)) != len(roles):
            raise ValueError("Each role may appear in one grant only.")
        self.grants.sort(key=lambda grant: grant.role)
        return self


@register
class PostgresSchema(SqlProvider):
    resource_type = "postgres_schema"
    config_model = PostgresSchemaConfig
    level = 10
    required_setting = "infra_postgres_url"
    description = "A PostgreSQL schema `<namespace>__<name>` with its owner and USAGE/CREATE grants."

    def desired(self, resource: Declared) -> State:
        return {"owner": resource.config.get("owner"), "grants": list(resource.config.get("grants", []))}

    def read_actual(self, target: Target, resource: Declared) -> State | None:
        schema = schema_name(target, resource.name)
        with _connection(target) as conn:
            rows = _run(conn, lambda cur: cur.execute(ACL_QUERY, (schema,)).fetchall())
        if not rows:
            return None
        declared = {grant["role"] for grant in resource.config.get("grants", [])}
        owner = rows[0][0]
        held: dict[str, set[str]] = {}
        for _, grantee, privilege in rows:
            if privilege in ("CREATE", "USAGE") and (grantee != owner or grantee in declared):
                held.setdefault(grantee, set()).add(privilege)
        grants = [{"role": role, "privileges": sorted(held[role])} for role in sorted(held)]
        return {"owner": owner if resource.config.get("owner") else None, "grants": grants}

    def statements(self, target: Target, resource: Declared, action: Action, actual: State | None) -> list[str]:
        schema = sql.Identifier(schema_name(target, resource.name))
        desired = self.desired(resource)
        if action == "delete":
            return [sql.SQL("DROP SCHEMA {} RESTRICT").format(schema).as_string()]
        if action == "no-op":
            return []
        before: State = actual if action == "update" and actual is not None else {"owner": None, "grants": []}
        out: list[sql.Composable] = []
        owner = desired["owner"]
        if action == "create":
            authorization = sql.SQL(" AUTHORIZATION {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
            out.append(sql.SQL("CREATE SCHEMA {}{}").format(schema, authorization))
        elif owner and owner != before["owner"]:
            out.append(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(schema, sql.Identifier(owner)))
        out += _grant_changes(schema, before["grants"], desired["grants"])
        return [statement.as_string() for statement in out]

    def create(self, target: Target, resource: Declared) -> None:
        self._apply(target, self.statements(target, resource, "create", None))

    def update(self, target: Target, resource: Declared, actual: State) -> None:
        self._apply(target, self.statements(target, resource, "update", actual))

    def delete(self, target: Target, resource: Declared) -> None:
        self._apply(target, self.statements(target, resource, "delete", None))

    def _apply(self, target: Target, statements: list[str]) -> None:
        def run_all(cur: psycopg.Cursor) -> None:
            for statement in statements:
                cur.execute(statement)

        with _connection(target) as conn, conn.transaction():
            _run(conn, run_all)


def schema_name(target: Target, name: str) -> str:
    """The PostgreSQL schema of a project's `name`, or ProviderError when PostgreSQL would cut it."""
    schema = f"{target.namespace}__{name}"
    if len(schema.encode()) > MAX_IDENTIFIER_BYTES:
        raise ProviderError(
            f"The schema name '{schema}' is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes: "
            "choose a shorter name."
        )
    return schema


def _grant_changes(schema: sql.Identifier, before: list[dict], after: list[dict]) -> list[sql.Composable]:
    """REVOKE what a role holds and should not, GRANT what it should and does not; roles in order."""
    has = {grant["role"]: set(grant["privileges"]) for grant in before}
    wants = {grant["role"]: set(grant["privileges"]) for grant in after}
    out: list[sql.Composable] = []
    for role in sorted(has.keys() | wants.keys()):
        held, wanted = has.get(role, set()), wants.get(role, set())
        if held - wanted:
            revoke = sql.SQL("REVOKE {} ON SCHEMA {} FROM {}")
            out.append(revoke.format(_list(held - wanted), schema, sql.Identifier(role)))
        if wanted - held:
            grant = sql.SQL("GRANT {} ON SCHEMA {} TO {}")
            out.append(grant.format(_list(wanted - held), schema, sql.Identifier(role)))
    return out


def _list(privileges: set[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL(privilege) for privilege in sorted(privileges))


def _connect_args(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        raise NotConfigured("RIME_INFRA_POSTGRES_URL is not a valid SQLAlchemy URL.") from None
    if parsed.get_backend_name() != "postgresql":
        raise NotConfigured("RIME_INFRA_POSTGRES_URL must be a PostgreSQL URL (postgresql+psycopg://...).")
    args: dict[str, Any] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
        **{key: value for key, value in parsed.query.items() if isinstance(value, str)},
    }
    args.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    return {key: value for key, value in args.items() if value is not None}


@contextmanager
def _connection(target: Target) -> Iterator[psycopg.Connection]:
    url = target.settings.infra_postgres_url
    if url is None:
        raise NotConfigured(
            "PostgreSQL schemas need a PostgreSQL server: set RIME_INFRA_POSTGRES_URL (a SQLAlchemy URL)."
        )
    args = _connect_args(url.get_secret_value())
    try:
        conn = psycopg.connect(autocommit=True, **args)
    except psycopg.Error as exc:
        message = str(exc).strip()
        if args.get("password"):
            message = message.replace(str(args["password"]), "***")
        raise ProviderError(f"Could not connect to PostgreSQL: {message}") from None
    with conn:
        yield conn


def _run(conn: psycopg.Connection, work: Callable[[psycopg.Cursor], R]) -> R:
    """`work(cursor)`; a driver error becomes a ProviderError with PostgreSQL's own message (a server's message
    never quotes the client's password or URL)."""
    try:
        with conn.cursor() as cur:
            return work(cur)
    except psycopg.Error as exc:
        message = exc.diag.message_primary or type(exc).__name__
        raise ProviderError(f"PostgreSQL refused it: {message}") from None
