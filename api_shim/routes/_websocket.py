"""What the WebSocket routes share: reading the token (subprotocol or `?token=`) and refusing a connect.

WebSocket routes live under `/ws` (no project in the path) and authenticate themselves, since a browser's WebSocket
cannot send an Authorization header.
"""

from __future__ import annotations

import logging

from fastapi import WebSocket
from starlette.concurrency import run_in_threadpool

from api_shim.middleware import refuse_websocket
from api_shim.services import audit
from api_shim.services.websocket_auth import WatchRefused

log = logging.getLogger(__name__)

# `Sec-WebSocket-Protocol: bearer, <token>` (browsers: `new WebSocket(url, ["bearer", token])`) keeps the token
# out of URLs, which proxies and servers log; the answer names `bearer` alone, never the token.
BEARER_SUBPROTOCOL = "bearer"


def ws_credentials(websocket: WebSocket, query_token: str | None) -> tuple[str | None, str | None]:
    """(the token, the subprotocol to accept): the entry after `bearer` in the offered subprotocols, else `?token=`."""
    offered = list(websocket.scope.get("subprotocols") or [])
    if BEARER_SUBPROTOCOL not in offered:
        return query_token, None
    after = offered.index(BEARER_SUBPROTOCOL) + 1
    return (offered[after] if after < len(offered) else None), BEARER_SUBPROTOCOL


async def refuse(
    websocket: WebSocket, refused: WatchRefused, *, action: str, resource_type: str, resource_id: str | None
) -> None:
    """Refuses the connect (before the upgrade where the server can answer HTTP) and audits it."""
    # Like HTTP 429s, refused connects over the rate limit are not audited; failed logins within their budget.
    state = websocket.app.state
    limits = state.rate_limits
    if refused.status != 429 and await limits.call(limits.audits, refused.status, websocket.scope):
        try:
            await run_in_threadpool(
                audit.record_refused_websocket,
                state.sessions,
                tenant_id=state.settings.tenant,
                principal=refused.principal,
                action=action,
                resource_type=resource_type,
                resource_id=resource_id,
                request_id=websocket.scope.get("state", {}).get("request_id", ""),
                path=websocket.url.path,
                status_code=refused.status,
                ip=websocket.client.host if websocket.client else None,
            )
        except Exception:
            log.exception("could not audit a refused WebSocket")
    await refuse_websocket(websocket, refused.status, refused.error.code, refused.error.message)
