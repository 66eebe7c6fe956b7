"""Monitoring: alert rules, alerts, notification channels and escalation policies of a project."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from rime_client._crud import Named, ProjectCrud, given
from rime_client.models import CheckResult, Model
from rime_client.resources import _InProject, _items, _seg

Severity = Literal["critical", "high", "medium", "low", "info"]
AlertStatus = Literal["firing", "acknowledged", "resolved"]


class AlertRule(Named):
    description: str | None = None
    slug: str
    severity: Severity
    condition: dict[str, Any]  # {"type": "run_failed" | "run_duration_exceeded" | "freshness" | ..., ...}
    channel_ids: list[str] = []
    escalation_policy_id: str | None = None
    enabled: bool
    only_final_retry: bool = False
    sensor_name: str
    dagster_url: str
    created_at: datetime
    updated_at: datetime


class Alert(Model):
    """An alert; `deliveries` (each notification to each channel) only in `get`'s answer."""

    id: str
    project_id: str
    rule_id: str
    severity: Severity
    status: AlertStatus
    title: str
    message: str
    target: str
    context: dict[str, Any] = {}
    occurrences: int = 1
    run_id: str | None = None
    dagster_url: str | None = None
    fired_at: datetime
    last_seen_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    deliveries: list[dict[str, Any]] | None = None


class NotificationChannel(Named):
    """A channel; secrets in its `config` are never returned."""

    type: Literal["webhook", "slack", "email"]
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class EscalationStep(Model):
    after_minutes: int
    channel_ids: list[str]


class EscalationPolicy(Named):
    steps: list[EscalationStep]
    created_at: datetime
    updated_at: datetime


class AlertRules(ProjectCrud[AlertRule]):
    """Alert rules by id or name. `create` body: {name, severity, condition, channel_ids?, escalation_policy_id?,
    enabled?, description?, only_final_retry?}; each enabled rule is a Dagster sensor."""

    collection, prefix, kind = "alert-rules", "rule_", "alert rule"
    model = AlertRule

    def enable(self, ref: str, *, project: str | None = None) -> AlertRule:
        return AlertRule.model_validate(self._http.request("POST", f"{self._path(ref, project)}/enable"))

    def disable(self, ref: str, *, project: str | None = None) -> AlertRule:
        return AlertRule.model_validate(self._http.request("POST", f"{self._path(ref, project)}/disable"))


class Alerts(_InProject):
    """The alerts the rules fired, by id."""

    def _base(self, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}/alerts"

    def list(
        self,
        *,
        project: str | None = None,
        status: AlertStatus | None = None,
        severity: Severity | None = None,
        rule_id: str | None = None,
        limit: int | None = None,
        page_size: int = 50,
    ) -> Iterator[Alert]:
        """Newest first; only those in `status`, of `severity`, of `rule_id` when given."""
        params = given(status=status, severity=severity, rule_id=rule_id)
        return _items(self._http, self._base(project), Alert, limit=limit, page_size=page_size, params=params)

    def get(self, alert_id: str, *, project: str | None = None) -> Alert:
        """With its deliveries."""
        return Alert.model_validate(self._http.request("GET", f"{self._base(project)}/{_seg(alert_id)}"))

    def acknowledge(self, alert_id: str, *, project: str | None = None) -> Alert:
        """Stops its escalation. Idempotent: an alert already acknowledged (or resolved) comes back as it is."""
        path = f"{self._base(project)}/{_seg(alert_id)}/acknowledge"
        return Alert.model_validate(self._http.request("POST", path))

    def resolve(self, alert_id: str, *, project: str | None = None) -> Alert:
        """An alert already resolved: Conflict."""
        return Alert.model_validate(self._http.request("POST", f"{self._base(project)}/{_seg(alert_id)}/resolve"))


class NotificationChannels(ProjectCrud[NotificationChannel]):
    """Channels by id or name. `create` body: {name, type: "webhook" | "slack" | "email", config}."""

    collection, prefix, kind = "notification-channels", "chan_", "notification channel"
    model = NotificationChannel

    def test(self, ref: str, *, project: str | None = None, idempotency_key: str | None = None) -> CheckResult:
        """Delivers a real test message (under an Idempotency-Key its retries reuse: sent once)."""
        path = f"{self._path(ref, project)}/test"
        answer = self._http.request("POST", path, idempotent_post=True, idempotency_key=idempotency_key)
        return CheckResult.model_validate(answer)


class EscalationPolicies(ProjectCrud[EscalationPolicy]):
    """Escalation policies by id or name. `create` body: {name, steps: [{after_minutes, channel_ids}]}."""

    collection, prefix, kind = "escalation-policies", "esc_", "escalation policy"
    model = EscalationPolicy
