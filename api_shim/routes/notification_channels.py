"""Monitoring group, notification channels: `/projects/{id}/notification-channels...` (CRUD, test)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, status
from starlette.concurrency import run_in_threadpool

from api_shim.deps import CursorCodecDep, Engineer, SessionDep, SettingsDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.monitoring import (
    ChannelTestResult,
    NotificationChannelCreate,
    NotificationChannelList,
    NotificationChannelResponse,
    NotificationChannelUpdate,
)
from api_shim.services import notification_channels as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/notification-channels", tags=["Monitoring"])
ChannelPage = Annotated[PageRequest, page_params(service.CHANNELS)]


@router.get(
    "",
    name="notification_channel.list",
    response_model=NotificationChannelList,
    responses=error_responses(404),
    summary="List notification channels",
)
def list_channels(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: ChannelPage
) -> NotificationChannelList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, codec, project, page)


@router.post(
    "",
    name="notification_channel.create",
    status_code=status.HTTP_201_CREATED,
    response_model=NotificationChannelResponse,
    responses=error_responses(404, 409),
    summary="Create a channel",
    description="Secrets (a webhook's `secret`, a Slack URL, an SMTP `password`) are encrypted and never returned. "
    "A host in the deployment's deny-list (RIME_CONNECTOR_HOSTS_DENY) is a 400 naming the field.",
)
def create_channel(
    id: str,
    body: NotificationChannelCreate,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
) -> NotificationChannelResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.create(session, project, body, request.app.state.cipher, settings)


@router.get(
    "/{channelId}",
    name="notification_channel.get",
    response_model=NotificationChannelResponse,
    responses=error_responses(404),
    summary="Get a channel",
)
def get_channel(id: str, channelId: str, principal: Viewer, session: SessionDep) -> NotificationChannelResponse:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), channelId)


@router.patch(
    "/{channelId}",
    name="notification_channel.update",
    response_model=NotificationChannelResponse,
    responses=error_responses(404, 409, 422),
    summary="Update a channel",
)
def update_channel(
    id: str,
    channelId: str,
    body: NotificationChannelUpdate,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    settings: SettingsDep,
) -> NotificationChannelResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.update(session, project, channelId, body, request.app.state.cipher, settings)


@router.delete(
    "/{channelId}",
    name="notification_channel.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a channel",
    description="Refused with 409 while alert rules or escalation policies send to it.",
)
def delete_channel(id: str, channelId: str, principal: Engineer, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), channelId)


@router.post(
    "/{channelId}/test",
    name="notification_channel.test",
    response_model=ChannelTestResult,
    responses=error_responses(404, 409, 422),  # 409, 422: an Idempotency-Key in use, or used for another request
    dependencies=[Idempotent],
    summary="Send a test notification",
    description="Delivers a real test message. A failed delivery is `success: false` with the reason, not an error.",
)
async def test_channel(
    id: str, channelId: str, request: Request, principal: Engineer, settings: SettingsDep
) -> ChannelTestResult:
    return await run_in_threadpool(
        service.send_test,
        request.app.state.readers,
        settings,
        tenant_id=principal.tenant_id,
        project_id=id,
        channel_id=channelId,
    )
