"""Approval requests of pipeline versions (`/projects/{id}/approvals...`) and the tenant's pending count
(`/notifications/pending-approvals`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, Query, status

from api_shim.deps import CursorCodecDep, Engineer, Lead, SessionDep
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.pipeline_versions import (
    ApprovalComment,
    ApprovalCommentList,
    ApprovalDecision,
    ApprovalRejection,
    ApprovalRequestDetail,
    ApprovalRequestList,
    ApprovalStatus,
    CommentCreate,
    PendingApprovals,
)
from api_shim.services import approvals as service
from api_shim.services.projects import get_project

router = rime_router(tags=["Approvals"])
APPROVALS = "/projects/{id}/approvals"
ApprovalPage = Annotated[PageRequest, page_params(service.APPROVALS)]
CommentPage = Annotated[PageRequest, page_params(service.COMMENTS)]


@router.get(
    APPROVALS,
    name="approval.list",
    response_model=ApprovalRequestList,
    responses=error_responses(404),
    summary="List approval requests",
)
def list_approvals(
    id: str,
    principal: Lead,
    session: SessionDep,
    codec: CursorCodecDep,
    page: ApprovalPage,
    status_: Annotated[ApprovalStatus | None, Query(alias="status")] = None,
) -> ApprovalRequestList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, codec, project, page, status=status_)


@router.get(
    APPROVALS + "/{requestId}",
    name="approval.get",
    response_model=ApprovalRequestDetail,
    responses=error_responses(404),
    summary="Get an approval request with the version's snapshot",
)
def get_approval(id: str, requestId: str, principal: Lead, session: SessionDep) -> ApprovalRequestDetail:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), requestId)


@router.post(
    APPROVALS + "/{requestId}/approve",
    name="approval.approve",
    response_model=ApprovalRequestDetail,
    responses=error_responses(403, 404, 409),
    summary="Approve: the version moves into the target environment",
    description="403 for the requester (another lead approves). 409 when the request is decided already, or the "
    "version no longer runs in the environment it was to leave.",
)
def approve(
    id: str,
    requestId: str,
    principal: Lead,
    session: SessionDep,
    body: Annotated[ApprovalDecision | None, Body()] = None,
) -> ApprovalRequestDetail:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.approve(session, project, requestId, principal, (body or ApprovalDecision()).reason)


@router.post(
    APPROVALS + "/{requestId}/reject",
    name="approval.reject",
    response_model=ApprovalRequestDetail,
    responses=error_responses(404, 409),
    summary="Reject (a reason is required)",
)
def reject(
    id: str, requestId: str, body: ApprovalRejection, principal: Lead, session: SessionDep
) -> ApprovalRequestDetail:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.reject(session, project, requestId, principal, body.reason)


@router.get(
    APPROVALS + "/{requestId}/comments",
    name="approval.comments",
    response_model=ApprovalCommentList,
    responses=error_responses(404),
    summary="List an approval request's comments",
)
def list_comments(
    id: str, requestId: str, principal: Engineer, session: SessionDep, codec: CursorCodecDep, page: CommentPage
) -> ApprovalCommentList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.comments(session, codec, project, requestId, page)


@router.post(
    APPROVALS + "/{requestId}/comments",
    name="approval.comment",
    status_code=status.HTTP_201_CREATED,
    response_model=ApprovalComment,
    responses=error_responses(404),
    summary="Comment on an approval request",
)
def add_comment(
    id: str, requestId: str, body: CommentCreate, principal: Engineer, session: SessionDep
) -> ApprovalComment:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.add_comment(session, project, requestId, principal, body.content)


@router.get(
    "/notifications/pending-approvals",
    name="approval.pending",
    response_model=PendingApprovals,
    summary="Pending approval requests of every project: the count and the oldest",
)
def pending_approvals(principal: Lead, session: SessionDep) -> PendingApprovals:
    return service.pending(session, principal.tenant_id)
