"""Approval requests: a version's move qa -> uat or uat -> production waits for a lead other than the requester.

Approving moves the version (the snapshot the request names, immutable) into the target environment, if it still
runs in the environment it was to leave; rejecting needs a reason. Anyone from data_engineer up may comment.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, Forbidden, NotFound
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.pipeline_versions import (
    ApprovalComment as ApprovalCommentView,
)
from api_shim.schemas.pipeline_versions import (
    ApprovalCommentList,
    ApprovalRequestDetail,
    ApprovalRequestList,
    ApprovalRequestSummary,
    PendingApprovals,
)
from api_shim.services.auth import Principal
from api_shim.services.pipeline_versions import Standing, check_embedded_present, detail, place
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import (
    ApprovalComment,
    ApprovalRequest,
    Pipeline,
    PipelineEnvironment,
    PipelineVersion,
    Project,
)
from rime_dagster.store.types import utcnow

APPROVALS = Listing("approvals", {"requested_at": ApprovalRequest.requested_at}, ApprovalRequest.id, "requested_at")
COMMENTS = Listing("approval-comments", {"created_at": ApprovalComment.created_at}, ApprovalComment.id)
PENDING_SHOWN = 100


def _comment_counts(session: Session, ids: list[str]) -> dict[str, int]:
    if not ids:
        return {}
    rows = session.execute(
        select(ApprovalComment.approval_request_id, func.count())
        .where(ApprovalComment.approval_request_id.in_(ids))
        .group_by(ApprovalComment.approval_request_id)
    )
    return {request_id: count for request_id, count in rows}


def _summaries(session: Session, requests: list[ApprovalRequest]) -> list[ApprovalRequestSummary]:
    ids = [r.id for r in requests]
    counts = _comment_counts(session, ids)
    names = dict(
        session.execute(select(Pipeline.id, Pipeline.name).where(Pipeline.id.in_({r.pipeline_id for r in requests})))
        .tuples()
        .all()
    )
    numbers = dict(
        session.execute(
            select(PipelineVersion.id, PipelineVersion.version).where(
                PipelineVersion.id.in_({r.version_id for r in requests})
            )
        )
        .tuples()
        .all()
    )
    return [
        ApprovalRequestSummary.of(
            r,
            pipeline_name=names.get(r.pipeline_id, ""),
            version=numbers.get(r.version_id, 0),
            comments=counts.get(r.id, 0),
        )
        for r in requests
    ]


def get_request(session: Session, project: Project, request_id: str) -> ApprovalRequest:
    row = session.get(ApprovalRequest, request_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Approval request", request_id)
    return row


def _subject(session: Session, request: ApprovalRequest) -> tuple[PipelineVersion, Pipeline]:
    """The request's version and pipeline (deleting either deletes the request)."""
    version = session.scalars(select(PipelineVersion).where(PipelineVersion.id == request.version_id)).one()
    return version, session.scalars(select(Pipeline).where(Pipeline.id == request.pipeline_id)).one()


def _detail(session: Session, request: ApprovalRequest) -> ApprovalRequestDetail:
    (summary,) = _summaries(session, [request])
    version, pipeline = _subject(session, request)
    return ApprovalRequestDetail(**summary.model_dump(), snapshot=detail(version, Standing(session, pipeline)))


def list_page(
    session: Session, codec: CursorCodec, project: Project, page: PageRequest, *, status: str | None
) -> ApprovalRequestList:
    query = select(ApprovalRequest).where(ApprovalRequest.project_id == project.id)
    if status is not None:
        query = query.where(ApprovalRequest.status == status)
    result = APPROVALS.page(session, query, page, codec, {"project": project.id, "status": status})
    summaries = {s.id: s for s in _summaries(session, result.items)}
    return result.as_page(ApprovalRequestList, lambda r: summaries[r.id])


def describe(session: Session, project: Project, request_id: str) -> ApprovalRequestDetail:
    return _detail(session, get_request(session, project, request_id))


def _pending(session: Session, project: Project, request_id: str) -> ApprovalRequest:
    request = get_request(session, project, request_id)
    # Locked until the decision commits: two leads deciding at once cannot both win (PostgreSQL; SQLite's write
    # lock already orders them).
    session.execute(select(ApprovalRequest.id).where(ApprovalRequest.id == request.id).with_for_update())
    session.refresh(request)
    if request.status != "pending":
        raise Conflict(f"Approval request {request.id} is already {request.status}.")
    return request


def approve(
    session: Session, project: Project, request_id: str, principal: Principal, reason: str | None
) -> ApprovalRequestDetail:
    request = _pending(session, project, request_id)
    if request.requested_by_user_id == principal.user_id:
        raise Forbidden("The requester cannot approve their own request: another lead must.")
    version, pipeline = _subject(session, request)
    slot = session.get(PipelineEnvironment, (pipeline.id, request.from_environment))
    if slot is None or slot.version_id != version.id:
        raise Conflict(
            f"Version {version.version} no longer runs in {request.from_environment}: reject this request, and "
            "promote the version that does."
        )
    check_embedded_present(session, project, version, request.to_environment)
    place(session, pipeline, version, request.to_environment, by=principal.email, approval_request_id=request.id)
    return _decided(session, request, "approved", principal, reason)


def reject(
    session: Session, project: Project, request_id: str, principal: Principal, reason: str
) -> ApprovalRequestDetail:
    return _decided(session, _pending(session, project, request_id), "rejected", principal, reason)


def _decided(
    session: Session, request: ApprovalRequest, status: str, principal: Principal, reason: str | None
) -> ApprovalRequestDetail:
    request.status, request.decided_by, request.decided_at, request.reason = status, principal.email, utcnow(), reason
    session.flush()
    return _detail(session, request)


def comments(
    session: Session, codec: CursorCodec, project: Project, request_id: str, page: PageRequest
) -> ApprovalCommentList:
    request = get_request(session, project, request_id)
    result = COMMENTS.page(
        session,
        select(ApprovalComment).where(ApprovalComment.approval_request_id == request.id),
        page,
        codec,
        {"request": request.id},
    )
    return result.as_page(ApprovalCommentList, ApprovalCommentView.of)


def add_comment(
    session: Session, project: Project, request_id: str, principal: Principal, content: str
) -> ApprovalCommentView:
    request = get_request(session, project, request_id)
    comment = ApprovalComment(
        id=new_id("comment"), approval_request_id=request.id, author=principal.email, content=content
    )
    session.add(comment)
    session.flush()
    return ApprovalCommentView.of(comment)


def pending(session: Session, tenant_id: str) -> PendingApprovals:
    """The tenant's pending requests: how many, and the oldest first."""
    scope = (
        select(ApprovalRequest)
        .join(Project, Project.id == ApprovalRequest.project_id)
        .where(Project.tenant_id == tenant_id, ApprovalRequest.status == "pending")
    )
    count = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    oldest = session.scalars(
        scope.order_by(ApprovalRequest.requested_at, ApprovalRequest.id).limit(PENDING_SHOWN)
    ).all()
    return PendingApprovals(count=count, requests=_summaries(session, list(oldest)))
