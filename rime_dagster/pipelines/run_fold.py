"""A pipeline run's step states, folded from Dagster's event log: what the API reports of a run, and when.

The job names its nodes (rime_dagster/pipelines/names.py); this module reads them back. A Rime step is a node
`step_<id>` of the pipeline's job; a `pipeline` step is a sub-graph, whose Dagster steps `step_<id>.<...>` add up
to it; the join node `done` is no step of the user's. No Dagster or FastAPI import: records are read by their
attributes, so the API (run detail, WebSocket, log stream) folds what it reads over GraphQL or run storage.

Statuses: `pending` until Dagster starts the step, `running` (also while a retry waits),
`completed`, `failed`, `skipped`. Once the run is over, a step that never started is
`skipped` (its upstream failed, or the run was canceled first), and one still `running`
is `failed` with the run's outcome as its error. A re-execution's step that it did not plan
is `skipped` and `reused` from the start: its result is the parent run's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rime_dagster.pipelines.names import DONE_NODE, step_node_name
from rime_dagster.pipelines.spec import StepBody

if TYPE_CHECKING:  # only the types: the module imports no Dagster
    from dagster import DagsterEvent, EventLogEntry, EventLogRecord

TERMINAL_RUN = {"succeeded", "failed", "canceled"}
_RUN_EVENTS = {
    "PIPELINE_STARTING": "running",
    "PIPELINE_START": "running",
    "PIPELINE_SUCCESS": "succeeded",
    "PIPELINE_FAILURE": "failed",
    "PIPELINE_CANCELING": "running",
    "PIPELINE_CANCELED": "canceled",
}
_STEP_EVENTS = {"STEP_START", "STEP_RESTARTED", "STEP_UP_FOR_RETRY", "STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"}
# The event types the fold reads: a reader may ask storage for these alone.
FOLDED_EVENTS = set(_RUN_EVENTS) | _STEP_EVENTS | {"STEP_OUTPUT"}


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def _time(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


@dataclass(frozen=True)
class StepState:
    step_id: str
    step_name: str
    type: str
    status: str = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows: int | None = None
    error: str | None = None
    attempts: int = 0
    # When this state was reached: the Dagster event's time (what a WebSocket message carries).
    changed_at: datetime | None = None
    # Not run by this re-execution: its result is the parent run's (`skipped` too).
    reused: bool = False

    @property
    def duration_seconds(self) -> float | None:
        return _duration(self.started_at, self.finished_at)


@dataclass
class _DagsterStep:
    """One Dagster step (an op invocation) as the event log tells it."""

    status: str = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows: int | None = None
    error: str | None = None
    attempts: int = 0
    changed_at: datetime | None = None

    def apply(self, kind: str, event: DagsterEvent, at: datetime | None) -> None:
        """A STEP_* event of this step."""
        self.changed_at = at
        if kind == "STEP_START":
            self.status, self.attempts = "running", self.attempts + 1
            self.started_at = self.started_at or at
        elif kind == "STEP_RESTARTED":
            self.status, self.attempts = "running", self.attempts + 1
        elif kind == "STEP_UP_FOR_RETRY":
            self.status = "running"
            self.error = failure_text(event)
        elif kind == "STEP_SUCCESS":
            self.status, self.finished_at, self.error = "completed", at, None
        elif kind == "STEP_FAILURE":
            self.status, self.finished_at, self.error = "failed", at, failure_text(event)
        elif kind == "STEP_SKIPPED":
            self.status, self.finished_at = "skipped", at


def failure_text(event: DagsterEvent) -> str:
    """What went wrong in a failed step's event: the user's own description, else the error's root message."""
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description.strip()
    error = getattr(data, "error", None)
    if error is not None:
        # Failures raised by a step's code arrive wrapped ("Error occurred while executing op ..."):
        # the cause is what the user needs.
        while error.cause is not None and "Error occurred while executing" in error.message:
            error = error.cause
        return error.message.strip()
    return event.message or "step failed"


def _metadata_rows(data: object) -> int | None:
    value = (getattr(data, "metadata", None) or {}).get("rows")
    value = getattr(value, "value", value)
    return int(value) if isinstance(value, int | float) else None


