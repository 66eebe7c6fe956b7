"""Governance group: audit logs (classifications and masking policies join later)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from api_shim.deps import Auditor, CursorCodecDep, SessionDep
from api_shim.errors import ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import DateTimeText, error_responses
from api_shim.schemas.governance import AuditLogList, AuditLogResponse
from api_shim.services import audit
from api_shim.services.projects import get_project
from rime_dagster.store.models import AuditLog

router = rime_router(tags=["Governance"])

AUDIT_LOGS = Listing("audit", {"timestamp": AuditLog.timestamp}, AuditLog.id, default_sort="timestamp")
AuditPage = Annotated[PageRequest, page_params(AUDIT_LOGS)]


def audit_filters(
    actor: Annotated[str | None, Query(description="Actor email or user id.")] = None,
    action: Annotated[str | None, Query(description="e.g. `project.update`.")] = None,
    resource_type: Annotated[str | None, Query()] = None,
    resource_id: Annotated[str | None, Query()] = None,
    from_: Annotated[DateTimeText | None, Query(alias="from", description="RFC 3339, inclusive.")] = None,
    to: Annotated[DateTimeText | None, Query(description="RFC 3339, exclusive.")] = None,
) -> audit.AuditFilters:
    for name, value in (("from", from_), ("to", to)):
        if value is not None and value.tzinfo is None:
            raise ValidationFailed.field(name, "Must include a time zone, e.g. 2026-01-01T00:00:00Z.")
    if from_ and to and from_ >= to:
        raise ValidationFailed.field("to", "Must be after 'from'.")
    return audit.AuditFilters(
        actor=actor, action=action, resource_type=resource_type, resource_id=resource_id, start=from_, end=to
    )


AuditFiltersDep = Annotated[audit.AuditFilters, Depends(audit_filters)]


def _list(
    session: Session,
    codec: CursorCodec,
    page: PageRequest,
    *,
    tenant_id: str,
    project_id: str | None,
    filters: audit.AuditFilters,
) -> AuditLogList:
    stmt = audit.audit_query(tenant_id=tenant_id, project_id=project_id, filters=filters)
    result = AUDIT_LOGS.page(session, stmt, page, codec, {"project": project_id, **filters.__dict__})
    return result.as_page(AuditLogList, AuditLogResponse.model_validate)


@router.get(
    "/projects/{id}/audit-logs",
    name="audit_log.list",
    response_model=AuditLogList,
    responses=error_responses(404),
    summary="Query a project's audit logs",
)
def list_project_audit_logs(
    id: str, principal: Auditor, session: SessionDep, codec: CursorCodecDep, page: AuditPage, filters: AuditFiltersDep
) -> AuditLogList:
    get_project(session, id, tenant_id=principal.tenant_id)
    return _list(session, codec, page, tenant_id=principal.tenant_id, project_id=id, filters=filters)


@router.get(
    "/audit-logs",
    name="audit_log.list_tenant",
    response_model=AuditLogList,
    summary="Query the tenant-wide audit log (users, tokens, and every project)",
)
def list_tenant_audit_logs(
    principal: Auditor, session: SessionDep, codec: CursorCodecDep, page: AuditPage, filters: AuditFiltersDep
) -> AuditLogList:
    return _list(session, codec, page, tenant_id=principal.tenant_id, project_id=None, filters=filters)
