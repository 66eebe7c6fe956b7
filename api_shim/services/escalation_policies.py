"""Escalation policies: steps `{after_minutes, channel_ids}` in strictly increasing order, sending to the
project's own channels. The escalation sensor (rime_dagster/monitoring) reads them at each evaluation."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.monitoring import (
    EscalationPolicyCreate,
    EscalationPolicyList,
    EscalationPolicyResponse,
    EscalationPolicyUpdate,
    EscalationStep,
)
from api_shim.services.notification_channels import missing_channels
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import AlertRule, EscalationPolicy, Project


def get_policy(session: Session, project: Project, policy_id: str) -> EscalationPolicy:
    row = session.get(EscalationPolicy, policy_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Escalation policy", policy_id, " in this project")
    return row


def check_steps(session: Session, project: Project, steps: list[EscalationStep]) -> None:
    """Delays strictly increasing (400 naming the step), channels the project's own (422 naming the step)."""
    for i, (before, step) in enumerate(zip(steps, steps[1:], strict=False), start=1):
        if step.after_minutes <= before.after_minutes:
            raise ValidationFailed.field(
                f"steps.{i}.after_minutes",
                f"Must be greater than the previous step's after_minutes ({before.after_minutes}).",
            )
    for i, step in enumerate(steps):
        missing = missing_channels(session, project, step.channel_ids)
        if missing:
            message = f"No notification channel {', '.join(missing)} in this project."
            raise Unprocessable(message, details=[{"field": f"steps.{i}.channel_ids", "message": message}])


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(
        select(EscalationPolicy.id).where(EscalationPolicy.project_id == project_id, EscalationPolicy.name == name)
    )
    if clash is not None and clash != except_id:
        raise Conflict(f"An escalation policy named '{name}' already exists in this project.")


def _flush(session: Session, name: str | None) -> None:
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"An escalation policy named '{name}' already exists in this project.") from None


def _dump(steps: list[EscalationStep]) -> list[dict]:
    return [step.model_dump(mode="json") for step in steps]


def policy_users(session: Session, project: Project, policy_id: str) -> list[str]:
    """Names of the project's alert rules that escalate with the policy."""
    return list(
        session.scalars(
            select(AlertRule.name)
            .where(AlertRule.project_id == project.id, AlertRule.escalation_policy_id == policy_id)
            .order_by(AlertRule.name)
        )
    )


# What the Monitoring routes call ------------------------------------------------------------------------------

POLICIES = Listing(
    "escalation_policies",
    {
        "created_at": EscalationPolicy.created_at,
        "updated_at": EscalationPolicy.updated_at,
        "name": EscalationPolicy.name,
    },
    EscalationPolicy.id,
)


def policy_response(row: EscalationPolicy) -> EscalationPolicyResponse:
    return EscalationPolicyResponse.of(row)


def list_page(session: Session, codec: CursorCodec, project: Project, page: PageRequest) -> EscalationPolicyList:
    stmt = select(EscalationPolicy).where(EscalationPolicy.project_id == project.id)
    return POLICIES.page(session, stmt, page, codec, {"project": project.id}).as_page(
        EscalationPolicyList, policy_response
    )


def create(session: Session, project: Project, body: EscalationPolicyCreate) -> EscalationPolicyResponse:
    check_steps(session, project, body.steps)
    _ensure_name_free(session, project.id, body.name)
    row = EscalationPolicy(
        id=new_id("escalation_policy"), project_id=project.id, name=body.name, steps=_dump(body.steps)
    )
    session.add(row)
    _flush(session, body.name)
    return policy_response(row)


def describe(session: Session, project: Project, policy_id: str) -> EscalationPolicyResponse:
    return policy_response(get_policy(session, project, policy_id))


def update(
    session: Session, project: Project, policy_id: str, body: EscalationPolicyUpdate
) -> EscalationPolicyResponse:
    row = get_policy(session, project, policy_id)
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "steps"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    if body.steps is not None:
        check_steps(session, project, body.steps)
        row.steps = _dump(body.steps)
    if body.name is not None:
        _ensure_name_free(session, project.id, body.name, except_id=row.id)
        row.name = body.name
    _flush(session, body.name)
    return policy_response(row)


def delete(session: Session, project: Project, policy_id: str) -> None:
    """Deletes the policy, unless alert rules escalate with it (Conflict naming them)."""
    row = get_policy(session, project, policy_id)
    rules = policy_users(session, project, row.id)
    if rules:
        names = ", ".join(f"'{name}'" for name in rules)
        raise Conflict(f"Alert rule(s) {names} escalate with this policy; change them first.")
    session.delete(row)
    session.flush()
