"""Daily housekeeping job: purges idempotency keys past their replay window, old alert-stream events and old dbt
run artifacts."""

from datetime import timedelta

import dagster as dg

from rime_dagster.platform import run_tags
from rime_dagster.platform.names import HOUSEKEEPING_JOB
from rime_dagster.resources import MetadataStoreResource, settings
from rime_dagster.store.retention import purge_alert_events, purge_expired


@dg.op(description="Delete Idempotency-Key records past their replay window.")
def purge_idempotency_keys(context: dg.OpExecutionContext, metadata_store: MetadataStoreResource) -> int:
    with metadata_store.session() as session:
        purged = purge_expired(session, ttl=timedelta(hours=settings().idempotency_ttl_hours))
    return _reported(context, purged, "expired idempotency keys")


@dg.op(description="Delete the alert stream's events older than RIME_ALERT_EVENTS_RETENTION_HOURS.")
def purge_old_alert_events(context: dg.OpExecutionContext, metadata_store: MetadataStoreResource) -> int:
    with metadata_store.session() as session:
        purged = purge_alert_events(session, ttl=timedelta(hours=settings().alert_events_retention_hours))
    return _reported(context, purged, "old alert stream events")


def _reported(context: dg.OpExecutionContext, purged: int, what: str) -> int:
    context.log.info(f"purged {purged} {what}")
    context.add_output_metadata({"purged": purged})
    return purged


@dg.op(description="Keep the newest RIME_DBT_KEEP_RUN_ARTIFACTS run folders (dbt artifacts) per dbt project.")
def prune_dbt_run_artifacts(context: dg.OpExecutionContext) -> int:
    from rime_dagster.dbt.workspace import prune_run_dirs

    removed = prune_run_dirs(settings().dbt_home, settings().dbt_keep_run_artifacts)
    context.log.info(f"removed {removed} old dbt run artifact folders")
    context.add_output_metadata({"removed": removed})
    return removed


def housekeeping_definitions(generation: int) -> dg.Definitions:
    """The housekeeping job and its daily schedule.

    The job also carries the definitions generation the code location was built from, as the
    metadata entry run_tags.DEFINITIONS_GENERATION: the API reads it over GraphQL to know whether Dagster
    has loaded a change yet. Job metadata is shown in the UI but never copied onto runs.
    """

    @dg.job(
        name=HOUSEKEEPING_JOB,
        description="Metadata-store housekeeping for the Rime platform.",
        tags={run_tags.KIND: run_tags.KIND_HOUSEKEEPING},
        metadata={run_tags.DEFINITIONS_GENERATION: dg.MetadataValue.int(generation)},
    )
    def housekeeping_job() -> None:
        purge_idempotency_keys()
        purge_old_alert_events()
        prune_dbt_run_artifacts()

    schedule = dg.ScheduleDefinition(
        job=housekeeping_job, cron_schedule="17 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING
    )
    return dg.Definitions(jobs=[housekeeping_job], schedules=[schedule])
