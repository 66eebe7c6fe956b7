"""A pipeline's triggers as Dagster sensors of its job: one per trigger (rime_dagster/pipelines/trigger_spec.py).

Exactly once. Every run request carries a run key naming its event, and Dagster's sensor daemon launches no
second run for a key this sensor already used: when the daemon restarts before storing a cursor and evaluates
again from the old one, the same events come back with the same keys and start nothing new. The cursors only
keep the re-evaluation small.

    on_upload        one run per new or changed file of the upload area (name, size and mtime_ns; the upload
                     service's `.upload-*` temp files and other hidden names are not files of the area), key
                     `upload:<connector id>:<name>:<mtime_ns>:<size>`. One run per file rather than one per
                     batch: a batch's key would depend on which files one evaluation happened to see, so an
                     evaluation repeated after a restart, seeing one more file, would make a new key and sync
                     the earlier files a second time. Each run syncs the connector, which reads every file of
                     the area, that one included; runs of one connector's syncs queue on its pool.
    on_success       one run per successful run of the other pipeline's job, key = that run's Dagster id; read
                     from the event log's run-status index after the last storage id seen.
    on_table_update  one run per new current snapshot of the table, key `<table>:<snapshot id>`; snapshots
                     committed between two evaluations start one run, for the latest.

The first evaluation has no cursor: events before the trigger's `since` start nothing, later ones do, so an
event between adding the trigger and the sensor's first tick is not lost. A cursor names its trigger (target
and since): a sensor whose name passes to another trigger starts that trigger afresh.

Runs carry the pipeline's tags, `rime/trigger=sensor` and `rime/trigger_event` (run_tags), so the API's run
history says who started them and why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.event_api import RunStatusChangeRecordsFilter

from rime_dagster.pipelines.names import pipeline_tags
from rime_dagster.pipelines.trigger_spec import sensor_suffixes, since_ns, target_of
from rime_dagster.platform import run_tags
from rime_dagster.platform.names import dagster_name
from rime_dagster.resources import settings
from rime_dagster.specs import ConnectorSpec, PipelineSpec

log = logging.getLogger(__name__)

# Run-status events read per evaluation of an on_success sensor; more wait for the next one.
SUCCESS_PAGE = 500
# Files started per evaluation of an on_upload sensor; more wait for the next one (the cursor says which).
UPLOAD_PAGE = 100

Evaluate = Callable[[dg.SensorEvaluationContext], dg.SensorResult]


def trigger_sensors(
    pipeline: PipelineSpec,
    job: dg.JobDefinition,
    *,
    connectors: Mapping[str, ConnectorSpec],
    pipelines: Mapping[str, PipelineSpec],
) -> list[dg.SensorDefinition]:
    """One sensor per trigger of the pipeline, `<namespace>__<slug>__<type>[_<n>]`, running unless the pipeline
    is paused. A trigger whose connector or pipeline is gone (deleted since) gets no sensor; the others do."""
    sensors = []
    for trigger, suffix in zip(pipeline.triggers, sensor_suffixes(pipeline.triggers), strict=True):
        evaluate = _evaluator(pipeline, trigger, connectors=connectors, pipelines=pipelines)
        if evaluate is None:
            log.warning(
                "pipeline %s: trigger %s %s names nothing that exists",
                pipeline.id,
                trigger.get("type"),
                target_of(trigger),
            )
            continue
        sensors.append(
            dg.SensorDefinition(
                name=dagster_name(pipeline.namespace, pipeline.slug, suffix),
                evaluation_fn=evaluate,
                job=job,
                minimum_interval_seconds=settings().alert_sensor_interval_seconds,
                description=f"Starts pipeline '{pipeline.name}' {_describe(trigger, pipelines)}.",
                default_status=dg.DefaultSensorStatus.STOPPED if pipeline.paused else dg.DefaultSensorStatus.RUNNING,
                required_resource_keys={"iceberg"} if trigger["type"] == "on_table_update" else None,
            )
        )
    return sensors


def _describe(trigger: Mapping[str, Any], pipelines: Mapping[str, PipelineSpec]) -> str:
    if trigger["type"] == "on_upload":
        return f"for each file uploaded to connector {trigger['connector_id']}"
    if trigger["type"] == "on_success":
        upstream = pipelines.get(trigger["pipeline_id"])
        return f"after each successful run of pipeline '{upstream.name if upstream else trigger['pipeline_id']}'"
    return f"when table {trigger['table']} gets a new snapshot"


def _evaluator(
    pipeline: PipelineSpec,
    trigger: Mapping[str, Any],
    *,
    connectors: Mapping[str, ConnectorSpec],
    pipelines: Mapping[str, PipelineSpec],
) -> Evaluate | None:
    tags = {**pipeline_tags(pipeline.project_id, pipeline.id), run_tags.TRIGGER: run_tags.TRIGGER_SENSOR}
    identity = {"target": target_of(trigger), "since": trigger["since"]}
    if trigger["type"] == "on_upload":
        connector = connectors.get(trigger["connector_id"])
        return None if connector is None else upload_evaluator(connector, since_ns(trigger), identity, tags)
    if trigger["type"] == "on_success":
        upstream = pipelines.get(trigger["pipeline_id"])
        if upstream is None:
            return None
        return success_evaluator(upstream.id, upstream.job_name, since_ns(trigger), identity, tags)
    if trigger["type"] == "on_table_update":
        return table_evaluator(pipeline.namespace, trigger["table"], since_ns(trigger), identity, tags)
    return None


def _request(run_key: str, tags: Mapping[str, str], event: Mapping[str, Any]) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, tags={**tags, run_tags.TRIGGER_EVENT: run_tags.encode_trigger_event(event)})


def _state(cursor: str | None, identity: Mapping[str, str]) -> dict[str, Any] | None:
    """The cursor's state if it is this trigger's (None: the first evaluation, or another trigger's cursor)."""
    try:
        stored = json.loads(cursor) if cursor else None
    except ValueError:
        return None
    if not isinstance(stored, dict) or stored.get("trigger") != dict(identity):
        return None
    return stored


def _cursor(identity: Mapping[str, str], **state: Any) -> str:
    return json.dumps({"trigger": dict(identity), **state}, separators=(",", ":"), sort_keys=True)


# on_upload ---------------------------------------------------------------------------------------------------


def upload_area_files(directory: Path) -> dict[str, tuple[int, int]]:
    """The files of an upload area: {name: (mtime_ns, size)}. Hidden names (`.upload-*` temp files the upload
    service renames into place once written, `_SUCCESS`-style markers) are not files a connector reads."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    files = {}
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                files[entry.name] = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:  # renamed or deleted while listing
            continue
    return files


def upload_run_key(connector_id: str, name: str, mtime_ns: int, size: int) -> str:
    return f"upload:{connector_id}:{name}:{mtime_ns}:{size}"


_File = tuple[str, int, int]  # name, mtime_ns, size


def upload_tables(connector: ConnectorSpec) -> dict[str, str] | None:
    """{file name: the table the connector lands it in} for the upload area, by the `files` connector's own rules
    (rime_dagster/connectors/sources/files/folder.py); None when they cannot say (two files for one table: the run
    will report it)."""
    # pyarrow comes with the connector's package: only an evaluation that found new files pays for it.
    from rime_dagster.connectors.sources.base import SourceError
    from rime_dagster.connectors.sources.files.config import FilesConfig
    from rime_dagster.connectors.sources.files.folder import find_tables

    try:
        config = FilesConfig.model_validate(connector.config)
        tables = find_tables(connector.upload_dir, config, lambda path, **_: Path(path))
    except (SourceError, ValueError):
        return None
    return {file.rel: table for table, files in tables.items() for file in files}


def _synced_now(connector: ConnectorSpec, new: list[_File]) -> tuple[list[_File], list[_File]]:
    """(files a run would sync now, files that wait): a file waits while its table is not among the connector's
    tables in the specs this location was built from. An upload of a new table's file stores the table the
    upload's discovery found, which reloads the location; a run started before that reload could load specs
    without the table and not sync the file. A file no table of the connector takes (not selected, an unknown
    format) waits for good, and starts nothing."""
    tables = upload_tables(connector) if new else {}
    if tables is None:
        return new, []
    synced = set(connector.tables)
    ready = [f for f in new if tables.get(f[0]) in synced]
    return ready, [f for f in new if tables.get(f[0]) not in synced]


def upload_evaluator(
    connector: ConnectorSpec, since: int, identity: Mapping[str, str], tags: Mapping[str, str]
) -> Evaluate:
    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = _state(context.cursor, identity)
        seen: dict[str, list[int]] = state["files"] if state else {}
        current = upload_area_files(connector.upload_dir)
        new = [
            (name, mtime_ns, size)
            for name, (mtime_ns, size) in sorted(current.items(), key=lambda item: (item[1][0], item[0]))
            if mtime_ns >= since and seen.get(name) != [mtime_ns, size]
        ]
        ready, waiting = _synced_now(connector, new)
        started, later = ready[:UPLOAD_PAGE], {name for name, _, _ in [*ready[UPLOAD_PAGE:], *waiting]}
        requests = [
            _request(
                upload_run_key(connector.id, name, mtime_ns, size),
                tags,
                {"type": "on_upload", "connector_id": connector.id, "file": name},
            )
            for name, mtime_ns, size in started
        ]
        # Files left for a later evaluation keep their old entry (or none), so they still count as new then.
        files = {name: list(stat) for name, stat in current.items() if name not in later}
        files.update({name: seen[name] for name in later if name in seen})
        skip = "No new or changed file in the upload area."
        if waiting:
            skip = f"{len(waiting)} new file(s) wait until the connector syncs their table: {waiting[0][0]}, ..."
        return dg.SensorResult(
            run_requests=requests, cursor=_cursor(identity, files=files), skip_reason=None if requests else skip
        )

    return evaluate


# on_success --------------------------------------------------------------------------------------------------


def success_evaluator(
    upstream_id: str, job_name: str, since: int, identity: Mapping[str, str], tags: Mapping[str, str]
) -> Evaluate:
    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = _state(context.cursor, identity)
        after = state["after"] if state else None
        if after is None:
            records_filter = RunStatusChangeRecordsFilter(dg.DagsterEventType.RUN_SUCCESS, after_timestamp=since / 1e9)
        else:
            records_filter = RunStatusChangeRecordsFilter(dg.DagsterEventType.RUN_SUCCESS, after_storage_id=after)
        result = context.instance.fetch_run_status_changes(records_filter, limit=SUCCESS_PAGE, ascending=True)
        requests = []
        for record in result.records:
            after = max(after or 0, record.storage_id)
            entry = record.event_log_entry
            if entry.job_name == job_name:
                event = {"type": "on_success", "pipeline_id": upstream_id, "run_id": entry.run_id}
                requests.append(_request(entry.run_id, tags, event))
        return dg.SensorResult(
            run_requests=requests,
            cursor=_cursor(identity, after=after),
            skip_reason=None if requests else f"No new successful run of {job_name}.",
        )

    return evaluate


# on_table_update ---------------------------------------------------------------------------------------------


def table_evaluator(
    namespace: str, table: str, since: int, identity: Mapping[str, str], tags: Mapping[str, str]
) -> Evaluate:
    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        state = _state(context.cursor, identity)
        try:
            snapshot = context.resources.iceberg.catalog().load_table((namespace, table)).current_snapshot()
        except (NoSuchTableError, NoSuchNamespaceError):
            snapshot = None
        if snapshot is None:
            return dg.SensorResult(cursor=context.cursor, skip_reason=f"Table {table} has no snapshot yet.")
        cursor = _cursor(identity, snapshot_id=snapshot.snapshot_id)
        if state is not None:
            new = state.get("snapshot_id") != snapshot.snapshot_id
        else:  # the first look: a snapshot older than the trigger is where it starts from
            new = snapshot.timestamp_ms >= since // 1_000_000
        if not new:
            return dg.SensorResult(cursor=cursor, skip_reason=f"No new snapshot of {table}.")
        event = {"type": "on_table_update", "table": table, "snapshot_id": str(snapshot.snapshot_id)}
        return dg.SensorResult(run_requests=[_request(f"{table}:{snapshot.snapshot_id}", tags, event)], cursor=cursor)

    return evaluate
