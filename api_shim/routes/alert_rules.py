"""Monitoring group, alert rules: `/projects/{id}/alert-rules...` (CRUD, enable, disable).

The rest of the group: routes/alerts.py, routes/notification_channels.py, routes/escalation_policies.py; the
alert stream WebSocket is routes/alert_stream.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, status

from api_shim.dagster_client import DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.monitoring import AlertRuleCreate, AlertRuleList, AlertRuleResponse, AlertRuleUpdate
from api_shim.services import alert_rules as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/alert-rules", tags=["Monitoring"])
RulePage = Annotated[PageRequest, page_params(service.RULES)]
ENABLED_NEEDS_DAGSTER = (
    "Starting or stopping the sensor waits for Dagster to serve the rule's definitions, then asks it; 503 when "
    "Dagster is unavailable (nothing changes)."
)


@router.get(
    "",
    name="alert_rule.list",
    response_model=AlertRuleList,
    responses=error_responses(404),
    summary="List alert rules",
)
def list_rules(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, dagster: DagsterClientDep, page: RulePage
) -> AlertRuleList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, dagster, codec, project, page)


@router.post(
    "",
    name="alert_rule.create",
    status_code=status.HTTP_201_CREATED,
    response_model=AlertRuleResponse,
    responses=error_responses(404, 409, 422),
    summary="Create an alert rule",
    description="Each enabled rule is evaluated by a Dagster sensor (`sensor_name`), there after the definitions "
    "reload. A condition naming a pipeline, connector, dbt project or table that is not the project's, or an "
    "unknown channel or escalation policy, is a 422 naming the field.",
)
def create_rule(
    id: str,
    body: AlertRuleCreate,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
) -> AlertRuleResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.create(session, dagster, project, body, request.app.state.iceberg)


@router.get(
    "/{ruleId}",
    name="alert_rule.get",
    response_model=AlertRuleResponse,
    responses=error_responses(404),
    summary="Get an alert rule",
)
def get_rule(
    id: str, ruleId: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep
) -> AlertRuleResponse:
    return service.describe(session, dagster, get_project(session, id, tenant_id=principal.tenant_id), ruleId)


@router.patch(
    "/{ruleId}",
    name="alert_rule.update",
    response_model=AlertRuleResponse,
    responses=error_responses(404, 409, 422),
    summary="Update an alert rule",
    description=ENABLED_NEEDS_DAGSTER,
)
def update_rule(
    id: str,
    ruleId: str,
    body: AlertRuleUpdate,
    request: Request,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
) -> AlertRuleResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.update(session, dagster, project, ruleId, body, request.app.state.iceberg)


@router.delete(
    "/{ruleId}",
    name="alert_rule.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete an alert rule",
    description="Its open alerts are resolved; its sensor goes with the next definitions reload.",
)
def delete_rule(id: str, ruleId: str, principal: Engineer, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), ruleId)


@router.post(
    "/{ruleId}/enable",
    name="alert_rule.enable",
    response_model=AlertRuleResponse,
    responses=error_responses(404, 422),
    summary="Start an alert rule's sensor",
    description=ENABLED_NEEDS_DAGSTER,
)
def enable_rule(
    id: str, ruleId: str, request: Request, principal: Engineer, session: SessionDep, dagster: DagsterClientDep
) -> AlertRuleResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.set_enabled(session, dagster, project, ruleId, True, request.app.state.iceberg)


@router.post(
    "/{ruleId}/disable",
    name="alert_rule.disable",
    response_model=AlertRuleResponse,
    responses=error_responses(404, 422),
    summary="Stop an alert rule's sensor",
    description=ENABLED_NEEDS_DAGSTER,
)
def disable_rule(
    id: str, ruleId: str, request: Request, principal: Engineer, session: SessionDep, dagster: DagsterClientDep
) -> AlertRuleResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.set_enabled(session, dagster, project, ruleId, False, request.app.state.iceberg)
