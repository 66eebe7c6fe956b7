"""The append-only audit trail: who did what, to which resource, with what outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, sessionmaker

from api_shim.services.auth import Principal
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import AuditLog


@dataclass(frozen=True)
class AuditEntry:
    tenant_id: str
    project_id: str | None
    actor_id: str | None
    actor: str
    action: str
    resource_type: str
    resource_id: str | None
    request_id: str
    method: str
    path: str
    status_code: int
    ip: str | None
    details: dict[str, Any] | None = None


def record(session: Session, entry: AuditEntry, *, at: datetime | None = None) -> AuditLog:
    row = AuditLog(id=new_id("audit"), **entry.__dict__)
    if at is not None:
        row.timestamp = at
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class AuditFilters:
    actor: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def audit_query(*, tenant_id: str, project_id: str | None, filters: AuditFilters) -> Select:
    stmt = select(AuditLog).where(AuditLog.tenant_id == tenant_id)
    if project_id is not None:
        stmt = stmt.where(AuditLog.project_id == project_id)
    if filters.actor:
        stmt = stmt.where(or_(AuditLog.actor == filters.actor.lower(), AuditLog.actor_id == filters.actor))
    if filters.action:
        stmt = stmt.where(AuditLog.action == filters.action)
    if filters.resource_type:
        stmt = stmt.where(AuditLog.resource_type == filters.resource_type)
    if filters.resource_id:
        stmt = stmt.where(AuditLog.resource_id == filters.resource_id)
    if filters.start:
        stmt = stmt.where(AuditLog.timestamp >= filters.start)
    if filters.end:
        stmt = stmt.where(AuditLog.timestamp < filters.end)
    return stmt


def record_refused_websocket(
    sessions: sessionmaker[Session],
    *,
    tenant_id: str,
    principal: Principal | None,
    action: str,
    resource_type: str,
    resource_id: str | None,
    request_id: str,
    path: str,
    status_code: int,
    ip: str | None,
) -> None:
    """Audits a WebSocket refused before it opened (the audit middleware sees HTTP requests only), in a
    transaction of its own: `principal` is whoever the token named, if it named anyone."""
    entry = AuditEntry(
        tenant_id=tenant_id,
        project_id=None,
        actor_id=principal.user_id if principal else None,
        actor=principal.email if principal else "anonymous",
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        request_id=request_id,
        method="WEBSOCKET",
        path=path[:500],
        status_code=status_code,
        ip=ip,
    )
    with sessions.begin() as session:
        record(session, entry)
