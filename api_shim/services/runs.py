"""Rime run payloads read from Dagster's run storage and event log (shared by every run kind)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from api_shim.dagster_client import RUN_STATUS, DagsterClient, LaunchedRun, RunEvents, RunStatus, to_rime_run_id
from api_shim.errors import ValidationFailed
from api_shim.pagination import CursorCodec, PageResult
from rime_dagster.platform import run_tags

if TYPE_CHECKING:
    from dagster._core.storage.dagster_run import RunRecord


def when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


@dataclass(frozen=True)
class RunView:
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    events: RunEvents
    record: RunRecord

    @property
    def error(self) -> str | None:
        return "\n".join(dict.fromkeys(self.events.errors)) or None


def run_view(client: DagsterClient, record: RunRecord, *, with_events: bool = True) -> RunView:
    run = record.dagster_run
    started, finished = when(record.start_time), when(record.end_time)
    if started is None:
        started = record.create_timestamp
    duration = round((finished - started).total_seconds(), 3) if started and finished else None
    return RunView(
        run_id=to_rime_run_id(run.run_id),
        dagster_run_id=run.run_id,
        dagster_url=client.run_url(run.run_id),
        status=RUN_STATUS.get(run.status.value, "running"),
        started_at=started,
        finished_at=finished,
        duration_seconds=duration,
        events=client.run_events(run.run_id, finished=run.is_finished) if with_events else RunEvents(),
        record=record,
    )


def last_run(client: DagsterClient, tags: dict[str, str]) -> RunView | None:
    """The newest run carrying `tags` (without its events), if any."""
    records = client.run_records(tags=tags, limit=1)
    return run_view(client, records[0], with_events=False) if records else None


def launch_tags(triggered_by: str, *, full_refresh: bool) -> dict[str, str]:
    """The tags of every run the API launches, over the job's own: who asked, and whether to reload everything."""
    return {run_tags.FULL_REFRESH: run_tags.flag(full_refresh), run_tags.TRIGGERED_BY: triggered_by}


def launch_summary(client: DagsterClient, launched: LaunchedRun) -> dict[str, Any]:
    """The common fields of a 202 for a run just launched: ids, link, queued/running, start time."""
    record = client.run_record(launched.dagster_run_id)
    view = run_view(client, record, with_events=False) if record else None
    return {
        "run_id": launched.run_id,
        "dagster_run_id": launched.dagster_run_id,
        "dagster_url": client.run_url(launched.dagster_run_id),
        "status": "queued" if view is None or view.status == "queued" else "running",
        "started_at": view.started_at if view and view.started_at else datetime.now(UTC),
    }


def run_page(
    client: DagsterClient, codec: CursorCodec, *, scope: str, tags: dict[str, str], limit: int, cursor: str | None
) -> PageResult[RunRecord]:
    """One page of the run records carrying `tags`, newest first; cursors are signed and bound to `scope`."""
    after = None
    if cursor:
        payload = codec.decode(cursor)
        if payload.get("s") != scope:
            raise ValidationFailed.field("cursor", "Cursor belongs to another list.")
        after = payload.get("r")
    records = client.run_records(tags=tags, limit=limit + 1, cursor=after)
    has_more = len(records) > limit
    records = records[:limit]
    next_cursor = codec.encode({"s": scope, "r": records[-1].dagster_run.run_id}) if has_more else None
    return PageResult(items=records, next_cursor=next_cursor, has_more=has_more)
