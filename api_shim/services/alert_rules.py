"""Alert rules: a condition checked against the project's real resources, evaluated by a Dagster sensor named
from the rule's slug (rime_dagster/monitoring). Creating or deleting a rule reloads the definitions (the sensor
comes or goes); editing one does not, since the sensor reads the rule's row at each evaluation. Whether the
sensor runs is Dagster's to say once anyone started or stopped it, here or in the Dagster UI."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_shim.dagster_client import DagsterClient
from api_shim.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable, ValidationFailed
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.monitoring import (
    AlertRuleCreate,
    AlertRuleList,
    AlertRuleResponse,
    AlertRuleUpdate,
    Condition,
)
from api_shim.services.connectors import merge_patch
from api_shim.services.escalation_policies import get_policy
from api_shim.services.notification_channels import missing_channels
from rime_dagster.connectors.names import iceberg_table_name
from rime_dagster.monitoring import alerts as lifecycle
from rime_dagster.monitoring.names import rule_sensor_name
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.platform.naming import unique_identifier
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import AlertRule, Connector, DbtProject, Pipeline, Project
from rime_dagster.store.session import release

CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)
# The resources a run condition may watch: its field, the row, and what a message calls it.
RUN_TARGETS: tuple[tuple[str, type[Pipeline | Connector | DbtProject], str], ...] = (
    ("pipeline_id", Pipeline, "pipeline"),
    ("connector_id", Connector, "connector"),
    ("dbt_project_id", DbtProject, "dbt project"),
)
RULE_DELETED = "rule deleted"


def get_rule(session: Session, project: Project, rule_id: str) -> AlertRule:
    row = session.get(AlertRule, rule_id)
    if row is None or row.project_id != project.id:
        raise NotFound.of("Alert rule", rule_id, " in this project")
    return row


def _refused(message: str, field: str) -> Unprocessable:
    return Unprocessable(message, details=[{"field": field, "message": message}])


def project_tables(session: Session, project: Project, catalogs: CatalogProvider) -> set[str]:
    """The project's tables as the Tables group names them: what landed in Iceberg, and what its connectors
    sync (a rule may watch a table before its first sync)."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    connectors = session.scalars(select(Connector).where(Connector.project_id == project.id))
    tables = {iceberg_table_name(c.table_prefix, table) for c in connectors for table in c.tables}
    try:
        tables.update(identifier[-1] for identifier in catalogs.catalog().list_tables(project.namespace))
    except NoSuchNamespaceError:
        pass
    except Exception:
        raise ServiceUnavailable("The Iceberg catalog did not answer; try again.") from None
    return tables


def check_condition(session: Session, project: Project, condition: dict[str, Any], catalogs: CatalogProvider) -> None:
    """Every resource the condition names is the project's: 422 naming the field."""
    for field, model, what in RUN_TARGETS:
        target = condition.get(field)
        if target is None:
            continue
        if session.scalar(select(model.project_id).where(model.id == target)) != project.id:
            raise _refused(f"No {what} {target} in this project.", f"condition.{field}")
    table = condition.get("table")
    if table is not None and table not in project_tables(session, project, catalogs):
        raise _refused(f"'{table}' is not a table of this project (see GET .../tables).", "condition.table")


def _check_channels(session: Session, project: Project, channel_ids: list[str]) -> None:
    missing = missing_channels(session, project, channel_ids)
    if missing:
        raise _refused(f"No notification channel {', '.join(missing)} in this project.", "channel_ids")


def _check_policy(session: Session, project: Project, policy_id: str | None) -> None:
    if policy_id is None:
        return
    try:
        get_policy(session, project, policy_id)
    except NotFound:
        raise _refused(f"No escalation policy {policy_id} in this project.", "escalation_policy_id") from None


