"""Run time limits: the `dagster/max_runtime` tag, which the daemon's run monitoring enforces (it fails the run)."""

from rime_dagster.resources import settings

MAX_RUNTIME_TAG = "dagster/max_runtime"


def max_runtime_tags() -> dict[str, str]:
    """The tag limiting a connector sync or dbt run to RIME_DEFAULT_RUN_TIMEOUT_SECONDS; none when that is 0."""
    seconds = settings().default_run_timeout_seconds
    return {MAX_RUNTIME_TAG: str(seconds)} if seconds else {}
