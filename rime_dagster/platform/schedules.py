"""The Dagster schedule behind a Rime `schedule` field (connectors, dbt projects, pipelines)."""

import dagster as dg


def rime_schedule(job, cron: str | None, *, paused: bool) -> list[dg.ScheduleDefinition]:
    """`[<job>_schedule]` in UTC, stopped while the resource is paused; `[]` without a cron."""
    if not cron:
        return []
    return [
        dg.ScheduleDefinition(
            name=f"{job.name}_schedule",
            job=job,
            cron_schedule=cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.STOPPED if paused else dg.DefaultScheduleStatus.RUNNING,
            tags={"rime/trigger": "schedule"},
        )
    ]
