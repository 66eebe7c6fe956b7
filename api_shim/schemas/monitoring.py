"""Bodies of the Monitoring group: alert rules, alerts, notification channels and escalation policies."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, EmailStr, Field, StrictBool, model_validator

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp

Severity = Literal["critical", "high", "medium", "low", "info"]
AlertStatus = Literal["firing", "acknowledged", "resolved"]
ChannelType = Literal["webhook", "slack", "email"]
ObjectId = Annotated[str, Field(min_length=1, max_length=40)]
MAX_CHANNELS = 20
MAX_STEPS = 10


def _distinct(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("Each channel may be named only once")
    return ids


ChannelIds = Annotated[list[ObjectId], Field(json_schema_extra={"uniqueItems": True}), AfterValidator(_distinct)]


# Conditions -------------------------------------------------------------------------------------


class _RunTarget(RequestModel):
    type: str  # each condition's own Literal (declared here so that it comes first)
    pipeline_id: ObjectId | None = Field(None, description="Runs of this pipeline.")
    connector_id: ObjectId | None = Field(None, description="Syncs of this connector.")
    dbt_project_id: ObjectId | None = Field(None, description="Runs of this dbt project.")

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        given = [name for name in ("pipeline_id", "connector_id", "dbt_project_id") if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(
                f"Give at most one of pipeline_id, connector_id and dbt_project_id (not {' and '.join(given)}); "
                "none watches every run of the project"
            )
        return self


class RunFailedCondition(_RunTarget):
    """A run fails: of one pipeline, connector or dbt project, or (none given) any run of the project."""

    type: Literal["run_failed"]


class RunDurationCondition(_RunTarget):
    """A run takes longer than `max_seconds` (still running, or finished)."""

    type: Literal["run_duration_exceeded"]
    max_seconds: int = Field(gt=0, le=30 * 24 * 3600)


class FreshnessCondition(RequestModel):
    """A table (as the Tables group names it) has had no new snapshot for `max_age_minutes`."""

    type: Literal["freshness"]
    table: str = Field(min_length=1, max_length=300)
    max_age_minutes: int = Field(ge=1, le=366 * 24 * 60)


class RowCountCondition(RequestModel):
    """A table's row count after a sync is below `min` or above `max` (at least one of them)."""

    type: Literal["row_count"]
    table: str = Field(min_length=1, max_length=300)
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("Give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be greater than max")
        return self


class DbtTestFailedCondition(RequestModel):
    """A dbt test fails: of one dbt project, or (none given) of any of the project's."""

    type: Literal["dbt_test_failed"]
    dbt_project_id: ObjectId | None = None


Condition = Annotated[
    RunFailedCondition | RunDurationCondition | FreshnessCondition | RowCountCondition | DbtTestFailedCondition,
    Field(discriminator="type"),
]


# Alert rules ------------------------------------------------------------------------------------


class AlertRuleCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    severity: Severity
    condition: Condition
    channel_ids: ChannelIds = Field(default_factory=list, max_length=MAX_CHANNELS)
    escalation_policy_id: ObjectId | None = None
    enabled: StrictBool = Field(True, description="Whether the rule's Dagster sensor runs.")
    only_final_retry: StrictBool = Field(
        False, description="Run conditions: a run that fails and then succeeds on retry raises nothing."
    )


