"""Health, readiness and metrics: no token needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api_shim.errors import ServiceUnavailable
from api_shim.routing import operation_id

router = APIRouter(tags=["Health"], generate_unique_id_function=operation_id)


class DependencyStatus(BaseModel):
    status: Literal["ok", "error"]
    latency_ms: float
    detail: str | None = None


class Liveness(BaseModel):
    status: Literal["ok"]
    instance_id: str | None = None  # the RIME_INSTANCE_ID `rime up` gave this API process, if any


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    dependencies: dict[str, DependencyStatus]


def _check_database(request: Request) -> str:
    # A snapshot: on SQLite another writer's lock does not make the store unready (reads still answer).
    with request.app.state.readers() as session:
        session.execute(text("SELECT 1"))
        return session.get_bind().dialect.name


def _check_dagster(request: Request) -> str:
    return f"version {request.app.state.dagster.ping(timeout=request.app.state.settings.health_timeout_seconds)}"


def _check_iceberg(request: Request) -> str:
    return f"{len(request.app.state.iceberg.catalog().list_namespaces())} namespaces"


def _check_definitions(request: Request) -> str:
    """Whether Dagster serves what the metadata store describes. Catching up after a change is normal
    (launches wait for it); a code location that fails to load is not."""
    sync = request.app.state.definitions.status()
    if sync.loaded is None and sync.problem:
        raise ServiceUnavailable(sync.problem)
    if sync.loaded is not None and sync.stored is not None and sync.loaded < sync.stored:
        return f"catching up: Dagster serves generation {sync.loaded} of {sync.stored}"
    return f"generation {sync.loaded} served" if sync.loaded is not None else "not checked yet"


CHECKS: dict[str, Callable[[Request], str]] = {
    "metadata_db": _check_database,
    "dagster": _check_dagster,
    "dagster_definitions": _check_definitions,
    "iceberg_catalog": _check_iceberg,
}


async def _run_check(request: Request, check: Callable[[Request], str]) -> DependencyStatus:
    started = time.perf_counter()
    timeout = request.app.state.settings.health_timeout_seconds
    status: Literal["ok", "error"]
    try:
        detail = await asyncio.wait_for(run_in_threadpool(check, request), timeout=timeout)
        status, message = "ok", detail
    except TimeoutError:
        status, message = "error", f"no answer within {timeout:g} s"
    except Exception as exc:  # report the kind of failure, never a secret-bearing message
        status, message = "error", getattr(exc, "message", None) or type(exc).__name__
    return DependencyStatus(status=status, latency_ms=round((time.perf_counter() - started) * 1000, 1), detail=message)


@router.get("/health", response_model=Liveness, summary="Liveness: the API process is up")
def health(request: Request) -> Liveness:
    return Liveness(status="ok", instance_id=request.app.state.settings.instance_id)


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is down; see `dependencies`."}},
    summary="Readiness: metadata store, Dagster GraphQL and the Iceberg catalog all answer",
)
async def ready(request: Request) -> JSONResponse:
    results = await asyncio.gather(*(_run_check(request, check) for check in CHECKS.values()))
    report = dict(zip(CHECKS, results, strict=True))
    healthy = all(r.status == "ok" for r in results)
    body = Readiness(status="ok" if healthy else "unavailable", dependencies=report)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
