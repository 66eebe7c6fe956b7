"""Applying a stored plan, in the steps of the infrastructure_apply job (rime_dagster/infrastructure/jobs.py).

`start_apply` makes the plan again from the store and the world as they are now; if the fingerprint differs from
the stored plan's, the plan is stale (a declaration changed, or something changed behind the platform's back since
it was made) and nothing is applied. It records the plan's no-ops (what exists already matches: the resource is
applied; a deleted declaration whose resource is gone: removed) and returns the changes to carry out.

`apply_change` carries out one change through its provider and records the outcome on the resource at once: a
change that succeeds marks it applied at its revision (a deletion removes the declaration); one that fails marks it
`failed` with the provider's message. So a run that dies half-way leaves the store telling the truth about the
changes it made, and the next plan shows exactly what remains. `finish_apply` ends the plan `applied` or `failed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rime_dagster.infrastructure.plan import Change, Declaration, make_plan
from rime_dagster.infrastructure.providers.base import Declared, ProviderError, Target, provider
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.models import InfraPlan, InfraResource
from rime_dagster.store.session import unit_of_work


class StalePlan(Exception):
    """The declarations or the actual state changed since the plan was made: plan again."""


class PlanNotApplicable(Exception):
    """The plan cannot be applied (already applied, failed, or applying elsewhere)."""


@dataclass(frozen=True)
class Outcome:
    resource_id: str
    resource_type: str
    name: str
    action: str
    status: Literal["succeeded", "failed", "skipped"]
    message: str | None = None


def load_declarations(session: Session, cipher: CredentialCipher, project_id: str) -> list[Declaration]:
    """The project's declared resources as plans read them, secrets decrypted."""
    rows = session.scalars(
        select(InfraResource).where(InfraResource.project_id == project_id).order_by(InfraResource.id)
    ).all()
    return [
        Declaration(
            Declared(
                row.id,
                row.resource_type,
                row.name,
                row.config,
                cipher.decrypt(row.secrets_encrypted) if row.secrets_encrypted else {},
            ),
            row.revision,
            row.state == "deleting",
        )
        for row in rows
    ]


def _record(sessions: sessionmaker[Session], change: Change, revision: int, error: str | None) -> None:
    with unit_of_work(sessions) as session:
        row = session.get(InfraResource, change.resource_id)
        if row is None or row.revision != revision:  # changed while applying: the next plan will say so
            return
        if error is not None:
            row.state, row.last_error = "failed", error
        elif row.state == "deleting":
            session.delete(row)
        else:
            row.state, row.last_error = "applied", None
            row.applied_revision, row.applied_at = revision, datetime.now(UTC)


def start_apply(
    sessions: sessionmaker[Session], cipher: CredentialCipher, target: Target, plan_id: str
) -> list[Change]:
    """Makes the plan again and refuses it if stale (StalePlan: the plan ends failed); records its no-ops (the
    resource already matches: applied; a deleted declaration whose resource is gone: removed); marks it applying.
    Returns the changes to carry out, in order."""
    with unit_of_work(sessions) as session:
        plan = session.get(InfraPlan, plan_id)
        if plan is None or plan.project_id != target.project_id:
            raise PlanNotApplicable(f"No plan '{plan_id}' in this project.")
        if plan.status not in ("planned", "applying"):
            raise PlanNotApplicable(f"Plan '{plan_id}' is {plan.status}: make a new plan.")
        fingerprint = plan.fingerprint
        declarations = load_declarations(session, cipher, target.project_id)
    current = make_plan(target, declarations)
    if current.fingerprint != fingerprint:
        finish_apply(sessions, plan_id, failed=True)
        raise StalePlan(f"Plan '{plan_id}' is stale: the declarations or what exists changed since. Plan again.")
    revisions = {d.resource.resource_id: d.revision for d in declarations}
    for change in current.changes:
        if change.action == "no-op":
            _record(sessions, change, revisions[change.resource_id], None)
    with unit_of_work(sessions) as session:
        plan = session.get(InfraPlan, plan_id)
        if plan is not None:
            plan.status = "applying"
    return [change for change in current.changes if change.action != "no-op"]


def apply_change(
    sessions: sessionmaker[Session],
    cipher: CredentialCipher,
    target: Target,
    change: Change,
) -> Outcome:
    """Carries out one change of a started apply and records its outcome on the resource (never raises for the
    change's own failure: the outcome says it)."""
    with unit_of_work(sessions) as session:
        by_id = {d.resource.resource_id: d for d in load_declarations(session, cipher, target.project_id)}
    declaration = by_id.get(change.resource_id)
    if declaration is None:
        return Outcome(change.resource_id, change.resource_type, change.name, change.action, "skipped", "Gone.")
    error: str | None = None
    status: Literal["succeeded", "failed", "skipped"] = "succeeded"
    try:
        _carry_out(target, change, declaration.resource)
    except ProviderError as exc:
        error, status = str(exc), "failed"
    except Exception as exc:  # not a provider's worded failure: its text may quote a driver's secret
        error, status = f"The change failed unexpectedly ({type(exc).__name__}).", "failed"
    _record(sessions, change, declaration.revision, error)
    return Outcome(change.resource_id, change.resource_type, change.name, change.action, status, error)


def finish_apply(sessions: sessionmaker[Session], plan_id: str, *, failed: bool) -> None:
    with unit_of_work(sessions) as session:
        plan = session.get(InfraPlan, plan_id)
        if plan is not None:
            plan.status, plan.applied_at = ("failed" if failed else "applied"), datetime.now(UTC)


def _carry_out(target: Target, change: Change, resource: Declared) -> None:
    kind = provider(change.resource_type)
    if change.action == "create":
        kind.create(target, resource)
    elif change.action == "update":
        assert change.before is not None
        kind.update(target, resource, change.before)
    elif change.action == "delete":
        kind.delete(target, resource)
