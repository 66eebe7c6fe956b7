"""What an alert rule finds at one evaluation: pure functions of (rule, Dagster instance, Iceberg catalog, now).

Each condition reads what happened since the rule's cursor and returns its findings (fire or clear, per
target) with the next cursor; the caller writes both in one transaction (rime_dagster/monitoring/sensors.py),
so an evaluation replayed after a daemon restart starts from the saved cursor and finds nothing twice.

Targets make "one open alert per rule and target": a run condition's target is the run's resource
(`pipeline:<id>`, `connector:<id>`, `dbt_project:<id>`; `project:<id>` for other runs of the project), a table
condition's `table:<name>`, a dbt test's `check:<asset key>:<check name>`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.tags import WILL_RETRY_TAG

from rime_dagster.monitoring.alerts import run_id_of
from rime_dagster.platform import run_tags

if TYPE_CHECKING:
    from dagster._core.event_api import RunStatusChangeEventType
    from dagster._core.events.log import EventLogEntry
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

RUN_FAILED = "run_failed"
RUN_DURATION_EXCEEDED = "run_duration_exceeded"
FRESHNESS = "freshness"
ROW_COUNT = "row_count"
DBT_TEST_FAILED = "dbt_test_failed"
CONDITION_TYPES = (RUN_FAILED, RUN_DURATION_EXCEEDED, FRESHNESS, ROW_COUNT, DBT_TEST_FAILED)

# A run's resource: (condition field, run tag, target kind), in the order a run's tags are read.
RESOURCES = (
    ("pipeline_id", run_tags.PIPELINE_ID, "pipeline"),
    ("connector_id", run_tags.CONNECTOR_ID, "connector"),
    ("dbt_project_id", run_tags.DBT_PROJECT_ID, "dbt_project"),
)
# Events read per evaluation; more are read by the next one (the cursor stops where this one did).
BATCH = 200
# How long a failed run may lack Dagster's dagster/will_retry tag (written just after the failure event, by
# whoever reported the failure, or by the daemon's retry loop) before it counts as not retrying.
WILL_RETRY_GRACE = timedelta(minutes=2)
# Snapshots that rewrite files without changing rows (rime_dagster/connectors/landing.py compact_table).
COMPACTION = ("rime.operation", "compact")


@dataclass(frozen=True)
class RuleView:
    """What an evaluation needs of an alert rule, read from the store before it (no session held meanwhile)."""

    id: str
    project_id: str
    namespace: str
    name: str
    condition: Mapping[str, Any]
    only_final_retry: bool
    created_at: datetime
    cursor: Mapping[str, Any]

    @property
    def condition_type(self) -> str:
        return str(self.condition.get("type"))


@dataclass(frozen=True)
class Finding:
    """Fire an alert for `target` (firing) or clear the open one (not firing), with what the alert says."""

    target: str
    firing: bool
    title: str = ""
    message: str = ""
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    findings: list[Finding]
    cursor: dict[str, Any]


CatalogSource = Callable[[], "Catalog"]


def evaluate(
    rule: RuleView,
    instance: dg.DagsterInstance,
    catalog: CatalogSource,
    now: datetime,
    repository: dg.RepositoryDefinition | None = None,
) -> Evaluation:
    """The rule's findings since its cursor, and its next cursor. `repository`: the code location's (the dbt
    tests' asset checks). ValueError for an unknown condition type."""
    condition = rule.condition_type
    if condition == RUN_FAILED:
        return run_failed(rule, instance, now)
    if condition == RUN_DURATION_EXCEEDED:
        return run_duration_exceeded(rule, instance, now)
    if condition == FRESHNESS:
        return freshness(rule, instance, catalog(), now)
    if condition == ROW_COUNT:
        return row_count(rule, catalog())
    if condition == DBT_TEST_FAILED:
        return dbt_test_failed(rule, instance, repository)
    raise ValueError(f"alert rule {rule.id}: unknown condition type {condition!r}")


# --- runs -----------------------------------------------------------------------------------------------------


def watches(rule: RuleView, tags: Mapping[str, str]) -> bool:
    """Whether a run with `tags` is one the rule watches: its project's, and its resource's if it names one."""
    if tags.get(run_tags.PROJECT_ID) != rule.project_id:
        return False
    return all(tags.get(tag) == rule.condition[key] for key, tag, _ in RESOURCES if rule.condition.get(key))


def run_target(rule: RuleView, tags: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The target of a run (its resource) and the context naming it."""
    for key, tag, kind in RESOURCES:
        if tags.get(tag):
            return f"{kind}:{tags[tag]}", {key: tags[tag]}
    return f"project:{rule.project_id}", {}


@dataclass(frozen=True)
class StatusChange:
    storage_id: int
    timestamp: float
    event_type: DagsterEventType
    run: dg.DagsterRun
    start_time: float | None
    end_time: float | None
    message: str


def status_changes(
    instance: dg.DagsterInstance,
    event_types: Sequence[RunStatusChangeEventType],
    *,
    after_storage_id: int | None,
    after_timestamp: float | None,
    limit: int = BATCH,
) -> tuple[list[StatusChange], int | None]:
    """Run status changes of `event_types` after the cursor, in the order they were stored, with their runs;
    and the storage id the next read starts after (None: nothing seen yet, keep reading by timestamp).

    One read per event type; when one of them is cut at `limit`, the batch stops at its last event so that
    nothing of another type beyond it is taken before what precedes it."""
    results = [
        instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(
                event_type,
                after_storage_id=after_storage_id,
                after_timestamp=after_timestamp if after_storage_id is None else None,
            ),
            limit=limit,
            ascending=True,
        )
        for event_type in event_types
    ]
    records = sorted((r for result in results for r in result.records), key=lambda r: r.storage_id)
    cut = [result.records[-1].storage_id for result in results if result.has_more and result.records]
    if cut:
        records = [r for r in records if r.storage_id <= min(cut)]
    if not records:
        return [], after_storage_id
    run_records = {
        r.dagster_run.run_id: r
        for r in instance.get_run_records(dg.RunsFilter(run_ids=list(dict.fromkeys(r.run_id for r in records))))
    }
    changes = [
        StatusChange(
            storage_id=r.storage_id,
            timestamp=r.timestamp,
            event_type=r.event_log_entry.dagster_event.event_type,  # type: ignore[union-attr]
            run=run_records[r.run_id].dagster_run,
            start_time=run_records[r.run_id].start_time,
            end_time=run_records[r.run_id].end_time,
            message=r.event_log_entry.message or "",
        )
        for r in records
        if r.run_id in run_records  # a deleted run
    ]
    return changes, records[-1].storage_id


def _read_from(rule: RuleView) -> tuple[int | None, float]:
    """Where run events are read from: after the cursor's storage id, or (first evaluations) after the rule's
    creation: a rule raises nothing for what happened before it existed."""
    after = rule.cursor.get("after")
    return (int(after) if after is not None else None), rule.created_at.timestamp()


def failure_error(instance: dg.DagsterInstance, run_id: str, fallback: str) -> str:
    """The first failed step's error, else the run failure's message."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE, limit=1).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data if event is not None else None
        if data is not None and data.error is not None:
            error = data.error
            while error.cause is not None:  # Dagster wraps the op's own exception: say that one
                error = error.cause
            return f"{event.step_key}: {error.message.strip()}"  # type: ignore[union-attr]
    return fallback


def run_failed(rule: RuleView, instance: dg.DagsterInstance, now: datetime) -> Evaluation:
    """A watched run failed (fire for its resource); a later run of that resource succeeded (clear).

    With `only_final_retry`, a failed run that Dagster will retry (dagster/will_retry=true) raises nothing: its
    retry decides. Dagster writes that tag just after storing the failure, so a failed run seen without it
    yet (when the instance retries runs at all) is kept in the cursor's `pending` and looked at again by the
    next evaluation, until it has the tag or WILL_RETRY_GRACE has passed."""
    after_storage_id, after_timestamp = _read_from(rule)
    changes, last = status_changes(
        instance,
        (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS),
        after_storage_id=after_storage_id,
        after_timestamp=after_timestamp,
    )
    pending: dict[str, dict[str, Any]] = dict(rule.cursor.get("pending") or {})
    findings: list[Finding] = []
    for change in changes:
        if not watches(rule, change.run.tags):
            continue
        target, _ = run_target(rule, change.run.tags)
        if change.event_type == DagsterEventType.RUN_SUCCESS:
            # A failure still waiting for its will_retry tag is superseded by this later success.
            pending = {run_id: p for run_id, p in pending.items() if p["target"] != target}
            findings.append(_run_cleared(rule, change.run, target, "a later run succeeded"))
        elif _waits_for_retry_tag(rule, instance, change.run, change.timestamp, now):
            pending[change.run.run_id] = {"target": target, "failed_at": change.timestamp}
        elif not (rule.only_final_retry and _will_retry(change.run)):
            findings.append(_run_failed(rule, instance, change.run, target, change.message))
    findings += _pending_failures(rule, instance, pending, now)
    return Evaluation(findings, {"after": last, "pending": pending} if pending else {"after": last})


def _will_retry(run: dg.DagsterRun) -> bool:
    return run.tags.get(WILL_RETRY_TAG) == "true"


def _waits_for_retry_tag(
    rule: RuleView, instance: dg.DagsterInstance, run: dg.DagsterRun, failed_at: float, now: datetime
) -> bool:
    return (
        rule.only_final_retry
        and instance.run_retries_enabled
        and WILL_RETRY_TAG not in run.tags
        and now.timestamp() - failed_at < WILL_RETRY_GRACE.total_seconds()
    )


def _pending_failures(
    rule: RuleView, instance: dg.DagsterInstance, pending: dict[str, dict[str, Any]], now: datetime
) -> list[Finding]:
    """Failed runs that were waiting for their dagster/will_retry tag: fires for those that will not retry,
    forgets those that will, keeps (in `pending`) those still without the tag within the grace period."""
    if not pending:
        return []
    findings = []
    runs = {run.run_id: run for run in instance.get_runs(dg.RunsFilter(run_ids=list(pending)))}
    for run_id, waiting in list(pending.items()):
        run = runs.get(run_id)
        if run is not None and _waits_for_retry_tag(rule, instance, run, waiting["failed_at"], now):
            continue
        del pending[run_id]
        if run is not None and not _will_retry(run):
            findings.append(_run_failed(rule, instance, run, waiting["target"], "run failed"))
    return findings


def _run_context(run: dg.DagsterRun, rule: RuleView) -> dict[str, Any]:
    _, resource = run_target(rule, run.tags)
    return {"run_id": run_id_of(run.run_id), "dagster_run_id": run.run_id, "job_name": run.job_name, **resource}


def _run_failed(rule: RuleView, instance: dg.DagsterInstance, run: dg.DagsterRun, target: str, message: str) -> Finding:
    error = failure_error(instance, run.run_id, message)
    return Finding(
        target=target,
        firing=True,
        title=f"{rule.name}: run of {run.job_name} failed",
        message=f"Run {run.run_id} of {run.job_name} failed: {error}",
        context={**_run_context(run, rule), "error": error},
    )


def _run_cleared(rule: RuleView, run: dg.DagsterRun, target: str, reason: str) -> Finding:
    return Finding(target=target, firing=False, message=reason, context=_run_context(run, rule))


def run_duration_exceeded(rule: RuleView, instance: dg.DagsterInstance, now: datetime) -> Evaluation:
    """A watched run has been running (or ran) longer than `max_seconds`: fire once per run, for its resource;
    a later run of that resource that finishes within the limit clears it.

    The target is the resource, not the run: a finished run never becomes fast again, so a per-run alert
    could only be resolved by hand, and ten slow runs would be ten alerts; per resource it is one alert that
    counts its slow runs (occurrences) and resolves itself once the resource runs within the limit again.
    The cursor's `flagged` holds runs still running that already fired."""
    max_seconds = float(rule.condition["max_seconds"])
    after_storage_id, after_timestamp = _read_from(rule)
    changes, last = status_changes(
        instance,
        (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED),
        after_storage_id=after_storage_id,
        after_timestamp=after_timestamp,
    )
    flagged = set(rule.cursor.get("flagged") or ())
    findings: list[Finding] = []
    for change in changes:
        if not watches(rule, change.run.tags) or change.start_time is None:
            continue
        target, _ = run_target(rule, change.run.tags)
        took = (change.end_time or change.timestamp) - change.start_time
        if change.run.run_id in flagged:
            flagged.discard(change.run.run_id)
        elif took > max_seconds:
            findings.append(_too_long(rule, change.run, target, took, max_seconds, finished=True))
        elif change.event_type != DagsterEventType.RUN_CANCELED:
            findings.append(_run_cleared(rule, change.run, target, f"a later run took {took:.0f} s"))
    running = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags={run_tags.PROJECT_ID: rule.project_id})
    )
    for record in running:
        run = record.dagster_run
        if record.start_time is None or run.run_id in flagged or not watches(rule, run.tags):
            continue
        took = now.timestamp() - record.start_time
        if took > max_seconds:
            target, _ = run_target(rule, run.tags)
            findings.append(_too_long(rule, run, target, took, max_seconds, finished=False))
            flagged.add(run.run_id)
    cursor: dict[str, Any] = {"after": last}
    if flagged:
        cursor["flagged"] = sorted(flagged)
    return Evaluation(findings, cursor)


