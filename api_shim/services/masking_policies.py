"""Masking policies: a classification's columns, or listed columns, read masked by every role not exempt.

Enforcement is not here: rime_dagster/governance/reads.py applies the policies on every read of table data.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.masking_policies import (
    DEFAULT_KEEP_LAST,
    MaskingPolicyCreate,
    MaskingPolicyList,
    MaskingPolicyResponse,
    MaskingPolicyUpdate,
)
from api_shim.services.connectors import merge_patch
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Classification, MaskingPolicy, Project

POLICIES = Listing(
    "masking_policies",
    {"created_at": MaskingPolicy.created_at, "updated_at": MaskingPolicy.updated_at, "name": MaskingPolicy.name},
    MaskingPolicy.id,
)


def get_policy(session: Session, project: Project, policy_id: str) -> MaskingPolicy:
    row = session.get(MaskingPolicy, policy_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Masking policy", policy_id, " in this project")
    return row


def _name_taken(name: str) -> Conflict:
    return Conflict(f"A masking policy named '{name}' already exists in this project.")


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(
        select(MaskingPolicy.id).where(MaskingPolicy.project_id == project_id, MaskingPolicy.name == name)
    )
    if clash is not None and clash != except_id:
        raise _name_taken(name)


def _validated(session: Session, project: Project, fields: dict[str, Any]) -> dict[str, Any]:
    """The policy's stored fields from a whole body (a create, or a row merged with a patch), checked across
    fields: exactly one target, a classification of this project, options only for `partial`."""
    has_class, has_columns = fields.get("classification_id") is not None, fields.get("columns") is not None
    if has_class == has_columns:
        message = "Give exactly one of classification_id and columns."
        raise ValidationFailed(
            "Request validation failed.",
            details=[{"field": "classification_id", "message": message}, {"field": "columns", "message": message}],
        )
    if has_class:
        classification = session.get(Classification, fields["classification_id"])
        if classification is None or classification.project_id != project.id:
            message = f"No classification {fields['classification_id']} in this project."
            raise Unprocessable(message, details=[{"field": "classification_id", "message": message}])
    options = fields.get("options") or {}
    if fields["strategy"] == "partial":
        options = {"keep_last": options.get("keep_last", DEFAULT_KEEP_LAST)}
    elif options:
        raise ValidationFailed.field("options", "Only the partial strategy takes options.")
    columns = None
    if has_columns:  # each pair once, in the order given
        pairs = dict.fromkeys((c["table"], c["column"]) for c in fields["columns"])
        columns = [{"table": table, "column": column} for table, column in pairs]
    return {
        "name": fields["name"],
        "classification_id": fields.get("classification_id"),
        "columns": columns,
        "strategy": fields["strategy"],
        "options": options,
        "exempt_roles": list(dict.fromkeys(str(role) for role in fields.get("exempt_roles") or [])),
    }


def _flush(session: Session, name: str) -> None:
    try:
        session.flush()
    except IntegrityError:
        raise _name_taken(name) from None


def policy_response(row: MaskingPolicy) -> MaskingPolicyResponse:
    return MaskingPolicyResponse.model_validate(row)


def list_page(session: Session, codec: CursorCodec, project: Project, page: PageRequest) -> MaskingPolicyList:
    stmt = select(MaskingPolicy).where(MaskingPolicy.project_id == project.id)
    result = POLICIES.page(session, stmt, page, codec, {"project": project.id})
    return result.as_page(MaskingPolicyList, policy_response)


def create(session: Session, project: Project, body: MaskingPolicyCreate) -> MaskingPolicyResponse:
    fields = _validated(session, project, body.model_dump(mode="json"))
    _ensure_name_free(session, project.id, fields["name"])
    row = MaskingPolicy(id=new_id("masking_policy"), project_id=project.id, **fields)
    session.add(row)
    _flush(session, fields["name"])
    return policy_response(row)


def describe(session: Session, project: Project, policy_id: str) -> MaskingPolicyResponse:
    return policy_response(get_policy(session, project, policy_id))


def update(session: Session, project: Project, policy_id: str, body: MaskingPolicyUpdate) -> MaskingPolicyResponse:
    row = get_policy(session, project, policy_id)
    patch = body.model_dump(mode="json", exclude_unset=True)
    for field in ("name", "strategy", "exempt_roles"):
        if field in patch and patch[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    current = {
        "name": row.name,
        "classification_id": row.classification_id,
        "columns": row.columns,
        "strategy": row.strategy,
        "options": row.options if "options" in patch or patch.get("strategy", row.strategy) == row.strategy else {},
        "exempt_roles": row.exempt_roles,
    }
    fields = _validated(session, project, merge_patch(current, patch))
    _ensure_name_free(session, project.id, fields["name"], except_id=row.id)
    for key, value in fields.items():
        setattr(row, key, value)
    _flush(session, fields["name"])
    return policy_response(row)


def delete(session: Session, project: Project, policy_id: str) -> None:
    session.delete(get_policy(session, project, policy_id))
    session.flush()
