"""Alert rules as Dagster sensors: each tick evaluates one rule and writes its alerts and cursor together.

A tick reads the rule (a short read), evaluates it against Dagster's event log and the Iceberg catalog with
no transaction open, then writes the alerts it found and the rule's new cursor in one transaction, which
first checks that the cursor is still the one the evaluation started from. So a tick replayed after a daemon
restart (Dagster had not saved its own cursor yet) starts from the store's cursor and raises nothing twice,
and two evaluations of one rule at once (a tick and a test, two daemons) write at most one of them. Right
after the commit the tick sends the new alerts' notifications (H-Notify's deliver_due), so a webhook leaves
within the same tick; what it could not send, the delivery sensor retries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from rime_dagster.monitoring import alerts
from rime_dagster.monitoring.conditions import CatalogSource, Evaluation, RuleView, evaluate
from rime_dagster.monitoring.delivery import deliver_due
from rime_dagster.monitoring.names import rule_sensor_name
from rime_dagster.platform import run_tags
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.settings import Settings, get_settings
from rime_dagster.specs import AlertRuleSpec
from rime_dagster.store.models import AlertRule, Project
from rime_dagster.store.session import read_scope, session_factory, unit_of_work
from rime_dagster.store.types import utcnow

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickOutcome:
    """What one evaluation did: the alerts it raised (ids) and resolved, its cursor, or why it did nothing."""

    fired: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    repeated: int = 0  # findings for targets whose alert was already open (counted as occurrences)
    cursor: dict[str, Any] | None = None
    skipped: str | None = None

    def summary(self) -> str:
        if self.skipped:
            return self.skipped
        return f"{len(self.fired)} fired, {len(self.resolved)} resolved, {self.repeated} repeated"


def load_rule(session: Session, rule_id: str) -> RuleView | None:
    """The rule as an evaluation sees it; None when it (or its project) is gone."""
    row = session.execute(
        select(AlertRule, Project.namespace)
        .join(Project, Project.id == AlertRule.project_id)
        .where(AlertRule.id == rule_id)
    ).first()
    if row is None:
        return None
    rule, namespace = row
    return RuleView(
        id=rule.id,
        project_id=rule.project_id,
        namespace=namespace,
        name=rule.name,
        condition=dict(rule.condition),
        only_final_retry=rule.only_final_retry,
        created_at=rule.created_at,
        cursor=dict(rule.cursor or {}),
    )


def apply(session: Session, rule: AlertRule, evaluation: Evaluation, *, now: datetime) -> TickOutcome:
    """Writes an evaluation's alerts and the rule's new cursor, in the caller's transaction."""
    fired, resolved, repeated = [], [], 0
    for finding in evaluation.findings:
        if finding.firing:
            alert = alerts.fire(
                session,
                rule,
                target=finding.target,
                title=finding.title,
                message=finding.message,
                context=finding.context,
                now=now,
            )
            if alert is None:
                repeated += 1
            else:
                fired.append(alert.id)
        else:
            cleared = alerts.clear(session, rule.id, finding.target, reason=finding.message, now=now)
            if cleared is not None:
                resolved.append(cleared.id)
    if evaluation.cursor != rule.cursor:
        # The cursor moves with every run of the instance: it is not an edit of the rule, so updated_at (what
        # the API shows as the rule's last change) keeps its value.
        session.execute(
            update(AlertRule)
            .where(AlertRule.id == rule.id)
            .values(cursor=evaluation.cursor, updated_at=AlertRule.updated_at)
        )
    return TickOutcome(fired=fired, resolved=resolved, repeated=repeated, cursor=evaluation.cursor)


def evaluate_rule(
    store_url: str,
    rule_id: str,
    instance: dg.DagsterInstance,
    catalog: CatalogSource,
    *,
    repository: dg.RepositoryDefinition | None = None,
    now: datetime | None = None,
) -> TickOutcome:
    """One evaluation of the rule: read it, evaluate it (no transaction open meanwhile), write what it found
    and its cursor in one transaction, if the cursor is still the one it started from. `repository`: the code
    location's definitions (dbt tests are its asset checks)."""
    now = now or utcnow()
    with read_scope(store_url) as session:  # a snapshot: no write lock while nothing is to be written
        rule = load_rule(session, rule_id)
    if rule is None:
        return TickOutcome(skipped=f"alert rule {rule_id} no longer exists")
    evaluation = evaluate(rule, instance, catalog, now, repository)
    if not evaluation.findings and evaluation.cursor == rule.cursor:
        return TickOutcome(cursor=evaluation.cursor)  # nothing to write: no write lock taken
    with unit_of_work(session_factory(store_url)) as session:
        row = session.scalar(select(AlertRule).where(AlertRule.id == rule_id).with_for_update())
        if row is None:
            return TickOutcome(skipped=f"alert rule {rule_id} was deleted during the evaluation")
        if dict(row.cursor or {}) != rule.cursor:
            return TickOutcome(skipped="another evaluation of this rule wrote first; the next tick goes on")
        return apply(session, row, evaluation, now=now)


_catalogs: dict[tuple[str, ...], CatalogProvider] = {}


def deployment_catalog() -> Catalog:
    """The deployment's Iceberg catalog, opened once per configuration and process (each pyiceberg SQL catalog
    holds an engine: one per tick would be one per 5 s)."""
    settings = get_settings()
    key = (settings.iceberg_catalog_name, *(f"{k}={v}" for k, v in sorted(settings.iceberg_properties.items())))
    if key not in _catalogs:
        _catalogs[key] = CatalogProvider(settings)
    return _catalogs[key].catalog()


def tick(context: dg.SensorEvaluationContext, rule_id: str, store_url: str, *, settings: Settings) -> dg.SkipReason:
    """A rule sensor's tick: evaluate, mirror the store's cursor into Dagster's (shown in the UI), send the
    new alerts' notifications."""
    outcome = evaluate_rule(store_url, rule_id, context.instance, deployment_catalog, repository=context.repository_def)
    if outcome.cursor is not None:
        context.update_cursor(json.dumps(outcome.cursor, sort_keys=True))
    message = outcome.summary()
    if outcome.fired:
        report = deliver_due(session_factory(store_url), settings=settings, alert_ids=outcome.fired)
        message += f"; notifications: {report.summary()}"
    return dg.SkipReason(message)


def rule_sensor(spec: AlertRuleSpec) -> dg.SensorDefinition:
    """The sensor of one alert rule. It evaluates the rule as the store has it at each tick (edits need no
    reload); `enabled` is only its status until it is first started or stopped."""
    settings = get_settings()

    @dg.sensor(
        name=rule_sensor_name(spec.namespace, spec.slug),
        minimum_interval_seconds=settings.alert_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if spec.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Alert rule '{spec.name}' ({spec.condition_type}). Raises alerts; never starts runs.",
        tags={run_tags.ALERT_RULE_ID: spec.id, run_tags.PROJECT_ID: spec.project_id},
        metadata={run_tags.ALERT_RULE_ID: spec.id, "condition": spec.condition_type},
    )
    def evaluate_alert_rule(
        context: dg.SensorEvaluationContext, metadata_store: MetadataStoreResource
    ) -> dg.SkipReason:
        return tick(context, spec.id, metadata_store.url(), settings=get_settings())

    return evaluate_alert_rule
