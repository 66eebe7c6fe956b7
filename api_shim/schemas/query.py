"""Bodies of the Query group: read-only SQL over a project's tables, as JSON rows or an export file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api_shim.schemas.common import RequestModel, ResponseModel

MAX_QUERY_ROWS = 10_000


class QueryRequest(RequestModel):
    sql: str = Field(
        min_length=1,
        max_length=100_000,
        description="One read-only DuckDB SELECT (or WITH ... SELECT) over the project's tables, named as "
        "GET .../tables lists them (`crm__customer`). No table functions, files, ATTACH, COPY, SET or PRAGMA.",
    )
    limit: int = Field(1000, ge=1, le=MAX_QUERY_ROWS, description="Rows returned at most; `truncated` says if more.")


class QueryResult(ResponseModel):
    columns: list[str]
    rows: list[list[Any]] = Field(description="Masked per the caller's role; decimals as strings, binary as base64.")
    truncated: bool


class ExportRequest(RequestModel):
    sql: str = Field(min_length=1, max_length=100_000, description="As for POST .../query.")
    format: Literal["csv", "parquet"] = "csv"
