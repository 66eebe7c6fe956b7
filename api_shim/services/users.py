"""Users of a tenant and their API tokens; keeps at least one active admin at all times."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, Forbidden, NotFound, ValidationFailed
from api_shim.services.auth import Principal, Role, generate_token_secret, hash_token
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import ApiToken, User

log = logging.getLogger(__name__)


def get_user(session: Session, user_id: str, *, tenant_id: str) -> User:
    user = session.get(User, user_id)
    if user is None or user.tenant_id != tenant_id:
        raise NotFound.of("User", user_id)
    return user


def _active_admins(session: Session, tenant_id: str) -> int:
    """The tenant's active admins (an invited one has never signed in, a disabled one cannot), locked until the
    transaction ends: two demotions of the last two admins at once cannot both see the other one still there.
    PostgreSQL locks the rows (the second waits, then sees the first's change); SQLite's write lock, which every
    transaction takes up front, already serialises them."""
    admins = session.scalars(
        select(User.id)
        .where(User.tenant_id == tenant_id, User.role == Role.admin.value, User.status == "active")
        .order_by(User.id)
        .with_for_update()
    )
    return len(admins.all())


def _guard_last_admin(session: Session, user: User, *, becomes_admin: bool) -> None:
    is_active_admin = user.role == Role.admin.value and user.status == "active"
    if is_active_admin and not becomes_admin and _active_admins(session, user.tenant_id) <= 1:
        raise Conflict("This is the last admin of the tenant: it cannot be removed, disabled or demoted.")


def create_user(session: Session, *, tenant_id: str, email: str, name: str, role: Role) -> User:
    email = email.lower()
    if session.scalar(select(User.id).where(User.tenant_id == tenant_id, User.email == email)):
        raise Conflict(f"A user with email '{email}' already exists.")
    user = User(id=new_id("user"), tenant_id=tenant_id, email=email, name=name, role=role.value, status="invited")
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # a concurrent invite of the same email
        raise Conflict(f"A user with email '{email}' already exists.") from None
    return user


def update_user(session: Session, user: User, *, changes: dict) -> User:
    role = Role(changes.get("role", user.role))
    status = changes.get("status", user.status)
    if status == "invited" and user.status != "invited":
        raise ValidationFailed.field("status", "Status can be set to 'active' or 'disabled'.")
    _guard_last_admin(session, user, becomes_admin=role == Role.admin and status != "disabled")
    if "name" in changes:
        user.name = changes["name"]
    user.role = role.value
    user.status = status
    session.flush()
    return user


def delete_user(session: Session, user: User) -> None:
    _guard_last_admin(session, user, becomes_admin=False)
    session.delete(user)
    session.flush()


def ensure_can_manage_tokens(principal: Principal, user: User) -> None:
    """Users manage their own tokens; admins manage everybody's."""
    if principal.user_id != user.id and not principal.has(Role.admin):
        raise Forbidden("Only an admin can manage another user's tokens.")


@dataclass
class IssuedToken:
    token: ApiToken
    secret: str


def create_token(session: Session, user: User, *, name: str, expires_at: datetime | None) -> IssuedToken:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise ValidationFailed.field("expires_at", "Must be in the future.")
    secret = generate_token_secret()
    token = ApiToken(
        id=new_id("token"),
        user_id=user.id,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[:12],
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return IssuedToken(token=token, secret=secret)


def get_token(session: Session, user: User, token_id: str) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != user.id:
        raise NotFound.of("Token", token_id)
    return token


def revoke_token(session: Session, token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
        session.flush()


def ensure_bootstrap_admin(session: Session, *, tenant_id: str, email: str, secret: str) -> User:
    """Make sure an active admin holds `secret` (RIME_ADMIN_TOKEN): scripts and tests bootstrap with it."""
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is not None:
        owner = token.user
        if owner.tenant_id != tenant_id:
            raise ValueError("RIME_ADMIN_TOKEN is already used by another tenant")
        if owner.role != Role.admin.value or owner.status == "disabled" or token.revoked_at or token.expires_at:
            log.warning("RIME_ADMIN_TOKEN's user or token was changed; restoring it as an active admin token")
        owner.role, owner.status = Role.admin.value, "active"
        token.revoked_at = token.expires_at = None
        session.flush()
        return owner
    user = session.scalar(select(User).where(User.tenant_id == tenant_id, User.email == email.lower()))
    if user is None:
        user = User(
            id=new_id("user"), tenant_id=tenant_id, email=email.lower(), name="Bootstrap admin", role=Role.admin.value
        )
        session.add(user)
    user.role, user.status = Role.admin.value, "active"
    session.add(
        ApiToken(
            id=new_id("token"), user=user, name="RIME_ADMIN_TOKEN", token_hash=hash_token(secret), prefix=secret[:12]
        )
    )
    session.flush()
    return user
