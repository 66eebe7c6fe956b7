"""App factory: settings, metadata store, routers, middleware and error handlers in one place."""

from __future__ import annotations

import copy
import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from api_shim.alert_stream import AlertStreamHub
from api_shim.dagster_client import DagsterClient, ensure_dagster_home
from api_shim.definitions_sync import DefinitionsSync
from api_shim.handlers import install_exception_handlers
from api_shim.middleware import (
    AuditMiddleware,
    BodyLimitMiddleware,
    RateLimitMiddleware,
    RateLimits,
    RedactSecrets,
    RequestContextMiddleware,
)
from api_shim.pagination import CursorCodec
from api_shim.routes import (
    alert_rules,
    alert_stream,
    alerts,
    approvals,
    classifications,
    connectors,
    dbt,
    escalation_policies,
    governance,
    health,
    infrastructure,
    masking_policies,
    notification_channels,
    pipeline_documents,
    pipeline_versions,
    pipeline_watch,
    pipelines,
    projects,
    query,
    retention_policies,
    table_operations,
    tables,
    users,
)
from api_shim.routing import add_routes, operation_id
from api_shim.run_watch import RunWatchHub
from api_shim.services.users import ensure_bootstrap_admin
from rime_dagster.connectors.sources import known_types
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.settings import Settings, get_settings
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.session import session_factory, session_scope

log = logging.getLogger(__name__)

DOCS_STATIC = "/api/docs/static"
DESCRIPTION = """The Rime data platform API, served on Dagster.

Authenticate with `Authorization: Bearer <token>`. Errors are `{"error": {"code", "message", "details?"}}`.
Lists are cursor-paginated (`limit` 1-100, `cursor`). Every response carries `X-Request-Id`
and `RateLimit-*` headers; work-starting POSTs honour `Idempotency-Key`.

WebSocket (not listed below, as OpenAPI has no WebSockets):
`/api/v1/ws/pipelines/{pipelineId}/runs/{runId}` sends the current state of every
step (`step_update`) and the run (`run_update`), then each transition live, and closes (1000) after
the run ends. Authenticate with the subprotocols `bearer, <token>` (`Sec-WebSocket-Protocol`; in a
browser `new WebSocket(url, ["bearer", token])`; the server accepts `bearer`), which keeps the token out
of URLs, or with `?token=<token>` (masked in the server's logs). A bad token is refused before the
upgrade (401), an unknown pipeline or run with 404, too many connects with 429.

`/api/v1/ws/alerts` pushes every change to an alert of the caller's tenant as
`{"type": "alert_fired" | "alert_acknowledged" | "alert_resolved", "alert": {...}}` (the alert after the
change), whichever API process or sensor made it, from the connect on; `{"type": "ping"}` after 30 s of
quiet. Any role may listen. Same authentication and refusals as above; a client that falls too far behind,
or whose token stops authenticating, gets `{"type": "error", "message"}` and a close (1011, 4401).
"""


def bootstrap(settings: Settings) -> None:
    if settings.admin_token:
        with session_scope(settings.metadata_url) as session:
            ensure_bootstrap_admin(
                session, tenant_id=settings.tenant, email=settings.admin_email, secret=settings.admin_token
            )


