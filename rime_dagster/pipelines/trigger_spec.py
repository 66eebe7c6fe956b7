"""Pipeline triggers: what starts a pipeline besides its schedule (no Dagster, no database).

    on_upload        {connector_id}   a file lands (new or changed) in a `files` connector's upload area
    on_success       {pipeline_id}    a run of another pipeline of the project succeeds
    on_table_update  {table}          a table of the project gets a new Iceberg snapshot

Each is a Dagster sensor of the pipeline's job (rime_dagster/pipelines/triggers.py). A stored trigger also
holds:
    since   when it was added (RFC 3339, microseconds): events before it start nothing;
    sensor  its sensor's name suffix (`on_upload`, `on_upload_2`), chosen once and kept while the trigger is,
            so that a trigger keeps its sensor (its cursor, and Dagster's memory of the run keys it used) when
            the triggers before it are removed.
Whether the connector, pipeline or table exists in the project is the API's business.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TRIGGERS = 10
TriggerType = Literal["on_upload", "on_success", "on_table_update"]
# The field of each trigger type that names what it watches.
TARGET_FIELD: dict[str, str] = {"on_upload": "connector_id", "on_success": "pipeline_id", "on_table_update": "table"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Linux's CLOCK_REALTIME_COARSE (uapi/linux/time.h); Python's time module does not name it.
_COARSE_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform.startswith("linux") else None)


class _Trigger(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class OnUploadTrigger(_Trigger):
    """Each new or changed file in the connector's upload area starts one run (which syncs the connector)."""

    type: Literal["on_upload"]
    connector_id: str = Field(min_length=1, max_length=40, description="A `files` connector with an upload area.")


class OnSuccessTrigger(_Trigger):
    """Each successful run of the other pipeline starts one run."""

    type: Literal["on_success"]
    pipeline_id: str = Field(min_length=1, max_length=40, description="Another pipeline of the project.")


class OnTableUpdateTrigger(_Trigger):
    """A new snapshot of the table starts one run (snapshots committed between two looks start one run)."""

    type: Literal["on_table_update"]
    table: str = Field(min_length=1, max_length=255, description="A table of the project, as the tables API names it.")


TriggerBody = Annotated[OnUploadTrigger | OnSuccessTrigger | OnTableUpdateTrigger, Field(discriminator="type")]


class TriggerError(ValueError):
    """A trigger list refused as such (the same trigger twice); `index` is the offending trigger's."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


def target_of(trigger: Mapping[str, Any]) -> str:
    """What the trigger watches: the connector id, the pipeline id or the table."""
    return str(trigger.get(TARGET_FIELD.get(str(trigger.get("type")), ""), ""))


def trigger_clock_ns() -> int:
    """Now, in nanoseconds, by the clock the kernel stamps file times with.

    Linux stamps a file's mtime from the coarse clock (updated once per tick, 1-10 ms), which lags the precise
    one: a file written a millisecond after a precise `time.time_ns()` can carry an earlier mtime (kernels since
    6.13 hand out fine-grained times to files whose times were looked at, never earlier than the coarse clock).
    Reading the coarse clock for `since` keeps "written after the trigger was added" true when compared with
    mtimes; a file written in the same tick as the trigger counts as after (the two cannot be told apart).
    """
    if _COARSE_CLOCK is not None:
        try:
            return time.clock_gettime_ns(_COARSE_CLOCK)
        except OSError:
            pass
    return time.time_ns()


def format_since(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC with microseconds (cut down, never rounded up)."""
    return (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def since_ns(trigger: Mapping[str, Any]) -> int:
    """The trigger's `since` in nanoseconds since the epoch (exact: integer arithmetic on the microseconds)."""
    when = datetime.fromisoformat(str(trigger["since"]).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def sensor_suffixes(triggers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each trigger's sensor suffix: the stored one, else the first free `<type>`, `<type>_2`, ..."""
    taken = {str(t["sensor"]) for t in triggers if t.get("sensor")}
    suffixes = []
    for trigger in triggers:
        suffix = trigger.get("sensor")
        if not suffix:
            suffix = _free_suffix(str(trigger["type"]), taken)
            taken.add(suffix)
        suffixes.append(str(suffix))
    return suffixes


def _free_suffix(kind: str, taken: set[str]) -> str:
    n = 1
    while (suffix := kind if n == 1 else f"{kind}_{n}") in taken:
        n += 1
    return suffix


def stored_triggers(
    bodies: Iterable[OnUploadTrigger | OnSuccessTrigger | OnTableUpdateTrigger],
    previous: Sequence[Mapping[str, Any]],
    *,
    now_ns: int | None = None,
) -> list[dict[str, Any]]:
    """The triggers to store for `bodies`: one already stored (same type and target) keeps its `since` and
    sensor, a new one starts now with the first free sensor suffix. TriggerError: the same trigger twice."""
    kept = {(str(t["type"]), target_of(t)): t for t in previous}
    now = format_since(trigger_clock_ns() if now_ns is None else now_ns)
    result: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, body in enumerate(bodies):
        trigger = body.model_dump()
        key = (trigger["type"], target_of(trigger))
        if key in seen:
            raise TriggerError(f"This trigger is listed twice ({key[0]} {key[1]}).", index=index)
        seen.add(key)
        old = kept.get(key)
        trigger["since"] = old["since"] if old else now
        if old and old.get("sensor"):
            trigger["sensor"] = old["sensor"]
        result.append(trigger)
    for trigger, suffix in zip(result, sensor_suffixes(result), strict=True):
        trigger["sensor"] = suffix
    return result