class AlertRuleUpdate(RequestModel):
    """Fields given replace the stored ones. `condition` is merged into the stored one (JSON merge patch: null
    removes a key), unless it names another `type`: then it replaces it and must be whole. Changing `enabled`
    starts or stops the rule's sensor in Dagster (503 when Dagster is unavailable: nothing changes)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    severity: Severity | None = None
    condition: dict[str, Any] | None = Field(None, description="Merged into the stored condition; see above.")
    channel_ids: ChannelIds | None = Field(None, max_length=MAX_CHANNELS)
    escalation_policy_id: ObjectId | None = None
    enabled: StrictBool | None = None
    only_final_retry: StrictBool | None = None


class AlertRuleResponse(ResponseModel):
    id: str
    name: str
    description: str | None
    slug: str = Field(description="Names the rule's sensor; chosen at creation, never changed.")
    severity: Severity
    condition: Condition
    channel_ids: list[str]
    escalation_policy_id: str | None
    enabled: bool = Field(
        description="Whether the sensor runs: Dagster's state when it has one (the sensor may have been started "
        "or stopped in the Dagster UI), else the rule's own setting."
    )
    only_final_retry: bool
    sensor_name: str
    dagster_url: str = Field(description="The rule's sensor in the Dagster UI.")
    created_at: Timestamp
    updated_at: Timestamp


class AlertRuleList(Page[AlertRuleResponse]):
    pass


# Alerts -----------------------------------------------------------------------------------------


class AlertResponse(ResponseModel):
    id: str
    project_id: str
    rule_id: str = Field(description="The rule that raised it (the rule may have been deleted since).")
    severity: Severity
    status: AlertStatus
    title: str
    message: str
    target: str = Field(description="What the alert is about: one open alert per rule and target.")
    context: dict[str, Any] = Field(description="`run_id`, `dagster_run_id`, `table`, `pipeline_id`, ... as known.")
    occurrences: int = Field(description="Times the condition was seen while the alert was open.")
    run_id: str | None = Field(description="The run that raised it, as the Pipelines group names runs.")
    dagster_url: str | None = Field(description="That run in the Dagster UI.")
    fired_at: Timestamp
    last_seen_at: Timestamp
    acknowledged_at: Timestamp | None
    acknowledged_by: str | None
    resolved_at: Timestamp | None
    resolved_by: str | None = Field(description="A user's email, or `system` when the condition cleared.")


class AlertList(Page[AlertResponse]):
    pass


class AlertDeliveryResponse(ResponseModel):
    """One message of the alert to one channel, as the outbox recorded it."""

    id: str
    channel_id: str
    reason: str = Field(description="`fired`, or `escalation:<step>` for an escalation policy's step.")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None = Field(description="Why the last attempt failed (never a secret).")
    next_attempt_at: Timestamp | None = Field(description="When a pending delivery is tried again.")
    delivered_at: Timestamp | None
    created_at: Timestamp


class AlertDetail(AlertResponse):
    deliveries: list[AlertDeliveryResponse] = Field(
        description="Every notification of this alert, per channel, with its attempts and outcome, oldest first."
    )


# Notification channels -------------------------------------------------------------------------


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Must be an http:// or https:// URL with a host")
    if any(c.isspace() for c in value):
        raise ValueError("Must not contain whitespace")
    try:
        _ = parts.port  # one out of range raises
    except ValueError:
        raise ValueError("Has an invalid port") from None
    return value


HttpUrlText = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_http_url)]


class WebhookConfig(RequestModel):
    """A JSON POST to `url`; with `secret`, signed (HMAC-SHA256 of the timestamp and body)."""

    url: HttpUrlText
    secret: str | None = Field(None, min_length=1, max_length=500, description="Never returned.")


class SlackConfig(RequestModel):
    """A Slack incoming webhook. Its URL is a credential: responses show it redacted."""

    url: HttpUrlText


class EmailConfig(RequestModel):
    """SMTP with STARTTLS (unless `starttls` is false) and, with `username`, authentication."""

    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?$")
    port: int = Field(587, ge=1, le=65535)
    username: str | None = Field(None, min_length=1, max_length=320)
    password: str | None = Field(None, min_length=1, max_length=500, description="Never returned.")
    from_address: EmailStr
    to: list[EmailStr] = Field(min_length=1, max_length=50)
    starttls: StrictBool = True


CHANNEL_CONFIGS: dict[str, type[RequestModel]] = {
    "webhook": WebhookConfig,
    "slack": SlackConfig,
    "email": EmailConfig,
}
_CONFIG_DOC: dict[str, Any] = {
    "anyOf": [model.model_json_schema() for model in CHANNEL_CONFIGS.values()],
    "description": "By `type`: webhook `{url, secret?}`, slack `{url}`, email `{host, port, username?, password?, "
    "from_address, to, starttls}`. Secrets are encrypted and never returned.",
}


class NotificationChannelCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    type: ChannelType
    config: dict[str, Any] = Field(json_schema_extra=_CONFIG_DOC)


class NotificationChannelUpdate(RequestModel):
    """`config` is merged into the stored one (JSON merge patch: null removes a key, e.g. a webhook's secret),
    then validated whole. The type cannot change."""

    name: str | None = Field(None, min_length=1, max_length=200)
    config: dict[str, Any] | None = None


class NotificationChannelResponse(ResponseModel):
    id: str
    name: str
    type: ChannelType
    config: dict[str, Any] = Field(
        description="The config without its secrets: a webhook's `secret` and an email's `password` show as "
        "`secret_set` / `password_set`, a Slack URL is redacted."
    )
    created_at: Timestamp
    updated_at: Timestamp


class NotificationChannelList(Page[NotificationChannelResponse]):
    pass


class ChannelTestResult(ResponseModel):
    success: bool
    message: str = Field(description="What the receiver answered, or why the message could not be delivered.")


# Escalation policies ---------------------------------------------------------------------------


class EscalationStep(RequestModel):
    after_minutes: int = Field(ge=1, le=7 * 24 * 60, description="Minutes after the alert fired.")
    channel_ids: ChannelIds = Field(min_length=1, max_length=MAX_CHANNELS)


class EscalationPolicyCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    steps: list[EscalationStep] = Field(
        min_length=1, max_length=MAX_STEPS, description="`after_minutes` strictly increasing."
    )


class EscalationPolicyUpdate(RequestModel):
    """`steps` replaces every step."""

    name: str | None = Field(None, min_length=1, max_length=200)
    steps: list[EscalationStep] | None = Field(None, min_length=1, max_length=MAX_STEPS)


class EscalationStepResponse(ResponseModel):
    after_minutes: int
    channel_ids: list[str]


class EscalationPolicyResponse(ResponseModel):
    id: str
    name: str
    steps: list[EscalationStepResponse]
    created_at: Timestamp
    updated_at: Timestamp


class EscalationPolicyList(Page[EscalationPolicyResponse]):
    pass