def _too_long(
    rule: RuleView, run: dg.DagsterRun, target: str, took: float, max_seconds: float, *, finished: bool
) -> Finding:
    verb = "ran" if finished else "has been running"
    return Finding(
        target=target,
        firing=True,
        title=f"{rule.name}: run of {run.job_name} {verb} over {max_seconds:g} s",
        message=f"Run {run.run_id} of {run.job_name} {verb} for {took:.0f} s (limit {max_seconds:g} s).",
        context={**_run_context(run, rule), "duration_seconds": round(took, 3), "max_seconds": max_seconds},
    )


# --- tables ---------------------------------------------------------------------------------------------------


def _load_table(catalog: Catalog, namespace: str, name: str) -> Table | None:
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table((namespace, name))
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def _lineage(table: Table) -> Iterable[Snapshot]:
    """The current snapshot and its ancestors, newest first."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield snapshot
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None


def _is_compaction(snapshot: Snapshot) -> bool:
    return snapshot.summary is not None and snapshot.summary.get(COMPACTION[0]) == COMPACTION[1]


def last_data_change(table: Table) -> datetime | None:
    """When the table's rows last changed: its newest snapshot that is not a compaction (a compaction
    rewrites files, not data)."""
    for snapshot in _lineage(table):
        if not _is_compaction(snapshot):
            return datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC)
    return None


def last_sync(instance: dg.DagsterInstance, namespace: str, table: Table, name: str) -> datetime | None:
    """The last materialization of a connector table's asset: an incremental sync that found no new rows
    commits no snapshot, but the table was synced (it is as fresh as its source). None for other tables."""
    from rime_dagster.connectors.names import landing_name

    if "rime.connector_id" not in table.properties or "__" not in name:
        return None
    prefix = name.split("__", 1)[0]  # <table_prefix>__<landing name>; a prefix (a slug) never contains "__"
    key = dg.AssetKey([namespace, prefix, landing_name(table.properties.get("rime.source_table", ""))])
    records = instance.fetch_materializations(key, limit=1).records
    return datetime.fromtimestamp(records[0].timestamp, tz=UTC) if records else None


def table_updated_at(instance: dg.DagsterInstance, catalog: Catalog, namespace: str, name: str) -> datetime | None:
    """When the table was last updated: a connector's sync or a dbt model's publish (None: it never landed).

    The Iceberg snapshot is the one record both writers leave (a dbt model's publish always commits one, and
    the API's tables endpoint reports its time as updated_at); a connector table's asset materialization adds
    the syncs that found nothing new."""
    table = _load_table(catalog, namespace, name)
    if table is None:
        return None
    times = [t for t in (last_data_change(table), last_sync(instance, namespace, table, name)) if t is not None]
    return max(times) if times else None


def freshness(rule: RuleView, instance: dg.DagsterInstance, catalog: Catalog, now: datetime) -> Evaluation:
    """The table was last updated more than `max_age_minutes` ago (fire), or is fresh again (clear). A table
    that never landed counts as stale from the rule's creation. Fires and clears on changes of state only:
    the cursor's `stale` is the state the last evaluation found."""
    name = str(rule.condition["table"])
    max_age = timedelta(minutes=float(rule.condition["max_age_minutes"]))
    updated_at = table_updated_at(instance, catalog, rule.namespace, name)
    age = now - (updated_at or rule.created_at)
    stale = age > max_age
    cursor = {"stale": stale, "updated_at": updated_at.isoformat() if updated_at else None}
    if stale == bool(rule.cursor.get("stale")):
        return Evaluation([], cursor)
    context = {"table": name, "updated_at": cursor["updated_at"], "max_age_minutes": rule.condition["max_age_minutes"]}
    if not stale:
        return Evaluation([Finding(f"table:{name}", False, message="the table was updated", context=context)], cursor)
    since = f"last updated {updated_at:%Y-%m-%d %H:%M:%S} UTC" if updated_at else "never landed"
    finding = Finding(
        target=f"table:{name}",
        firing=True,
        title=f"{rule.name}: {name} is stale",
        message=f"Table {name} was not updated for {age.total_seconds() / 60:.0f} min ({since}; "
        f"limit {rule.condition['max_age_minutes']} min).",
        context={**context, "age_minutes": round(age.total_seconds() / 60, 1)},
    )
    return Evaluation([finding], cursor)


def row_count(rule: RuleView, catalog: Catalog) -> Evaluation:
    """After each new snapshot of the table (a sync, a publish; not a compaction), its row count (the snapshot
    summary's total-records) outside [min, max] fires, inside clears. The cursor holds the last snapshot read."""
    name = str(rule.condition["table"])
    table = _load_table(catalog, rule.namespace, name)
    snapshot = next((s for s in _lineage(table) if not _is_compaction(s)), None) if table is not None else None
    if snapshot is None or snapshot.snapshot_id == rule.cursor.get("snapshot_id"):
        return Evaluation([], dict(rule.cursor))
    cursor = {"snapshot_id": snapshot.snapshot_id}
    total = snapshot.summary.get("total-records") if snapshot.summary is not None else None
    if total is None:
        return Evaluation([], cursor)
    rows = int(total)
    low, high = rule.condition.get("min"), rule.condition.get("max")
    context = {"table": name, "row_count": rows, "snapshot_id": str(snapshot.snapshot_id), "min": low, "max": high}
    if (low is None or rows >= low) and (high is None or rows <= high):
        return Evaluation([Finding(f"table:{name}", False, message="row count within bounds", context=context)], cursor)
    bounds = " and ".join(
        b for b in (f"min {low}" if low is not None else "", f"max {high}" if high is not None else "") if b
    )
    finding = Finding(
        target=f"table:{name}",
        firing=True,
        title=f"{rule.name}: {name} has {rows} rows",
        message=f"Table {name} has {rows} rows after snapshot {snapshot.snapshot_id}, outside {bounds}.",
        context=context,
    )
    return Evaluation([finding], cursor)


# --- dbt tests ------------------------------------------------------------------------------------------------


def dbt_check_keys(repository: dg.RepositoryDefinition | None, rule: RuleView) -> list[dg.AssetCheckKey]:
    """The asset checks that are the rule's dbt tests: those of the dbt projects' multi-assets (their op carries
    rime/dbt_project_id; rime_dagster/dbt/assets.py) of the rule's project, or of its `dbt_project_id`. A test of
    a dbt source is a check of the connector table's asset, defined by the dbt project's multi-asset too."""
    if repository is None:
        return []
    wanted = rule.condition.get("dbt_project_id")
    keys: list[dg.AssetCheckKey] = []
    for assets in repository.asset_graph.assets_defs:
        if not assets.is_executable or not assets.check_keys:
            continue
        dbt_project_id = assets.node_def.tags.get(run_tags.DBT_PROJECT_ID)
        if dbt_project_id is None or (wanted and dbt_project_id != wanted):
            continue
        keys += [k for k in assets.check_keys if k.asset_key.path[:1] == [rule.namespace]]
    return sorted(keys, key=lambda k: k.to_user_string())


def dbt_test_failed(
    rule: RuleView, instance: dg.DagsterInstance, repository: dg.RepositoryDefinition | None
) -> Evaluation:
    """dbt tests are asset checks of the dbt assets (rime_dagster/dbt/assets.py; pipeline dbt steps report the
    same checks' evaluations): a failed evaluation fires for that check, a later passing one clears it.

    Read from Dagster's index of check executions (the latest completed one per check, one query for all the
    rule's checks): the event log of the embedded instance is sharded per run, so there is no global event
    cursor to read evaluations after. The cursor holds, per check, the execution last looked at; executions
    from before the rule's creation raise nothing. An evaluation replaced by the next within one interval
    (5 s) is not looked at: the check's latest result is what the alert follows."""
    keys = dbt_check_keys(repository, rule)
    if not keys:
        return Evaluation([], dict(rule.cursor))
    summaries = instance.event_log_storage.get_asset_check_summary_records(keys)
    seen: dict[str, int] = dict(rule.cursor.get("seen") or {})
    findings = []
    for key in keys:
        summary = summaries.get(key)
        execution = summary.last_completed_check_execution_record if summary is not None else None
        name = key.to_user_string()
        if execution is None or seen.get(name) == execution.id:
            continue
        seen[name] = execution.id
        evaluation = _check_evaluation(execution.event)
        # The evaluation event's own time: the record's create_timestamp is SQLite's CURRENT_TIMESTAMP (whole
        # seconds), which can fall before a rule created a moment earlier.
        if evaluation is None or execution.event is None or execution.event.timestamp < rule.created_at.timestamp():
            continue
        findings.append(_check_finding(rule, evaluation, execution.run_id))
    return Evaluation(findings, {"seen": seen})


def _check_evaluation(entry: EventLogEntry | None) -> dg.AssetCheckEvaluation | None:
    event = entry.dagster_event if entry is not None else None
    data = event.event_specific_data if event is not None else None
    return data if isinstance(data, dg.AssetCheckEvaluation) else None


def _check_finding(rule: RuleView, evaluation: dg.AssetCheckEvaluation, dagster_run_id: str) -> Finding:
    asset = evaluation.asset_key.to_user_string()
    target = f"check:{asset}:{evaluation.check_name}"
    context = {
        "run_id": run_id_of(dagster_run_id),
        "dagster_run_id": dagster_run_id,
        "asset": asset,
        "check": evaluation.check_name,
        "severity": evaluation.severity.value,
    }
    if rule.condition.get("dbt_project_id"):
        context["dbt_project_id"] = rule.condition["dbt_project_id"]
    if evaluation.passed:
        return Finding(target, False, message="a later evaluation passed", context=context)
    return Finding(
        target=target,
        firing=True,
        title=f"{rule.name}: dbt test {evaluation.check_name} failed on {asset}",
        message=f"dbt test {evaluation.check_name} on {asset} failed in run {dagster_run_id}.",
        context=context,
    )
