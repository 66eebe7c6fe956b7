"""Infrastructure: declared resources (CRUD, validated by each type's provider) and plans made from them through
rime_dagster.infrastructure.plan.

Deleting a declaration that was never applied removes it; one that was applied becomes a `deleting` tombstone, so
the next plan shows the deletion of what it made and the next apply carries it out. Secret config fields (a
provider's `secret_fields`) are stored encrypted apart from the config and never answered; an update that leaves
them out keeps the stored ones.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import exists, select
from sqlalchemy import update as sql_update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.dagster_client import DagsterClient
from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.infrastructure import (
    ApplyRun,
    PlanResponse,
    ResourceCreate,
    ResourceList,
    ResourceResponse,
    ResourceUpdate,
)
from api_shim.services.auth import Principal
from api_shim.services.runs import launch_summary, launch_tags
from rime_dagster.infrastructure.apply import load_declarations
from rime_dagster.infrastructure.jobs import JOB_NAME, apply_run_config, apply_tags
from rime_dagster.infrastructure.plan import UnreadableResources, make_plan
from rime_dagster.infrastructure.providers import KNOWN_TYPES, ConfigInvalid, Provider, Target, provider
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.settings import Settings
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import InfraPlan, InfraResource, Project

RESOURCES = Listing(
    "infra_resources",
    {
        "created_at": InfraResource.created_at,
        "updated_at": InfraResource.updated_at,
        "name": InfraResource.name,
    },
    InfraResource.id,
)


def _provider(resource_type: str) -> Provider:
    if resource_type not in KNOWN_TYPES:
        raise ValidationFailed.field("resource_type", f"Unknown resource type: use one of {', '.join(KNOWN_TYPES)}.")
    return provider(resource_type)


def _validated(kind: Provider, name: str, config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    details: list[dict[str, str]] = []
    try:
        name = kind.validate_name(name)
    except ConfigInvalid as exc:
        details += exc.details
    try:
        stored, secrets = kind.validate(config)
    except ConfigInvalid as exc:
        details += exc.details
    if details:
        raise ValidationFailed("Request validation failed.", details=details)
    return name, stored, secrets


def get_resource(session: Session, project: Project, resource_id: str) -> InfraResource:
    row = session.get(InfraResource, resource_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Resource", resource_id, " in this project")
    return row


def _secrets(cipher: CredentialCipher, row: InfraResource) -> dict[str, Any]:
    return cipher.decrypt(row.secrets_encrypted) if row.secrets_encrypted else {}


def resource_response(row: InfraResource, cipher: CredentialCipher) -> ResourceResponse:
    return ResourceResponse.of(row, secrets_set=sorted(_secrets(cipher, row)))


def list_page(
    session: Session, cipher: CredentialCipher, codec: CursorCodec, project: Project, page: PageRequest
) -> ResourceList:
    stmt = select(InfraResource).where(InfraResource.project_id == project.id)
    result = RESOURCES.page(session, stmt, page, codec, {"project": project.id})
    return result.as_page(ResourceList, lambda row: resource_response(row, cipher))


def create(session: Session, cipher: CredentialCipher, project: Project, body: ResourceCreate) -> ResourceResponse:
    kind = _provider(body.resource_type)
    name, stored, secrets = _validated(kind, body.name, body.config)
    clash = session.scalar(
        select(InfraResource).where(
            InfraResource.project_id == project.id,
            InfraResource.resource_type == body.resource_type,
            InfraResource.name == name,
        )
    )
    if clash is not None:
        if clash.state == "deleting":
            raise Conflict(f"The {body.resource_type} '{name}' is being deleted: apply the deletion first.")
        raise Conflict(f"A {body.resource_type} named '{name}' is already declared in this project.")
    row = InfraResource(
        id=new_id("resource"),
        project_id=project.id,
        resource_type=body.resource_type,
        name=name,
        config=stored,
        secrets_encrypted=cipher.encrypt(secrets) if secrets else None,
        state="pending",
        revision=1,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"A {body.resource_type} named '{name}' was declared meanwhile.") from None
    return resource_response(row, cipher)


def update(
    session: Session, cipher: CredentialCipher, project: Project, resource_id: str, body: ResourceUpdate
) -> ResourceResponse:
    row = get_resource(session, project, resource_id)
    if row.state == "deleting":
        raise Conflict(f"Resource '{resource_id}' is being deleted: apply the deletion, then declare it again.")
    kind = _provider(row.resource_type)
    kept = {key: value for key, value in _secrets(cipher, row).items() if key not in body.config}
    _, stored, secrets = _validated(kind, row.name, {**kept, **body.config})
    if stored != row.config or secrets != _secrets(cipher, row):
        row.config = stored
        row.secrets_encrypted = cipher.encrypt(secrets) if secrets else None
        row.revision += 1
        row.state = "pending"
    session.flush()
    return resource_response(row, cipher)


def delete(session: Session, project: Project, resource_id: str) -> None:
    row = get_resource(session, project, resource_id)
    if row.applied_revision is None:  # never applied: nothing the platform made is left to remove
        session.delete(row)
        return
    if row.state != "deleting":
        row.state = "deleting"
        row.revision += 1


def target(settings: Settings, catalogs: CatalogProvider, project: Project) -> Target:
    return Target(project.id, project.namespace, settings, catalogs.catalog)


def plan_response(row: InfraPlan) -> PlanResponse:
    return PlanResponse.of(row, plan_id=row.id)


def plan(
    session: Session,
    cipher: CredentialCipher,
    settings: Settings,
    catalogs: CatalogProvider,
    project: Project,
    principal: Principal,
) -> PlanResponse:
    """Reads what exists for every declaration, stores the plan and answers it (422 naming the resources whose
    actual state could not be read)."""
    try:
        made = make_plan(target(settings, catalogs, project), load_declarations(session, cipher, project.id))
    except UnreadableResources as exc:
        raise Unprocessable(
            "The actual state of some resources could not be read: no plan was made.",
            details=[{"field": rid, "message": message} for rid, message in exc.failures.items()],
        ) from None
    row = InfraPlan(
        id=new_id("plan"),
        project_id=project.id,
        created_by=principal.email,
        changes=[change.as_json() for change in made.changes],
        summary=made.summary,
        fingerprint=made.fingerprint,
        status="planned",
    )
    session.add(row)
    session.flush()
    return plan_response(row)


def _plan_to_apply(session: Session, project: Project, plan_id: str | None) -> InfraPlan:
    if plan_id is None:
        row = session.scalar(
            select(InfraPlan)
            .where(InfraPlan.project_id == project.id)
            .order_by(InfraPlan.created_at.desc(), InfraPlan.id.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound("This project has no plan: POST .../infrastructure/plan first.")
        return row
    row = session.get(InfraPlan, plan_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Plan", plan_id, " in this project")
    return row


def apply(
    sessions: sessionmaker[Session],
    cipher: CredentialCipher,
    settings: Settings,
    catalogs: CatalogProvider,
    dagster: DagsterClient,
    project: Project,
    plan_id: str | None,
    triggered_by: str,
) -> ApplyRun:
    """Launches the apply of a plan (the latest by default) as a run of `infrastructure_apply`. 409 for a plan that
    is stale, not `planned`, or while another apply of the project runs; the plan is `applying` from here on, and
    back to `planned` if the launch fails."""
    with sessions() as session:
        plan = _plan_to_apply(session, project, plan_id)
        plan_id, fingerprint, status = plan.id, plan.fingerprint, plan.status
        declared = load_declarations(session, cipher, project.id)
    if status != "planned":
        raise Conflict(f"Plan '{plan_id}' is {status}: make a new plan.")
    try:
        current = make_plan(target(settings, catalogs, project), declared)
    except UnreadableResources as exc:
        raise Unprocessable(
            "The actual state of some resources could not be read: the plan cannot be checked.",
            details=[{"field": rid, "message": message} for rid, message in exc.failures.items()],
        ) from None
    if current.fingerprint != fingerprint:
        raise Conflict(f"Plan '{plan_id}' is stale: the declarations or what exists changed since. Plan again.")
    here = target(settings, catalogs, project)
    unavailable = [
        {"field": change.resource_id, "message": message}
        for change in current.changes
        if change.action != "no-op" and (message := provider(change.resource_type).unavailable(here))
    ]
    if unavailable:
        raise Unprocessable(
            "Some changes cannot be applied on this deployment: nothing was applied.", details=unavailable
        )
    _release_ended_applies(sessions, dagster, project)
    other = InfraPlan.__table__.alias("other")
    with sessions.begin() as session:  # planned -> applying, unless another apply of the project runs
        result = session.execute(
            sql_update(InfraPlan)
            .where(InfraPlan.id == plan_id, InfraPlan.status == "planned")
            .where(~exists().where(other.c.project_id == project.id, other.c.status == "applying"))
            .values(status="applying")
        )
        claimed = cast(CursorResult[Any], result).rowcount == 1  # an UPDATE's result is a CursorResult
    if not claimed:
        raise Conflict("Another apply of this project is running (or this plan was just applied): wait for it.")
    try:
        launched = dagster.launch_run(
            JOB_NAME,
            tags={**apply_tags(project.id, plan_id), **launch_tags(triggered_by, full_refresh=False)},
            run_config=apply_run_config(project.id, plan_id),
        )
    except BaseException:
        with sessions.begin() as session:
            session.execute(sql_update(InfraPlan).where(InfraPlan.id == plan_id).values(status="planned"))
        raise
    with sessions.begin() as session:  # what lets a later apply see that this one's run has ended
        session.execute(
            sql_update(InfraPlan).where(InfraPlan.id == plan_id).values(dagster_run_id=launched.dagster_run_id)
        )
    return ApplyRun(plan_id=plan_id, **launch_summary(dagster, launched))


def _release_ended_applies(sessions: sessionmaker[Session], dagster: DagsterClient, project: Project) -> None:
    """A plan still `applying` whose run has ended without finishing it (the run worker died, the run was canceled
    or failed before its first change) is failed, so it no longer holds the project's apply back."""
    from dagster import DagsterRunStatus

    ended = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    with sessions() as session:
        applying = session.execute(
            select(InfraPlan.id, InfraPlan.dagster_run_id).where(
                InfraPlan.project_id == project.id, InfraPlan.status == "applying", InfraPlan.dagster_run_id.isnot(None)
            )
        ).all()
    for plan_id, run_id in applying:
        record = dagster.run_record(run_id) if run_id else None
        if record is not None and record.dagster_run.status in ended:
            with sessions.begin() as session:
                session.execute(
                    sql_update(InfraPlan)
                    .where(InfraPlan.id == plan_id, InfraPlan.status == "applying")
                    .values(status="failed")
                )
