"""DagsterClient against a real dagster-webserver, and against a Dagster that is down or hung.

Also: the `rime` code location builds its Definitions from the metadata store, and its
housekeeping job really purges expired Idempotency-Key rows (in process and as a run
launched through the webserver).
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api_shim.dagster_client import (
    DagsterClient,
    LaunchedRun,
    LoadedDefinitions,
    to_dagster_run_id,
    to_rime_run_id,
)
from api_shim.definitions_sync import DefinitionsSync
from api_shim.errors import ServiceUnavailable, Unprocessable
from api_shim.main import create_app
from api_shim.services.projects import create_project
from rime_dagster.settings import Settings, get_settings
from rime_dagster.store.generation import current_generation
from rime_dagster.store.models import IdempotencyKey
from rime_dagster.store.session import engine_for, session_factory, session_scope
from tests.conftest import make_settings, use_settings
from tests.dagster.conftest import Webserver, graphql, location_entry

TERMINAL = {"succeeded", "failed", "canceled"}
RUN_TIMEOUT = 45.0
FAST = 5.0  # seconds a call against a down Dagster may take (dagster_timeout_seconds is 2)


def _key(key: str, *, created_at: datetime) -> IdempotencyKey:
    return IdempotencyKey(
        tenant_id="default",
        principal_id="user_test",
        key=key,
        method="POST",
        path="/api/v1/projects",
        fingerprint="f" * 64,
        state="done",
        response_status=201,
        response_body="{}",
        created_at=created_at,
    )


def _keys(url: str) -> set[str]:
    with session_scope(url) as session:
        return set(session.scalars(select(IdempotencyKey.key)))


def _wait_terminal(client: DagsterClient, dagster_run_id: str) -> tuple[str, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        status = client.run_status(dagster_run_id)
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in TERMINAL:
            return status, seen
        time.sleep(0.25)
    hint = " (stuck queued: is dagster.yaml's run_coordinator the DefaultRunCoordinator?)" if seen == ["queued"] else ""
    raise AssertionError(f"run {dagster_run_id} not terminal after {RUN_TIMEOUT:.0f} s; statuses seen: {seen}{hint}")


# Against the running webserver -----------------------------------------------------------


@pytest.mark.dagster
def test_ping_returns_the_webserver_version(dagster_webserver: Webserver):
    import dagster

    version = dagster_webserver.client.ping()
    assert version == dagster.__version__


@pytest.mark.dagster
def test_reload_location_succeeds_and_the_location_serves_the_housekeeping_job(dagster_webserver: Webserver):
    settings = dagster_webserver.settings
    assert dagster_webserver.client.reload_location() is None
    with session_scope(settings.metadata_url) as session:
        stored = current_generation(session)
    # The location says which definitions generation it was built from: the store's, after a reload.
    assert dagster_webserver.client.loaded_definitions() == LoadedDefinitions(stored, None)

    entry = location_entry(settings)
    assert entry is not None and entry["loadStatus"] == "LOADED"
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
    repos = graphql(
        settings,
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } jobs { name } } } } }",
    )["repositoriesOrError"]["nodes"]
    names = {
        job["name"] for repo in repos if repo["location"]["name"] == settings.dagster_location for job in repo["jobs"]
    }
    assert "rime_housekeeping" in names


@pytest.mark.dagster
def test_reload_of_an_unknown_location_is_unprocessable(dagster_webserver: Webserver):
    settings = Settings(**{**dagster_webserver.settings.model_dump(), "dagster_location": "no_such_location"})
    client = DagsterClient(settings)
    with pytest.raises(Unprocessable):
        client.reload_location()
    assert client.loaded_definitions() == LoadedDefinitions(
        None, "Dagster has no code location named 'no_such_location'."
    )


@pytest.mark.dagster
def test_launched_housekeeping_run_succeeds_purges_expired_keys_and_is_in_run_storage(dagster_webserver: Webserver):
    client, settings = dagster_webserver.client, dagster_webserver.settings
    now = datetime.now(UTC)
    with session_scope(settings.metadata_url) as session:
        session.add(_key("expired-via-webserver", created_at=now - timedelta(days=2)))
        session.add(_key("fresh-via-webserver", created_at=now - timedelta(hours=1)))
    tag = uuid.uuid4().hex

    launched = client.launch_run("rime_housekeeping", tags={"rime/test": "1", "rime/test-id": tag})

    assert isinstance(launched, LaunchedRun)
    assert str(uuid.UUID(launched.dagster_run_id)) == launched.dagster_run_id
    assert launched.run_id == "run_" + launched.dagster_run_id.replace("-", "")
    status, seen = _wait_terminal(client, launched.dagster_run_id)
    assert status == "succeeded", f"statuses seen: {seen}\n{dagster_webserver.log_tail()}"
    assert set(seen) <= {"queued", "running", "succeeded"}

    # The run worker used the deployment's metadata store (RIME_HOME) and purged only the expired key.
    keys = _keys(settings.metadata_url)
    assert "expired-via-webserver" not in keys
    assert "fresh-via-webserver" in keys

    records = client.run_records(tags={"rime/test": "1"}, limit=10)
    record = next((r for r in records if r.dagster_run.run_id == launched.dagster_run_id), None)
    assert record is not None, [r.dagster_run.run_id for r in records]
    assert record.dagster_run.job_name == "rime_housekeeping"
    assert record.dagster_run.status.value == "SUCCESS"
    assert record.dagster_run.tags["rime/test-id"] == tag
    assert record.dagster_run.tags["rime/kind"] == "housekeeping"  # the job's own tag
    assert record.start_time is not None and record.end_time is not None
    assert 0 <= record.end_time - record.start_time < RUN_TIMEOUT
    assert abs(record.start_time - now.timestamp()) < 120

    assert client.run_records(tags={"rime/test-id": "no-such-run"}, limit=10) == []
    single = client.run_record(launched.dagster_run_id)
    assert single is not None and single.dagster_run.run_id == launched.dagster_run_id
    assert client.run_record(str(uuid.uuid4())) is None
    assert client.run_url(launched.dagster_run_id) == f"{settings.dagster_ui_base}/runs/{launched.dagster_run_id}"

    # Rime ids round-trip to the Dagster id for a real run.
    assert to_dagster_run_id(launched.run_id) == launched.dagster_run_id
    assert to_rime_run_id(to_dagster_run_id(launched.run_id)) == launched.run_id


@pytest.mark.dagster
def test_launching_an_unknown_job_is_unprocessable(dagster_webserver: Webserver):
    with pytest.raises(Unprocessable) as info:
        dagster_webserver.client.launch_run("no_such_job", tags={"rime/test": "1"})
    assert "has no job 'no_such_job'" in info.value.message


@pytest.mark.dagster
def test_status_of_an_unknown_run_is_unprocessable(dagster_webserver: Webserver):
    with pytest.raises(Unprocessable):
        dagster_webserver.client.run_status(str(uuid.uuid4()))


@pytest.mark.dagster
def test_health_ready_reports_every_dependency_ok(dagster_webserver: Webserver):
    app = create_app(dagster_webserver.settings)
    with TestClient(app) as client:
        app.state.definitions.wait_for(1)  # the definitions sync has looked at Dagster once
        response = client.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    deps = body["dependencies"]
    assert set(deps) == {"metadata_db", "dagster", "dagster_definitions", "iceberg_catalog"}
    assert deps["dagster_definitions"]["detail"].startswith(("generation", "catching up"))
    assert {name: dep["status"] for name, dep in deps.items()} == dict.fromkeys(deps, "ok"), deps
    import dagster

    assert deps["dagster"]["detail"] == f"version {dagster.__version__}"


# Run ids ---------------------------------------------------------------------------------


def test_run_ids_round_trip():
    dagster_id = str(uuid.uuid4())
    rime_id = to_rime_run_id(dagster_id)
    assert rime_id.startswith("run_") and len(rime_id) == 4 + 32 and "-" not in rime_id
    assert to_dagster_run_id(rime_id) == dagster_id
    assert to_dagster_run_id(rime_id.upper().replace("RUN_", "run_")) == dagster_id
    for bad in ("", "run_", rime_id[4:], "job_" + rime_id[4:], rime_id + "0", rime_id[:-1], rime_id[:-1] + "g"):
        assert to_dagster_run_id(bad) is None, bad


# Dagster down or hung ----------------------------------------------------------------------


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections (backlog) but never answers: a hung Dagster."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def _down_client(tmp_path, request, hung_port_fixture: str | None) -> DagsterClient:
    if hung_port_fixture:
        port = request.getfixturevalue(hung_port_fixture)
        return DagsterClient(make_settings(tmp_path, dagster_graphql_url=f"http://127.0.0.1:{port}/graphql"))
    return DagsterClient(make_settings(tmp_path))  # make_settings points at a closed port


CALLS = {
    "ping": lambda c: c.ping(),
    "reload": lambda c: c.reload_location(),
    "launch": lambda c: c.launch_run("rime_housekeeping", tags={"rime/test": "1"}),
    "status": lambda c: c.run_status(str(uuid.uuid4())),
    "terminate": lambda c: c.terminate(str(uuid.uuid4())),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["closed", "hung"])
@pytest.mark.parametrize("call", list(CALLS))
def test_dagster_down_is_service_unavailable_quickly(tmp_path, request, mode, call):
    client = _down_client(tmp_path, request, "hung_port" if mode == "hung" else None)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        CALLS[call](client)
    assert time.monotonic() - started < FAST


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["closed", "hung"])
def test_a_launch_waiting_for_definitions_fails_fast_when_dagster_is_down(tmp_path, request, mode):
    client = _down_client(tmp_path, request, "hung_port" if mode == "hung" else None)
    sync = DefinitionsSync(client.settings, client, session_factory(client.settings.metadata_url))
    client.definitions = sync
    started = time.monotonic()
    try:
        with pytest.raises(ServiceUnavailable):
            client.launch_run("rime_housekeeping", tags={"rime/test": "1"}, generation=1)
    finally:
        sync.stop()
    # Not the 60 s that a Dagster catching up would get: one look that got no answer.
    assert time.monotonic() - started < FAST


def test_run_records_without_a_dagster_instance_is_service_unavailable(tmp_path):
    settings = make_settings(tmp_path)
    shutil.rmtree(settings.dagster_home_path)  # the tests' seeded storages: no dagster.yaml under RIME_HOME/dagster
    client = DagsterClient(settings)
    with pytest.raises(ServiceUnavailable):
        client.run_records(tags={"rime/test": "1"}, limit=5)


# The code location, in process ---------------------------------------------------------


@pytest.fixture
def store_settings(tmp_path, monkeypatch) -> Iterator[Settings]:
    """A migrated store that RIME_HOME points at: importing rime_dagster.definitions loads
    Definitions from the deployment's store at import time."""
    settings = make_settings(tmp_path)
    for name in [n for n in os.environ if n.startswith("RIME_")]:
        monkeypatch.delenv(name)
    use_settings(monkeypatch, settings)
    yield settings
    get_settings.cache_clear()
    engine_for(settings.metadata_url).dispose()


