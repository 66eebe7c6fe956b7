"""Bodies of the table operations: health, snapshot history, maintenance and schema evolution of a project table."""

from __future__ import annotations

from pydantic import Field

from api_shim.dagster_client import RunStatus
from api_shim.pagination import Page
from api_shim.schemas.common import DateTimeText, RequestModel, ResponseModel, Timestamp


class TableHealthResponse(ResponseModel):
    table: str
    snapshot_count: int
    data_file_count: int
    delete_file_count: int
    small_file_count: int = Field(description="Data files below `small_file_threshold_bytes`.")
    small_file_threshold_bytes: int = Field(description="75% of the target file size.")
    target_file_size_bytes: int = Field(description="The table's write.target-file-size-bytes, else 512 MiB.")
    total_size_bytes: int
    avg_file_size_bytes: int
    total_records: int
    recommendation: str = Field(description="`healthy`, or what to do, e.g. `compact: 812 small files`.")
    recommendations: list[str]


class SnapshotResponse(ResponseModel):
    snapshot_id: str = Field(description="A 64-bit integer, as a string (JavaScript cannot hold it as a number).")
    parent_id: str | None
    committed_at: Timestamp
    operation: str | None = Field(description="append, overwrite, replace or delete.")
    is_current: bool
    run_id: str | None = Field(description="The run that committed it (a sync, a compaction, ...).")
    added_records: int | None
    deleted_records: int | None
    total_records: int | None
    added_data_files: int | None
    deleted_data_files: int | None
    total_data_files: int | None


class SnapshotList(Page[SnapshotResponse]):
    pass


class CompactRequest(RequestModel):
    target_file_rows: int | None = Field(
        None,
        ge=1000,
        le=100_000_000,
        description="Rows per rewritten file. Default: what fits the table's target file size.",
    )
    min_files: int = Field(2, ge=2, le=100_000, description="Do nothing below this many data files.")


class ExpireSnapshotsRequest(RequestModel):
    retain_last: int = Field(1, ge=1, le=1000, description="Always keep this many newest snapshots.")
    older_than: DateTimeText | None = Field(
        None, description="Expire only snapshots committed before this (RFC 3339). Default: 7 days ago."
    )


class RemoveOrphanFilesRequest(RequestModel):
    older_than: DateTimeText | None = Field(
        None,
        description="Remove only unreferenced files last modified before this (RFC 3339), at least an hour ago. "
        "Default: 3 days ago.",
    )


class AddColumnRequest(RequestModel):
    name: str = Field(min_length=1, max_length=128)
    type: str = Field(
        min_length=1,
        max_length=64,
        description="boolean, int, long, float, double, decimal(p, s), date, time, timestamp, timestamptz, "
        "string, uuid, binary or fixed[n] (SQL spellings such as bigint or varchar are accepted).",
    )
    nullable: bool = Field(True, description="Must be true: the rows already written have no value for it.")
    comment: str | None = Field(None, max_length=1000)


class RenameColumnRequest(RequestModel):
    name: str = Field(min_length=1, max_length=128, description="The column's new name.")


class TableOperationRun(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: Timestamp
    table: str
    operation: str
