"""The Dagster schedule behind a Rime `schedule` field (connectors, dbt projects, pipelines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from rime_dagster.platform.run_tags import TRIGGER, TRIGGER_SCHEDULE

SCHEDULE_TAGS = {TRIGGER: TRIGGER_SCHEDULE}


def rime_schedule(
    job: dg.JobDefinition | UnresolvedAssetJobDefinition,
    cron: str | None,
    *,
    paused: bool,
    name: str | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> list[dg.ScheduleDefinition]:
    """`[<name or job>_schedule]` in UTC, stopped while the resource is paused; `[]` without a cron.

    `asset_selection`: each tick runs only these assets of the job (a connector's tables in its project's
    sync job), with `run_tags` as well.
    """
    if not cron:
        return []
    status = dg.DefaultScheduleStatus.STOPPED if paused else dg.DefaultScheduleStatus.RUNNING
    if asset_selection is None:
        return [
            dg.ScheduleDefinition(
                name=name or f"{job.name}_schedule",
                job=job,
                cron_schedule=cron,
                execution_timezone="UTC",
                default_status=status,
                tags=SCHEDULE_TAGS,
            )
        ]
    keys, tags = list(asset_selection), {**(run_tags or {}), **SCHEDULE_TAGS}

    @dg.schedule(
        name=name or f"{job.name}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=status,
    )
    def tick(_context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest(asset_selection=keys, tags=tags)

    return [tick]
