"""Governance group, masking policies: `/projects/{id}/masking-policies...` (CRUD)."""

from __future__ import annotations

from typing import Annotated

from fastapi import status

from api_shim.deps import CursorCodecDep, Lead, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.masking_policies import (
    MaskingPolicyCreate,
    MaskingPolicyList,
    MaskingPolicyResponse,
    MaskingPolicyUpdate,
)
from api_shim.services import masking_policies as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/masking-policies", tags=["Governance"])
PolicyPage = Annotated[PageRequest, page_params(service.POLICIES)]

_ENFORCED = (
    "Enforced on every read of table data: table previews, `POST .../query` and its exports. A column covered by "
    "several policies reads with the strictest strategy among those the caller is not exempt from "
    "(null > redact > hash > partial)."
)


@router.get(
    "",
    name="masking_policy.list",
    response_model=MaskingPolicyList,
    responses=error_responses(404),
    summary="List masking policies",
)
def list_policies(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: PolicyPage
) -> MaskingPolicyList:
    return service.list_page(session, codec, get_project(session, id, tenant_id=principal.tenant_id), page)


@router.post(
    "",
    name="masking_policy.create",
    status_code=status.HTTP_201_CREATED,
    response_model=MaskingPolicyResponse,
    responses=error_responses(404, 409, 422),
    summary="Create a masking policy",
    description=f"{_ENFORCED} A `classification_id` that is not one of this project's is a 422 naming the field.",
)
def create_policy(id: str, body: MaskingPolicyCreate, principal: Lead, session: SessionDep) -> MaskingPolicyResponse:
    return service.create(session, get_project(session, id, tenant_id=principal.tenant_id), body)


@router.get(
    "/{policyId}",
    name="masking_policy.get",
    response_model=MaskingPolicyResponse,
    responses=error_responses(404),
    summary="Get a masking policy",
)
def get_policy(id: str, policyId: str, principal: Viewer, session: SessionDep) -> MaskingPolicyResponse:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), policyId)


@router.patch(
    "/{policyId}",
    name="masking_policy.update",
    response_model=MaskingPolicyResponse,
    responses=error_responses(404, 409, 422),
    summary="Update a masking policy",
    description="JSON merge semantics. Changing `strategy` away from `partial` drops its `options`.",
)
def update_policy(
    id: str, policyId: str, body: MaskingPolicyUpdate, principal: Lead, session: SessionDep
) -> MaskingPolicyResponse:
    return service.update(session, get_project(session, id, tenant_id=principal.tenant_id), policyId, body)


@router.delete(
    "/{policyId}",
    name="masking_policy.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete a masking policy",
)
def delete_policy(id: str, policyId: str, principal: Lead, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), policyId)
