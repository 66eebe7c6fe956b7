"""The `rime/...` keys of run tags, op tags and metadata: what the API and the jobs tell each other through Dagster.

The API launches runs with these tags and finds and describes runs by them; the jobs read them (a full refresh,
a pipeline's variables) and tag the runs started from the Dagster UI so the API sees those too. Every key is
written here once; nothing else spells a `rime/` key. No Dagster import, so the API can use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Run tags: whose run it is.
PROJECT_ID = "rime/project_id"
CONNECTOR_ID = "rime/connector_id"
DBT_PROJECT_ID = "rime/dbt_project_id"
PIPELINE_ID = "rime/pipeline_id"
# A pipeline run's environment (development, qa, uat, production) and the version of the pipeline it ran.
ENVIRONMENT = "rime/environment"
PIPELINE_VERSION = "rime/pipeline_version"
KIND = "rime/kind"  # one of the KIND_* values, set by the job's own tags

# Run tags: how it was started and what it does.
TRIGGER = "rime/trigger"  # TRIGGER_SCHEDULE on runs a schedule started, TRIGGER_SENSOR on a pipeline trigger's
# What started a pipeline trigger's run, a JSON object (encode_trigger_event): {type, connector_id, file},
# {type, pipeline_id, run_id} (the upstream Dagster run) or {type, table, snapshot_id}.
TRIGGER_EVENT = "rime/trigger_event"
TRIGGERED_BY = "rime/triggered_by"  # the email of whoever launched it through the API
# Dagster's own tag for who launched a run (not a rime/ key): the Dagster UI shows it as the run's "Launched by".
# The API sets it to TRIGGERED_BY's value on every run it launches.
LAUNCHED_BY = "user"
FULL_REFRESH = "rime/full_refresh"  # "true" or "false" (flag / is_set)
DBT_COMMAND = "rime/dbt_command"
DBT_SELECT = "rime/dbt_select"
DBT_EXCLUDE = "rime/dbt_exclude"
VARIABLES = "rime/variables"  # a pipeline run's variables, a JSON object

# Run tags the run launcher adds: the run worker's process (rime_dagster/platform/run_launcher.py).
RUN_WORKER_PID = "rime/run_worker_pid"
RUN_WORKER_HOST = "rime/run_worker_host"
RUN_WORKER_STARTED = "rime/run_worker_started"  # its start time: a later process given the same pid is not it

# Op tags of a pipeline step's node.
STEP_ID = "rime/step_id"
STEP_TYPE = "rime/step_type"

# Asset metadata: a synced table's source, and what a dbt model published to Iceberg.
SOURCE_TABLE = "rime/source_table"
SYNC_MODE = "rime/sync_mode"
ICEBERG_TABLE = "rime/iceberg_table"
ICEBERG_SNAPSHOT_ID = "rime/iceberg_snapshot_id"
PUBLISHED_ROWS = "rime/published_rows"
# Tag of a table maintenance run (rime_dagster/tables/jobs.py): which operation it carries out (on ICEBERG_TABLE).
TABLE_OPERATION = "rime/table_operation"
# Tag of a table retention policy's scheduled run (rime_dagster/tables/retention.py): the policy.
RETENTION_POLICY_ID = "rime/retention_policy_id"
# Tag of an infrastructure_apply run (rime_dagster/infrastructure/jobs.py): the plan it applies.
INFRA_PLAN_ID = "rime/infra_plan_id"

# Tags and metadata of an alert rule's sensor: the rule it evaluates.
ALERT_RULE_ID = "rime/alert_rule_id"

# Job metadata of the housekeeping job: the definitions generation the code location was built from.
DEFINITIONS_GENERATION = "rime/definitions_generation"

KIND_CONNECTOR_SYNC = "connector_sync"
KIND_DBT = "dbt"
KIND_PIPELINE = "pipeline"
KIND_HOUSEKEEPING = "housekeeping"
KIND_TABLE_MAINTENANCE = "table_maintenance"
KIND_INFRASTRUCTURE = "infrastructure"
TRIGGER_SCHEDULE = "schedule"
TRIGGER_SENSOR = "sensor"


def flag(value: bool) -> str:
    """A boolean as a tag value: tags are strings."""
    return "true" if value else "false"


# What a re-execution of a run does not take over from it: who or what started the run, and its worker process.
NOT_INHERITED = frozenset({TRIGGER, TRIGGER_EVENT, TRIGGERED_BY, RUN_WORKER_PID, RUN_WORKER_HOST, RUN_WORKER_STARTED})


def inherited(tags: Mapping[str, str]) -> dict[str, str]:
    """The `rime/` tags a re-execution keeps from its parent run: what the run does (its project, pipeline,
    environment, version, variables, full refresh), not who started it."""
    return {key: value for key, value in tags.items() if key.startswith("rime/") and key not in NOT_INHERITED}


def is_set(tags: Mapping[str, str], key: str) -> bool:
    """Whether the boolean tag `key` is "true" (absent is false)."""
    return tags.get(key) == "true"


def encode_variables(variables: Mapping[str, Any]) -> str:
    """A pipeline run's variables as the VARIABLES tag: compact JSON, keys sorted."""
    return json.dumps(variables, separators=(",", ":"), sort_keys=True)


def encode_trigger_event(event: Mapping[str, Any]) -> str:
    """A trigger's event as the TRIGGER_EVENT tag: compact JSON, keys sorted."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True)


def trigger_event_of(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The event that started a triggered run; None when there is none (or the tag is not a JSON object)."""
    try:
        event = json.loads(tags.get(TRIGGER_EVENT) or "null")
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def variables_of(tags: Mapping[str, str]) -> dict[str, Any]:
    """The variables a pipeline run was launched with (none: {}). ValueError if the tag is not a JSON object."""
    variables = json.loads(tags.get(VARIABLES) or "{}")
    if not isinstance(variables, dict):
        raise ValueError(f"{VARIABLES} is not a JSON object")
    return variables
