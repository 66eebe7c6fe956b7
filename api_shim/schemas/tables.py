"""Bodies of the Tables group: what landed in Iceberg, readable without another tool."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api_shim.pagination import Page
from api_shim.schemas.classifications import ColumnClassificationResponse
from api_shim.schemas.common import ResponseModel, Timestamp


class TableSource(ResponseModel):
    """A connector's synced table."""

    connector_id: str
    table: str


class ModelSource(ResponseModel):
    """A dbt model published to Iceberg."""

    dbt_project_id: str
    model: str


class TableResponse(ResponseModel):
    name: str
    namespace: str
    row_count: int | None
    snapshot_id: str | None
    updated_at: Timestamp | None
    source: TableSource | ModelSource | None


class TableList(Page[TableResponse]):
    pass


class TableColumn(ResponseModel):
    name: str
    type: str
    nullable: bool
    classifications: list[ColumnClassificationResponse] = Field(
        default_factory=list, description="What classification rules found in the column, and manual assignments."
    )


class TableSchemaResponse(ResponseModel):
    name: str
    columns: list[TableColumn]


class TablePreview(ResponseModel):
    columns: list[str]
    rows: list[list[Any]]
