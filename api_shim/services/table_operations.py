"""Table operations of a project's Iceberg tables: health and snapshot history read from metadata, and maintenance
and schema changes launched as runs of the project's table maintenance job (rime_dagster/tables/jobs.py).

A schema change is checked here, against the table as it is, before its run is launched: what the table cannot
take is refused with 400 (404 for an unknown column, 409 for a name clash) and never becomes a failed run. The run
checks it again, as the table is then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from api_shim.dagster_client import DagsterClient
from api_shim.errors import Conflict, NotFound, ValidationFailed
from api_shim.pagination import CursorCodec, PageRequest, paginate_items, scope_of
from api_shim.schemas.table_operations import SnapshotList, SnapshotResponse, TableHealthResponse, TableOperationRun
from api_shim.services.projects import get_project
from api_shim.services.runs import launch_summary, launch_tags
from api_shim.services.tables import _load
from rime_dagster.pipelines.spec import SCHEMA_OPERATIONS, TableMaintenanceConfig
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.tables.names import maintenance_job_name, maintenance_run_config, maintenance_tags

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from rime_dagster.tables.operations import SnapshotInfo

# Orphan-file removal looks only at files older than this: a write in flight (a dbt model being published) has
# newer ones.
MIN_ORPHAN_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class TableRef:
    project_id: str
    namespace: str
    generation: int
    table: Table


def _table(
    sessions: sessionmaker[Session], catalogs: CatalogProvider, tenant_id: str, project_id: str, name: str
) -> TableRef:
    """The project's table (404 for an unknown project or table), read with no transaction open."""
    with sessions() as session:
        project = get_project(session, project_id, tenant_id=tenant_id)
        namespace, generation = project.namespace, project.definitions_generation
    return TableRef(project_id, namespace, generation, _load(catalogs.catalog(), namespace, name))


def table_health(
    sessions: sessionmaker[Session], catalogs: CatalogProvider, *, tenant_id: str, project_id: str, table: str
) -> TableHealthResponse:
    from rime_dagster.tables.operations import table_health as health_of

    health = health_of(_table(sessions, catalogs, tenant_id, project_id, table).table)
    return TableHealthResponse.of(
        health, table=table, recommendation=health.recommendation, recommendations=health.recommendations
    )


def _snapshot(info: SnapshotInfo) -> SnapshotResponse:
    return SnapshotResponse(
        snapshot_id=str(info.snapshot_id),
        parent_id=str(info.parent_id) if info.parent_id is not None else None,
        committed_at=info.committed_at,
        operation=info.operation,
        is_current=info.is_current,
        run_id=info.run_id,
        added_records=info.count("added-records"),
        deleted_records=info.count("deleted-records"),
        total_records=info.count("total-records"),
        added_data_files=info.count("added-data-files"),
        deleted_data_files=info.count("deleted-data-files"),
        total_data_files=info.count("total-data-files"),
    )


def snapshots(
    sessions: sessionmaker[Session],
    catalogs: CatalogProvider,
    *,
    tenant_id: str,
    project_id: str,
    table: str,
    page: PageRequest,
    codec: CursorCodec,
) -> SnapshotList:
    """The table's snapshots, newest first (or oldest first with order=asc)."""
    from rime_dagster.tables.operations import snapshot_history

    history = snapshot_history(_table(sessions, catalogs, tenant_id, project_id, table).table)
    result = paginate_items(
        history,
        lambda s: (f"{int(s.committed_at.timestamp() * 1000):015d}", f"{s.sequence_number:020d}"),
        request=page,
        codec=codec,
        scope=scope_of("table.snapshots", {"project": project_id, "table": table}),
    )
    return result.as_page(SnapshotList, _snapshot)


def _config(table: str, operation: str, fields: dict[str, Any]) -> TableMaintenanceConfig:
    try:
        return TableMaintenanceConfig(table=table, operation=operation, **fields)  # type: ignore[arg-type]
    except ValidationError as exc:  # the request models check the same bounds: a safety net
        first = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ValidationFailed.field(field, str(first["msg"]).removeprefix("Value error, ")) from None


def _checked(ref: TableRef, config: TableMaintenanceConfig) -> None:
    """Refuses, before any run, what the operation cannot do to the table as it is."""
    from rime_dagster.tables.operations import SchemaChangeError, check_schema_change

    if config.operation == "remove_orphan_files" and config.older_than is not None:
        cutoff = config.older_than if config.older_than.tzinfo else config.older_than.replace(tzinfo=UTC)
        if cutoff > datetime.now(UTC) - MIN_ORPHAN_AGE:
            raise ValidationFailed.field(
                "older_than", "Must be at least an hour ago: files of a write in flight are newer."
            )
    if config.operation not in SCHEMA_OPERATIONS:
        return
    try:
        check_schema_change(ref.table, config)
    except SchemaChangeError as exc:
        if exc.reason == "not_found":
            raise NotFound(str(exc)) from None
        if exc.reason == "conflict":
            raise Conflict(str(exc), details=[{"field": exc.field, "message": str(exc)}]) from None
        raise ValidationFailed.field(exc.field, str(exc)) from None


def launch_operation(
    sessions: sessionmaker[Session],
    catalogs: CatalogProvider,
    dagster: DagsterClient,
    *,
    tenant_id: str,
    project_id: str,
    table: str,
    operation: str,
    fields: dict[str, Any],
    triggered_by: str,
) -> TableOperationRun:
    """Checks the operation against the table, then launches it as a run of the project's table maintenance job."""
    ref = _table(sessions, catalogs, tenant_id, project_id, table)
    config = _config(table, operation, fields)
    _checked(ref, config)
    launched = dagster.launch_run(
        maintenance_job_name(ref.namespace),
        generation=ref.generation,
        tags={**maintenance_tags(project_id, table, operation), **launch_tags(triggered_by, full_refresh=False)},
        run_config=maintenance_run_config(ref.namespace, config.model_dump(mode="json", exclude_none=True)),
    )
    return TableOperationRun(**launch_summary(dagster, launched), table=table, operation=operation)