@dataclass
class RunFold:
    """Folds event-log records into run and step states; feed it records in storage order."""

    steps: Sequence[StepBody]
    status: str = "queued"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_error: str | None = None
    cursor: int = 0  # storage id of the last record folded
    reused: frozenset[str] = frozenset()  # step ids a re-execution takes from its parent run (reused_steps)
    _dagster_steps: dict[str, _DagsterStep] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._nodes = {step_node_name(s.id): s for s in self.steps}

    # Folding -----------------------------------------------------------------
    def apply(self, records: Iterable[EventLogRecord]) -> list[StepState]:
        """Folds records; returns every step status transition they made, in order.

        Records are folded one by one, so a step that started and finished between two reads
        still reports `running` before `completed`.
        """
        transitions: list[StepState] = []
        statuses = {s.step_id: s.status for s in self.states()}
        for record in records:
            self.cursor = max(self.cursor, record.storage_id)
            if not self._apply_entry(record.event_log_entry):
                continue
            for state in self.states():
                if statuses.get(state.step_id) != state.status:
                    statuses[state.step_id] = state.status
                    transitions.append(state)
        return transitions

    def _apply_entry(self, entry: EventLogEntry) -> bool:
        event = entry.dagster_event
        if event is None:
            return False
        kind = event.event_type_value
        at = _time(entry.timestamp)
        if kind in _RUN_EVENTS:
            self._apply_run_event(kind, event, at)
            return True
        key = event.step_key
        if not key:
            return False
        step = self._dagster_steps.setdefault(key, _DagsterStep())
        if kind == "STEP_OUTPUT":
            rows = _metadata_rows(event.event_specific_data)
            if rows is not None:
                step.rows = (step.rows or 0) + rows
            return False
        if kind not in _STEP_EVENTS:
            return False
        step.apply(kind, event, at)
        return True

    def _apply_run_event(self, kind: str, event: DagsterEvent, at: datetime | None) -> None:
        status = _RUN_EVENTS[kind]
        # The run started when its worker did (PIPELINE_START, the run record's start_time, which the run's detail
        # reports too); STARTING (the launch) stands in until then.
        if kind == "PIPELINE_START" or (kind == "PIPELINE_STARTING" and self.started_at is None):
            self.started_at = at
        if status in TERMINAL_RUN:
            self.finished_at = at
            if status == "failed" and event.message:
                self.run_error = event.message
        if self.status not in TERMINAL_RUN:
            self.status = status

    def set_run_status(self, status: str, started_at: datetime | None, finished_at: datetime | None) -> None:
        """Takes the run record's word (e.g. a run canceled before it ever started logs no step)."""
        if status in TERMINAL_RUN or self.status not in TERMINAL_RUN:
            self.status = status
        self.started_at = self.started_at or started_at
        self.finished_at = self.finished_at or finished_at

    # Reading -----------------------------------------------------------------
    def _node_of(self, key: str) -> str:
        return key.split(".", 1)[0].split("[", 1)[0]

    def step_id_of(self, step_key: str) -> str | None:
        """The Rime step a Dagster step key belongs to (None for the job's own join op)."""
        node = self._node_of(step_key)
        body = self._nodes.get(node)
        return body.id if body else (None if node == DONE_NODE else node.removeprefix("step_"))

    def states(self) -> list[StepState]:
        grouped: dict[str, list[tuple[str, _DagsterStep]]] = {}
        for key, step in self._dagster_steps.items():
            grouped.setdefault(self._node_of(key), []).append((key, step))
        out = []
        for node, body in self._nodes.items():
            out.append(self._state(body.id, body.name or body.id, body.type, node, grouped.pop(node, [])))
        for node, parts in grouped.items():  # steps the run had that the definition no longer has
            if node == DONE_NODE:
                continue
            step_id = node.removeprefix("step_")
            out.append(self._state(step_id, step_id, "unknown", node, parts))
        return out

    def _state(
        self, step_id: str, name: str, type_: str, node: str, parts: list[tuple[str, _DagsterStep]]
    ) -> StepState:
        state = StepState(step_id=step_id, step_name=name, type=type_)
        if not parts and step_id in self.reused:
            return replace(state, status="skipped", reused=True)
        if parts:
            steps = [s for _, s in parts]
            started = [s.started_at for s in steps if s.started_at]
            changed = [s.changed_at for s in steps if s.changed_at]
            rows = [s.rows for s in steps if s.rows is not None]
            failed = [s for s in steps if s.status == "failed"]
            if failed:
                status = "failed"
            elif type_ == "pipeline" or len(parts) > 1:
                done = any(k == f"{node}.{DONE_NODE}" and s.status == "completed" for k, s in parts)
                status = "completed" if done else ("running" if started else "pending")
            else:
                status = steps[0].status
            finished = [s.finished_at for s in steps if s.finished_at]
            state = replace(
                state,
                status=status,
                started_at=min(started) if started else None,
                finished_at=max(finished) if status in ("completed", "failed", "skipped") and finished else None,
                rows=sum(rows) if rows else None,
                error=failed[0].error if failed else (steps[0].error if status == "running" else None),
                attempts=max(s.attempts for s in steps),
                changed_at=max(changed) if changed else None,
            )
        if self.status in TERMINAL_RUN:
            if state.status == "pending":
                reason = "the run was canceled" if self.status == "canceled" else "an upstream step failed"
                state = replace(state, status="skipped", error=f"Not run: {reason}.", changed_at=self.finished_at)
            elif state.status == "running":
                error = "Canceled while running." if self.status == "canceled" else (self.run_error or "Run ended.")
                state = replace(state, status="failed", finished_at=self.finished_at, error=error)
                state = replace(state, changed_at=self.finished_at)
        return state

    @property
    def duration_seconds(self) -> float | None:
        return _duration(self.started_at, self.finished_at)


def run_steps(steps: Sequence[StepBody], planned: set[str] | None) -> list[StepBody]:
    """The pipeline's steps that a run planned (a re-execution from the UI may run only some)."""
    if not planned:
        return list(steps)
    nodes = {key.split(".", 1)[0] for key in planned}
    return [s for s in steps if step_node_name(s.id) in nodes]


def reused_steps(steps: Sequence[StepBody], planned: set[str] | None) -> frozenset[str]:
    """The steps a re-execution (Dagster's `FROM_FAILURE`, or the UI's re-execution of a selection) did not plan:
    their results are its parent run's."""
    if not planned:
        return frozenset()
    nodes = {key.split(".", 1)[0] for key in planned}
    return frozenset(s.id for s in steps if step_node_name(s.id) not in nodes)
