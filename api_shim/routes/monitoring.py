"""Monitoring group: `/projects/{id}/alert-rules...`, `/alerts...`, `/notification-channels...` and
`/escalation-policies...`. The alert stream WebSocket is routes/alert_stream.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_shim.dagster_client import DagsterClient, DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, Lead, SessionDep, SettingsDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import Idempotent, rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.monitoring import (
    AlertList,
    AlertResponse,
    AlertRuleCreate,
    AlertRuleList,
    AlertRuleResponse,
    AlertRuleUpdate,
    AlertStatus,
    ChannelTestResult,
    EscalationPolicyCreate,
    EscalationPolicyList,
    EscalationPolicyResponse,
    EscalationPolicyUpdate,
    NotificationChannelCreate,
    NotificationChannelList,
    NotificationChannelResponse,
    NotificationChannelUpdate,
    Severity,
)
from api_shim.services import alert_rules, alerts, escalation_policies, notification_channels
from api_shim.services.auth import Principal
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}", tags=["Monitoring"])
RulePage = Annotated[PageRequest, page_params(alert_rules.RULES)]
AlertPage = Annotated[PageRequest, page_params(alerts.ALERTS)]
ChannelPage = Annotated[PageRequest, page_params(notification_channels.CHANNELS)]
PolicyPage = Annotated[PageRequest, page_params(escalation_policies.POLICIES)]
RULES, ALERTS, CHANNELS, POLICIES = "/alert-rules", "/alerts", "/notification-channels", "/escalation-policies"
ENABLED_NEEDS_DAGSTER = (
    "Starting or stopping the sensor waits for Dagster to serve the rule's definitions, then asks it; 503 when "
    "Dagster is unavailable (nothing changes)."
)


# Alert rules ------------------------------------------------------------------------------------


@router.get(
    RULES,
    name="alert_rule.list",
    response_model=AlertRuleList,
    responses=error_responses(404),
    summary="List alert rules",
)
def list_rules(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, dagster: DagsterClientDep, page: RulePage
) -> AlertRuleList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return alert_rules.list_page(session, dagster, codec, project, page)


@router.post(
    RULES,
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
    return alert_rules.create(session, dagster, project, body, request.app.state.iceberg)


@router.get(
    RULES + "/{ruleId}",
    name="alert_rule.get",
    response_model=AlertRuleResponse,
    responses=error_responses(404),
    summary="Get an alert rule",
)
def get_rule(
    id: str, ruleId: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep
) -> AlertRuleResponse:
    return alert_rules.describe(session, dagster, get_project(session, id, tenant_id=principal.tenant_id), ruleId)


@router.patch(
    RULES + "/{ruleId}",
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
    return alert_rules.update(session, dagster, project, ruleId, body, request.app.state.iceberg)


@router.delete(
    RULES + "/{ruleId}",
    name="alert_rule.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete an alert rule",
    description="Its open alerts are resolved; its sensor goes with the next definitions reload.",
)
def delete_rule(id: str, ruleId: str, principal: Engineer, session: SessionDep) -> None:
    alert_rules.delete(session, get_project(session, id, tenant_id=principal.tenant_id), ruleId)


def _set_enabled(
    request: Request,
    session: Session,
    dagster: DagsterClient,
    principal: Principal,
    project_id: str,
    rule_id: str,
    enabled: bool,
) -> AlertRuleResponse:
    project = get_project(session, project_id, tenant_id=principal.tenant_id)
    body = AlertRuleUpdate(enabled=enabled)
    return alert_rules.update(session, dagster, project, rule_id, body, request.app.state.iceberg)


@router.post(
    RULES + "/{ruleId}/enable",
    name="alert_rule.enable",
    response_model=AlertRuleResponse,
    responses=error_responses(404, 422),
    summary="Start an alert rule's sensor",
    description=ENABLED_NEEDS_DAGSTER,
)
def enable_rule(
    id: str, ruleId: str, request: Request, principal: Engineer, session: SessionDep, dagster: DagsterClientDep
) -> AlertRuleResponse:
    return _set_enabled(request, session, dagster, principal, id, ruleId, True)


@router.post(
    RULES + "/{ruleId}/disable",
    name="alert_rule.disable",
    response_model=AlertRuleResponse,
    responses=error_responses(404, 422),
    summary="Stop an alert rule's sensor",
    description=ENABLED_NEEDS_DAGSTER,
)
def disable_rule(
    id: str, ruleId: str, request: Request, principal: Engineer, session: SessionDep, dagster: DagsterClientDep
) -> AlertRuleResponse:
    return _set_enabled(request, session, dagster, principal, id, ruleId, False)


# Alerts -----------------------------------------------------------------------------------------


@router.get(
    ALERTS,
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
    return alerts.list_page(session, codec, project, page, status=status, severity=severity, rule_id=rule_id)


@router.get(
    ALERTS + "/{alertId}",
    name="alert.get",
    response_model=AlertResponse,
    responses=error_responses(404),
    summary="Get an alert",
)
def get_alert(id: str, alertId: str, principal: Viewer, session: SessionDep) -> AlertResponse:
    return alerts.describe(session, get_project(session, id, tenant_id=principal.tenant_id), alertId)


@router.post(
    ALERTS + "/{alertId}/acknowledge",
    name="alert.acknowledge",
    response_model=AlertResponse,
    responses=error_responses(404),
    summary="Acknowledge an alert",
    description="Stops its escalation. Idempotent: an alert already acknowledged (or resolved) comes back as it is.",
)
def acknowledge_alert(id: str, alertId: str, principal: Engineer, session: SessionDep) -> AlertResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return alerts.acknowledge(session, project, alertId, actor=principal.email)


@router.post(
    ALERTS + "/{alertId}/resolve",
    name="alert.resolve",
    response_model=AlertResponse,
    responses=error_responses(404, 409),
    summary="Resolve an alert",
    description="A firing or acknowledged alert; one already resolved is a 409.",
)
def resolve_alert(id: str, alertId: str, principal: Lead, session: SessionDep) -> AlertResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return alerts.resolve(session, project, alertId, actor=principal.email)


# Notification channels -------------------------------------------------------------------------


@router.get(
    CHANNELS,
    name="notification_channel.list",
    response_model=NotificationChannelList,
    responses=error_responses(404),
    summary="List notification channels",
)
def list_channels(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: ChannelPage
) -> NotificationChannelList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return notification_channels.list_page(session, codec, project, page)


@router.post(
    CHANNELS,
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
    return notification_channels.create(session, project, body, request.app.state.cipher, settings)


@router.get(
    CHANNELS + "/{channelId}",
    name="notification_channel.get",
    response_model=NotificationChannelResponse,
    responses=error_responses(404),
    summary="Get a channel",
)
def get_channel(id: str, channelId: str, principal: Viewer, session: SessionDep) -> NotificationChannelResponse:
    return notification_channels.describe(session, get_project(session, id, tenant_id=principal.tenant_id), channelId)


@router.patch(
    CHANNELS + "/{channelId}",
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
    return notification_channels.update(session, project, channelId, body, request.app.state.cipher, settings)


@router.delete(
    CHANNELS + "/{channelId}",
    name="notification_channel.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a channel",
    description="Refused with 409 while alert rules or escalation policies send to it.",
)
def delete_channel(id: str, channelId: str, principal: Engineer, session: SessionDep) -> None:
    notification_channels.delete(session, get_project(session, id, tenant_id=principal.tenant_id), channelId)


@router.post(
    CHANNELS + "/{channelId}/test",
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
        notification_channels.send_test,
        request.app.state.readers,
        settings,
        tenant_id=principal.tenant_id,
        project_id=id,
        channel_id=channelId,
    )


# Escalation policies ---------------------------------------------------------------------------


@router.get(
    POLICIES,
    name="escalation_policy.list",
    response_model=EscalationPolicyList,
    responses=error_responses(404),
    summary="List escalation policies",
)
def list_policies(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: PolicyPage
) -> EscalationPolicyList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return escalation_policies.list_page(session, codec, project, page)


@router.post(
    POLICIES,
    name="escalation_policy.create",
    status_code=status.HTTP_201_CREATED,
    response_model=EscalationPolicyResponse,
    responses=error_responses(404, 409, 422),
    summary="Create a policy",
    description="An alert still firing (not acknowledged) `after_minutes` after it fired is sent to that step's "
    "channels, once per step.",
)
def create_policy(
    id: str, body: EscalationPolicyCreate, principal: Lead, session: SessionDep
) -> EscalationPolicyResponse:
    return escalation_policies.create(session, get_project(session, id, tenant_id=principal.tenant_id), body)


@router.get(
    POLICIES + "/{policyId}",
    name="escalation_policy.get",
    response_model=EscalationPolicyResponse,
    responses=error_responses(404),
    summary="Get a policy",
)
def get_policy(id: str, policyId: str, principal: Viewer, session: SessionDep) -> EscalationPolicyResponse:
    return escalation_policies.describe(session, get_project(session, id, tenant_id=principal.tenant_id), policyId)


@router.patch(
    POLICIES + "/{policyId}",
    name="escalation_policy.update",
    response_model=EscalationPolicyResponse,
    responses=error_responses(404, 409, 422),
    summary="Update a policy",
)
def update_policy(
    id: str, policyId: str, body: EscalationPolicyUpdate, principal: Lead, session: SessionDep
) -> EscalationPolicyResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return escalation_policies.update(session, project, policyId, body)


@router.delete(
    POLICIES + "/{policyId}",
    name="escalation_policy.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a policy",
    description="Refused with 409 while alert rules escalate with it.",
)
def delete_policy(id: str, policyId: str, principal: Lead, session: SessionDep) -> None:
    escalation_policies.delete(session, get_project(session, id, tenant_id=principal.tenant_id), policyId)
