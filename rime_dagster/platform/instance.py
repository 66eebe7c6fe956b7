"""The embedded Dagster instance's configuration (`dagster.yaml` in `DAGSTER_HOME`), written at start."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from rime_dagster.settings import Settings

log = logging.getLogger(__name__)

DAGSTER_YAML = """\
# Written by Rime at start: the embedded Dagster instance (its storage: see the end of the file).
# Rime rewrites this file while this first line is unchanged; edit the line to keep your own.
#
# Runs launch at once (no queue for the daemon to poll): trigger-to-start is the run worker's
# start-up. Pipeline chains run their steps in that worker (in-process executor).
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
# Each run in its own `dagster api execute_run` process, a child of the webserver or the daemon that
# launches it: Dagster's default starts runs inside the code server, whose old process then stays
# alive after every reload until its runs end (rime_dagster/platform/run_launcher.py).
run_launcher:
  module: rime_dagster.platform.run_launcher
  class: ProcessRunLauncher
# The daemon enforces pipelines' timeout_seconds (dagster/max_runtime), fails runs stuck starting and
# runs whose worker died; it looks every RIME_RUN_MONITORING_POLL_SECONDS (30 s).
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
  start_timeout_seconds: 300
  # Frees the pool slots a run still holds once it has ended (say, its worker was killed), after
  # RIME_RUN_SLOTS_FREE_AFTER_SECONDS.
  free_slots_after_run_end_seconds: 60
# One sync of a connector's tables at a time: the steps that write them share a pool of one slot
# (rime_dagster/platform/pools.py). A second run waits in its step, logging "Step blocked by limit
# for pool ...", until the first run's step ends. `op`: the run's executor enforces it, with this
# run coordinator too.
concurrency:
  pools:
    default_limit: 1
    granularity: op
# Sensors (alert rules, pipeline triggers) are evaluated on threads: one after another, each loop (every
# 5 s) would last as long as all their ticks together, and an alert's latency would grow with the rules.
sensors:
  use_threads: true
  num_workers: 4
# Runs tagged dagster/max_retries are retried by the daemon; Dagster then tags each failed run
# dagster/will_retry, which alert rules with only_final_retry read. Untagged runs are never retried.
run_retries:
  enabled: true
  max_retries: 0
telemetry:
  enabled: false
"""
MANAGED_MARKER = DAGSTER_YAML.splitlines()[0]
_POLL_LINE = "  poll_interval_seconds: 30\n"
_FREE_SLOTS_LINE = "  free_slots_after_run_end_seconds: 60\n"
assert _POLL_LINE in DAGSTER_YAML and _FREE_SLOTS_LINE in DAGSTER_YAML


def instance_yaml(settings: Settings) -> str:
    """DAGSTER_YAML with this deployment's run monitoring intervals (RIME_RUN_MONITORING_POLL_SECONDS,
    RIME_RUN_SLOTS_FREE_AFTER_SECONDS)."""
    return DAGSTER_YAML.replace(
        _POLL_LINE, f"  poll_interval_seconds: {settings.run_monitoring_poll_seconds}\n"
    ).replace(_FREE_SLOTS_LINE, f"  free_slots_after_run_end_seconds: {settings.run_slots_free_after_seconds}\n")


# The environment variable that carries the storage's password to every Dagster process: the instance file (which
# Dagster's UI shows under "Configuration") names it, never the password itself.
PASSWORD_VARIABLE = "RIME_DAGSTER_STORAGE_PASSWORD"


def storage_yaml(settings: Settings) -> str:
    """Where Dagster keeps runs, event logs and schedules: SQLite files in DAGSTER_HOME, or, when the metadata store
    is on PostgreSQL, dagster-postgres in the same database under its own schema (RIME_DAGSTER_SCHEMA; Dagster's
    tables, its alembic_version among them, never meet Rime's)."""
    url = make_url(settings.metadata_url)
    if url.get_backend_name() != "postgresql":
        return "# Storage: SQLite files in this folder (Dagster's default).\n"
    lines = [
        f"# Storage: PostgreSQL, database {url.database}, schema {settings.dagster_schema} (dagster-postgres).",
        "storage:",
        "  postgres:",
        "    postgres_db:",
        f"      username: {json.dumps(url.username or '')}",
        f"      hostname: {json.dumps(url.host or 'localhost')}",
        f"      port: {url.port or 5432}",
        f"      db_name: {json.dumps(url.database or '')}",
        # psycopg2: SQLAlchemy 2.1's default driver for postgresql:// is psycopg 3, with which dagster-postgres'
        # NOTIFY (a bound parameter) is a syntax error.
        "      scheme: postgresql+psycopg2",
        "      params:",
        f"        options: {json.dumps('-csearch_path=' + settings.dagster_schema)}",
    ]
    if url.password:
        lines[4:4] = ["      password:", f"        env: {PASSWORD_VARIABLE}"]
    return "\n".join(lines) + "\n"


def storage_environment(settings: Settings) -> dict[str, str]:
    """What a Dagster process needs in its environment to open the storage `storage_yaml` describes."""
    password = make_url(settings.metadata_url).password
    return {PASSWORD_VARIABLE: str(password)} if password else {}


def _ensure_schema(settings: Settings) -> None:
    """Dagster's schema, if the store answers: a process starting while PostgreSQL is down starts anyway (its
    requests answer 503 until the store is back; `rime up` and `rime migrate` create the schema first)."""
    engine = create_engine(settings.metadata_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{settings.dagster_schema}"'))
    except SQLAlchemyError as exc:
        log.warning("could not create Dagster's schema %s: %s", settings.dagster_schema, type(exc).__name__)
    finally:
        engine.dispose()


def ensure_dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME with its `dagster.yaml`; on PostgreSQL, Dagster's schema created and this process's environment
    given the storage's password (the processes `rime up` starts get it from process_env)."""
    home = settings.dagster_home_path
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    wanted = instance_yaml(settings) + storage_yaml(settings)
    current = config.read_text() if config.exists() else None
    if current is None or (current != wanted and current.startswith(MANAGED_MARKER)):
        config.write_text(wanted)
    if make_url(settings.metadata_url).get_backend_name() == "postgresql":
        _ensure_schema(settings)
        os.environ.update(storage_environment(settings))
    return home
