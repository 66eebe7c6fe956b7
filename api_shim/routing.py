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

from api_shim.errors import RimeError
from api_shim.schemas.common import COMMON_ERRORS
from api_shim.services import idempotency
from api_shim.services.auth import Principal, authenticate_request

log = logging.getLogger(__name__)


def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Repeat a request safely: a repeat with the same key within 24 h "
            "returns the first response and starts nothing new.",
        ),
    ] = None,
) -> str | None:
    """Marks a route as idempotent (RimeRoute does the work) and documents the header."""
    return idempotency.validate_key(key) if key is not None else None


Idempotent = Depends(idempotency_key)


def _declares_idempotency(dependant) -> bool:
    stack = [dependant]
    while stack:
        current = stack.pop()
        if current.call is idempotency_key:
            return True
        stack.extend(current.dependencies)
    return False


def _bearer(request: Request) -> str | None:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def _authenticate(request: Request) -> Principal | None:
    state = request.app.state
    try:
        return authenticate_request(state.readers, state.sessions, _bearer(request), tenant_id=state.settings.tenant)
    except RimeError:
        return None  # the route's own guard answers 401


class RimeRoute(APIRoute):
    """Adds the Idempotency-Key mechanism to routes that declare `Idempotent`.

    The key is claimed, and later completed or released, in transactions of its own
    that run before and after the request's unit of work: a concurrent repeat sees the
    claim at once, and SQLite never has two writers inside one request.
    """

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = self._idempotent_handler(super().get_route_handler())
        if (self.openapi_extra or {}).get(ACCEPTS_YAML):
            return _yaml_to_json(handler)
        return handler

    def _idempotent_handler(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        if not _declares_idempotency(self.dependant):
            return handler

        async def idempotent_handler(request: Request) -> Response:
            raw_key = request.headers.get("idempotency-key")
            if raw_key is None:
                return await handler(request)
            key = idempotency.validate_key(raw_key)
            principal = await run_in_threadpool(_authenticate, request)
            if principal is None:
                return await handler(request)
            ref = idempotency.KeyRef(tenant_id=principal.tenant_id, principal_id=principal.user_id, key=key)
            sessions = request.app.state.sessions
            stored = await run_in_threadpool(
                idempotency.claim,
                sessions,
                ref,
                method=request.method,
                path=request.url.path,
                fingerprint=hashlib.sha256(await request.body()).hexdigest(),
                ttl=timedelta(hours=request.app.state.settings.idempotency_ttl_hours),
            )
            if stored is not None:
                return Response(
                    stored.body,
                    status_code=stored.status,
                    media_type="application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
            # Record the outcome on FastAPI's function-scoped exit stack: pushed before the
            # handler opens its DB session, it runs after that session committed (or failed),
            # and before the response leaves. A failed commit therefore releases the key.
            outcome: dict[str, Response] = {}

            async def finish(exc_type, exc, tb) -> bool:
                await _finish(sessions, ref, outcome.get("response") if exc is None else None)
                return False

            request.scope["fastapi_function_astack"].push_async_exit(finish)
            outcome["response"] = await handler(request)
            return outcome["response"]

        return idempotent_handler


async def _finish(sessions, ref: idempotency.KeyRef, response: Response | None) -> None:
    """Store a 2xx as the key's answer; forget the key otherwise so the client can retry."""
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
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
ACCEPTS_YAML = "x-rime-accepts-yaml"


def yaml_body(model_name: str) -> dict[str, Any]:
    """`openapi_extra` of a route whose JSON body may also be sent as YAML (same schema)."""
    schema = {"$ref": f"#/components/schemas/{model_name}"}
    return {
        ACCEPTS_YAML: True,
        "requestBody": {"content": {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}}},
    }


def _yaml_to_json(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """A YAML body (Content-Type application/yaml) is parsed safely and handed on as JSON."""
    import json

    import yaml

    from api_shim.handlers import error_response

    async def yaml_handler(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in YAML_TYPES:
            return await handler(request)
        raw = await request.body()
        try:
            data = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or "cannot be parsed"
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            return error_response(
                400,
                "validation_error",
                "The request body is not valid YAML.",
                details=[{"field": "body", "message": f"Malformed YAML: {problem}{at}."}],
            )
        body = json.dumps(data, default=str).encode()
        headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await request.receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        request.scope["headers"] = headers
        return await handler(Request(request.scope, receive))

    return yaml_handler


def rime_router(*, tags: list[str], prefix: str = "") -> APIRouter:
    """Every Rime router: under /api/v1, RimeRoute, the common error responses documented.

    The /api/v1 prefix belongs to the router itself (not to include_router) so that
    `scope["route"].path` is the full template the audit trail and metrics record.
    """
    return APIRouter(prefix=API_PREFIX + prefix, tags=tags, route_class=RimeRoute, responses=COMMON_ERRORS)
