"""Who may open a WebSocket (a run watch, the alert stream): the token's principal, within the per-user connect
limit. Browsers cannot send an Authorization header on a WebSocket, so these routes authenticate themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from api_shim.errors import RateLimited, RimeError
from api_shim.services.auth import Principal, authenticate

if TYPE_CHECKING:
    from api_shim.middleware import RateLimits


class WatchRefused(Exception):
    """A WebSocket refused: `error` says why (its status: 401, 403, 404, 429), `principal` who asked, if known."""

    def __init__(self, error: RimeError, principal: Principal | None, status: int | None = None):
        super().__init__(error.message)
        self.error, self.principal, self.status = error, principal, status or error.status


def websocket_principal(session: Session, token: str | None, *, tenant_id: str) -> Principal:
    """The principal holding `token` (its use recorded in `session`); else WatchRefused (401 for any failed login).
    Count the connect with `within_connect_limit` once `session`'s transaction has ended."""
    try:
        return authenticate(session, token, tenant_id=tenant_id)
    except RimeError as exc:
        raise WatchRefused(exc, None, status=401) from None


def within_connect_limit(rate_limits: RateLimits, principal: Principal) -> None:
    """Counts a WebSocket connect of `principal`'s user; WatchRefused (429) over the per-user limit.

    Outside any write transaction: with several API workers the count is a write to the metadata store, which on
    SQLite would wait for the caller's own transaction to end (the write lock is the database's)."""
    if not rate_limits.websocket_connect("user", principal.user_id):
        raise WatchRefused(RateLimited("Too many WebSocket connects by this user; retry shortly."), principal)
