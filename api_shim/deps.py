"""FastAPI dependencies shared by every router: session, settings, principal, roles, paging."""

# No `from __future__ import annotations`: pagination() builds a runtime Literal type.

from collections.abc import Callable, Iterator
from typing import Annotated, Literal

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api_shim.errors import Forbidden
from api_shim.pagination import DEFAULT_LIMIT, MAX_LIMIT, CursorCodec, PageRequest
from api_shim.services.auth import Principal, Role, authenticate_request
from rime_dagster.settings import Settings
from rime_dagster.store.session import unit_of_work


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(request: Request) -> Iterator[Session]:
    """The request's unit of work: committed when the handler returns, rolled back on error.

    Runs with scope="function" so the commit happens before the response is sent:
    a client never sees a 2xx for a write that did not commit. A GET's (or HEAD's) unit of work starts as
    a snapshot (SQLite: no write lock until it writes), so reads answer while another writer holds the lock.
    """
    safe = request.method in ("GET", "HEAD")
    with unit_of_work(request.app.state.snapshot_sessions if safe else request.app.state.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer rime_...`")


def get_principal(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # Its own short unit of work, not the request's: a route that then waits on a slow
    # source (connection tests) must not keep a transaction, or SQLite's write lock, open.
    principal = authenticate_request(
        request.app.state.readers,
        request.app.state.sessions,
        credentials.credentials if credentials else None,
        tenant_id=settings.tenant,
    )
    request.state.principal = principal  # read by the audit middleware
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


class RequireRole:
    """Route guard: the caller's role must be at least `role`. Tests find it on every route."""

    def __init__(self, role: Role):
        self.role = role

    def __call__(self, principal: PrincipalDep) -> Principal:
        if not principal.has(self.role):
            raise Forbidden(f"This action requires the '{self.role.value}' role or higher.")
        return principal


Viewer = Annotated[Principal, Depends(RequireRole(Role.viewer))]
Auditor = Annotated[Principal, Depends(RequireRole(Role.auditor))]
Engineer = Annotated[Principal, Depends(RequireRole(Role.data_engineer))]
Lead = Annotated[Principal, Depends(RequireRole(Role.lead_data_engineer))]
Admin = Annotated[Principal, Depends(RequireRole(Role.admin))]


def get_cursor_codec(request: Request) -> CursorCodec:
    return request.app.state.cursor_codec


CursorCodecDep = Annotated[CursorCodec, Depends(get_cursor_codec)]


def pagination(*sortable: str, default_sort: str = "created_at") -> Callable[..., PageRequest]:
    """A dependency parsing limit/cursor/sort/order; `sort` is limited to `sortable`."""
    # A Literal of run-time values, so that FastAPI checks and documents them; to mypy, `sort` is a str.
    sort_type = Literal[sortable]  # type: ignore[valid-type]  # mypy needs a Literal's values in the source

    def page_request(
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (1-{MAX_LIMIT}).")
        ] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
        sort: Annotated[sort_type, Query(description="Field to order by.")] = default_sort,
        order: Annotated[
            Literal["asc", "desc"] | None,
            Query(description="Default: newest first for time fields, A-Z otherwise."),
        ] = None,
    ) -> PageRequest:
        if order is None:
            order = "desc" if sort.endswith("_at") or sort == "timestamp" else "asc"
        return PageRequest(limit=limit, cursor=cursor, sort=sort, order=order)

    return page_request
