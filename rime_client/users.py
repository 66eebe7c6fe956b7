"""Users of the tenant and their API tokens (`/users`): admins manage users; a user manages their own tokens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from rime_client._crud import given
from rime_client._http import Http
from rime_client.errors import NotFound
from rime_client.models import Model
from rime_client.resources import _items, _seg

Role = Literal["viewer", "auditor", "data_engineer", "lead_data_engineer", "admin"]


class User(Model):
    id: str
    email: str
    name: str
    role: Role
    status: Literal["invited", "active", "disabled"]
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None = None


class Token(Model):
    """An API token as listed: never its secret."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class TokenCreated(Token):
    """A new token: `token` is its secret, returned this once."""

    token: str


class Users:
    """Users by id or email."""

    def __init__(self, http: Http):
        self._http = http

    def _id(self, user: str) -> str:
        if user.startswith("usr_"):
            try:
                return self.get(user).id
            except NotFound:
                pass
        match = next((u for u in self.list(page_size=100) if u.email.lower() == user.lower()), None)
        if match is None:
            raise NotFound("resource_not_found", f"No user with id or email '{user}'.", status=404)
        return match.id

    def list(self, *, limit: int | None = None, page_size: int = 50) -> Iterator[User]:
        return _items(self._http, "/users", User, limit=limit, page_size=page_size)

    def get(self, user: str) -> User:
        """By id, else by email."""
        if not user.startswith("usr_"):
            user = self._id(user)
        return User.model_validate(self._http.request("GET", f"/users/{_seg(user)}"))

    def create(self, email: str, name: str, role: Role) -> User:
        """Invites a user (admins only); the user's first token (`tokens.create`) lets them in."""
        body = {"email": email, "name": name, "role": role}
        return User.model_validate(self._http.request("POST", "/users", json=body))

    def update(
        self,
        user: str,
        *,
        name: str | None = None,
        role: Role | None = None,
        status: Literal["active", "disabled"] | None = None,
    ) -> User:
        """Admins only; a disabled user's tokens stop working at once; the last admin cannot be demoted (Conflict)."""
        changes: dict[str, Any] = given(name=name, role=role, status=status)
        return User.model_validate(self._http.request("PATCH", f"/users/{_seg(self._id(user))}", json=changes))

    def delete(self, user: str) -> None:
        self._http.request("DELETE", f"/users/{_seg(self._id(user))}")


class Tokens:
    """A user's API tokens (the user's own, or any user's for an admin), the user named by id or email."""

    def __init__(self, http: Http, users: Users):
        self._http, self._users = http, users

    def _base(self, user: str) -> str:
        return f"/users/{_seg(self._users._id(user))}/tokens"

    def list(self, user: str, *, limit: int | None = None, page_size: int = 50) -> Iterator[Token]:
        return _items(self._http, self._base(user), Token, limit=limit, page_size=page_size)

    def create(self, user: str, name: str, *, expires_at: datetime | None = None) -> TokenCreated:
        """Mints a token; its secret is in the answer's `token`, and never again."""
        body = {"name": name, "expires_at": expires_at.isoformat() if expires_at else None}
        return TokenCreated.model_validate(self._http.request("POST", self._base(user), json=body))

    def revoke(self, user: str, token_id: str) -> None:
        self._http.request("DELETE", f"{self._base(user)}/{_seg(token_id)}")
