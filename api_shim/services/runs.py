"""Rime run payloads read from Dagster's run storage and event log (shared by every run kind)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api_shim.dagster_client import RUN_STATUS, DagsterClient, RunEvents, to_rime_run_id


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


@dataclass(frozen=True)
class RunView:
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    events: RunEvents
    record: Any

    @property
    def error(self) -> str | None:
        return "\n".join(dict.fromkeys(self.events.errors)) or None


def run_view(client: DagsterClient, record, *, with_events: bool = True) -> RunView:
    run = record.dagster_run
    started, finished = _when(record.start_time), _when(record.end_time)
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
        events=client.run_events(run.run_id) if with_events else RunEvents(),
        record=record,
    )
