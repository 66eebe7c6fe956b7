"""Classifications: CRUD (manual assignments mirrored into column tags at once) and on-demand classification runs
through rime_dagster.governance.classify, the code every sync runs too."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.errors import Conflict, NotFound, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.classifications import (
    ClassificationCreate,
    ClassificationList,
    ClassificationResponse,
    ClassificationRunRequest,
    ClassificationRunResult,
    ClassificationUpdate,
    ClassifiedColumn,
    ClassifiedTable,
    ColumnClassificationResponse,
)
from api_shim.services.projects import get_project
from rime_dagster.governance.classify import ColumnTag, classify_tables, sync_assignments
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Classification, MaskingPolicy, Project

CLASSIFICATIONS = Listing(
    "classifications",
    {
        "created_at": Classification.created_at,
        "updated_at": Classification.updated_at,
        "name": Classification.name,
    },
    Classification.id,
)


def get_classification(session: Session, project: Project, classification_id: str) -> Classification:
    row = session.get(Classification, classification_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Classification", classification_id, " in this project")
    return row


def _name_taken(name: str) -> Conflict:
    return Conflict(f"A classification named '{name}' already exists in this project.")


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(
        select(Classification.id).where(Classification.project_id == project_id, Classification.name == name)
    )
    if clash is not None and clash != except_id:
        raise _name_taken(name)


def _as_stored(body: ClassificationCreate | ClassificationUpdate, field: str) -> list[dict[str, Any]]:
    return [item.model_dump(exclude_none=True) for item in getattr(body, field)]


def classification_response(row: Classification) -> ClassificationResponse:
    return ClassificationResponse.model_validate(row)


def list_page(session: Session, codec: CursorCodec, project: Project, page: PageRequest) -> ClassificationList:
    stmt = select(Classification).where(Classification.project_id == project.id)
    result = CLASSIFICATIONS.page(session, stmt, page, codec, {"project": project.id})
    return result.as_page(ClassificationList, classification_response)


def create(session: Session, project: Project, body: ClassificationCreate) -> ClassificationResponse:
    _ensure_name_free(session, project.id, body.name)
    row = Classification(
        id=new_id("classification"),
        project_id=project.id,
        name=body.name,
        description=body.description,
        sensitivity=body.sensitivity,
        rules=_as_stored(body, "rules"),
        assignments=_as_stored(body, "assignments"),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise _name_taken(body.name) from None
    sync_assignments(session, row)
    return classification_response(row)


def describe(session: Session, project: Project, classification_id: str) -> ClassificationResponse:
    return classification_response(get_classification(session, project, classification_id))


def update(
    session: Session, project: Project, classification_id: str, body: ClassificationUpdate
) -> ClassificationResponse:
    row = get_classification(session, project, classification_id)
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "sensitivity", "rules", "assignments"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    if body.name is not None:
        _ensure_name_free(session, project.id, body.name, except_id=row.id)
        row.name = body.name
    if "description" in changes:
        row.description = body.description
    if body.sensitivity is not None:
        row.sensitivity = body.sensitivity
    if body.rules is not None:
        row.rules = _as_stored(body, "rules")
    if body.assignments is not None:
        row.assignments = _as_stored(body, "assignments")
    try:
        session.flush()
    except IntegrityError:
        raise _name_taken(row.name) from None
    if body.assignments is not None:
        sync_assignments(session, row)
    return classification_response(row)


def delete(session: Session, project: Project, classification_id: str) -> None:
    """Deletes the classification and its column tags, unless a masking policy uses it (Conflict naming it)."""
    row = get_classification(session, project, classification_id)
    policies = list(
        session.scalars(
            select(MaskingPolicy.name).where(MaskingPolicy.classification_id == row.id).order_by(MaskingPolicy.name)
        )
    )
    if policies:
        raise _in_use(policies)
    session.delete(row)
    try:
        session.flush()
    except IntegrityError:  # a policy created since the check above (the foreign key is RESTRICT)
        raise _in_use([]) from None


def _in_use(policies: list[str]) -> Conflict:
    named = f" ({', '.join(repr(name) for name in policies)})" if policies else ""
    return Conflict(f"A masking policy{named} uses this classification; delete or change the policy first.")


def _column_response(tags: list[ColumnTag]) -> list[ColumnClassificationResponse]:
    return [ColumnClassificationResponse.model_validate(tag, from_attributes=True) for tag in tags]


def run(
    sessions: sessionmaker[Session],
    catalogs: CatalogProvider,
    *,
    tenant_id: str,
    project_id: str,
    body: ClassificationRunRequest,
) -> ClassificationRunResult:
    """Classifies the project's tables (or `body.tables`) now, synchronously: each table costs one bounded sample
    (rime_dagster.governance.classify), read with no database transaction open."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    with sessions() as session:
        namespace = get_project(session, project_id, tenant_id=tenant_id).namespace
    catalog = catalogs.catalog()
    try:
        existing = sorted(identifier[-1] for identifier in catalog.list_tables(namespace))
    except NoSuchNamespaceError:
        existing = []
    tables = existing if body.tables is None else list(dict.fromkeys(body.tables))
    unknown = [(i, t) for i, t in enumerate(tables) if t not in existing]
    if unknown:
        raise ValidationFailed(
            "Request validation failed.",
            details=[{"field": f"tables.{i}", "message": f"No table '{t}' in this project."} for i, t in unknown],
        )
    results = []
    try:
        for result in classify_tables(sessions, catalog, project_id=project_id, namespace=namespace, tables=tables):
            columns = [
                ClassifiedColumn(column=c, classifications=_column_response(t)) for c, t in result.columns.items()
            ]
            results.append(ClassifiedTable(table=result.table, columns=columns))
    except IntegrityError:  # a classification deleted while its matches were being stored
        raise Conflict("The project's classifications changed during the run; run it again.") from None
    return ClassificationRunResult(tables=results)
