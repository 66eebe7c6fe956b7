"""The floor of the benchmarks: a Dagster code location that imports only dagster.

One trivial asset and one trivial job (in-process executor, one op), so that loading it, or running
its job, measures what Dagster itself costs on this machine and nothing of ours.
"""

import dagster as dg


@dg.asset
def trivial_asset() -> None:
    return None


@dg.op
def noop() -> None:
    return None


@dg.job(executor_def=dg.in_process_executor)
def trivial_job():
    noop()


defs = dg.Definitions(assets=[trivial_asset], jobs=[trivial_job])
