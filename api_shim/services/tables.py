"""Tables: the project's Iceberg tables (what landed), their schema and a preview of their rows.

Catalog reads are slow (a metadata file each, on whatever storage holds the warehouse), so none of them happens
inside a database transaction: the project is looked up in a short session of its own first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from api_shim.errors import NotFound
from api_shim.pagination import CursorCodec, PageRequest, paginate_items, scope_of
from api_shim.schemas.classifications import ColumnClassificationResponse
from api_shim.schemas.tables import (
    ModelSource,
    TableColumn,
    TableList,
    TablePreview,
    TableResponse,
    TableSchemaResponse,
    TableSource,
)
from api_shim.services import data_reads
from api_shim.services.data_reads import ReadContext, ReadServices
from api_shim.services.projects import get_project
from rime_dagster.governance.classify import column_classifications
from rime_dagster.platform.iceberg import CatalogProvider

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table


def _namespace(sessions: sessionmaker[Session], *, tenant_id: str, project_id: str) -> str:
    with sessions() as session:
        return get_project(session, project_id, tenant_id=tenant_id).namespace


def _load(catalog: Catalog, namespace: str, table: str) -> Table:
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table((namespace, table))
    except (NoSuchTableError, NoSuchNamespaceError):
        raise NotFound.of("Table", table, " in this project") from None


def _describe(catalog: Catalog, namespace: str, name: str) -> TableResponse:
    from rime_dagster.connectors.landing import table_stats

    stats = table_stats(catalog, (namespace, name))
    props = _load(catalog, namespace, name).properties
    source: TableSource | ModelSource | None = None
    if "rime.connector_id" in props:
        source = TableSource(connector_id=props["rime.connector_id"], table=props.get("rime.source_table", name))
    elif "rime.dbt_project_id" in props:
        source = ModelSource(dbt_project_id=props["rime.dbt_project_id"], model=props.get("rime.dbt_model", name))
    return TableResponse(
        name=name,
        namespace=namespace,
        row_count=stats.get("row_count"),
        snapshot_id=str(stats["snapshot_id"]) if stats.get("snapshot_id") is not None else None,
        updated_at=stats.get("updated_at"),
        source=source,
    )


def list_tables(
    sessions: sessionmaker[Session],
    catalogs: CatalogProvider,
    *,
    tenant_id: str,
    project_id: str,
    page: PageRequest,
    codec: CursorCodec,
) -> TableList:
    """A page of the project's tables by name; only the page's tables are loaded (each is a metadata file read)."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    namespace = _namespace(sessions, tenant_id=tenant_id, project_id=project_id)
    catalog = catalogs.catalog()
    try:
        names = [identifier[-1] for identifier in catalog.list_tables(namespace)]
    except NoSuchNamespaceError:
        names = []
    result = paginate_items(
        names, lambda name: (name,), request=page, codec=codec, scope=scope_of("table.list", {"project": project_id})
    )
    return result.as_page(TableList, lambda name: _describe(catalog, namespace, name))


def table_schema(
    sessions: sessionmaker[Session], catalogs: CatalogProvider, *, tenant_id: str, project_id: str, table: str
) -> TableSchemaResponse:
    namespace = _namespace(sessions, tenant_id=tenant_id, project_id=project_id)
    fields = _load(catalogs.catalog(), namespace, table).schema().fields
    with sessions() as session:
        tags = column_classifications(session, project_id=project_id, table=table)
    columns = [
        TableColumn(
            name=f.name,
            type=str(f.field_type),
            nullable=not f.required,
            classifications=[ColumnClassificationResponse.model_validate(t) for t in tags.get(f.name, [])],
        )
        for f in fields
    ]
    return TableSchemaResponse(name=table, columns=columns)


def preview_table(
    services: ReadServices,
    ctx: ReadContext,
    *,
    project_id: str,
    table: str,
    limit: int,
    snapshot_id: int | None = None,
) -> TablePreview:
    """The table's first `limit` rows as JSON values, through the one read path: masked for the caller's role
    (services/data_reads.py)."""
    columns, rows = data_reads.preview(
        services, ctx, project_id=project_id, table=table, limit=limit, snapshot_id=snapshot_id
    )
    return TablePreview(columns=columns, rows=rows)
