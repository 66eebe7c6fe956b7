"""The one module that talks to Dagster: GraphQL (reload, launch, status, terminate) and run storage.

GraphQL calls go through dagster-graphql's official client with a timeout; run
history is read straight from the Dagster instance's run storage. Dagster being
down is a 503 `service_unavailable`, never a hang or a 500.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit

import certifi
import httpx
from fastapi import Depends, Request

from api_shim import metrics
from api_shim.errors import ServiceUnavailable, Unprocessable
from api_shim.services import idempotency
from rime_dagster.platform import run_tags
from rime_dagster.platform.instance import ensure_dagster_home  # noqa: F401  (re-exported for the CLI)
from rime_dagster.platform.names import HOUSEKEEPING_JOB
from rime_dagster.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance, EventLogRecord, RunsFilter
    from dagster._core.storage.dagster_run import RunRecord
    from dagster_graphql import DagsterGraphQLClient

    from api_shim.definitions_sync import DefinitionsSync

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

RUN_PREFIX = "run_"
# Finished runs whose events (RunEvents: rows landed, failure messages) a process keeps; a few MB at most.
FINISHED_EVENTS_KEPT = 4096
# A run's status in Rime's words.
RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
# Dagster run status -> Rime run status
RUN_STATUS: dict[str, RunStatus] = {
    "QUEUED": "queued",
    "NOT_STARTED": "queued",
    "MANAGED": "queued",
    "STARTING": "running",
    "STARTED": "running",
    "CANCELING": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "CANCELED": "canceled",
}


def to_rime_run_id(dagster_run_id: str) -> str:
    return RUN_PREFIX + dagster_run_id.replace("-", "")


def to_dagster_run_id(rime_run_id: str) -> str | None:
    """The Dagster run id (a UUID) behind `run_<32 hex>`, or None if it cannot be one."""
    if not rime_run_id.startswith(RUN_PREFIX):
        return None
    hex_id = rime_run_id[len(RUN_PREFIX) :].lower()
    if len(hex_id) != 32 or any(c not in "0123456789abcdef" for c in hex_id):
        return None
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


def _is_transport_failure(exc: BaseException) -> bool:
    """Whether a DagsterGraphQLClientError means Dagster did not answer (refused, timed out, 5xx).

    gql wraps refused connections and timeouts in its own exceptions, which the Dagster
    client reports as a generic query failure; the cause chain tells them apart.
    """
    import requests
    from gql.transport.exceptions import TransportConnectionFailed, TransportServerError

    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, TransportServerError):
            return (cause.code or 500) >= 500
        if isinstance(cause, (TransportConnectionFailed, requests.exceptions.RequestException, OSError)):
            return True
        cause = cause.__cause__
    return False


@dataclass(frozen=True)
class LoadedDefinitions:
    """The definitions generation Dagster serves (None when it serves none), and why not."""

    generation: int | None
    problem: str | None


LOADED_DEFINITIONS_QUERY = """
query RimeLoadedDefinitions($location: String!, $job: String!) {
  workspaceLocationEntryOrError(name: $location) {
    __typename
    ... on WorkspaceLocationEntry {
      loadStatus
      locationOrLoadError { __typename ... on PythonError { message } }
    }
  }
  pipelineOrError(params: {repositoryLocationName: $location, repositoryName: "__repository__", pipelineName: $job}) {
    __typename
    ... on Pipeline { metadataEntries { label ... on IntMetadataEntry { intRepr } } }
  }
}
"""

RELOAD_MUTATION = """
mutation RimeReload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) {
    __typename
    ... on WorkspaceLocationEntry { loadStatus locationOrLoadError { __typename ... on PythonError { message } } }
    ... on ReloadNotSupported { message }
    ... on RepositoryLocationNotFound { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

REEXECUTE_MUTATION = """
mutation RimeReexecute($params: ReexecutionParams!) {
  launchPipelineReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PipelineNotFoundError { message pipelineName }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on ConflictingExecutionParamsError { message }
    ... on InvalidSubsetError { message }
    ... on RunConflict { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

SENSOR_FIELDS = """
    __typename
    ... on SensorNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
"""
SENSOR_QUERY = (
    "query RimeSensor($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {"
    + SENSOR_FIELDS
    + "... on Sensor { id } } }"
)
START_SENSOR_MUTATION = (
    "mutation RimeStartSensor($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {"
    + SENSOR_FIELDS
    + "... on Sensor { id } } }"
)
STOP_SENSOR_MUTATION = """
mutation RimeStopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""


@dataclass
class RunEvents:
    materialized: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LaunchedRun:
    dagster_run_id: str

    @property
    def run_id(self) -> str:
        return to_rime_run_id(self.dagster_run_id)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The CAs httpx trusts by default (certifi), loaded once per process: loading them is ~25 ms of CPU, which
    every new client paid (an app, and a client made again after close()), as its only start-up cost."""
    return ssl.create_default_context(cafile=certifi.where())


class DagsterClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.location = settings.dagster_location
        self._instance: DagsterInstance | None = None
        self._instance_lock = threading.Lock()
        # Set by the app: launches wait on it for the generation they need.
        self.definitions: DefinitionsSync | None = None
        self._http_client: httpx.Client | None = None
        # What a finished run materialized and why it failed never changes: run histories read each run's once.
        self._finished_events: OrderedDict[str, RunEvents] = OrderedDict()
        self._finished_events_lock = threading.Lock()

    @property
    def _http(self) -> httpx.Client:
        """One pooled HTTP client for our own GraphQL requests (thread-safe; a client per call costs a TLS
        set-up), made again after close()."""
        client = self._http_client
        if client is None or client.is_closed:
            client = self._http_client = httpx.Client(verify=_tls_context())
        return client

    # GraphQL ------------------------------------------------------------
    def _graphql(self, timeout: float | None = None) -> DagsterGraphQLClient:
        """A new GraphQL client per call: gql's transport holds one connection and refuses a second
        concurrent call ("Transport is already connected"), and route handlers and background
        reloads call from several threads at once. Building one is cheap (no schema fetch)."""
        from dagster_graphql import DagsterGraphQLClient

        url = urlsplit(self.settings.graphql_url)
        prefix = url.path.removesuffix("/graphql").rstrip("/")
        return DagsterGraphQLClient(
            url.hostname or "localhost",
            port_number=url.port,
            use_https=url.scheme == "https",
            timeout=max(1, int(timeout or self.settings.dagster_timeout_seconds)),
            path_prefix=prefix,
        )

    def _call(self, operation: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        from dagster_graphql import DagsterGraphQLClientError

        try:
            return fn(*args, **kwargs)
        except DagsterGraphQLClientError as exc:
            metrics.DAGSTER_ERRORS.labels(operation).inc()
            # The client's message embeds the whole GraphQL query; the first line is the reason.
            text = str(exc.args[0] if exc.args else exc).splitlines()[0]
            if _is_transport_failure(exc):
                log.warning("Dagster %s failed: %s", operation, text)
                raise ServiceUnavailable("Dagster is unavailable; retry shortly.") from None
            # A PythonError's message and stack trace are for the operator's log, not for the client.
            log.warning("Dagster refused the %s: %s", operation, " ".join(str(a) for a in exc.args[1:])[:4000] or text)
            raise Unprocessable(f"Dagster refused the {operation}: {text}") from None
        except Exception as exc:  # transport errors (requests/gql) below the client
            metrics.DAGSTER_ERRORS.labels(operation).inc()
            log.warning("Dagster %s failed: %s: %s", operation, type(exc).__name__, str(exc).splitlines()[0])
            raise ServiceUnavailable("Dagster is unavailable; retry shortly.") from None

    def ping(self, timeout: float | None = None) -> str:
        """Dagster's version from its GraphQL endpoint; ServiceUnavailable when unreachable."""
        try:
            response = self._http.post(
                self.settings.graphql_url,
                json={"query": "{ version }"},
                timeout=timeout or self.settings.dagster_timeout_seconds,
            )
            response.raise_for_status()
            return response.json()["data"]["version"]
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            raise ServiceUnavailable(f"Dagster GraphQL is unreachable ({type(exc).__name__}).") from None

    def _query(self, operation: str, query: str, variables: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """A raw GraphQL request, for what dagster-graphql's client does not offer; data or ServiceUnavailable."""
        try:
            response = self._http.post(
                self.settings.graphql_url, json={"query": query, "variables": variables}, timeout=timeout
            )
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            metrics.DAGSTER_ERRORS.labels(operation).inc()
            raise ServiceUnavailable(f"Dagster did not answer the {operation} ({type(exc).__name__}).") from None
        if body.get("errors"):
            metrics.DAGSTER_ERRORS.labels(operation).inc()
            raise Unprocessable(f"Dagster refused the {operation}: {body['errors'][0].get('message', '')}")
        return body["data"]

    def loaded_definitions(self) -> LoadedDefinitions:
        """What the webserver serves now: the definitions generation of the `rime` location, or why none."""
        data = self._query(
            "definitions check",
            LOADED_DEFINITIONS_QUERY,
            {"location": self.location, "job": HOUSEKEEPING_JOB},
            timeout=self.settings.dagster_timeout_seconds,
        )
        entry = data.get("workspaceLocationEntryOrError") or {}
        if entry.get("__typename") != "WorkspaceLocationEntry":
            return LoadedDefinitions(None, f"Dagster has no code location named {self.location!r}.")
        failure = entry.get("locationOrLoadError") or {}
        if failure.get("__typename") == "PythonError":
            return LoadedDefinitions(None, f"The code location failed to load: {failure.get('message', '')}".strip())
        if entry.get("loadStatus") == "LOADING" and not failure:
            return LoadedDefinitions(None, "The code location is loading.")
        job = data.get("pipelineOrError") or {}
        for item in job.get("metadataEntries") or []:
            if item.get("label") == run_tags.DEFINITIONS_GENERATION and item.get("intRepr") is not None:
                return LoadedDefinitions(int(item["intRepr"]), None)
        # A location built before generations existed, or one without the housekeeping job.
        return LoadedDefinitions(0, None)

    def reload_location(self) -> None:
        """Reload the Rime code location so Dagster serves what the metadata store now says.

        Only the definitions sync loop calls this (api_shim.definitions_sync): a reload restarts the
        code server's process and takes seconds, so it has its own, longer timeout.
        """
        data = self._query(
            "reload",
            RELOAD_MUTATION,
            {"location": self.location},
            timeout=self.settings.dagster_reload_timeout_seconds,
        )
        result = data.get("reloadRepositoryLocation") or {}
        failure = result.get("locationOrLoadError") or {}
        if result.get("__typename") != "WorkspaceLocationEntry":
            raise Unprocessable(f"Reloading the Dagster code location failed: {result.get('message', result)}")
        if failure.get("__typename") == "PythonError":
            raise Unprocessable(f"The Dagster code location failed to load: {failure.get('message', '')}")

    def launch_run(
        self,
        job_name: str,
        *,
        tags: dict[str, str],
        run_config: dict[str, Any] | None = None,
        asset_selection: list[list[str]] | None = None,
        generation: int | None = None,
    ) -> LaunchedRun:
        """Launches `job_name` (a subset of its assets, with their checks, when `asset_selection` is given).

        `generation`: the definitions generation the job needs (its project's last change). The launch
        first waits, up to RIME_DEFINITIONS_WAIT_SECONDS, for Dagster to serve it (the definitions sync
        reloads Dagster in the background); it never triggers a reload itself.

        Under an Idempotency-Key, the run is tied to the key as soon as Dagster accepts it, and a retry of a
        request that failed after its launch gets that run back instead of a new one.
        """

        def submit(tags: dict[str, str]) -> str:
            try:
                return self._call(
                    "launch",
                    # A launch plans the run in the code server and starts its worker: slower than a query.
                    self._graphql(self.settings.dagster_launch_timeout_seconds).submit_job_execution,
                    job_name,
                    repository_location_name=self.location,
                    # Definitions' singleton repository: without it the client searches every
                    # location for the job name and could launch another location's job.
                    repository_name="__repository__",
                    run_config=run_config or {},
                    tags=tags,
                    asset_selection=asset_selection,
                )
            except Unprocessable as exc:
                if "NotFound" not in exc.message:
                    raise
                raise _job_missing(job_name) from None

        return self._launch(submit, tags, generation)

    def reexecute_run(
        self, parent_dagster_run_id: str, *, from_failure: bool, tags: dict[str, str], generation: int | None = None
    ) -> LaunchedRun:
        """Re-executes a run of a job, as the Dagster UI's "Re-execute" does: a new run of the same job, which
        Dagster links to it (`dagster/parent_run_id`, `dagster/root_run_id`).

        `from_failure`: only the steps that failed or never ran, each step after them included (Dagster's
        `FROM_FAILURE`); the other steps' results are the parent's. Else every step (`ALL_STEPS`). Dagster plans it
        with the job as its code location serves it now, and takes the parent's run config. `tags` replace the
        parent's: the run gets the job's own tags and these. Waits for `generation` and honours the
        Idempotency-Key as `launch_run` does.
        """

        def submit(tags: dict[str, str]) -> str:
            params = {
                "parentRunId": parent_dagster_run_id,
                "strategy": "FROM_FAILURE" if from_failure else "ALL_STEPS",
                "extraTags": [{"key": key, "value": value} for key, value in tags.items()],
                "useParentRunTags": False,
            }
            data = self._query(
                "re-execution",
                REEXECUTE_MUTATION,
                {"params": params},
                timeout=self.settings.dagster_launch_timeout_seconds,
            )
            answer = data.get("launchPipelineReexecution") or {}
            kind = answer.get("__typename")
            if kind == "LaunchRunSuccess":
                return answer["run"]["runId"]
            metrics.DAGSTER_ERRORS.labels("re-execution").inc()
            if kind == "PipelineNotFoundError":
                raise _job_missing(answer.get("pipelineName") or "?")
            log.warning("Dagster refused to re-execute run %s: %s", parent_dagster_run_id, str(answer)[:4000])
            # A PythonError's message names Dagster's reason (e.g. no step left to re-execute); its stack stays here.
            reason = str(answer.get("message") or kind or "no answer").splitlines()[0]
            raise Unprocessable(f"Dagster refused the re-execution: {reason}")

        return self._launch(submit, tags, generation)

    def _launch(
        self, submit: Callable[[dict[str, str]], str], tags: dict[str, str], generation: int | None
    ) -> LaunchedRun:
        """What every launch does around `submit` (which hands Dagster the run and returns its id): the run an
        earlier attempt under the request's Idempotency-Key launched, if any; else who launched it as Dagster's
        UI shows it, the wait for `generation`, and the run tied to the key once Dagster took it."""
        earlier = idempotency.launched_before()
        if earlier is not None:
            return LaunchedRun(dagster_run_id=earlier)
        if run_tags.TRIGGERED_BY in tags:  # the Dagster UI shows who launched the run
            tags = {**tags, run_tags.LAUNCHED_BY: tags[run_tags.TRIGGERED_BY]}
        if generation is not None and self.definitions is not None:
            self.definitions.wait_for(generation)
        run_id = submit(tags)
        try:
            idempotency.record_launch(run_id)
        except Exception:  # the run is launched: answer for it all the same
            log.exception("could not tie Dagster run %s to its Idempotency-Key", run_id)
        return LaunchedRun(dagster_run_id=run_id)

    def run_status(self, dagster_run_id: str) -> RunStatus:
        status = self._call("status", self._graphql().get_run_status, dagster_run_id)
        return RUN_STATUS.get(status.value, "running")

    def terminate(self, dagster_run_id: str) -> None:
        self._call("terminate", self._graphql().terminate_run, dagster_run_id)

    def run_url(self, dagster_run_id: str) -> str:
        return f"{self.settings.dagster_ui_base}/runs/{dagster_run_id}"

    # Sensors ------------------------------------------------------------
    def sensor_url(self, sensor_name: str) -> str:
        # The Dagster UI names a Definitions' singleton repository by its location alone.
        return f"{self.settings.dagster_ui_base}/locations/{self.location}/sensors/{sensor_name}"

    def sensor_states(self) -> dict[str, bool]:
        """Whether each sensor of the code location that was started or stopped by hand (the API or the
        Dagster UI) runs, by name, read from the instance's schedule storage in one query. Sensors left to
        their default in code are not listed; nor is anything when the storage cannot be read (logged)."""
        from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

        try:
            states = self.instance().all_instigator_state(instigator_type=InstigatorType.SENSOR)
        except Exception as exc:
            metrics.DAGSTER_ERRORS.labels("schedule_storage").inc()
            log.warning("reading Dagster's sensor states failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return {}
        running = {InstigatorStatus.RUNNING: True, InstigatorStatus.STOPPED: False}
        return {
            state.name: running[state.status]
            for state in states
            if state.status in running
            and state.origin.repository_origin.code_location_origin.location_name == self.location
        }

    def set_sensor_running(self, sensor_name: str, running: bool, *, generation: int | None = None) -> None:
        """Starts or stops a sensor of the code location, as the Dagster UI's toggle does.

        `generation`: the definitions generation that has the sensor; waits, as launches do, for Dagster to
        serve it. ServiceUnavailable when Dagster does not answer, Unprocessable when it has no such sensor.
        """
        if generation is not None and self.definitions is not None:
            self.definitions.wait_for(generation)
        selector = {
            "repositoryLocationName": self.location,
            "repositoryName": "__repository__",
            "sensorName": sensor_name,
        }
        timeout = self.settings.dagster_timeout_seconds
        if running:
            data = self._query("sensor start", START_SENSOR_MUTATION, {"selector": selector}, timeout=timeout)
            _sensor_answer(data.get("startSensor") or {}, sensor_name, "start")
            return
        data = self._query("sensor lookup", SENSOR_QUERY, {"selector": selector}, timeout=timeout)
        sensor = _sensor_answer(data.get("sensorOrError") or {}, sensor_name, "stop")
        data = self._query("sensor stop", STOP_SENSOR_MUTATION, {"id": sensor["id"]}, timeout=timeout)
        _sensor_answer(data.get("stopSensor") or {}, sensor_name, "stop")

    # Run storage --------------------------------------------------------
    def instance(self) -> DagsterInstance:
        """The Dagster instance under DAGSTER_HOME, opened once, for run-storage reads."""
        with self._instance_lock:
            if self._instance is None:
                from dagster import DagsterInstance

                home = self.settings.dagster_home_path
                if not (home / "dagster.yaml").exists():
                    raise ServiceUnavailable(f"No Dagster instance at {home} (dagster.yaml missing).")
                self._instance = DagsterInstance.from_config(str(home))
            return self._instance

    def warm_up(self) -> None:
        """Opens the instance now rather than on the first request that reads a run; best effort."""
        try:
            self.instance()
        except Exception as exc:
            log.warning("Dagster run storage not opened at start: %s", exc)

    def _run_records(self, filters: RunsFilter, limit: int, cursor: str | None = None) -> list[RunRecord]:
        try:
            return list(self.instance().get_run_records(filters=filters, limit=limit, cursor=cursor))
        except ServiceUnavailable:
            raise
        except Exception as exc:
            metrics.DAGSTER_ERRORS.labels("run_storage").inc()
            log.warning("reading Dagster run storage failed: %s", exc)
            raise ServiceUnavailable("Dagster run storage is unavailable; retry shortly.") from None

    def run_records(self, *, tags: dict[str, str], limit: int, cursor: str | None = None) -> list[RunRecord]:
        from dagster import RunsFilter

        return self._run_records(RunsFilter(tags=tags), limit, cursor)

    def run_record(self, dagster_run_id: str) -> RunRecord | None:
        from dagster import RunsFilter

        records = self._run_records(RunsFilter(run_ids=[dagster_run_id]), 1)
        return records[0] if records else None

    def run_events(self, dagster_run_id: str, *, finished: bool = False) -> RunEvents:
        """Materializations (asset key path -> metadata values) and the failure messages of a run. `finished`: the
        run has ended (its events are all written), so they are kept, for the FINISHED_EVENTS_KEPT runs read last.

        On SQLite, Dagster keeps an event log file per run and opens it (a new engine) for each read: a page of 100
        runs cost 100 of those every time it was listed."""
        if finished:
            with self._finished_events_lock:
                kept = self._finished_events.get(dagster_run_id)
                if kept is not None:
                    self._finished_events.move_to_end(dagster_run_id)
                    return kept
        events = self._read_run_events(dagster_run_id)
        if finished:
            with self._finished_events_lock:
                self._finished_events[dagster_run_id] = events
                while len(self._finished_events) > FINISHED_EVENTS_KEPT:
                    self._finished_events.popitem(last=False)
        return events

    def _read_run_events(self, dagster_run_id: str) -> RunEvents:
        from dagster import DagsterEventType

        kinds = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
        try:
            records = self.instance().get_records_for_run(dagster_run_id, of_type=kinds).records
        except ServiceUnavailable:
            raise
        except Exception as exc:
            metrics.DAGSTER_ERRORS.labels("event_log").inc()
            log.warning("reading Dagster event log failed: %s", exc)
            raise ServiceUnavailable("Dagster event log is unavailable; retry shortly.") from None
        events = RunEvents()
        for record in records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.step_materialization_data.materialization
                events.materialized[tuple(materialization.asset_key.path)] = {
                    key: getattr(value, "value", value) for key, value in materialization.metadata.items()
                }
            elif event.event_type == DagsterEventType.STEP_FAILURE:
                error = event.step_failure_data.error
                events.errors.append(error.message.strip() if error else event.message or "step failed")
            elif not events.errors:  # RUN_FAILURE: only when no step said why
                events.errors.append(event.message or "run failed")
        return events

    def run_event_records(
        self, dagster_run_id: str, *, after: int = 0, limit: int = 1000, of_type: set[str] | None = None
    ) -> tuple[list[EventLogRecord], bool]:
        """Event-log records of a run with storage id above `after`, oldest first, and whether more follow.

        `of_type`: only these Dagster event types (values such as "STEP_START").
        """
        from dagster import DagsterEventType
        from dagster._core.storage.event_log.base import EventLogCursor

        cursor = EventLogCursor.from_storage_id(after).to_string() if after else None
        kinds = {DagsterEventType(k) for k in of_type} if of_type else None
        try:
            page = self.instance().get_records_for_run(dagster_run_id, cursor=cursor, limit=limit, of_type=kinds)
        except ServiceUnavailable:
            raise
        except Exception as exc:
            metrics.DAGSTER_ERRORS.labels("event_log").inc()
            log.warning("reading Dagster event log failed: %s", exc)
            raise ServiceUnavailable("Dagster event log is unavailable; retry shortly.") from None
        return list(page.records), page.has_more

    def execution_plan_steps(self, record: RunRecord) -> set[str] | None:
        """The step keys a run planned to execute (None when Dagster has no plan snapshot)."""
        run = record.dagster_run
        if not run.execution_plan_snapshot_id:
            return None
        try:
            plan = self.instance().get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        except Exception as exc:
            log.warning("reading Dagster execution plan %s failed: %s", run.execution_plan_snapshot_id, exc)
            return None
        return set(plan.step_keys_to_execute)

    def close(self) -> None:
        if self._http_client is not None:
            self._http_client.close()
        with self._instance_lock:
            if self._instance is not None:
                self._instance.dispose()
                self._instance = None


def _job_missing(job_name: str) -> Unprocessable:
    """Dagster serves the needed generation, yet the job is not there: its definitions failed to build."""
    return Unprocessable(
        f"Dagster's code location has no job {job_name!r}: its definitions failed to build. "
        "The code server's log says why."
    )


def _sensor_answer(answer: dict[str, Any], sensor_name: str, action: str) -> dict[str, Any]:
    """A sensor query's or mutation's answer, or Unprocessable saying why Dagster refused."""
    kind = answer.get("__typename")
    if kind == "SensorNotFoundError":
        raise Unprocessable(
            f"Dagster's code location has no sensor {sensor_name!r}: its definitions failed to build. "
            "The code server's log says why."
        )
    if kind in ("UnauthorizedError", "PythonError") or kind is None:
        log.warning("Dagster refused to %s sensor %s: %s", action, sensor_name, answer.get("message", answer))
        raise Unprocessable(f"Dagster refused to {action} the sensor {sensor_name!r}.")
    return answer


def get_dagster_client(request: Request) -> DagsterClient:
    return request.app.state.dagster


DagsterClientDep = Annotated[DagsterClient, Depends(get_dagster_client)]
