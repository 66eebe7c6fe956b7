"""Dagster pools that keep two runs from writing one Iceberg table at the same time.

The instance gives every pool one slot (`concurrency: pools: default_limit: 1, granularity: op` in the
dagster.yaml that rime_dagster/platform/instance.py writes). The run's executor, in-process or multiprocess, claims
the slot before it starts a step with a pool, so a second run that reaches such a step waits in its run,
logging "Step blocked by limit for pool ...", and starts the step once the first run's step has ended.
Dagster's pools can let two runs in at once on its SQLite storage, so such a step also holds the pool's write lease
in the metadata store (rime_dagster/platform/write_leases.py) while it writes: `pool_writes`.
The pools are `connector_pool` (rime_dagster/connectors/names.py) for a connector's tables and `table_pool`
for maintenance of a table no connector lands (a published dbt model).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.launcher import WorkerStatus

from rime_dagster.platform.write_leases import write_lease


def table_pool(namespace: str, table: str) -> str:
    return f"table-maintenance:{namespace}.{table}"


def log_pool_wait(context: dg.OpExecutionContext | dg.AssetExecutionContext, waited_for: str) -> None:
    """Says in the run's log how long this step waited for its pool's slot, if it waited at all.

    Dagster logs each wait as an engine event of the step carrying the pool as metadata; the first one is
    when the wait began.
    """
    step = context.get_step_execution_context().step
    if not step.pool:
        return
    blocked = [
        entry.timestamp
        for entry in context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if entry.step_key == step.key
        and entry.dagster_event is not None
        and "pool" in (getattr(entry.dagster_event.event_specific_data, "metadata", None) or {})
    ]
    if blocked:
        waited = time.time() - min(blocked)
        context.log.info(f"Waited {waited:.1f} s for {waited_for} to finish (Dagster pool {step.pool}).")


@contextmanager
def pool_writes(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, waited_for: str, *, pool: str | None = None
) -> Iterator[None]:
    """The block writes the tables of the step's pool: it holds the pool's write lease (after Dagster's slot), and
    the run's log says when it began and ended writing, and whom it waited for.

    `pool`: a pool known only at run time (a table maintenance run learns its table from its config). Such a step
    has no Dagster slot to queue in, so it waits for the write lease alone, which is what keeps writers apart.
    """
    pool = pool or context.get_step_execution_context().step.pool
    if not pool:
        yield
        return
    log_pool_wait(context, waited_for)
    started = time.time()

    def waiting(holder: str) -> None:
        context.log.info(f"Waiting for run {holder} ({waited_for}) to finish writing (write lease of pool {pool}).")

    with write_lease(
        pool, context.run_id, on_wait=waiting, holder_gone=lambda run_id: run_gone(context.instance, run_id)
    ):
        if time.time() - started > 1:
            context.log.info(f"Waited {time.time() - started:.1f} s for the write lease of pool {pool}.")
        context.log.info(f"{WRITING} {pool}.")
        try:
            yield
        finally:
            context.log.info(f"{DONE_WRITING} {pool}.")


def run_gone(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether run `run_id` ended and its worker process is known to be dead (the run launcher checks it on this
    host): nothing of it can be writing any more. A run whose worker may still live (another host, a forced
    termination) is not gone: its write lease expires instead."""
    run = instance.get_run_by_id(run_id)
    if run is None or not run.is_finished or not instance.run_launcher.supports_check_run_worker_health:
        return False
    return instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED


WRITING = "Writing as the only writer of pool"
DONE_WRITING = "Done writing, released pool"
