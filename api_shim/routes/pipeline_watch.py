"""Pipelines group, live: `/ws/pipelines/{pipelineId}/runs/{runId}`, a run's step transitions over a WebSocket.

Its own router: WebSocket routes live under `/ws` (no project in the path) and authenticate themselves
(api_shim/routes/_websocket.py).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from api_shim.errors import Forbidden
from api_shim.routes._websocket import refuse, ws_credentials
from api_shim.routing import API_PREFIX, operation_id
from api_shim.services import pipeline_runs
from api_shim.services.auth import Role
from api_shim.services.websocket_auth import WatchRefused

router = APIRouter(prefix=API_PREFIX + "/ws", tags=["Pipelines"], generate_unique_id_function=operation_id)


@router.websocket("/pipelines/{pipelineId}/runs/{runId}", name="pipeline.run_watch")
async def watch_pipeline_run(websocket: WebSocket, pipelineId: str, runId: str, token: str | None = None) -> None:
    """Live step transitions of a run: `step_update` per transition and `run_update` per run status.

    On connect: one `step_update` per step (its current state), then a `run_update` (the run's
    current status); everything after is live. The socket closes (1000) after the final
    `run_update` of a run that ended. The token comes as the subprotocols `bearer, <token>` or as `?token=`.
    Refused (HTTP 401/404 before the upgrade, or close codes 4401/4404): a bad or missing token, an unknown
    pipeline or run.
    """
    token, subprotocol = ws_credentials(websocket, token)
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
            raise WatchRefused(Forbidden("Not allowed."), target.principal)
    except WatchRefused as refused:
        await refuse(websocket, refused, action="pipeline.run_watch", resource_type="pipeline", resource_id=run_id)
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
        hub = websocket.app.state.run_watch
        async with hub.watch(target.dagster_run_id, run_id, target.steps, reused=target.reused) as (sub, _watch):
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
