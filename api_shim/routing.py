"""Route plumbing shared by every router: the Idempotency-Key mechanism and router factory."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from api_shim.deps import PrincipalDep
from api_shim.schemas.common import COMMON_ERRORS
from api_shim.services import idempotency

log = logging.getLogger(__name__)


class IdempotentReplay(Exception):
    def __init__(self, stored: idempotency.StoredResponse):
        self.stored = stored


async def idempotency_key(
    request: Request,
    principal: PrincipalDep,
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Repeat a request safely: a repeat with the same key within 24 h "
            "returns the first response and starts nothing new.",
        ),
    ] = None,
) -> None:
    """Declare on work-starting POSTs, after the role guard. Claims the key or replays."""
    if key is None:
        return
    key = idempotency.validate_key(key)
    app = request.app
    ref = idempotency.KeyRef(tenant_id=principal.tenant_id, principal_id=principal.user_id, key=key)
    body = await request.body()
    fingerprint = hashlib.sha256(body).hexdigest()
    stored = await run_in_threadpool(
        idempotency.claim_or_conflict,
        app.state.sessions,
        ref,
        method=request.method,
        path=request.url.path,
        fingerprint=fingerprint,
        ttl=timedelta(hours=app.state.settings.idempotency_ttl_hours),
    )
    if stored is not None:
        raise IdempotentReplay(stored)
    request.state.idempotency_ref = ref


Idempotent = Depends(idempotency_key)


class RimeRoute(APIRoute):
    """Stores a claimed idempotency key's first successful response, or releases it on failure."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except IdempotentReplay as replay:
                return Response(
                    replay.stored.body,
                    status_code=replay.stored.status,
                    media_type="application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
            except BaseException:
                await _finish(request, None)
                raise
            await _finish(request, response)
            return response

        return route_handler


async def _finish(request: Request, response: Response | None) -> None:
    ref = getattr(request.state, "idempotency_ref", None)
    if ref is None:
        return
    sessions = request.app.state.sessions
    try:
        if response is not None and 200 <= response.status_code < 300:
            body = bytes(getattr(response, "body", b"") or b"").decode()
            stored = idempotency.StoredResponse(status=response.status_code, body=body)
            await run_in_threadpool(idempotency.complete, sessions, ref, stored)
        else:
            await run_in_threadpool(idempotency.release, sessions, ref)
    except Exception:  # the work itself succeeded or failed already; never mask that
        log.exception("could not record the outcome of idempotency key %s", ref.key)


API_PREFIX = "/api/v1"


def rime_router(*, tags: list[str], prefix: str = "") -> APIRouter:
    """Every Rime router: under /api/v1, RimeRoute, the common error responses documented.

    The /api/v1 prefix belongs to the router itself (not to include_router) so that
    `scope["route"].path` is the full template the audit trail and metrics record.
    """
    return APIRouter(prefix=API_PREFIX + prefix, tags=tags, route_class=RimeRoute, responses=COMMON_ERRORS)
