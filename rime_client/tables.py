"""Tables: a project's Iceberg tables (list, schema, health, snapshots, a masked preview), read-only SQL over them
(a query, or its export as CSV or Parquet) and the table operations (maintenance, schema evolution) run by Dagster."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from rime_client._crud import given
from rime_client.models import Model, RunStatus
from rime_client.resources import _InProject, _items, _seg


class Table(Model):
    name: str  # what queries name it by, e.g. `crm__customer`
    namespace: str
    row_count: int | None = None
    snapshot_id: str | None = None
    updated_at: datetime | None = None
    source: dict[str, Any] | None = None  # the connector or dbt model that lands it


class TableColumn(Model):
    name: str
    type: str
    nullable: bool
    classifications: list[dict[str, Any]] = []


class TableSchema(Model):
    name: str
    columns: list[TableColumn]


class Rows(Model):
    """A preview's or a query's rows (masked for the caller's role); `truncated`: the query had more rows."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


class TableHealth(Model):
    table: str
    snapshot_count: int
    data_file_count: int
    small_file_count: int
    total_size_bytes: int
    total_records: int
    recommendation: str
    recommendations: list[str] = []


class Snapshot(Model):
    snapshot_id: str
    parent_id: str | None = None
    committed_at: datetime
    operation: str | None = None
    is_current: bool
    run_id: str | None = None
    total_records: int | None = None


class TableOperationRun(Model):
    """A table operation's 202: the Dagster run doing it."""

    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: datetime
    table: str
    operation: str


class Tables(_InProject):
    """Tables by name, as `list` names them. Operations start a Dagster run under an Idempotency-Key its retries
    reuse (the API makes one run per key)."""

    def _base(self, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}"

    def _table(self, table: str, project: str | None) -> str:
        return f"{self._base(project)}/tables/{_seg(table)}"

    def list(self, *, project: str | None = None, limit: int | None = None, page_size: int = 50) -> Iterator[Table]:
        return _items(self._http, f"{self._base(project)}/tables", Table, limit=limit, page_size=page_size)

    def schema(self, table: str, *, project: str | None = None) -> TableSchema:
        return TableSchema.model_validate(self._http.request("GET", f"{self._table(table, project)}/schema"))

    def preview(
        self, table: str, *, project: str | None = None, limit: int = 100, snapshot_id: int | str | None = None
    ) -> Rows:
        """The first `limit` rows (at most 1000), now or as of `snapshot_id`, masked for the caller's role."""
        params = given(limit=limit, snapshot_id=snapshot_id)
        path = f"{self._table(table, project)}/preview"
        return Rows.model_validate(self._http.request("GET", path, params=params))

    def health(self, table: str, *, project: str | None = None) -> TableHealth:
        return TableHealth.model_validate(self._http.request("GET", f"{self._table(table, project)}/health"))

    def snapshots(
        self, table: str, *, project: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> Iterator[Snapshot]:
        path = f"{self._table(table, project)}/snapshots"
        return _items(self._http, path, Snapshot, limit=limit, page_size=page_size)

    def query(self, sql: str, *, project: str | None = None, limit: int | None = None) -> Rows:
        """One read-only SELECT over the project's tables (data_engineer and up), masked for the caller's role."""
        body = given(sql=sql, limit=limit)
        answer = self._http.request("POST", f"{self._base(project)}/query", json=body, read_only=True)
        return Rows.model_validate(answer)

    def export(
        self,
        sql: str,
        destination: str | Path | IO[bytes],
        *,
        project: str | None = None,
        format: Literal["csv", "parquet"] = "csv",
    ) -> int:
        """The whole result of `sql` written to `destination` (a path or a binary file) as it streams in, as CSV
        (with a header row) or Parquet; the number of bytes written."""
        body = {"sql": sql, "format": format}
        with self._http.stream("POST", f"{self._base(project)}/query/export", json=body) as response:
            if isinstance(destination, str | Path):
                with Path(destination).open("wb") as file:
                    return _copy(response.iter_bytes(), file)
            return _copy(response.iter_bytes(), destination)

    def _operation(
        self, table: str, project: str | None, method: str, suffix: str, body: dict[str, Any] | None, key: str | None
    ) -> TableOperationRun:
        path = f"{self._table(table, project)}/{suffix}"
        answer = self._http.request(method, path, json=body, idempotent_post=True, idempotency_key=key)
        return TableOperationRun.model_validate(answer)

    def compact(
        self,
        table: str,
        *,
        project: str | None = None,
        target_file_rows: int | None = None,
        min_files: int | None = None,
        idempotency_key: str | None = None,
    ) -> TableOperationRun:
        """Rewrites the table's small data files into fewer, larger ones."""
        body = given(target_file_rows=target_file_rows, min_files=min_files)
        return self._operation(table, project, "POST", "compact", body, idempotency_key)

    def expire_snapshots(
        self,
        table: str,
        *,
        project: str | None = None,
        retain_last: int | None = None,
        older_than: str | None = None,
        idempotency_key: str | None = None,
    ) -> TableOperationRun:
        """Expires the snapshots past the last `retain_last` and older than `older_than` (e.g. "7d")."""
        body = given(retain_last=retain_last, older_than=older_than)
        return self._operation(table, project, "POST", "expire-snapshots", body, idempotency_key)

    def remove_orphan_files(
        self,
        table: str,
        *,
        project: str | None = None,
        older_than: str | None = None,
        idempotency_key: str | None = None,
    ) -> TableOperationRun:
        body = given(older_than=older_than)
        return self._operation(table, project, "POST", "remove-orphan-files", body, idempotency_key)

    def add_column(
        self,
        table: str,
        name: str,
        type: str,
        *,
        project: str | None = None,
        comment: str | None = None,
        idempotency_key: str | None = None,
    ) -> TableOperationRun:
        """Adds a nullable column of Iceberg type `type` (e.g. "string", "long", "decimal(10, 2)")."""
        body = {"name": name, "type": type, "nullable": True, "comment": comment}
        return self._operation(table, project, "POST", "columns", body, idempotency_key)

    def rename_column(
        self, table: str, column: str, new_name: str, *, project: str | None = None, idempotency_key: str | None = None
    ) -> TableOperationRun:
        body = {"name": new_name}
        return self._operation(table, project, "PATCH", f"columns/{_seg(column)}", body, idempotency_key)

    def drop_column(
        self, table: str, column: str, *, project: str | None = None, idempotency_key: str | None = None
    ) -> TableOperationRun:
        return self._operation(table, project, "DELETE", f"columns/{_seg(column)}", None, idempotency_key)


def _copy(chunks: Iterator[bytes], file: IO[bytes]) -> int:
    written = 0
    for chunk in chunks:
        written += file.write(chunk)
    return written
