"""ASGI middleware: request ids + access log + metrics, rate limits, and the audit trail.

Pure ASGI (no BaseHTTPMiddleware) so streaming responses pass through untouched.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any

from limits import parse as parse_limit
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim import metrics
from api_shim.handlers import error_payload
from api_shim.ids import new_request_id
from api_shim.services import audit
from api_shim.settings import Settings

access_log = logging.getLogger("api_shim.access")
log = logging.getLogger(__name__)

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# A secret passed in a query string, up to the end of its parameter (or of the URL, in a log line).
_SECRET_QUERY = re.compile(r"(?i)\b(token|access_token|api_key)=[^&\s\"']*")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
_UPLOAD_PATH = re.compile(r"^/api/v1/projects/[^/]+/connectors/[^/]+/files$")


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1=***", text)


class RedactSecrets(logging.Filter):
    """Masks query-string secrets (`?token=` of the pipeline-run WebSocket) in a log record's message and
    arguments: uvicorn's access and WebSocket lines carry the path with its query string. Arguments are
    masked one by one, as uvicorn's access formatter unpacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


async def _send_json(send: Send, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    """Request id on every response, one access-log line per request (secrets redacted),
    request metrics, and an enveloped 500 for anything unhandled."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID_OK.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)

        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error serving %s %s [%s]", scope["method"], scope["path"], request_id)
            if status["sent"]:
                raise
            status["code"] = 500
            await _send_json(
                send,
                500,
                error_payload("internal_error", f"Something went wrong on our end. Quote request id {request_id}."),
                {"X-Request-Id": request_id},
            )
        finally:
            elapsed = time.perf_counter() - started
            template = route_template(scope)
            metrics.HTTP_REQUESTS.labels(scope["method"], template, str(status["code"])).inc()
            metrics.HTTP_LATENCY.labels(scope["method"], template).observe(elapsed)
            query = redact(scope.get("query_string", b"").decode("latin-1"))
            access_log.info(
                "%s %s%s %s %.1fms request_id=%s",
                scope["method"],
                scope["path"],
                f"?{query}" if query else "",
                status["code"],
                elapsed * 1000,
                request_id,
            )


def endpoint_group(path: str) -> str | None:
    """The Rime endpoint group of an /api/v1 path: `projects`, `connectors`, `users`, ..."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] != "api" or parts[1] != "v1":
        return None
    if parts[2] == "projects" and len(parts) >= 5:
        return parts[4]
    return parts[2]


class RateLimitMiddleware:
    """Moving-window limits (the `limits` library) per tenant and endpoint group.

    Every /api/v1 response carries RateLimit-Limit / RateLimit-Remaining / RateLimit-Reset;
    over the limit is a 429 `rate_limited` with Retry-After.
    """

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.tenant = settings.tenant
        self.limiter = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage))
        self.default = parse_limit(settings.rate_limit_default)
        self.overrides = {group: parse_limit(value) for group, value in settings.rate_limits.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        group = endpoint_group(scope.get("path", "")) if scope["type"] == "http" else None
        if group is None:
            return await self.app(scope, receive, send)
        item = self.overrides.get(group, self.default)
        allowed = self.limiter.hit(item, self.tenant, group)
        stats = self.limiter.get_window_stats(item, self.tenant, group)
        reset_in = max(1, math.ceil(stats.reset_time - time.time()))
        headers = {
            "RateLimit-Limit": str(item.amount),
            "RateLimit-Remaining": str(max(0, stats.remaining)),
            "RateLimit-Reset": str(reset_in),
        }
        if not allowed:
            metrics.RATE_LIMITED.labels(group).inc()
            headers["Retry-After"] = str(reset_in)
            message = (
                f"Rate limit of {item.amount} per {item.get_expiry()} s for '{group}' exceeded; retry in {reset_in} s."
            )
            return await _send_json(send, 429, error_payload("rate_limited", message), headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                mutable = MutableHeaders(scope=message)
                for key, value in headers.items():
                    mutable[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuses request bodies above `max_bytes` with 413 `payload_too_large`.

    A declared Content-Length is refused before reading; a chunked body is counted as
    it streams and refused the moment it passes the limit (the handler sees the error
    while reading, so nothing is half-processed).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Upload areas take files (each checked against its own limit by the route).
        limit = self.upload_max_bytes if _UPLOAD_PATH.match(scope["path"]) else self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_json(send, 413, error_payload("payload_too_large", self._message(limit)), {})
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, because FastAPI re-raises those from body parsing
                    # (anything else becomes a generic 400); handlers map it to the envelope.
                    raise HTTPException(413, detail=self._message(limit))
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    def _message(limit: int) -> str:
        return f"The request body is larger than {limit} bytes."


class AuditMiddleware:
    """Appends an audit entry for every mutating call and every denied (403) call.

    The entry is written before the response leaves, so a client that got an answer
    can always find it in the trail.
    """

    def __init__(self, app: ASGIApp, settings: Settings, sessions):
        self.app = app
        self.tenant = settings.tenant
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        mutating = scope["method"] in MUTATING
        held: list[Message] = []

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                if not mutating and message["status"] != 403:
                    return await send(message)
                held.append(message)
                return
            if not held:
                return await send(message)
            held.append(message)
            if not message.get("more_body", False):
                await self._record(scope, held)
                for pending in held:
                    await send(pending)
                held.clear()

        await self.app(scope, receive, send_audited)

    async def _record(self, scope: Scope, messages: list[Message]) -> None:
        route = scope.get("route")
        if route is None:  # no endpoint matched: nothing was attempted
            return
        status = messages[0]["status"]
        body = b"".join(m.get("body", b"") for m in messages[1:])
        try:
            entry = self._entry(scope, route, status, body)
            await run_in_threadpool(self._write, entry)
        except Exception:
            metrics.AUDIT_WRITE_FAILURES.inc()
            log.exception("could not write audit entry for %s %s", scope["method"], scope["path"])

    def _write(self, entry: audit.AuditEntry) -> None:
        with self.sessions.begin() as session:
            audit.record(session, entry)

    def _entry(self, scope: Scope, route, status: int, body: bytes) -> audit.AuditEntry:
        state = scope.get("state", {})
        principal = state.get("principal")
        path_params: dict[str, str] = scope.get("path_params", {})
        action = route.name
        resource_type = action.split(".", 1)[0]
        resource_id = None
        # A create (201 on a collection) names the new resource in its body; run triggers (202)
        # and actions are recorded against the resource in their path.
        if scope["method"] == "POST" and status == 201 and not route.path.endswith("}"):
            resource_id = _created_id(body)
        if resource_id is None and path_params:
            resource_id = list(path_params.values())[-1]
        project_id = path_params.get("id") if route.path.startswith("/api/v1/projects/{id}") else None
        if project_id is None and resource_type == "project":
            project_id = resource_id
        client = scope.get("client")
        return audit.AuditEntry(
            tenant_id=self.tenant,
            project_id=project_id,
            actor_id=principal.user_id if principal else None,
            actor=principal.email if principal else "anonymous",
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            request_id=state.get("request_id", ""),
            method=scope["method"],
            path=scope["path"][:500],
            status_code=status,
            ip=client[0] if client else None,
        )


def _created_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, dict):
        value = payload.get("id")
        return value if isinstance(value, str) else None
    return None
