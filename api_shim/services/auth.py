"""Roles, principals and bearer-token verification."""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api_shim.errors import Unauthorized
from rime_dagster.store.models import ApiToken, User
from rime_dagster.store.session import unit_of_work

TOKEN_PREFIX = "rime_"
# Writing last_used_at on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Role(enum.StrEnum):
    """Tenant roles, lowest first; each role holds every right of the roles below it."""

    viewer = "viewer"
    auditor = "auditor"
    data_engineer = "data_engineer"
    lead_data_engineer = "lead_data_engineer"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


@dataclass(frozen=True)
class Principal:
    user_id: str
    email: str
    role: Role
    tenant_id: str
    token_id: str

    def has(self, required: Role) -> bool:
        return self.role.allows(required)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _verified(session: Session, secret: str | None, tenant_id: str) -> tuple[ApiToken, User]:
    if not secret:
        raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <token>'.")
    row = session.execute(
        select(ApiToken, User)
        .join(User, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == hash_token(secret), User.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise Unauthorized("The token is invalid.")
    token, user = row
    if token.revoked_at is not None:
        raise Unauthorized("The token has been revoked.")
    if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
        raise Unauthorized("The token has expired.")
    if user.status == "disabled":
        raise Unauthorized("The user is disabled.")
    return token, user


def still_valid(session: Session, token_ids: Collection[str]) -> set[str]:
    """Which of `token_ids` would still authenticate (not revoked or expired, their user not disabled): for
    connections that outlive the check made when they opened (the alert stream), in one query for them all."""
    if not token_ids:
        return set()
    rows = session.scalars(
        select(ApiToken.id)
        .join(User, ApiToken.user_id == User.id)
        .where(
            ApiToken.id.in_(token_ids),
            ApiToken.revoked_at.is_(None),
            (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > datetime.now(UTC)),
            User.status != "disabled",
        )
    )
    return set(rows)


def _principal(token: ApiToken, user: User) -> Principal:
    return Principal(
        user_id=user.id, email=user.email, role=Role(user.role), tenant_id=user.tenant_id, token_id=token.id
    )


def _bookkeeping_due(token: ApiToken, user: User, now: datetime) -> bool:
    stale = token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION
    return stale or user.status == "invited"


def authenticate(session: Session, secret: str | None, *, tenant_id: str) -> Principal:
    """The principal holding `secret`, or Unauthorized. Disabled users and revoked or
    expired tokens fail here on the very next request: nothing is cached. Records the token's
    use (at most once a minute) and activates an invited user, in `session`."""
    token, user = _verified(session, secret, tenant_id)
    now = datetime.now(UTC)
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        token.last_used_at = now
        user.last_seen_at = now
    if user.status == "invited":
        user.status = "active"
    return _principal(token, user)


def verify(readers: sessionmaker[Session], secret: str | None, *, tenant_id: str) -> Principal:
    """The principal holding `secret`, or Unauthorized: checked on a read-only snapshot, recording nothing."""
    with readers() as session:
        return _principal(*_verified(session, secret, tenant_id))


def authenticate_request(
    readers: sessionmaker[Session], writers: sessionmaker[Session], secret: str | None, *, tenant_id: str
) -> Principal:
    """`authenticate` for a request: verified on a read-only snapshot, so most requests take no write lock
    for it; only when the use must be recorded (once a minute per token) or the user activated does a short
    write transaction verify again and record it."""
    with readers() as session:
        token, user = _verified(session, secret, tenant_id)
        due = _bookkeeping_due(token, user, datetime.now(UTC))
        principal = _principal(token, user)
    if not due:
        return principal
    with unit_of_work(writers) as session:
        return authenticate(session, secret, tenant_id=tenant_id)
