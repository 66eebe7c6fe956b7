"""Infrastructure: declared resources (CRUD, validated by each type's provider) and plans made from them through
rime_dagster.infrastructure.plan.

Deleting a declaration that was never applied removes it; one that was applied becomes a `deleting` tombstone, so
the next plan shows the deletion of what it made and the next apply carries it out. Secret config fields (a
provider's `secret_fields`) are stored encrypted apart from the config and never answered; an update that leaves
them out keeps the stored ones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.infrastructure import (
    PlanResponse,
    ResourceCreate,
    ResourceList,
    ResourceResponse,
    ResourceUpdate,
)
from api_shim.services.auth import Principal
from rime_dagster.infrastructure.apply import load_declarations
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
