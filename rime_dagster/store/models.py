"""ORM rows of the metadata store. The API's request/response models (api_shim/schemas) read them."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from rime_dagster.connectors.names import landable_tables
from rime_dagster.store.types import UTCDateTime, utcnow


class Base(DeclarativeBase):
    # Every row class maps one table (SQLAlchemy types __table__ as any FromClause): Core statements use it.
    __table__: ClassVar[Table]


class TimestampedMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False)


class User(TimestampedMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email", name="uq_users_tenant_email"),
        Index("ix_users_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    # invited (never authenticated) -> active on first use; disabled blocks every token at once.
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="invited")
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user_created", "user_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # SHA-256 of the secret: tokens are 256-bit random, so a fast hash is enough and
    # lets every request authenticate with one indexed lookup.
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="tokens")


class Project(TimestampedMixin, Base):
    __tablename__ = "projects"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_projects_tenant_name"),
        Index("ix_projects_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_projects_tenant_name_id", "tenant_id", "name", "id"),
        UniqueConstraint("tenant_id", "namespace", name="uq_projects_tenant_namespace"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    # Iceberg namespace and Dagster asset-key prefix, fixed at creation (renames never move data).
    namespace: Mapped[str] = mapped_column(String(100), nullable=False)
    # The definitions generation of the last committed change to this project or anything in it
    # (rime_dagster.store.generation): a launch of one of its jobs waits until Dagster has loaded it.
    definitions_generation: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Connector(TimestampedMixin, Base):
    """A configured source. Its Iceberg tables are `<project.namespace>.<table_prefix>__<table>`,
    fixed at creation so renames never move data."""

    __tablename__ = "connectors"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_connectors_project_name"),
        Index("ix_connectors_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    connector_type: Mapped[str] = mapped_column(String(50), nullable=False)
    config: Mapped[dict] = mapped_column(JSON, nullable=False)
    # Fernet token of the credentials JSON (rime_dagster.store.crypto); never returned, never logged.
    credentials_encrypted: Mapped[str | None] = mapped_column(Text)
    selected_tables: Mapped[list | None] = mapped_column(JSON)
    schedule: Mapped[str | None] = mapped_column(String(100))
    sync_mode: Mapped[str] = mapped_column(String(20), nullable=False, default="full_refresh")
    cursor_fields: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    table_prefix: Mapped[str] = mapped_column(String(100), nullable=False)
    # Tables seen by the last successful discovery: the asset set when selected_tables is null.
    known_tables: Mapped[list] = mapped_column(JSON, nullable=False, default=list)

    @property
    def tables(self) -> list[str]:
        """What syncs: the selected tables, else the discovered ones; never two that land in one Iceberg table."""
        return landable_tables(self.selected_tables if self.selected_tables is not None else self.known_tables)


class DbtProject(TimestampedMixin, Base):
    """A registered dbt project. Its files live under `RIME_HOME/dbt/<project_id>/<id>/rev-<revision>/`
    (copied or checked out, then parsed); `slug` prefixes its asset keys and published Iceberg tables."""

    __tablename__ = "dbt_projects"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_dbt_projects_project_name"),
        UniqueConstraint("project_id", "slug", name="uq_dbt_projects_project_slug"),
        Index("ix_dbt_projects_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(100), nullable=False)
    # {"type": "path", "path": ...} | {"type": "git", "url": ..., "ref": ..., "subdirectory": ...}
    source: Mapped[dict] = mapped_column(JSON, nullable=False)
    # {"adapter": "duckdb", "threads": ...} | {"adapter": "postgres", "host": ..., ...}: never a secret.
    target: Mapped[dict] = mapped_column(JSON, nullable=False)
    # Fernet token of the target's secrets ({"password": ...}); never returned, never written to disk.
    target_credentials_encrypted: Mapped[str | None] = mapped_column(Text)
    vars: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    schedule: Mapped[str | None] = mapped_column(String(100))
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Bumped by every successful fetch + parse; the code location builds from this revision only.
    revision: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    dbt_project_name: Mapped[str] = mapped_column(String(200), nullable=False)
    profile_name: Mapped[str] = mapped_column(String(200), nullable=False)
    models_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    parsed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class Pipeline(TimestampedMixin, Base):
    """A DAG of steps (rime_dagster.pipelines.spec), built into a Dagster job of the code location.

    `slug` names its job `<project namespace>__<slug>` (rime_dagster/platform/names.py): chosen at creation from
    the name (rime_dagster/store/slugs.py) and never changed, so a rename does not move the job's history."""

    __tablename__ = "pipelines"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_pipelines_project_name"),
        UniqueConstraint("project_id", "slug", name="uq_pipelines_project_slug"),
        Index("ix_pipelines_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    # [{id, name, type, config, depends_on}], validated as a DAG before it is stored.
    steps: Mapped[list] = mapped_column(JSON, nullable=False)
    variables: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    schedule: Mapped[str | None] = mapped_column(String(100))
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    retries: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    # [{type: on_upload, connector_id} | {type: on_success, pipeline_id} | {type: on_table_update, table}]:
    # each is a Dagster sensor that starts a run per event (rime_dagster/pipelines/triggers.py).
    triggers: Mapped[list] = mapped_column(JSON, nullable=False, default=list)


class PipelineVersion(Base):
    """An immutable snapshot of a pipeline's definition (rime_dagster/pipelines/versions.py): creating a pipeline
    makes version 1, every change of its definition the next one. The newest is what development runs."""

    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("pipeline_id", "version", name="uq_pipeline_versions_pipeline_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), nullable=False)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    # {name, description, steps, variables, schedule, retries, timeout_seconds, triggers}: the pipeline row's fields.
    definition: Mapped[dict] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(320))
    # Set when the version was retired from production.
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_by: Mapped[str | None] = mapped_column(String(320))


class PipelineEnvironment(Base):
    """Which version an environment past development runs (qa, uat, production): its own Dagster job and schedule
    are built from that version. Development always runs the newest version, so it has no row."""

    __tablename__ = "pipeline_environments"

    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), primary_key=True)
    environment: Mapped[str] = mapped_column(String(20), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    version_id: Mapped[str] = mapped_column(ForeignKey("pipeline_versions.id", ondelete="CASCADE"), nullable=False)
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    by: Mapped[str | None] = mapped_column(String(320))
    approval_request_id: Mapped[str | None] = mapped_column(String(40))


class ApprovalRequest(Base):
    """A request to move a pipeline version into uat or production; a lead other than the requester decides."""

    __tablename__ = "approval_requests"
    __table_args__ = (Index("ix_approval_requests_project_status", "project_id", "status", "requested_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), nullable=False)
    version_id: Mapped[str] = mapped_column(ForeignKey("pipeline_versions.id", ondelete="CASCADE"), nullable=False)
    from_environment: Mapped[str] = mapped_column(String(20), nullable=False)
    to_environment: Mapped[str] = mapped_column(String(20), nullable=False)
    # pending | approved | rejected
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="pending")
    requested_by: Mapped[str] = mapped_column(String(320), nullable=False)
    requested_by_user_id: Mapped[str] = mapped_column(String(40), nullable=False)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)


class ApprovalComment(Base):
    __tablename__ = "approval_comments"
    __table_args__ = (Index("ix_approval_comments_request_created", "approval_request_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    approval_request_id: Mapped[str] = mapped_column(
        ForeignKey("approval_requests.id", ondelete="CASCADE"), nullable=False
    )
    author: Mapped[str] = mapped_column(String(320), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class NotificationChannel(TimestampedMixin, Base):
    """Where alerts are sent: a webhook, a Slack incoming webhook or an SMTP mailbox."""

    __tablename__ = "notification_channels"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_notification_channels_project_name"),
        Index("ix_notification_channels_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    channel_type: Mapped[str] = mapped_column(String(20), nullable=False)  # webhook | slack | email
    # What may be shown: never a secret (a webhook's signing secret, a Slack URL's token, an SMTP password).
    config: Mapped[dict] = mapped_column(JSON, nullable=False)
    # Fernet token of the secrets JSON (rime_dagster.store.crypto), like connector credentials.
    secrets_encrypted: Mapped[str | None] = mapped_column(Text)


class EscalationPolicy(TimestampedMixin, Base):
    """Steps `[{after_minutes, channel_ids}]`: an alert still firing after a step's delay goes to its channels."""

    __tablename__ = "escalation_policies"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_escalation_policies_project_name"),
        Index("ix_escalation_policies_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    steps: Mapped[list] = mapped_column(JSON, nullable=False)


class AlertRule(TimestampedMixin, Base):
    """A condition watched by a Dagster sensor (rime_dagster/monitoring): the sensor is named from `slug`,
    fixed at creation; it reads the rule's condition, channels and cursor from this row at each evaluation,
    so editing a rule needs no reload of the code location (only creating or deleting one does)."""

    __tablename__ = "alert_rules"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_alert_rules_project_name"),
        UniqueConstraint("project_id", "slug", name="uq_alert_rules_project_slug"),
        Index("ix_alert_rules_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    # {type: run_failed | run_duration_exceeded | freshness | row_count | dbt_test_failed, ...}
    condition: Mapped[dict] = mapped_column(JSON, nullable=False)
    channel_ids: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    escalation_policy_id: Mapped[str | None] = mapped_column(ForeignKey("escalation_policies.id", ondelete="RESTRICT"))
    # What the rule's sensor should be when Dagster has no state of its own for it; once the sensor is
    # started or stopped (from the API or the Dagster UI), Dagster's instigator state is the truth.
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    only_final_retry: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The evaluation cursor, written in the transaction that writes the alerts it led to: a sensor tick
    # replayed after a daemon restart finds the events already handled and raises nothing twice.
    cursor: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)


class Alert(Base):
    """A rule's finding about one target (a run's pipeline, a table, a dbt test).

    `open_key` is `<rule_id>|<target>` while the alert is firing or acknowledged and NULL once resolved:
    its unique index makes "one open alert per rule and target" hold across sensors and API processes.
    `rule_id` has no foreign key: an alert outlives its rule, as the audit trail does."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_project_fired", "project_id", "fired_at", "id"),
        Index("ix_alerts_project_status_fired", "project_id", "status", "fired_at", "id"),
        Index("ix_alerts_rule_status", "rule_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    rule_id: Mapped[str] = mapped_column(String(40), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="firing")
    target: Mapped[str] = mapped_column(String(300), nullable=False)
    open_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    # {run_id?, dagster_run_id?, table?, pipeline_id?, connector_id?, dbt_project_id?, check?, ...}
    context: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    # Times the condition was seen again while the alert was open (a second failing run of the same pipeline).
    occurrences: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(320))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(320))
    # Escalation steps already sent (0: none); each step is sent once.
    escalation_step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False)


class AlertDelivery(Base):
    """One message of one alert to one channel (the outbox): sent at once, retried with backoff if it fails.

    `reason` is `fired`, `escalation:<step>`, `acknowledged` or `resolved`; the unique key makes each one
    at most one row, so an escalation step or a replayed tick never sends twice."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        UniqueConstraint("alert_id", "channel_id", "reason", name="uq_alert_deliveries_alert_channel_reason"),
        Index("ix_alert_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False)
    channel_id: Mapped[str] = mapped_column(String(40), nullable=False)
    reason: Mapped[str] = mapped_column(String(40), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # A sender claims a row until this time, so two senders (a tick and a retry pass) never send it twice.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AlertEvent(Base):
    """What the alert stream (`/api/v1/ws/alerts`) pushes: written in the transaction that changes the alert,
    read by one reader per API process, so every process's clients see every change."""

    __tablename__ = "alert_events"
    __table_args__ = (Index("ix_alert_events_tenant_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    project_id: Mapped[str] = mapped_column(String(40), nullable=False)
    alert_id: Mapped[str] = mapped_column(String(40), nullable=False)
    event_type: Mapped[str] = mapped_column(String(32), nullable=False)  # alert_fired|alert_acknowledged|alert_resolved
    # The alert as it was at this event (rime_dagster.monitoring.alerts.alert_payload), as the stream sends it.
    payload: Mapped[dict] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False, index=True)


class AuditLog(Base):
    """Append-only (the API has no update/delete and database triggers refuse both).

    `project_id` deliberately has no foreign key: a project's trail outlives the project.
    """

    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_tenant_project_ts", "tenant_id", "project_id", "timestamp", "id"),
        Index("ix_audit_tenant_ts", "tenant_id", "timestamp", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    project_id: Mapped[str | None] = mapped_column(String(40))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    actor_id: Mapped[str | None] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(320), nullable=False)
    action: Mapped[str] = mapped_column(String(100), nullable=False)
    resource_type: Mapped[str] = mapped_column(String(50), nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String(100))
    request_id: Mapped[str] = mapped_column(String(64), nullable=False)
    method: Mapped[str] = mapped_column(String(10), nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    ip: Mapped[str | None] = mapped_column(String(64))
    # What the entry is about beyond its resource, e.g. table.read_unmasked: {"tables": {table: [columns]}}.
    details: Mapped[dict | None] = mapped_column(JSON)


class IdempotencyKey(Base):
    """First response to a work-starting POST, replayed for repeats of the same key within the TTL."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Keys are scoped to the caller so two users can never see each other's responses.
    principal_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    method: Mapped[str] = mapped_column(String(10), nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # in_progress | done
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False, index=True)


class DefinitionsState(Base):
    """One row: the generation of the Dagster definitions the metadata store describes.

    Every committed change to a project, connector, dbt project or pipeline adds one
    (rime_dagster.store.generation); the code location reports the generation it was built from, so
    the API knows when Dagster has caught up. The reload lease lets one API process at a time
    ask Dagster to reload, however many processes share the store.
    """

    __tablename__ = "definitions_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    reload_owner: Mapped[str | None] = mapped_column(String(64))
    reload_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RateLimitCounter(Base):
    """One window's count of one rate limit (api_shim/rate_limit_store.py): the limits every API process shares
    when there are several. `key` names the limit, who it counts and the window; `expires_at` (epoch seconds)
    is when the row no longer counts and may be purged."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[float] = mapped_column(Float, nullable=False, index=True)


class WriteLease(Base):
    """Who writes a pool's Iceberg tables now (rime_dagster/platform/write_leases.py): one row per pool while a
    run's step holds it, renewed while the step runs, taken over once it has expired (the holder died)."""

    __tablename__ = "write_leases"

    pool: Mapped[str] = mapped_column(String(300), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Classification(TimestampedMixin, Base):
    """A class of data (say, PII e-mail) in a project: its sensitivity, the rules that find its columns after each
    sync and on demand, and the columns assigned to it by hand. Where it was found: ColumnClassification."""

    __tablename__ = "classifications"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_classifications_project_name"),
        Index("ix_classifications_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    sensitivity: Mapped[str] = mapped_column(String(20), nullable=False)  # public|internal|confidential|restricted
    # [{"column_pattern": regex} | {"value_pattern": regex} | {"detector": email|phone|credit_card|iban|national_id}]
    rules: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    # Manual assignments [{"table", "column"}]: kept whatever the rules find.
    assignments: Mapped[list] = mapped_column(JSON, nullable=False, default=list)


class ColumnClassification(Base):
    """A column of a project's table found to hold a classification's data (`source` "rule": replaced each time the
    table is classified) or assigned to it by hand (`source` "manual": kept until the assignment is removed)."""

    __tablename__ = "column_classifications"
    __table_args__ = (
        UniqueConstraint(
            "project_id", "table_name", "column_name", "classification_id", "source", name="uq_column_classifications"
        ),
        Index("ix_column_classifications_table", "project_id", "table_name"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    table_name: Mapped[str] = mapped_column(String(300), nullable=False)  # as GET .../tables lists it
    column_name: Mapped[str] = mapped_column(String(300), nullable=False)
    classification_id: Mapped[str] = mapped_column(ForeignKey("classifications.id", ondelete="CASCADE"), nullable=False)
    source: Mapped[str] = mapped_column(String(10), nullable=False)  # rule | manual
    detail: Mapped[str | None] = mapped_column(String(300))  # which rule matched, e.g. "detector email: 98% of 200"
    classified_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class MaskingPolicy(TimestampedMixin, Base):
    """How a classification's columns (or listed columns) read for everyone but `exempt_roles`: redacted, hashed
    (salted, stable: joins still match), partially shown (the last N characters) or null."""

    __tablename__ = "masking_policies"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_masking_policies_project_name"),
        Index("ix_masking_policies_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # Either a classification (deleting it while a policy uses it is a 409) or columns [{"table", "column"}].
    classification_id: Mapped[str | None] = mapped_column(ForeignKey("classifications.id", ondelete="RESTRICT"))
    columns: Mapped[list | None] = mapped_column(JSON)
    strategy: Mapped[str] = mapped_column(String(20), nullable=False)  # redact | hash | partial | null
    options: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)  # partial: {"keep_last": N}
    exempt_roles: Mapped[list] = mapped_column(JSON, nullable=False, default=list)


class TableRetentionPolicy(TimestampedMixin, Base):
    """What a project table keeps, enforced on a cron schedule by a Dagster schedule that launches the project's
    table maintenance job: snapshot expiry (the newest `retain_last`, and any newer than `older_than`), and, when
    turned on, compaction first and orphan-file removal last. One policy per table."""

    __tablename__ = "table_retention_policies"
    __table_args__ = (
        UniqueConstraint("project_id", "table_name", name="uq_table_retention_policies_project_table"),
        Index("ix_table_retention_policies_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    table_name: Mapped[str] = mapped_column(String(300), nullable=False)  # as GET .../tables lists it
    schedule: Mapped[str] = mapped_column(String(100), nullable=False)  # 5-field cron, UTC
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    # Snapshot expiry: at least one of the two is set.
    retain_last: Mapped[int | None] = mapped_column(Integer)
    older_than_seconds: Mapped[int | None] = mapped_column(BigInteger)
    remove_orphan_files: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    orphan_older_than_seconds: Mapped[int | None] = mapped_column(BigInteger)  # null: the operation's default
    compact: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    compact_target_file_rows: Mapped[int | None] = mapped_column(Integer)
    compact_min_files: Mapped[int | None] = mapped_column(Integer)


class InfraResource(TimestampedMixin, Base):
    """A declared infrastructure resource of a project: desired state that plans compare with what exists and
    applies make real (rime_dagster/infrastructure). A DELETE keeps the row as `deleting` until an apply has
    removed what it made, so the plan can show the deletion."""

    __tablename__ = "infra_resources"
    __table_args__ = (
        UniqueConstraint("project_id", "resource_type", "name", name="uq_infra_resources_project_type_name"),
        Index("ix_infra_resources_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    resource_type: Mapped[str] = mapped_column(String(40), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    config: Mapped[dict] = mapped_column(JSON, nullable=False)  # validated by the type's provider, no secrets
    # Fernet token of the config's secret fields (rime_dagster.store.crypto); never returned, never logged.
    secrets_encrypted: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), nullable=False, default="pending")  # pending|applied|failed|deleting
    revision: Mapped[int] = mapped_column(Integer, nullable=False, default=1)  # moves on every change of declaration
    applied_revision: Mapped[int | None] = mapped_column(Integer)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


class InfraPlan(Base):
    """An immutable plan of a project's infrastructure: the changes that would make what exists match what is
    declared, as found when it was made, and the fingerprint of the declarations and actual states it read (an
    apply refuses a plan whose fingerprint no longer holds)."""

    __tablename__ = "infra_plans"
    __table_args__ = (Index("ix_infra_plans_project_created", "project_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    created_by: Mapped[str] = mapped_column(String(320), nullable=False)
    changes: Mapped[list] = mapped_column(JSON, nullable=False)
    summary: Mapped[dict] = mapped_column(JSON, nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    # planned | applying | applied | failed
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="planned")
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
