"""Monitoring group, escalation policies: `/projects/{id}/escalation-policies...` (CRUD)."""

from __future__ import annotations

from typing import Annotated

from fastapi import status

from api_shim.deps import CursorCodecDep, Lead, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.monitoring import (
    EscalationPolicyCreate,
    EscalationPolicyList,
    EscalationPolicyResponse,
    EscalationPolicyUpdate,
)
from api_shim.services import escalation_policies as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/escalation-policies", tags=["Monitoring"])
PolicyPage = Annotated[PageRequest, page_params(service.POLICIES)]


@router.get(
    "",
    name="escalation_policy.list",
    response_model=EscalationPolicyList,
    responses=error_responses(404),
    summary="List escalation policies",
)
def list_policies(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: PolicyPage
) -> EscalationPolicyList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, codec, project, page)


@router.post(
    "",
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
    return service.create(session, get_project(session, id, tenant_id=principal.tenant_id), body)


@router.get(
    "/{policyId}",
    name="escalation_policy.get",
    response_model=EscalationPolicyResponse,
    responses=error_responses(404),
    summary="Get a policy",
)
def get_policy(id: str, policyId: str, principal: Viewer, session: SessionDep) -> EscalationPolicyResponse:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), policyId)


@router.patch(
    "/{policyId}",
    name="escalation_policy.update",
    response_model=EscalationPolicyResponse,
    responses=error_responses(404, 409, 422),
    summary="Update a policy",
)
def update_policy(
    id: str, policyId: str, body: EscalationPolicyUpdate, principal: Lead, session: SessionDep
) -> EscalationPolicyResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.update(session, project, policyId, body)


@router.delete(
    "/{policyId}",
    name="escalation_policy.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a policy",
    description="Refused with 409 while alert rules escalate with it.",
)
def delete_policy(id: str, policyId: str, principal: Lead, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), policyId)
