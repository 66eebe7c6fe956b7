"""A connector's syncs: runs of its project's sync job on the connector's tables, and their history per table."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.orm import Session

from api_shim.dagster_client import DagsterClient
from api_shim.errors import Unprocessable
from api_shim.pagination import CursorCodec
from api_shim.schemas.connectors import ConnectorRun, ConnectorRunList, RunStarted, TableRunSummary
from api_shim.services.connectors import get_connector
from api_shim.services.runs import RunView, launch_summary, launch_tags, run_page, run_view
from rime_dagster.connectors.names import connector_job_name, connector_tags, table_asset_key
from rime_dagster.platform import run_tags
from rime_dagster.store.models import Connector, Project
from rime_dagster.store.session import release

# A table the run did not land is still on its way while the run goes on, else it failed.
_NOT_LANDED: dict[str, Literal["pending", "running"]] = {"queued": "pending", "running": "running"}


def launch_sync(
    session: Session,
    dagster: DagsterClient,
    project: Project,
    connector_id: str,
    *,
    full_refresh: bool,
    triggered_by: str,
) -> RunStarted:
    """Launches the project's sync job on the connector's tables."""
    connector = get_connector(session, project, connector_id)
    if not connector.tables:
        raise Unprocessable("The connector has no tables to sync: select tables or make some discoverable first.")
    release(session)
    launched = dagster.launch_run(
        connector_job_name(project.namespace),
        generation=project.definitions_generation,
        tags={**connector_tags(project.id, connector.id), **launch_tags(triggered_by, full_refresh=full_refresh)},
        asset_selection=[table_asset_key(project.namespace, connector.table_prefix, t) for t in connector.tables],
    )
    return RunStarted.of(launch_summary(dagster, launched))


def run_history(
    session: Session,
    dagster: DagsterClient,
    codec: CursorCodec,
    project: Project,
    connector_id: str,
    *,
    limit: int,
    cursor: str | None,
) -> ConnectorRunList:
    """The connector's syncs, newest first: from the API, its schedule or Dagster's UI."""
    connector = get_connector(session, project, connector_id)
    release(session)
    page = run_page(
        dagster,
        codec,
        scope=f"runs:{connector.id}",
        tags={run_tags.CONNECTOR_ID: connector.id},
        limit=limit,
        cursor=cursor,
    )
    return page.as_page(ConnectorRunList, lambda r: connector_run(connector, project.namespace, run_view(dagster, r)))


def connector_run(connector: Connector, namespace: str, view: RunView) -> ConnectorRun:
    """A sync with each of the connector's tables: the rows it landed, or where it stands."""
    tables: list[TableRunSummary] = []
    for table in connector.tables:
        meta = view.events.materialized.get(tuple(table_asset_key(namespace, connector.table_prefix, table)))
        if meta is not None:
            tables.append(TableRunSummary(name=table, rows=meta.get("rows"), status="succeeded"))
        else:
            tables.append(TableRunSummary(name=table, rows=None, status=_NOT_LANDED.get(view.status, "failed")))
    return ConnectorRun.of(view, rows_synced=sum(t.rows or 0 for t in tables), tables=tables)
