"""Table retention policies: one per project table, stored here and run by a Dagster schedule the code location
builds from the row (rime_dagster/tables/jobs.py). Writing one moves the definitions generation on, so Dagster
picks the change up on its next reload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.dagster_client import DagsterClient
from api_shim.errors import Conflict, NotFound, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.retention_policies import (
    OrphanFileRemoval,
    RetentionLastRun,
    RetentionPolicyList,
    RetentionPolicyPut,
    RetentionPolicyResponse,
)
from api_shim.schemas.table_operations import CompactRequest
from api_shim.services.runs import last_run
from api_shim.services.table_operations import _config as operation_config
from api_shim.services.tables import _load
from rime_dagster.platform import run_tags
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.specs import RetentionPolicySpec
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Project, TableRetentionPolicy
from rime_dagster.tables.retention import retention_operations, retention_schedule_name

POLICIES = Listing(
    "retention_policies",
    {
        "created_at": TableRetentionPolicy.created_at,
        "updated_at": TableRetentionPolicy.updated_at,
        "table": TableRetentionPolicy.table_name,
    },
    TableRetentionPolicy.id,
)


def _seconds(value: timedelta | None) -> int | None:
    return int(value.total_seconds()) if value is not None else None


def _duration(seconds: int | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds is not None else None


def get_policy(session: Session, project: Project, table: str) -> TableRetentionPolicy:
    row = session.scalar(
        select(TableRetentionPolicy).where(
            TableRetentionPolicy.project_id == project.id, TableRetentionPolicy.table_name == table
        )
    )
    if row is None:
        raise NotFound(f"Table '{table}' of this project has no retention policy.")
    return row


def policy_response(row: TableRetentionPolicy, project: Project, dagster: DagsterClient) -> RetentionPolicyResponse:
    """The policy as the API answers it, with its newest run from Dagster's run storage (its runs carry the
    policy's id as a tag)."""
    last = last_run(dagster, {run_tags.RETENTION_POLICY_ID: row.id})
    orphans = OrphanFileRemoval(older_than=_duration(row.orphan_older_than_seconds))
    compact = CompactRequest(target_file_rows=row.compact_target_file_rows, min_files=row.compact_min_files or 2)
    next_run = croniter(row.schedule, datetime.now(UTC)).get_next(datetime) if row.enabled else None
    return RetentionPolicyResponse(
        id=row.id,
        project_id=row.project_id,
        table=row.table_name,
        schedule=row.schedule,
        enabled=row.enabled,
        retain_last=row.retain_last,
        older_than=_duration(row.older_than_seconds),
        remove_orphan_files=orphans if row.remove_orphan_files else None,
        compact=compact if row.compact else None,
        dagster_schedule=retention_schedule_name(project.namespace, row.table_name),
        next_run_at=next_run,
        last_run=RetentionLastRun.of(last) if last else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def list_page(
    session: Session, dagster: DagsterClient, codec: CursorCodec, project: Project, page: PageRequest
) -> RetentionPolicyList:
    stmt = select(TableRetentionPolicy).where(TableRetentionPolicy.project_id == project.id)
    result = POLICIES.page(session, stmt, page, codec, {"project": project.id})
    return result.as_page(RetentionPolicyList, lambda row: policy_response(row, project, dagster))


def describe(session: Session, dagster: DagsterClient, project: Project, table: str) -> RetentionPolicyResponse:
    return policy_response(get_policy(session, project, table), project, dagster)


def _check(row: TableRetentionPolicy, namespace: str) -> None:
    """The runs the policy will launch, checked now as a table operation's are: what its schedule would hand the
    maintenance job must validate (the body's bounds are the operations' own: this is a safety net)."""
    if row.retain_last is None and row.older_than_seconds is None:
        message = "Give retain_last, older_than or both: what snapshot expiry keeps."
        raise ValidationFailed(
            "Request validation failed.",
            details=[{"field": "retain_last", "message": message}, {"field": "older_than", "message": message}],
        )
    for step in retention_operations(RetentionPolicySpec.of(row, namespace), datetime.now(UTC)):
        table, operation = step.pop("table"), step.pop("operation")
        operation_config(table, operation, step)


def put(
    session: Session,
    catalogs: CatalogProvider,
    dagster: DagsterClient,
    project: Project,
    table: str,
    body: RetentionPolicyPut,
) -> tuple[RetentionPolicyResponse, bool]:
    """Creates or replaces the table's policy; says whether it created it. 404 for a table the project lacks."""
    _load(catalogs.catalog(), project.namespace, table)
    row = session.scalar(
        select(TableRetentionPolicy).where(
            TableRetentionPolicy.project_id == project.id, TableRetentionPolicy.table_name == table
        )
    )
    created = row is None
    if row is None:
        row = TableRetentionPolicy(id=new_id("retention_policy"), project_id=project.id, table_name=table)
    orphans, compact = body.remove_orphan_files, body.compact
    row.schedule = body.schedule
    row.enabled = body.enabled
    row.retain_last = body.retain_last
    row.older_than_seconds = _seconds(body.older_than)
    row.remove_orphan_files = orphans is not None
    row.orphan_older_than_seconds = _seconds(orphans.older_than) if orphans else None
    row.compact = compact is not None
    row.compact_target_file_rows = compact.target_file_rows if compact else None
    row.compact_min_files = compact.min_files if compact else None
    _check(row, project.namespace)
    if created:
        session.add(row)
    try:
        session.flush()
    except IntegrityError:  # another request created it first
        raise Conflict(f"Table '{table}' got a retention policy meanwhile: retry the request.") from None
    return policy_response(row, project, dagster), created


def delete(session: Session, project: Project, table: str) -> None:
    session.delete(get_policy(session, project, table))
    session.flush()
