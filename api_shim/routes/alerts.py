"""Monitoring group, alerts: `/projects/{id}/alerts...` (list, get, acknowledge, resolve).

Alerts are fired and cleared by the rules' sensors (routes/alert_rules.py); their live feed is the alert stream
WebSocket, routes/alert_stream.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from api_shim.deps import CursorCodecDep, Engineer, Lead, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.monitoring import AlertDetail, AlertList, AlertResponse, AlertStatus, Severity
from api_shim.services import alerts as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/alerts", tags=["Monitoring"])
AlertPage = Annotated[PageRequest, page_params(service.ALERTS)]


@router.get(
    "",
    name="alert.list",
    response_model=AlertList,
    responses=error_responses(404),
    summary="List alerts (filterable by status, severity)",
    description="Newest first (`fired_at`).",
)
def list_alerts(
    id: str,
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    page: AlertPage,
    status: Annotated[AlertStatus | None, Query(description="Only alerts in this state.")] = None,
    severity: Annotated[Severity | None, Query(description="Only alerts of this severity.")] = None,
    rule_id: Annotated[str | None, Query(max_length=40, description="Only this rule's alerts.")] = None,
) -> AlertList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, codec, project, page, status=status, severity=severity, rule_id=rule_id)


@router.get(
    "/{alertId}",
    name="alert.get",
    response_model=AlertDetail,
    responses=error_responses(404),
    summary="Get an alert",
    description="With its deliveries: every notification to every channel, its attempts and outcome.",
)
def get_alert(id: str, alertId: str, principal: Viewer, session: SessionDep) -> AlertDetail:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), alertId)


@router.post(
    "/{alertId}/acknowledge",
    name="alert.acknowledge",
    response_model=AlertResponse,
    responses=error_responses(404),
    summary="Acknowledge an alert",
    description="Stops its escalation. Idempotent: an alert already acknowledged (or resolved) comes back as it is.",
)
def acknowledge_alert(id: str, alertId: str, principal: Engineer, session: SessionDep) -> AlertResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.acknowledge(session, project, alertId, actor=principal.email)


@router.post(
    "/{alertId}/resolve",
    name="alert.resolve",
    response_model=AlertResponse,
    responses=error_responses(404, 409),
    summary="Resolve an alert",
    description="A firing or acknowledged alert; one already resolved is a 409.",
)
def resolve_alert(id: str, alertId: str, principal: Lead, session: SessionDep) -> AlertResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.resolve(session, project, alertId, actor=principal.email)
