"""Route plumbing shared by every router: the Idempotency-Key mechanism, YAML and file bodies, the router factory."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from enum import Enum
from types import TracebackType
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message
from typing_extensions import override

from api_shim.deps import RequireRole
from api_shim.errors import PayloadTooLarge, RimeError, ValidationFailed
from api_shim.handlers import error_response
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


def _dependencies(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    """The callables of a route's dependency tree, depth first."""
    stack = [dependant]
    while stack:
        current = stack.pop()
        if current.call is not None:
            yield current.call
        stack.extend(current.dependencies)


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
            guard = next((call for call in _dependencies(self.dependant) if isinstance(call, RequireRole)), None)
            return _yaml_to_json(handler, guard)
        return handler

    def _idempotent_handler(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        if not any(call is idempotency_key for call in _dependencies(self.dependant)):
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
            claimed = await run_in_threadpool(
                idempotency.claim,
                sessions,
                ref,
                method=request.method,
                path=request.url.path,
                fingerprint=hashlib.sha256(await request.body()).hexdigest(),
                ttl=timedelta(hours=request.app.state.settings.idempotency_ttl_hours),
            )
            if isinstance(claimed, idempotency.StoredResponse):
                return Response(
                    claimed.body,
                    status_code=claimed.status,
                    media_type="application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
            # Record the outcome on FastAPI's function-scoped exit stack: pushed before the
            # handler opens its DB session, it runs after that session committed (or failed),
            # and before the response leaves. A failed commit therefore releases the key.
            outcome: dict[str, Response] = {}

            async def finish(
                _exc_type: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
            ) -> bool:
                await _finish(sessions, ref, outcome.get("response") if exc is None else None)
                return False

            request.scope["fastapi_function_astack"].push_async_exit(finish)
            with idempotency.launches_under(sessions, ref, claimed):  # DagsterClient.launch_run records its run
                outcome["response"] = await handler(request)
            return outcome["response"]

        return idempotent_handler


async def _finish(sessions: sessionmaker[Session], ref: idempotency.KeyRef, response: Response | None) -> None:
    """Store a 2xx as the key's answer; forget the key otherwise so the client can retry (unless the request
    launched a run: the retry then answers with that run)."""
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


class _AliasRefused(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark | None) -> None:
        self.problem_mark = mark


class _PlainYamlLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases: an alias repeats a whole subtree, so a few hundred bytes of
    nested aliases expand to gigabytes of JSON (the "billion laughs"). A pipeline never needs them."""

    @override
    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasRefused(event.start_mark)
        return super().compose_node(parent, index)


def _yaml_as_json(raw: bytes, max_bytes: int) -> bytes:
    """The YAML document `raw` as a JSON body; ValidationFailed or PayloadTooLarge. CPU-bound: run it in a thread."""
    try:
        data = yaml.load(raw, Loader=_PlainYamlLoader) if raw.strip() else None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        if isinstance(exc, _AliasRefused):
            message = f"YAML anchors and aliases (& and *) are not allowed{at}; write the value out."
        else:
            message = f"Malformed YAML: {getattr(exc, 'problem', None) or 'cannot be parsed'}{at}."
        raise ValidationFailed(
            "The request body is not valid YAML.", details=[{"field": "body", "message": message}]
        ) from None
    except RecursionError:
        raise ValidationFailed.field("body", "The YAML document is nested too deeply.") from None
    body = json.dumps(data, default=str).encode()
    if len(body) > max_bytes:  # the limit is on what the route reads, not on what the client sent
        raise PayloadTooLarge(f"The request body, as JSON, is larger than {max_bytes} bytes.")
    return body


def _yaml_to_json(handler: Callable[[Request], Any], guard: RequireRole | None) -> Callable[[Request], Any]:
    """A YAML body (Content-Type application/yaml) is handed on as JSON: read only once the caller passed the
    route's `guard` (authenticated, role), parsed without anchors or aliases in a worker thread, and held to
    the body limit as JSON."""

    async def yaml_handler(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in YAML_TYPES:
            return await handler(request)
        state = request.app.state
        try:
            principal = await run_in_threadpool(
                authenticate_request, state.readers, state.sessions, _bearer(request), tenant_id=state.settings.tenant
            )
            request.state.principal = principal  # read by the audit middleware
            if guard is not None:
                guard(principal)
            raw = await request.body()
            body = await run_in_threadpool(_yaml_as_json, raw, state.settings.max_body_bytes)
        except RimeError as exc:
            return error_response(exc.status, exc.code, exc.message, details=exc.details)
        headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return await request.receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        request.scope["headers"] = headers
        return await handler(Request(request.scope, receive))

    return yaml_handler


def files_body(field: str, description: str) -> dict[str, Any]:
    """`openapi_extra` of a route that reads the files of its multipart `field` itself, with `uploaded_files`."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "description": description}
    schema = {"type": "object", "properties": {field: files}, "required": [field]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


@asynccontextmanager
async def uploaded_files(request: Request, field: str) -> AsyncIterator[list[UploadFile]]:
    """The files of the multipart body's `field`, read now, so after the route's guard: with a File() parameter
    FastAPI reads (and spools to disk) the whole body before any dependency runs, authentication included."""
    async with request.form() as form:
        files = [value for value in form.getlist(field) if isinstance(value, UploadFile)]
        if not files:
            raise ValidationFailed.field(field, "At least one file is required.")
        yield files


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operationId: its name (the endpoint function's), e.g. `list_projects`."""
    return route.name


def rime_router(*, tags: list[str | Enum], prefix: str = "") -> APIRouter:
    """Every Rime router: under /api/v1, RimeRoute, the common error responses documented.

    The /api/v1 prefix belongs to the router itself (not to include_router) so that
    `scope["route"].path` is the full template the audit trail and metrics record. The router holds everything
    its routes need (prefix, tags, responses, operation ids), so the app adds its routes as they are
    (`add_routes`).
    """
    return APIRouter(
        prefix=API_PREFIX + prefix,
        tags=tags,
        route_class=RimeRoute,
        responses=COMMON_ERRORS,
        generate_unique_id_function=operation_id,
    )


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Adds `router`'s routes to `app` as they were built when their module was imported.

    `app.include_router` wraps the router instead, and FastAPI (0.16x) builds every included route again, per
    app, at the first request that looks past it: about 0.5 s of CPU in the first request to a route late in the
    list, in each process and in each app a test makes. The routers set no include-time options (prefix, tags,
    responses and operation ids are their own), and nothing overrides dependencies, so the routes are the same.
    """
    app.router.routes.extend(router.routes)
