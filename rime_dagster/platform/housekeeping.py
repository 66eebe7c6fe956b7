"""Daily housekeeping job: purges idempotency keys older than their 24 h replay window."""

from datetime import timedelta

import dagster as dg

from api_shim.services.idempotency import purge_expired
from rime_dagster.resources import MetadataStoreResource, settings


@dg.op(description="Delete Idempotency-Key records past their replay window.")
def purge_idempotency_keys(context: dg.OpExecutionContext, metadata_store: MetadataStoreResource) -> int:
    ttl = timedelta(hours=settings().idempotency_ttl_hours)
    with metadata_store.session() as session:
        purged = purge_expired(session, ttl=ttl)
    context.log.info(f"purged {purged} expired idempotency keys")
    context.add_output_metadata({"purged": purged})
    return purged


@dg.job(
    name="rime_housekeeping",
    description="Metadata-store housekeeping for the Rime platform.",
    tags={"rime/kind": "housekeeping"},
)
def housekeeping_job():
    purge_idempotency_keys()


housekeeping_schedule = dg.ScheduleDefinition(
    job=housekeeping_job, cron_schedule="17 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
