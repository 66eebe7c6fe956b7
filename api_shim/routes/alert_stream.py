"""Monitoring group, live: `/ws/alerts`, the tenant's alert changes over a WebSocket (api_shim/alert_stream.py)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from api_shim.alert_stream import AlertStreamHub, Subscription
from api_shim.errors import Forbidden
from api_shim.routes._websocket import refuse, ws_credentials
from api_shim.routing import API_PREFIX, operation_id
from api_shim.services.auth import Principal, Role
from api_shim.services.websocket_auth import WatchRefused, websocket_principal, within_connect_limit

router = APIRouter(prefix=API_PREFIX + "/ws", tags=["Monitoring"], generate_unique_id_function=operation_id)

PING = json.dumps({"type": "ping"})
# Close codes after the upgrade: the feed failed or the client fell behind (1011), the token stopped
# authenticating (4401, as a refused connect closes where the server cannot answer HTTP 401).
CLOSE_FOR = {"error": 1011, "unauthorized": 4401}


@router.websocket("/alerts", name="alert.stream")
async def alert_stream(websocket: WebSocket, token: str | None = None) -> None:
    """Alert changes of the caller's tenant, live: `{"type": "alert_fired" | "alert_acknowledged" |
    "alert_resolved", "alert": {...}}`, the alert as `GET .../alerts/{alertId}` shows it after the change.

    Every role may listen; every project of the tenant is visible to its users. Changes made after the connect
    are sent, in the order they were committed, whichever API process or sensor made them; `{"type": "ping"}` after
    30 s without one. A client too slow to keep up gets `{"type": "error", "message"}` and a close (1011); so does
    one whose token is revoked or expires, or whose user is disabled, while it listens (close 4401). The token
    comes as the subprotocols `bearer, <token>` or as `?token=`; a bad or missing one is refused before the
    upgrade (HTTP 401, or close code 4401), too many connects with 429.
    """
    token, subprotocol = ws_credentials(websocket, token)
    principal = await _principal_or_refuse(websocket, token)
    if principal is None:
        return
    hub: AlertStreamHub = websocket.app.state.alert_stream
    # Joined before the accept: whatever is written once the client sees the socket open reaches it.
    async with hub.subscribe(principal) as sub:
        await websocket.accept(subprotocol=subprotocol)
        await _relay(websocket, sub, keepalive_seconds=hub.keepalive_seconds)


async def _principal_or_refuse(websocket: WebSocket, token: str | None) -> Principal | None:
    state = websocket.app.state
    try:
        principal = await run_in_threadpool(_authenticate, state, token)
        if not principal.has(Role.viewer):  # every role may listen; kept for when roles narrow
            raise WatchRefused(Forbidden("Not allowed."), principal)
    except WatchRefused as refused:
        await refuse(websocket, refused, action="alert.stream", resource_type="alert", resource_id=None)
        return None
    return principal


def _authenticate(state: State, token: str | None) -> Principal:
    with state.sessions.begin() as session:
        principal = websocket_principal(session, token, tenant_id=state.settings.tenant)
    within_connect_limit(state.rate_limits, principal)
    return principal


async def _relay(websocket: WebSocket, sub: Subscription, *, keepalive_seconds: float) -> None:
    """Sends the subscription's messages over the accepted socket until the client leaves or its feed ends."""

    async def until_client_leaves() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    leaving = asyncio.create_task(until_client_leaves())
    try:
        while True:
            getting = asyncio.create_task(sub.queue.get())
            done, _ = await asyncio.wait(
                {getting, leaving}, timeout=keepalive_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if leaving in done:
                getting.cancel()
                return
            if not done:
                getting.cancel()
                await websocket.send_text(PING)
                continue
            for kind, text in [getting.result(), *sub.take_queued()]:
                if kind == "event":
                    await websocket.send_text(text)
                else:
                    await websocket.send_json({"type": "error", "message": text})
                    await websocket.close(code=CLOSE_FOR[kind])
                    return
    except (WebSocketDisconnect, RuntimeError):  # the client went away mid-send
        return
    finally:
        leaving.cancel()