def test_code_location_builds_definitions_from_the_store_and_housekeeping_purges(store_settings):
    from rime_dagster.resources import MetadataStoreResource
    from rime_dagster.specs import load_specs

    definitions = importlib.import_module("rime_dagster.definitions")
    url = store_settings.metadata_url
    store = MetadataStoreResource(database_url=url)
    assert load_specs(store).projects == []

    now = datetime.now(UTC)
    with session_scope(url) as session:
        zeta = create_project(session, tenant_id="default", name="zeta", description=None)
        analytics = create_project(session, tenant_id="default", name="analytics", description="in-process test")
        session.add(_key("expired", created_at=now - timedelta(days=2)))
        session.add(_key("just-expired", created_at=now - timedelta(hours=25)))
        session.add(_key("fresh", created_at=now - timedelta(hours=23)))
    specs = load_specs(store)
    assert [(p.id, p.name) for p in specs.projects] == [(analytics.id, "analytics"), (zeta.id, "zeta")]

    defs = definitions.build_definitions(specs, store)
    job = defs.get_job_def("rime_housekeeping")
    assert job.tags.get("rime/kind") == "housekeeping"
    assert [s.name for s in defs.schedules] == ["rime_housekeeping_schedule"]

    result = job.execute_in_process()
    assert result.success
    assert result.output_for_node("purge_idempotency_keys") == 2
    assert _keys(url) == {"fresh"}

    # Run again: nothing left to purge.
    assert job.execute_in_process().output_for_node("purge_idempotency_keys") == 0


