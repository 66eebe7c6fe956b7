"""The `infrastructure_apply` job: one run applies one stored plan of one project, one step per change.

One job for the whole platform (run config `{project_id, plan_id}`), not one per project: the code location's
load does not grow with the number of projects. Its graph is a chain of waves, in the order changes must go:
deletions from the deepest level up (a table before its namespace), then creates and updates from the shallowest
level down (a namespace before its tables). Each wave fans out one `apply_change` step per change of the plan at
that wave (a dynamic output keyed by the resource), so the Dagster UI shows every change as its own step with its
own logs.

`start` makes the plan again and refuses it when stale (rime_dagster/infrastructure/apply.py) and records its
no-ops. A change that fails records the provider's message on its resource, marks the plan failed and fails its
step; the waves after it then do not run (Dagster does not collect a fan-out with a failed step), so nothing
that may depend on it is attempted. Completed changes stay; the next plan shows what remains. `finish` marks the
plan applied when every change succeeded.
"""

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg

from rime_dagster.platform import run_tags

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from rime_dagster.infrastructure.providers import Target
    from rime_dagster.resources import MetadataStoreResource
    from rime_dagster.store.crypto import CredentialCipher

JOB_NAME = "infrastructure_apply"
LEVELS = (0, 10, 20)  # every provider's level is one of these (tests/infrastructure/test_jobs.py checks)
WAVES = [("delete", level) for level in reversed(LEVELS)] + [("apply", level) for level in LEVELS]


def apply_run_config(project_id: str, plan_id: str) -> dict[str, Any]:
    return {"ops": {"start": {"config": {"project_id": project_id, "plan_id": plan_id}}}}


def apply_tags(project_id: str, plan_id: str) -> dict[str, str]:
    return {run_tags.PROJECT_ID: project_id, run_tags.INFRA_PLAN_ID: plan_id}


def _in_wave(change: dict[str, Any], kind: str, level: int) -> bool:
    from rime_dagster.infrastructure.providers import provider

    if change["action"] == "no-op" or provider(change["resource_type"]).level != level:
        return False
    return (change["action"] == "delete") == (kind == "delete")


def _mapping_key(change: dict[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{change['action']}_{change['resource_type']}_{change['name']}")[:100]


def _context(
    store: "MetadataStoreResource", project_id: str
) -> "tuple[sessionmaker[Session], CredentialCipher, Target]":
    """The store's sessions, the credential cipher and the project's Target, as the run's process sees them."""
    from rime_dagster.infrastructure.providers import Target
    from rime_dagster.platform.iceberg import CatalogProvider
    from rime_dagster.settings import get_settings
    from rime_dagster.store.crypto import CredentialCipher
    from rime_dagster.store.models import Project
    from rime_dagster.store.session import session_factory

    settings = get_settings()
    sessions = session_factory(store.url())
    with sessions() as session:
        project = session.get(Project, project_id)
        if project is None:
            raise dg.Failure(f"Project '{project_id}' no longer exists.")
        namespace = project.namespace
    target = Target(project_id, namespace, settings, CatalogProvider(settings).catalog)
    return sessions, CredentialCipher.from_settings(settings), target


@dg.op(
    config_schema={"project_id": str, "plan_id": str},
    required_resource_keys={"metadata_store"},
    description="Makes the plan again (refused when stale) and records its no-ops.",
)
def start(context: dg.OpExecutionContext) -> dict[str, str]:
    from rime_dagster.infrastructure.apply import PlanNotApplicable, StalePlan, start_apply

    ticket = {"project_id": context.op_config["project_id"], "plan_id": context.op_config["plan_id"]}
    sessions, cipher, target = _context(context.resources.metadata_store, ticket["project_id"])
    try:
        changes = start_apply(sessions, cipher, target, ticket["plan_id"])
    except (StalePlan, PlanNotApplicable) as exc:
        raise dg.Failure(str(exc)) from None
    context.log.info(f"Plan {ticket['plan_id']}: {len(changes)} change(s) to apply.")
    return ticket


def _wave_op(index: int, kind: str, level: int) -> dg.OpDefinition:
    @dg.op(
        name=f"wave_{index}_{kind}_level_{level}",
        ins={"ticket": dg.In(dict), "after": dg.In(dg.Nothing)},
        out=dg.DynamicOut(dict),
        required_resource_keys={"metadata_store"},
        description=f"Fans out one step per {'deletion' if kind == 'delete' else 'create or update'} of level {level}.",
    )
    def _wave(context: dg.OpExecutionContext, ticket: dict) -> Iterator[dg.DynamicOutput[dict]]:
        from rime_dagster.store.models import InfraPlan
        from rime_dagster.store.session import session_factory

        with session_factory(context.resources.metadata_store.url())() as session:
            plan = session.get(InfraPlan, ticket["plan_id"])
            changes = list(plan.changes) if plan is not None else []
        for change in changes:
            if _in_wave(change, kind, level):
                yield dg.DynamicOutput({**ticket, "change": change}, mapping_key=_mapping_key(change))

    return _wave


@dg.op(required_resource_keys={"metadata_store"}, out=dg.Out(dg.Nothing), description="Applies one change.")
def apply_change(context: dg.OpExecutionContext, item: dict) -> None:
    from rime_dagster.infrastructure.apply import apply_change as carry_out
    from rime_dagster.infrastructure.apply import finish_apply
    from rime_dagster.infrastructure.plan import Change

    sessions, cipher, target = _context(context.resources.metadata_store, item["project_id"])
    raw = item["change"]
    change = Change(
        raw["action"],
        raw["resource_id"],
        raw["resource_type"],
        raw["name"],
        raw["before"],
        raw["after"],
        raw.get("statements"),
        0,
    )
    for statement in raw.get("statements") or []:
        context.log.info(f"SQL: {statement}")
    outcome = carry_out(sessions, cipher, target, change)
    if outcome.status != "succeeded":
        finish_apply(sessions, item["plan_id"], failed=True)
        raise dg.Failure(f"{change.action} {change.resource_type} '{change.name}' failed: {outcome.message}")
    context.log.info(f"{change.action} {change.resource_type} '{change.name}': succeeded")


@dg.op(
    ins={"ticket": dg.In(dict), "after": dg.In(dg.Nothing)},
    required_resource_keys={"metadata_store"},
    description="Marks the plan applied: every change succeeded.",
)
def finish(context: dg.OpExecutionContext, ticket: dict) -> None:
    from rime_dagster.infrastructure.apply import finish_apply

    sessions, _, _ = _context(context.resources.metadata_store, ticket["project_id"])
    finish_apply(sessions, ticket["plan_id"], failed=False)


def infrastructure_definitions() -> dg.Definitions:
    waves = [_wave_op(i, kind, level) for i, (kind, level) in enumerate(WAVES)]

    @dg.job(
        name=JOB_NAME,
        tags={run_tags.KIND: run_tags.KIND_INFRASTRUCTURE},
        description="Applies a stored infrastructure plan of a project: one step per change, in dependency order.",
    )
    def infrastructure_apply() -> None:
        ticket = start()
        after = None
        for op in waves:
            items = op(ticket, after) if after is not None else op(ticket)
            after = items.map(apply_change).collect()
        finish(ticket, after)

    return dg.Definitions(jobs=[infrastructure_apply])
