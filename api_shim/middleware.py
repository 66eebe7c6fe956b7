"""ASGI middleware: request ids + access log + metrics, rate limits, and the audit trail.

Pure ASGI (no BaseHTTPMiddleware) so streaming responses pass through untouched.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from limits import RateLimitItem, WindowStats
from limits import parse as parse_limit
from limits.storage import MovingWindowSupport, storage_from_string
from limits.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from api_shim import metrics
from api_shim.errors import RimeError
from api_shim.handlers import STORE_UNAVAILABLE, error_payload
from api_shim.rate_limit_store import SCHEME as STORE_SCHEME
from api_shim.rate_limit_store import StoreRateLimitStorage
from api_shim.services import audit, auth
from api_shim.services.auth import hash_token
from rime_dagster.settings import Settings
from rime_dagster.store.ids import new_request_id

P = ParamSpec("P")
R = TypeVar("R")
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
            # Probes (a load balancer's, `rime up`'s) would bury the requests in the log: DEBUG when they succeed.
            probe = scope["path"] in ("/health", "/health/ready", "/metrics") and status["code"] == 200
            access_log.log(
                logging.DEBUG if probe else logging.INFO,
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


def client_address(scope: Scope) -> str:
    """The caller's address, as rate limits and budgets key it: the client's IP (behind a proxy, uvicorn takes it
    from X-Forwarded-For when `--forwarded-allow-ips` trusts the proxy); an IPv6 address by its /64, as one host
    usually holds a whole /64."""
    client = scope.get("client")
    host = client[0] if client else "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(getattr(ip, "ipv4_mapped", None) or ip)


_DROP_NOTICES = parse_limit("1/minute")


class RateLimits:
    """The limiter (the `limits` library) and the limits of the settings: one per app, shared by the rate-limit
    and audit middleware and the WebSocket route.

    In memory (one API process, the default) and in redis the limiter is the moving window; in the metadata store
    (rime-store://, what several API workers share, api_shim/rate_limit_store.py) the sliding-window counter, which
    a database can count atomically. A store that does not answer lets requests through (they are not counted):
    the route answers 503 itself if it needs the store."""

    def __init__(self, settings: Settings):
        uri = settings.rate_limit_storage_uri
        if uri.startswith(f"{STORE_SCHEME}://"):
            storage = storage_from_string(uri, metadata_url=settings.metadata_url)
            if settings.rate_limit_storage.startswith("memory://"):
                log.debug(  # `rime up` says so in its summary
                    "%d API workers: rate limits are counted in the metadata store (rime-store://), shared by all "
                    "of them; set RIME_RATE_LIMIT_STORAGE to a redis:// URL to count them there instead",
                    settings.api_workers,
                )
        else:
            storage = storage_from_string(uri)
        self.limiter: RateLimiter = (
            MovingWindowRateLimiter(storage)
            if isinstance(storage, MovingWindowSupport)
            else SlidingWindowCounterRateLimiter(storage)
        )
        # The store's limiter does I/O: the middleware asks it from a worker thread, not the event loop.
        self.blocking = isinstance(storage, StoreRateLimitStorage)
        self.default = parse_limit(settings.rate_limit_default)
        self.overrides = {group: parse_limit(value) for group, value in settings.rate_limits.items()}
        self.anonymous = parse_limit(settings.rate_limit_anonymous)
        self.websocket = parse_limit(settings.rate_limit_websocket)
        self.failed_login_audit = parse_limit(settings.audit_failed_auth_limit)
        self.failed_login_audit_total = parse_limit(settings.audit_failed_auth_total_limit)

    def of_group(self, group: str) -> RateLimitItem:
        return self.overrides.get(group, self.default)

    async def call(self, method: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`method` of these limits, from a worker thread when the limiter queries the metadata store (not the event
        loop's business), else directly (memory: microseconds)."""
        if self.blocking:
            return await run_in_threadpool(method, *args, **kwargs)
        return method(*args, **kwargs)

    def hit(self, item: RateLimitItem, *key: str) -> bool:
        """Counts one hit of `key` against `item`; False over the limit. A store that fails lets it through."""
        try:
            return self.limiter.hit(item, *key)
        except SQLAlchemyError:
            log.warning("rate limit storage unavailable; %s not counted", item, exc_info=True)
            return True

    def take(self, item: RateLimitItem, *key: str) -> tuple[bool, WindowStats | None]:
        """A hit and the window after it (None when the store failed: the request passes, without headers)."""
        try:
            allowed = self.limiter.hit(item, *key)
            return allowed, self.limiter.get_window_stats(item, *key)
        except SQLAlchemyError:
            log.warning("rate limit storage unavailable; %s not counted", item, exc_info=True)
            return True, None

    def websocket_connect(self, *who: str) -> bool:
        """Counts a WebSocket connect of `who` (("address", ip) or ("user", id)); False over the limit."""
        if self.hit(self.websocket, "websocket", *who):
            return True
        metrics.RATE_LIMITED.labels("websocket").inc()
        return False

    def audits(self, status: int, scope: Scope) -> bool:
        """Whether an answer of `status` goes to the audit trail. Failed logins (401) do within a budget per client
        address and one in all, so that nobody can fill the trail with them; the rest are counted and logged."""
        if status != 401:
            return True
        address = client_address(scope)
        if self.hit(self.failed_login_audit, "audit-401", address) and self.hit(
            self.failed_login_audit_total, "audit-401"
        ):
            return True
        metrics.AUDIT_DROPPED.inc()
        if self.hit(_DROP_NOTICES, "audit-401-dropped", address):  # one line a minute per address
            log.warning(
                "failed logins from %s: audit entries over %s per address or %s in all are not written "
                "(counted in rime_audit_dropped_total)",
                address,
                self.failed_login_audit,
                self.failed_login_audit_total,
            )
        return False


async def refuse_websocket(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuses a WebSocket before the upgrade: an HTTP answer where the server can send one, else close 4000+status."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error_payload(code, message), status_code=status))
    else:
        await websocket.close(code=4000 + status, reason=message[:120])


class RateLimitMiddleware:
    """Rate limits (RateLimits): per tenant and endpoint group for callers with a valid token, per client address
    (all groups together) for the rest, so anonymous traffic never spends the tenant's quota; WebSocket
    connects per client address (the WebSocket route counts them per user too).

    Every /api/v1 response carries RateLimit-Limit / RateLimit-Remaining / RateLimit-Reset;
    over the limit is a 429 `rate_limited` with Retry-After.
    """

    # Tokens that verified lately: sha256 -> when to check again. Only which quota a request spends depends on
    # it; the route still verifies the token on every request, so a revoked token stops working at once.
    KNOWN_TOKEN_SECONDS = 30.0
    MAX_KNOWN_TOKENS = 4096

    def __init__(self, app: ASGIApp, settings: Settings, limits: RateLimits, readers: sessionmaker[Session]):
        self.app = app
        self.tenant = settings.tenant
        self.limits = limits
        self.readers = readers
        self.known_tokens: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if await self.limits.call(self.limits.websocket_connect, "address", client_address(scope)):
                return await self.app(scope, receive, send)
            message = f"Too many WebSocket connects (limit {self.limits.websocket}); retry shortly."
            return await refuse_websocket(WebSocket(scope, receive, send), 429, "rate_limited", message)
        group = endpoint_group(scope.get("path", "")) if scope["type"] == "http" else None
        if group is None:
            return await self.app(scope, receive, send)
        if await self._authenticated(scope):
            item, key, scope_name = self.limits.of_group(group), (self.tenant, group), f"'{group}'"
        else:
            item, key, scope_name = self.limits.anonymous, ("anonymous", client_address(scope)), "unauthenticated calls"
        allowed, stats = await self.limits.call(self.limits.take, item, *key)
        if stats is None:
            return await self.app(scope, receive, send)
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
                f"Rate limit of {item.amount} per {item.get_expiry()} s for {scope_name} exceeded; "
                f"retry in {reset_in} s."
            )
            return await _send_json(send, 429, error_payload("rate_limited", message), headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                mutable = MutableHeaders(scope=message)
                for key, value in headers.items():
                    mutable[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _authenticated(self, scope: Scope) -> bool:
        """Whether the request carries a token that verifies (one that verified in the last 30 s counts)."""
        scheme, _, secret = Headers(scope=scope).get("authorization", "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            return False
        digest, now = hash_token(secret), time.monotonic()
        if self.known_tokens.get(digest, 0.0) > now:
            return True
        try:
            await run_in_threadpool(auth.verify, self.readers, secret, tenant_id=self.tenant)
        except (RimeError, SQLAlchemyError):  # a store that is down is the route's to report
            return False
        if len(self.known_tokens) >= self.MAX_KNOWN_TOKENS:
            self.known_tokens.clear()
        self.known_tokens[digest] = now + self.KNOWN_TOKEN_SECONDS
        return True


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
    """Appends an audit entry for every mutating call (a POST, PUT, PATCH or DELETE not marked READ_ONLY) and every
    denied (403) call (failed logins within their budget, `RateLimits.audits`).

    The entry is written before the response leaves, so a client that got an answer
    can always find it in the trail.
    """

    def __init__(self, app: ASGIApp, settings: Settings, sessions: sessionmaker[Session], limits: RateLimits):
        self.app = app
        self.tenant = settings.tenant
        self.sessions = sessions
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        held: list[Message] = []

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                mutating = scope["method"] in MUTATING and not _marked(scope, READ_ONLY)
                if not mutating and message["status"] != 403:
                    return await send(message)
                if _streamed(scope):  # not held to its end (an export): audited as it starts, then passed on
                    await self._record(scope, [message])
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
        if not await self.limits.call(self.limits.audits, status, scope):
            return
        if scope.get("state", {}).get(STORE_UNAVAILABLE):  # nothing was changed, and the entry could not be stored
            metrics.AUDIT_WRITE_FAILURES.inc()
            log.warning("no audit entry for %s %s: the metadata store is unavailable", scope["method"], scope["path"])
            return
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

    def _entry(self, scope: Scope, route: Route | WebSocketRoute, status: int, body: bytes) -> audit.AuditEntry:
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


# A route's `openapi_extra` key: its answer is streamed (an export), so the audit entry is written as the
# response starts instead of after its whole body (which would buffer the stream in memory).
STREAMED = "x-rime-streamed"
# A route's `openapi_extra` key: a POST that only reads (a SQL query, which needs a body), audited as the other
# reads are: when denied (403). The read path audits what it reads in clear by exemption (`table.read_unmasked`).
READ_ONLY = "x-rime-read-only"


def _marked(scope: Scope, key: str) -> bool:
    route = scope.get("route")
    return bool((getattr(route, "openapi_extra", None) or {}).get(key))


def _streamed(scope: Scope) -> bool:
    return _marked(scope, STREAMED)


def _created_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, dict):
        value = payload.get("id", payload.get("plan_id"))  # a plan answers its id as `plan_id` (CONTRACT)
        return value if isinstance(value, str) else None
    return None
