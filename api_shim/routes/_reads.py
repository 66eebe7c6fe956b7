"""What a route that returns table data hands the read path: the app's stores and the caller's request."""

from __future__ import annotations

from fastapi import Request

from api_shim.services.auth import Principal
from api_shim.services.data_reads import ReadContext, ReadServices


def read_services(request: Request) -> ReadServices:
    state = request.app.state
    return ReadServices(sessions=state.sessions, catalogs=state.iceberg, settings=state.settings)


def read_context(request: Request, principal: Principal) -> ReadContext:
    return ReadContext(
        principal=principal,
        request_id=getattr(request.state, "request_id", ""),
        method=request.method,
        path=request.url.path,
        ip=request.client.host if request.client else None,
    )
