"""Applying a stored plan: each change through its provider, in the plan's order, each outcome recorded at once.

`apply_plan` first makes the plan again from the store and the world as they are now; if the fingerprint differs
from the stored plan's, the plan is stale (a declaration changed, or something changed behind the platform's back
since it was made) and nothing is applied. Then, change by change:

* a change whose dependencies failed (a table whose namespace could not be created; a namespace whose tables could
  not be deleted) is skipped, and counts as failed for its own dependents;
* a change that fails records its provider's message on the resource (`state: failed`, `last_error`) and the
  apply goes on with the changes that do not depend on it: completed changes stay, and the next plan shows exactly
  what remains;
* a change that succeeds marks the resource applied at its revision (a deletion removes the declaration);
* a `no-op` marks the resource applied too: what exists already matches it.

Each outcome is committed as it happens, so a run that dies half-way leaves the store telling the truth about the
changes it made. The plan ends `applied` (every change succeeded) or `failed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def _blocked_by(
    change: Change, declaration: Declaration, declarations: list[Declaration], failed: set[tuple[str, str]]
) -> list[str]:
    """The failed resources this change waits on: for a deletion, the declared resources that depend on it; for
    anything else, the ones it depends on."""
    resource = declaration.resource
    if change.action == "delete":
        mine = (resource.resource_type, resource.name)
        return [
            f"{d.resource.resource_type} '{d.resource.name}'"
            for d in declarations
            if (d.resource.resource_type, d.resource.name) in failed
            and mine in provider(d.resource.resource_type).depends_on(d.resource)
        ]
    return [
        f"{kind} '{name}'"
        for kind, name in provider(resource.resource_type).depends_on(resource)
        if (kind, name) in failed
    ]


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
    *,
    blocked: Sequence[str] = (),
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
    if blocked:
        error, status = f"Not applied: it waits on {', '.join(blocked)}, which failed.", "skipped"
    else:
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


def apply_plan(
    sessions: sessionmaker[Session],
    cipher: CredentialCipher,
    target: Target,
    plan_id: str,
    *,
    log: Callable[[str], None] = lambda _message: None,
) -> list[Outcome]:
    """The whole apply in this process, each change after those it depends on; a change whose dependencies
    failed is skipped, the others go on."""
    changes = start_apply(sessions, cipher, target, plan_id)
    with unit_of_work(sessions) as session:
        declarations = load_declarations(session, cipher, target.project_id)
    by_id = {d.resource.resource_id: d for d in declarations}
    failed: set[tuple[str, str]] = set()
    outcomes: list[Outcome] = []
    for change in changes:
        blocked = _blocked_by(change, by_id[change.resource_id], declarations, failed)
        outcome = apply_change(sessions, cipher, target, change, blocked=blocked)
        if outcome.status != "succeeded":
            failed.add((change.resource_type, change.name))
        outcomes.append(outcome)
        log(
            f"{change.action} {change.resource_type} '{change.name}': {outcome.status}"
            + (f" ({outcome.message})" if outcome.message else "")
        )
    finish_apply(sessions, plan_id, failed=bool(failed))
    return outcomes


def _carry_out(target: Target, change: Change, resource: Declared) -> None:
    kind = provider(change.resource_type)
    if change.action == "create":
        kind.create(target, resource)
    elif change.action == "update":
        assert change.before is not None
        kind.update(target, resource, change.before)
    elif change.action == "delete":
        kind.delete(target, resource)
