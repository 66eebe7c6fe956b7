"""Pipelines group, live: `/ws/pipelines/{pipelineId}/runs/{runId}`, a run's step transitions over a WebSocket.

Its own router: WebSocket routes live under `/ws` (no project in the path) and authenticate themselves, since a
browser's WebSocket cannot send an Authorization header.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from api_shim.errors import Forbidden
from api_shim.middleware import refuse_websocket
from api_shim.routing import API_PREFIX
from api_shim.services import audit, pipeline_runs
from api_shim.services.auth import Role

log = logging.getLogger(__name__)

router = APIRouter(prefix=API_PREFIX + "/ws", tags=["Pipelines"])
# `Sec-WebSocket-Protocol: bearer, <token>` (browsers: `new WebSocket(url, ["bearer", token])`) keeps the token
# out of URLs, which proxies and servers log; the answer names `bearer` alone, never the token.
BEARER_SUBPROTOCOL = "bearer"


def _ws_credentials(websocket: WebSocket, query_token: str | None) -> tuple[str | None, str | None]:
    """(the token, the subprotocol to accept): the entry after `bearer` in the offered subprotocols, else `?token=`."""
    offered = list(websocket.scope.get("subprotocols") or [])
    if BEARER_SUBPROTOCOL not in offered:
        return query_token, None
    after = offered.index(BEARER_SUBPROTOCOL) + 1
    return (offered[after] if after < len(offered) else None), BEARER_SUBPROTOCOL


async def _refuse(websocket: WebSocket, refused: pipeline_runs.WatchRefused, run_id: str) -> None:
    # Like HTTP 429s, refused connects over the rate limit are not audited; failed logins within their budget.
    state = websocket.app.state
    if refused.status != 429 and state.rate_limits.audits(refused.status, websocket.scope):
        try:
            await run_in_threadpool(
                audit.record_refused_websocket,
                state.sessions,
                tenant_id=state.settings.tenant,
                principal=refused.principal,
                action="pipeline.run_watch",
                resource_type="pipeline",
                resource_id=run_id,
                request_id=websocket.scope.get("state", {}).get("request_id", ""),
                path=websocket.url.path,
                status_code=refused.status,
                ip=websocket.client.host if websocket.client else None,
            )
        except Exception:
            log.exception("could not audit a refused WebSocket")
    await refuse_websocket(websocket, refused.status, refused.error.code, refused.error.message)


@router.websocket("/pipelines/{pipelineId}/runs/{runId}", name="pipeline.run_watch")
async def watch_pipeline_run(websocket: WebSocket, pipelineId: str, runId: str, token: str | None = None) -> None:
    """Live step transitions of a run: `step_update` per transition and `run_update` per run status.

    On connect: one `step_update` per step (its current state), then a `run_update` (the run's
    current status); everything after is live. The socket closes (1000) after the final
    `run_update` of a run that ended. The token comes as the subprotocols `bearer, <token>` or as `?token=`.
    Refused (HTTP 401/404 before the upgrade, or close codes 4401/4404): a bad or missing token, an unknown
    pipeline or run.
    """
    token, subprotocol = _ws_credentials(websocket, token)
    target = await _target_or_refuse(websocket, token, pipeline_id=pipelineId, run_id=runId)
    if target is None:
        return
    await websocket.accept(subprotocol=subprotocol)
    await _relay(websocket, target, runId)


async def _target_or_refuse(
    websocket: WebSocket, token: str | None, *, pipeline_id: str, run_id: str
) -> pipeline_runs.WatchTarget | None:
    """The run the caller may watch; None once the socket is refused (see `_refuse`)."""
    state = websocket.app.state
    try:
        target = await run_in_threadpool(
            pipeline_runs.watch_target,
            state.sessions,
            state.dagster,
            state.rate_limits,
            token,
            tenant_id=state.settings.tenant,
            pipeline_id=pipeline_id,
            run_id=run_id,
        )
        if not target.principal.has(Role.viewer):  # every role may watch; kept for when roles narrow
            raise pipeline_runs.WatchRefused(Forbidden("Not allowed."), target.principal)
    except pipeline_runs.WatchRefused as refused:
        await _refuse(websocket, refused, run_id)
        return None
    return target


async def _relay(websocket: WebSocket, target: pipeline_runs.WatchTarget, run_id: str) -> None:
    """Sends the run's step and run updates over the accepted socket until the run ends (close 1000), its feed
    fails (an `error` message, close 1011) or the client leaves."""

    async def until_client_leaves() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    leaving = asyncio.create_task(until_client_leaves())
    try:
        async with websocket.app.state.run_watch.watch(target.dagster_run_id, run_id, target.steps) as (sub, _watch):
            while True:
                getting = asyncio.create_task(sub.queue.get())
                done, _ = await asyncio.wait({getting, leaving}, return_when=asyncio.FIRST_COMPLETED)
                if leaving in done:
                    getting.cancel()
                    return
                kind, payload = getting.result()
                if kind in ("step", "run"):
                    await websocket.send_json(payload)
                elif kind == "error":
                    await websocket.send_json({"type": "error", "message": payload})
                    await websocket.close(code=1011)
                    return
                elif kind == "end":
                    await websocket.close(code=1000)
                    return
    except (WebSocketDisconnect, RuntimeError):  # the client went away mid-send
        return
    finally:
        leaving.cancel()
