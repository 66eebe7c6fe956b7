"""Bodies of the Governance group (audit logs so far)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api_shim.pagination import Page
from api_shim.schemas.common import ResponseModel, Timestamp


class AuditLogResponse(ResponseModel):
    id: str
    timestamp: Timestamp
    actor: str
    actor_id: str | None
    action: str
    resource_type: str
    resource_id: str | None
    project_id: str | None
    request_id: str
    method: str
    path: str
    status_code: int
    ip: str | None
    details: dict[str, Any] | None = Field(
        None, description="Beyond the resource: for `table.read_unmasked`, `{tables: {table: [columns]}}`."
    )


AuditLogList = Page[AuditLogResponse]
