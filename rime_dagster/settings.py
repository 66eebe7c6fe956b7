"""Runtime settings for the API shim and the Dagster code location, read from RIME_* variables."""

from __future__ import annotations

import functools
import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything configurable; each field is the environment variable RIME_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="RIME_", extra="ignore")

    home: Path = Field(
        Path(".rime"), description="Root for embedded state: metadata DB, Dagster storage, Iceberg warehouse."
    )
    tenant: str = Field(
        "default", description="Tenant this deployment serves (rate limits and records are per tenant)."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata store; default SQLite under RIME_HOME."
    )
    metadata_busy_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long the API waits for the metadata store (another writer's lock; on PostgreSQL a lock "
        "or, up to 5 s, a connect) before answering 503 service_unavailable with Retry-After.",
    )
    metadata_retry_after_seconds: int = Field(
        2, ge=1, description="Retry-After of a 503 answered because the metadata store is locked or down."
    )
    admin_token: str | None = Field(
        None, description="Bootstrap token: an active admin holding it is ensured at start."
    )
    admin_email: str = Field("admin@localhost", description="Email of the bootstrap admin user.")
    secret_key: str | None = Field(
        None, description="Key that signs cursors (and encrypts secrets); generated into RIME_HOME when unset."
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="API worker processes `rime up` runs (uvicorn --workers). Above 1, rate limits are counted "
        "in the metadata store unless RIME_RATE_LIMIT_STORAGE names a shared store (see \"Several API workers\").",
    )
    dagster_host: str = "127.0.0.1"
    dagster_port: int = 3000
    dagster_viewer_port: int | None = Field(
        None,
        description="If set, `rime up` also starts a read-only Dagster webserver (`--read-only`: no launches, "
        "reloads or other mutations) on DAGSTER_HOST at this port, for viewers behind an authenticating proxy.",
    )
    dagster_graphql_url: str | None = Field(
        None, description="Dagster GraphQL endpoint; default http://DAGSTER_HOST:DAGSTER_PORT/graphql."
    )
    dagster_ui_url: str | None = Field(None, description="Public Dagster UI base URL used in run links.")
    dagster_schema: str = Field(
        "dagster",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="With the metadata store on PostgreSQL: the schema of its database that holds Dagster's run, "
        "event-log and schedule storage.",
    )
    dagster_home: Path | None = Field(
        None, description="DAGSTER_HOME for run storage reads; default RIME_HOME/dagster."
    )
    dagster_location: str = Field("rime", description="Name of the Rime code location in workspace.yaml.")
    dagster_timeout_seconds: float = 10.0
    dagster_launch_timeout_seconds: float = Field(
        60.0, gt=0, description="How long Dagster may take to accept a run launch (it plans the run first)."
    )
    dagster_reload_timeout_seconds: float = Field(
        180.0, gt=0, description="How long one reload of the code location may take (it starts a code server)."
    )
    definitions_wait_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a run launch waits for Dagster to load the change it needs (a job created a "
        "moment ago) before answering 503.",
    )
    definitions_poll_seconds: float = Field(
        2.0, gt=0, le=60, description="How often the API looks for definitions changes made by other processes."
    )
    code_server_host: str = Field("127.0.0.1", description="Host of the `rime` code server that `rime up` starts.")
    code_server_port: int = Field(4266, description="Port of the `rime` code server that `rime up` starts.")

    iceberg_catalog_name: str = "rime"
    iceberg_catalog_uri: str | None = Field(
        None, description="pyiceberg SQL catalog URI; default SQLite under RIME_HOME."
    )
    iceberg_warehouse: str | None = Field(None, description="Iceberg warehouse location; default RIME_HOME/warehouse.")
    iceberg_catalog_properties: dict[str, str] = Field(
        default_factory=dict,
        description="Extra pyiceberg catalog properties as JSON; with a 'type' key any pyiceberg catalog is used.",
    )

    rate_limit_default: str = Field("1200/minute", description="Default limit per tenant and endpoint group.")
    rate_limits: dict[str, str] = Field(
        default_factory=dict, description='Per-group overrides as JSON, e.g. {"projects": "100/minute"}.'
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Storage URI of the `limits` library: memory:// (this process), rime-store:// (the metadata "
        "store, shared by every API process), redis://... With RIME_API_WORKERS > 1, memory:// means rime-store://.",
    )
    rate_limit_anonymous: str = Field(
        "120/minute", description="Limit per client address for requests without a valid token (all groups)."
    )
    rate_limit_websocket: str = Field("60/minute", description="WebSocket connects per client address and per user.")
    audit_failed_auth_limit: str = Field(
        "20/minute", description="Audit entries that failed logins (401) from one client address may write."
    )
    audit_failed_auth_total_limit: str = Field(
        "600/minute", description="Audit entries that failed logins (401) from all addresses together may write."
    )
    idempotency_ttl_hours: int = 24
    health_timeout_seconds: float = 3.0
    max_body_bytes: int = Field(1024 * 1024, description="Largest request body accepted (413 above).")
    upload_max_file_bytes: int = Field(32 * 1024 * 1024, description="Largest file accepted by an upload area.")
    upload_max_request_bytes: int = Field(256 * 1024 * 1024, description="Largest multi-file upload request.")
    query_timeout_seconds: float = Field(
        30.0, gt=0, description="How long a table preview or SQL query (POST .../query) may run before it is stopped."
    )
    export_timeout_seconds: float = Field(600.0, gt=0, description="How long a query export may take to stream.")
    query_memory_limit: str = Field(
        "1GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$", description="Memory one read may use (DuckDB memory_limit)."
    )
    query_threads: int = Field(2, ge=1, le=64, description="Threads one read may use (DuckDB threads).")
    query_spare_databases: int = Field(
        2, ge=0, le=16, description="Fresh DuckDB databases kept open ahead of reads (each serves one read); 0: none."
    )
    log_level: str = "INFO"
    instance_id: str | None = Field(
        None,
        description="Set by `rime up` for its API: /health reports it, so `rime up` knows the API it reads is its own.",
    )

    dbt_project_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders a `path` dbt project may be registered from (JSON list); empty allows any path "
        "the server can read. Set it in production.",
    )
    connector_path_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders `files` and `sqlite` connectors may read (JSON or comma list), besides each `files` "
        "connector's own upload area; empty: the upload area only. RIME_HOME and /proc are never readable.",
    )
    connector_hosts_deny: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="CIDRs connector hosts may not resolve to (JSON or comma list), checked at every connection.",
    )
    connector_allow_unix_sockets: bool = Field(
        False, description="Allow connector hosts that are Unix sockets (libpq may then log in as the server's user)."
    )
    dbt_timeout_seconds: float = Field(300.0, description="Limit for fetching (git) and parsing a dbt project.")
    dbt_threads: int = Field(4, description="dbt threads in generated profiles.")
    run_watch_interval_seconds: float = Field(
        0.1,
        gt=0,
        le=10,
        description="How often a watched pipeline run's event log is read for WebSocket and SSE clients.",
    )
    alert_stream_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How often an API process reads new alert events for its alert-stream WebSocket clients "
        "(one read per process, whatever the number of clients).",
    )
    alert_events_retention_hours: int = Field(
        24, ge=1, description="How long housekeeping keeps the alert stream's events (alert_events rows)."
    )
    dbt_keep_run_artifacts: int = Field(
        100, ge=1, description="Run artifact folders (run_results.json) kept per dbt project by housekeeping."
    )
    # Issue 11: what dbt and the platform's processes may reach, and for how long runs may take.
    dbt_git_schemes: list[str] = Field(
        ["https", "ssh"],
        description='URL schemes git dbt sources may use (JSON list of https, ssh, http, file); "file" also '
        "allows absolute paths, confined to RIME_DBT_PROJECT_ROOTS like path sources.",
    )
    dbt_git_allow_local_hosts: bool = Field(
        False, description="Allow git sources on loopback or link-local addresses (Dagster, cloud metadata)."
    )
    dbt_project_max_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Largest dbt project (all its files) that may be registered."
    )
    dbt_sandbox: Literal["landlock", "off"] = Field(
        "landlock",
        description="How dbt (which runs data engineers' SQL and Python models) is confined: `landlock` (Linux "
        "5.13+) lets it reach only its own project's files and its target; `off` runs it unconfined, and data "
        "engineers can then read whatever the platform's OS user can (rime_dagster/dbt/sandbox.py).",
    )
    dbt_lock_timeout_seconds: float = Field(
        1800.0, gt=0, description="How long a dbt run waits for another run holding its DuckDB database."
    )
    default_run_timeout_seconds: int = Field(
        6 * 3600, ge=0, description="dagster/max_runtime of connector syncs and dbt runs (0: no limit)."
    )
    run_monitoring_poll_seconds: int = Field(
        30,
        ge=1,
        description="How often the Dagster daemon's run monitoring looks at started runs: a run whose worker "
        "died (killed, out of memory) is marked failed within this.",
    )
    run_slots_free_after_seconds: int = Field(
        60,
        ge=1,
        description="The pool slot a run's step held (one sync per connector at a time) is freed this long after "
        "the run ended without freeing it itself (its worker died): a re-sync waits that long, plus up to "
        "RIME_RUN_MONITORING_POLL_SECONDS.",
    )
    # Issue 13: alert notifications (rime_dagster/monitoring/notify.py, delivery.py).
    alert_delivery_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Connect and read timeout of one notification (webhook, Slack, each SMTP step): a dead "
        "channel costs its own delivery this long, never the others'.",
    )
    alert_delivery_max_attempts: int = Field(
        6, ge=1, le=50, description="Attempts of one notification before its delivery is marked failed."
    )
    alert_delivery_backoff_seconds: float = Field(
        10.0,
        gt=0,
        description="Delay before the second attempt of a failed notification; each further one doubles it "
        "(with jitter), up to RIME_ALERT_DELIVERY_BACKOFF_MAX_SECONDS.",
    )
    alert_delivery_backoff_max_seconds: float = Field(
        900.0, gt=0, description="Longest delay between two attempts of a failed notification."
    )
    alert_ca_file: Path | None = Field(
        None,
        description="PEM file of further certificate authorities trusted by HTTPS webhooks and SMTP STARTTLS, "
        "besides the public ones (certifi): for a company CA.",
    )
    alert_sensor_interval_seconds: int = Field(
        1,
        ge=1,
        description="Least time between two evaluations of an alert rule's sensor (and of the escalation and "
        "delivery sensors). Dagster's daemon looks at its sensors once per loop, every 5 s, and skips a sensor "
        "whose last tick began less than this ago: 1 lets every loop evaluate every rule, while 5 skipped every "
        "other loop (a tick that began a moment later than the loop's start) and made it 10 s.",
    )
    env_passthrough: list[str] = Field(
        default_factory=list,
        description='Further environment variables (JSON list of names or "PREFIX_*") that the processes '
        "Rime starts (code server, run workers, dbt, Dagster webserver and daemon, API) inherit.",
    )
    # Issue 15: the systems infrastructure resources are declared in (rime_dagster/infrastructure/providers/).
    infra_postgres_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the PostgreSQL where `postgres_schema` resources are made (a secret: "
        "never logged nor answered); unset: those resources cannot be applied.",
    )
    infra_storage_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders local `storage_location` resources may be made in (JSON or comma list), besides "
        "each project's own area RIME_HOME/storage/<namespace>.",
    )
    snowflake_account: str | None = Field(
        None, description="Snowflake account identifier; unset: Snowflake resources are planned but not applied."
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator(
        "dbt_project_roots", "connector_path_roots", "connector_hosts_deny", "infra_storage_roots", mode="before"
    )
    @classmethod
    def _json_list(cls, value: object) -> object:
        if isinstance(value, str):
            return (
                json.loads(value)
                if value.strip().startswith("[")
                else [v.strip() for v in value.split(",") if v.strip()]
            )
        return value

    @field_validator("rate_limits", "iceberg_catalog_properties", mode="before")
    @classmethod
    def _json_mapping(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    # Derived locations -------------------------------------------------
    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'rime.db'}"

    @property
    def graphql_url(self) -> str:
        return self.dagster_graphql_url or f"http://{self.dagster_host}:{self.dagster_port}/graphql"

    @property
    def dagster_ui_base(self) -> str:
        return (self.dagster_ui_url or f"http://{self.dagster_host}:{self.dagster_port}").rstrip("/")

    @property
    def dagster_home_path(self) -> Path:
        return (self.dagster_home or self.home / "dagster").expanduser().resolve()

    @property
    def rate_limit_storage_uri(self) -> str:
        """Where rate limits are counted: RIME_RATE_LIMIT_STORAGE, except that several API workers never count in
        their own memory (each would grant the whole quota): memory:// then means the metadata store."""
        if self.api_workers > 1 and self.rate_limit_storage.startswith("memory://"):
            return "rime-store://"
        return self.rate_limit_storage

    @property
    def iceberg_properties(self) -> dict[str, str]:
        props = {
            "uri": self.iceberg_catalog_uri or f"sqlite:///{self.home / 'iceberg_catalog.db'}",
            "warehouse": self.iceberg_warehouse or (self.home / "warehouse").as_uri(),
        }
        if "type" in self.iceberg_catalog_properties:
            props = {}
        props.update(self.iceberg_catalog_properties)
        return props

    @property
    def dbt_home(self) -> Path:
        """dbt projects' files, DuckDB warehouses and run artifacts."""
        return self.home / "dbt"

    def signing_key(self) -> str:
        """The secret for signed cursors; generated once into RIME_HOME (0600) when not configured."""
        if self.secret_key:
            return self.secret_key
        path = self.home / "secret.key"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            tmp.replace(path)
        return path.read_text().strip()


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()