def merged_condition(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A PATCH's condition: merged into the stored one, or replacing it when it names another type; validated
    whole (400 naming the field)."""
    base = {} if "type" in patch and patch["type"] != stored.get("type") else stored
    try:
        parsed = CONDITION.validate_python(merge_patch(base, patch), strict=True)
    except ValidationError as exc:
        raise ValidationFailed.of_pydantic(exc, "condition") from None
    return parsed.model_dump(mode="json", exclude_none=True)


def _ensure_name_free(session: Session, project_id: str, name: str, *, except_id: str | None = None) -> None:
    clash = session.scalar(select(AlertRule.id).where(AlertRule.project_id == project_id, AlertRule.name == name))
    if clash is not None and clash != except_id:
        raise Conflict(f"An alert rule named '{name}' already exists in this project.")


def _flush(session: Session, name: str | None) -> None:
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"An alert rule named '{name}' already exists in this project.") from None


def new_rule_slug(session: Session, project: Project, name: str, sensor_states: Collection[str] = ()) -> str:
    """A slug for the rule's sensor, unique among the project's rules, and naming no sensor Dagster still holds
    a state for (`sensor_states`: names): a deleted rule's sensor stopped in Dagster keeps its state there, which
    would otherwise stop a new rule of the same name. Locks the project's row until the transaction ends, so
    that two rules created at once cannot take the same one (PostgreSQL; SQLite's transactions hold the write
    lock already)."""
    session.execute(select(Project.id).where(Project.id == project.id).with_for_update())
    taken = set(session.scalars(select(AlertRule.slug).where(AlertRule.project_id == project.id)))
    prefix, suffix = rule_sensor_name(project.namespace, "|").split("|")
    taken |= {n[len(prefix) : -len(suffix)] for n in sensor_states if n.startswith(prefix) and n.endswith(suffix)}
    return unique_identifier(name, taken, fallback="rule")


def create_rule(
    session: Session,
    project: Project,
    body: AlertRuleCreate,
    catalogs: CatalogProvider,
    sensor_states: Collection[str] = (),
) -> AlertRule:
    condition = body.condition.model_dump(mode="json", exclude_none=True)
    check_condition(session, project, condition, catalogs)
    _check_channels(session, project, body.channel_ids)
    _check_policy(session, project, body.escalation_policy_id)
    _ensure_name_free(session, project.id, body.name)
    row = AlertRule(
        id=new_id("rule"),
        project_id=project.id,
        name=body.name,
        slug=new_rule_slug(session, project, body.name, sensor_states),
        description=body.description,
        severity=body.severity,
        condition=condition,
        channel_ids=list(body.channel_ids),
        escalation_policy_id=body.escalation_policy_id,
        enabled=body.enabled,
        only_final_retry=body.only_final_retry,
        cursor={},
    )
    session.add(row)
    _flush(session, body.name)
    return row


def _validated_changes(
    session: Session, project: Project, row: AlertRule, body: AlertRuleUpdate, catalogs: CatalogProvider
) -> dict[str, Any]:
    """The PATCH's changes, every one checked (nothing is written yet)."""
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "severity", "condition", "channel_ids", "enabled", "only_final_retry"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    if body.condition is not None:
        changes["condition"] = merged_condition(row.condition, body.condition)
        check_condition(session, project, changes["condition"], catalogs)
    if body.channel_ids is not None:
        _check_channels(session, project, body.channel_ids)
    _check_policy(session, project, body.escalation_policy_id)
    if body.name is not None:
        _ensure_name_free(session, project.id, body.name, except_id=row.id)
    return changes


# What the Monitoring routes call ------------------------------------------------------------------------------

RULES = Listing(
    "alert_rules",
    {"created_at": AlertRule.created_at, "updated_at": AlertRule.updated_at, "name": AlertRule.name},
    AlertRule.id,
)


def sensor_name(project: Project, row: AlertRule) -> str:
    return rule_sensor_name(project.namespace, row.slug)


def rule_response(
    project: Project, row: AlertRule, dagster: DagsterClient, states: dict[str, bool]
) -> AlertRuleResponse:
    """`states`: DagsterClient.sensor_states(), read once for a whole page."""
    name = sensor_name(project, row)
    return AlertRuleResponse.of(
        row, enabled=states.get(name, row.enabled), sensor_name=name, dagster_url=dagster.sensor_url(name)
    )


def list_page(
    session: Session, dagster: DagsterClient, codec: CursorCodec, project: Project, page: PageRequest
) -> AlertRuleList:
    stmt = select(AlertRule).where(AlertRule.project_id == project.id)
    result = RULES.page(session, stmt, page, codec, {"project": project.id})
    states = dagster.sensor_states() if result.items else {}
    return result.as_page(AlertRuleList, lambda row: rule_response(project, row, dagster, states))


def create(
    session: Session, dagster: DagsterClient, project: Project, body: AlertRuleCreate, catalogs: CatalogProvider
) -> AlertRuleResponse:
    """Creates the rule. Its sensor comes with the next definitions reload, running or stopped as `enabled`
    says (its default status in code): nothing to ask Dagster now."""
    states = dagster.sensor_states()
    row = create_rule(session, project, body, catalogs, states)
    return rule_response(project, row, dagster, states)


def describe(session: Session, dagster: DagsterClient, project: Project, rule_id: str) -> AlertRuleResponse:
    return rule_response(project, get_rule(session, project, rule_id), dagster, dagster.sensor_states())


def update(
    session: Session,
    dagster: DagsterClient,
    project: Project,
    rule_id: str,
    body: AlertRuleUpdate,
    catalogs: CatalogProvider,
) -> AlertRuleResponse:
    """Applies the patch. A change of `enabled` starts or stops the sensor in Dagster first (after Dagster
    serves the definitions that have it), outside any transaction: when Dagster cannot, nothing changes."""
    row = get_rule(session, project, rule_id)
    changes = _validated_changes(session, project, row, body, catalogs)
    states = dagster.sensor_states()
    name = sensor_name(project, row)
    if "enabled" in changes and changes["enabled"] != states.get(name, row.enabled):
        release(session)  # SQLite: no write lock held while Dagster answers
        dagster.set_sensor_running(name, changes["enabled"], generation=project.definitions_generation)
        states[name] = changes["enabled"]
    for field, value in changes.items():
        setattr(row, field, value)
    _flush(session, body.name)
    return rule_response(project, row, dagster, states)


def set_enabled(
    session: Session, dagster: DagsterClient, project: Project, rule_id: str, enabled: bool, catalogs: CatalogProvider
) -> AlertRuleResponse:
    """`enable` / `disable`: the patch `{"enabled": enabled}`."""
    return update(session, dagster, project, rule_id, AlertRuleUpdate(enabled=enabled), catalogs)


def delete(session: Session, project: Project, rule_id: str) -> None:
    """Deletes the rule (its sensor goes with the next reload) and resolves its open alerts: nothing is left
    firing with nobody to clear it."""
    row = get_rule(session, project, rule_id)
    lifecycle.resolve_rule_alerts(session, row.id, reason=RULE_DELETED)
    session.delete(row)
    session.flush()