def create_app(settings: Settings | None = None, *, warm_up: bool = False) -> FastAPI:
    """`warm_up`: open Dagster's run storage and import the source plug-ins before serving (a second of the
    GIL), so that the first request that needs them does not stall every other request of the process."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ensure_dagster_home(settings)
        try:
            bootstrap(settings)
        except OperationalError:
            # Start anyway so /health/ready can say what is wrong; `rime up` bootstraps
            # before starting the API, so this only happens when the store is down.
            log.error("metadata store unavailable at start; RIME_ADMIN_TOKEN not ensured")
        if warm_up:
            await run_in_threadpool(app.state.dagster.warm_up)
            await run_in_threadpool(known_types)  # the source plug-ins (pyarrow, psycopg, DuckDB)
            # What start-up made (modules, schemas, Dagster) lives as long as the process: moved out of
            # the collector's reach, a full collection under load no longer walks it and stalls every request.
            gc.collect()
            gc.freeze()
        app.state.definitions.start()
        yield
        app.state.definitions.stop()
        await app.state.run_watch.close()
        await app.state.alert_stream.close()
        app.state.dagster.close()

    # fastapi-offline: FastAPI whose Swagger UI page loads its JS and CSS from this package (DOCS_STATIC), not
    # from a CDN, so the docs render on a machine with no internet.
    app = FastAPIOffline(
        title="Rime API",
        version="1.0.0",
        description=DESCRIPTION,
        docs_url="/api/docs",
        openapi_url="/api/docs/openapi.json",
        redoc_url=None,
        static_url=DOCS_STATIC,
        swagger_ui_oauth2_redirect_url="/api/docs/oauth2-redirect",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    busy_timeout = settings.metadata_busy_timeout_seconds
    app.state.sessions = session_factory(settings.metadata_url, busy_timeout=busy_timeout)
    # Snapshots that never take the write lock (SQLite): for reads that need no transaction of their own.
    app.state.readers = session_factory(settings.metadata_url, read_only=True, busy_timeout=busy_timeout)
    # Units of work of GET requests: on SQLite they read a snapshot and take the write lock only if they write,
    # so reads answer while another writer holds the lock.
    app.state.snapshot_sessions = session_factory(settings.metadata_url, deferred=True, busy_timeout=busy_timeout)
    app.state.cursor_codec = CursorCodec(settings.signing_key())
    app.state.dagster = DagsterClient(settings)
    # Reloads Dagster when the definitions change; launches wait on it (api_shim/definitions_sync.py).
    app.state.definitions = app.state.dagster.definitions = DefinitionsSync(
        settings, app.state.dagster, app.state.sessions
    )
    app.state.run_watch = RunWatchHub(app.state.dagster, settings.run_watch_interval_seconds)
    # One reader of the alert stream's events for all of this process's /ws/alerts clients.
    app.state.alert_stream = AlertStreamHub(app.state.readers, settings.alert_stream_poll_seconds)
    app.state.iceberg = CatalogProvider(settings)
    app.state.cipher = CredentialCipher.from_settings(settings)
    # Rate limits and the failed-login audit budget: the middleware's and the WebSocket route's.
    app.state.rate_limits = RateLimits(settings)

    install_exception_handlers(app)
    add_routes(app, health.router)
    for router in (
        projects.router,
        connectors.router,
        dbt.router,
        pipelines.router,
        pipeline_watch.router,
        alert_rules.router,  # the Monitoring group: rules, alerts, channels, policies, then the alert stream
        alerts.router,
        notification_channels.router,
        escalation_policies.router,
        alert_stream.router,
        tables.router,
        table_operations.router,
        retention_policies.router,
        query.router,
        users.router,
        governance.router,
        classifications.router,
        masking_policies.router,
        infrastructure.router,
        pipeline_documents.router,
        pipeline_versions.router,
        approvals.router,
    ):
        add_routes(app, router)

    # Added innermost first: requests pass RequestContext -> Audit -> RateLimit -> BodyLimit -> routes.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, upload_max_bytes=settings.upload_max_request_bytes
    )
    app.add_middleware(RateLimitMiddleware, settings=settings, limits=app.state.rate_limits, readers=app.state.readers)
    app.add_middleware(AuditMiddleware, settings=settings, sessions=app.state.sessions, limits=app.state.rate_limits)
    app.add_middleware(RequestContextMiddleware)
    # FastAPI's documented hook for a custom schema (FastAPIOffline builds a plain FastAPI: no subclass to override).
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # mypy forbids assigning a method
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        # Every app of a process serves the same routes (the routers' own objects, see add_routes): the document
        # is built once per process (a few hundred ms of CPU) and each app gets its own copy.
        routes = [route for route in app.routes if isinstance(route, APIRoute) and route.include_in_schema]
        key = (app.title, app.version, app.description, *map(id, routes))
        with _documents_lock:
            if key not in _documents:
                _documents[key] = (routes, _document(app, routes))  # the routes kept alive: their ids are the key
            app.openapi_schema = copy.deepcopy(_documents[key][1])
    return app.openapi_schema


_documents: dict[tuple[object, ...], tuple[list[APIRoute], dict[str, Any]]] = {}
_documents_lock = threading.Lock()


def _document(app: FastAPI, routes: list[APIRoute]) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
    # FastAPI documents its own 422 body for request validation; Rime answers those
    # with a 400 `validation_error` in the common envelope instead.
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(response):
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


_REDACT_SECRETS = RedactSecrets()


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request line at INFO, including our own Dagster health probes; alembic each step of loading
    # its configuration and of a migration.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Request lines carry query strings, and `?token=` with them. uvicorn has set up its loggers by the time
    # it calls the app factory: a logger's filter sees what that logger logs, a handler's what reaches it.
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "api_shim.access"):
        logger = logging.getLogger(name)
        for filtered in (logger, *logger.handlers):
            filtered.addFilter(_REDACT_SECRETS)


def app_from_env() -> FastAPI:
    """uvicorn entry point: `uvicorn --factory api_shim.main:app_from_env`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings, warm_up=True)