def test_load_definitions_reads_the_deployment_store(store_settings):
    definitions = importlib.import_module("rime_dagster.definitions")
    defs = definitions.load_definitions()
    assert defs.get_job_def("rime_housekeeping").name == "rime_housekeeping"
    store = defs.resources["metadata_store"]
    assert store.url() == store_settings.metadata_url


@pytest.mark.dagster
def test_concurrent_calls_from_many_threads_all_get_dagsters_answer(dagster_webserver: Webserver):
    """The API calls Dagster from request threads and background reloads at once."""
    from concurrent.futures import ThreadPoolExecutor

    def status_error(_: int) -> str:
        try:
            dagster_webserver.client.run_status(str(uuid.uuid4()))
        except Unprocessable as exc:
            return exc.message
        return "no error"

    with ThreadPoolExecutor(8) as pool:
        messages = list(pool.map(status_error, range(16)))
    assert all("RunNotFound" in m for m in messages), messages


def test_a_stopped_sync_gives_up_its_reload_lease_at_once(tmp_path):
    """An API process that stops while it holds the reload lease (a reload in flight) releases it: left to expire
    (the reload timeout + 10 s), it kept every other process from reloading, and their launches answered 503."""
    settings = make_settings(tmp_path)
    client = DagsterClient(settings)
    stopping = DefinitionsSync(settings, client, session_factory(settings.metadata_url))
    other = DefinitionsSync(settings, client, session_factory(settings.metadata_url))
    stopping.start()
    try:
        assert stopping._take_lease()  # what a pass does before it asks Dagster to reload
        assert not other._take_lease()
    finally:
        stopping.stop()
    assert other._take_lease()
    other._release_lease()


def test_a_finished_runs_events_are_read_once(tmp_path):
    """Run histories list each run's events; a finished run's never change, so its event log is read once."""
    from dagster import DagsterRun, DagsterRunStatus

    client = DagsterClient(make_settings(tmp_path))
    instance = client.instance()
    finished, running = (
        instance.add_run(DagsterRun(job_name="sync", run_id=str(uuid.uuid4()), status=status))
        for status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.STARTED)
    )
    reads: list[str] = []
    read = client._read_run_events
    client._read_run_events = lambda run_id: reads.append(run_id) or read(run_id)
    for _ in range(3):
        client.run_events(finished.run_id, finished=finished.is_finished)
        client.run_events(running.run_id, finished=running.is_finished)
    assert reads == [finished.run_id] + [running.run_id] * 3
    client.close()
