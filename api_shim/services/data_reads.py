"""Reads of table data for the API (previews, SQL queries, exports), all through rime_dagster.governance.reads,
which masks them for the caller's role; a read of columns in clear by exemption is audited as
`table.read_unmasked`, naming the tables and columns, before any of its rows leaves.

Catalog and DuckDB work happens with no request transaction open (see services/tables.py): the project and the
caller's masking plan are read in a short session of their own first.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
from sqlalchemy.orm import Session, sessionmaker

from api_shim.errors import NotFound, Unprocessable, ValidationFailed
from api_shim.services import audit
from api_shim.services.auth import Principal
from api_shim.services.projects import get_project
from rime_dagster.governance import reads
from rime_dagster.governance.masking import hash_key, mask_plan
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.settings import Settings

UNMASKED_READ = "table.read_unmasked"
EXPORT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


@dataclass(frozen=True)
class ReadContext:
    """Who reads, and the request they read through (what an audit entry names)."""

    principal: Principal
    request_id: str
    method: str
    path: str
    ip: str | None


@dataclass(frozen=True)
class ReadServices:
    sessions: sessionmaker[Session]
    catalogs: CatalogProvider
    settings: Settings


def json_value(value: object) -> object:
    """A value as JSON holds it: decimals as strings (exact: a float would round), binary as base64."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    return value


def json_rows(data: pa.Table) -> list[list[object]]:
    """The rows as lists of JSON values, column by column (a query's columns may share a name)."""
    columns = [[json_value(value) for value in column.to_pylist()] for column in data.columns]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def _project_data(services: ReadServices, ctx: ReadContext, project_id: str) -> tuple[str, reads.ProjectData]:
    with services.sessions() as session:
        project = get_project(session, project_id, tenant_id=ctx.principal.tenant_id)
        plan = mask_plan(session, project.id, ctx.principal.role.value)
    key = hash_key(services.settings.signing_key(), project.id)
    return project.id, reads.ProjectData(services.catalogs.catalog(), project.namespace, plan, key)


def _limits(settings: Settings, *, export: bool = False) -> reads.ReadLimits:
    timeout = settings.export_timeout_seconds if export else settings.query_timeout_seconds
    return reads.ReadLimits(
        timeout, settings.query_memory_limit, settings.query_threads, settings.query_spare_databases
    )


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """The read path's refusals and failures as the API's errors, each naming `sql`."""
    try:
        yield
    except reads.QueryRefused as exc:
        raise ValidationFailed.field("sql", str(exc)) from None
    except (reads.ReadTimedOut, reads.ReadOutOfMemory) as exc:
        raise Unprocessable(str(exc), details=[{"field": "sql", "message": str(exc)}]) from None
    except reads.UnsupportedStorage as exc:  # the deployment's warehouse, not the request: no field to name
        raise Unprocessable(str(exc)) from None
    except reads.ReadFailed as exc:
        raise ValidationFailed.field("sql", str(exc)) from None


def _audit_unmasked(services: ReadServices, ctx: ReadContext, project_id: str, read: reads.DataRead) -> None:
    """An entry for a read of columns in clear by exemption, in a transaction of its own, before the rows go."""
    if not read.unmasked:
        return
    entry = audit.AuditEntry(
        tenant_id=ctx.principal.tenant_id,
        project_id=project_id,
        actor_id=ctx.principal.user_id,
        actor=ctx.principal.email,
        action=UNMASKED_READ,
        resource_type="table",
        resource_id=",".join(read.unmasked)[:100],
        request_id=ctx.request_id,
        method=ctx.method,
        path=ctx.path[:500],
        status_code=200,
        ip=ctx.ip,
        details={"tables": read.unmasked},
    )
    with services.sessions.begin() as session:
        audit.record(session, entry)


def preview(
    services: ReadServices,
    ctx: ReadContext,
    *,
    project_id: str,
    table: str,
    limit: int,
    snapshot_id: int | None = None,
) -> tuple[list[str], list[list[object]]]:
    """The table's first `limit` rows (at `snapshot_id`, if given) as JSON values, masked for the caller."""
    project_id, data = _project_data(services, ctx, project_id)
    limits = _limits(services.settings)
    try:
        with (
            _mapped_errors(),
            reads.read_table(data, table, limits=limits, limit=limit, snapshot_id=snapshot_id) as read,
        ):
            rows, _ = read.head(limit)
            _audit_unmasked(services, ctx, project_id, read)
    except reads.NoSuchTable:
        raise NotFound.of("Table", table, " in this project") from None
    except reads.NoSuchSnapshot:
        raise NotFound.of("Snapshot", str(snapshot_id), f" in table '{table}'") from None
    return rows.column_names, json_rows(rows)


def query(
    services: ReadServices, ctx: ReadContext, *, project_id: str, sql: str, limit: int
) -> tuple[list[str], list[list[object]], bool]:
    """The query's first `limit` rows as JSON values, masked for the caller, and whether there were more."""
    project_id, data = _project_data(services, ctx, project_id)
    with _mapped_errors(), reads.read_query(data, sql, limits=_limits(services.settings)) as read:
        rows, truncated = read.head(limit)
        _audit_unmasked(services, ctx, project_id, read)
    return rows.column_names, json_rows(rows), truncated


class _Chunks:
    """A write-only file that keeps what is written until taken: what the Parquet writer streams into."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def _encoded(read: reads.DataRead, first: pa.RecordBatch | None, fmt: str) -> Iterator[bytes]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    sink = _Chunks()
    writer: pacsv.CSVWriter | pq.ParquetWriter
    writer = pacsv.CSVWriter(sink, read.schema) if fmt == "csv" else pq.ParquetWriter(sink, read.schema)
    try:
        if first is not None:
            writer.write_batch(first)
            yield sink.take()
        for batch in read.batches():
            writer.write_batch(batch)
            yield sink.take()
        writer.close()
        yield sink.take()
    finally:
        read.close()


def _nested(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_nested(f.type)]


def export(
    services: ReadServices, ctx: ReadContext, *, project_id: str, sql: str, fmt: str
) -> tuple[str, Iterator[bytes]]:
    """The query's whole result as CSV or Parquet chunks, masked for the caller, and the media type. Refusals and
    errors of the first rows are raised here; the stream closes the read when it ends or is dropped."""
    project_id, data = _project_data(services, ctx, project_id)
    with _mapped_errors():
        read = reads.read_query(data, sql, limits=_limits(services.settings, export=True))
        try:
            if fmt == "csv" and _nested(read.schema):
                columns = ", ".join(_nested(read.schema))
                raise reads.ReadFailed(f"CSV cannot hold nested columns ({columns}): export Parquet, or cast them.")
            first = next(read.batches(), None)
            _audit_unmasked(services, ctx, project_id, read)
        except BaseException:
            read.close()
            raise
    return EXPORT_TYPES[fmt], _encoded(read, first, fmt)
