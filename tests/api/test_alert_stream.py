"""The alert stream `/api/v1/ws/alerts` (issue 13 item 6): alert changes pushed to the tenant's clients, by one
reader of `alert_events` per API process (api_shim/alert_stream.py).

Alerts change here the way the rule sensors change them: `rime_dagster.monitoring.alerts` in a session of its own,
committed, outside the API. The clients are FastAPI TestClient WebSockets (one entered TestClient per app, so every
client of an app shares its event loop as under uvicorn); where the transport matters (a client that stops
reading), the app is served by uvicorn in a thread and the clients are real WebSocket clients.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from starlette.testclient import WebSocketDenialResponse, WebSocketTestSession
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from api_shim import alert_stream
from api_shim.alert_stream import EventCursor
from api_shim.main import create_app
from api_shim.services import users as user_service
from api_shim.services.auth import Role
from api_shim.services.projects import create_project
from rime_dagster.monitoring import alerts
from rime_dagster.settings import Settings
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Alert, AlertEvent, AlertRule, User
from rime_dagster.store.session import engine_for, session_factory, session_scope, unit_of_work
from tests.conftest import ADMIN_TOKEN, Clients, make_settings, role_clients
from tests.dagster.conftest import uvicorn_api
from tests.support.waiting import wait_until

ALERTS = "/api/v1/ws/alerts"
_numbers = itertools.count()
POLL = 0.05


# Writing alerts as the sensors do ----------------------------------------------------------------------------


def add_rule(url: str, *, tenant: str = "default", project: str = "analytics") -> str:
    """A project of `tenant` with one alert rule; returns the rule's id."""
    with session_scope(url) as session:
        proj = create_project(session, tenant_id=tenant, name=f"{project}-{next(_numbers)}", description=None)
        rule = AlertRule(
            id=new_id("rule"),
            project_id=proj.id,
            name="pipeline failed",
            slug="pipeline_failed",
            severity="high",
            condition={"type": "run_failed"},
            channel_ids=[],
        )
        session.add(rule)
    return rule.id


def project_of(url: str, rule_id: str) -> str:
    with session_scope(url) as session:
        return session.get_one(AlertRule, rule_id).project_id


def fire(url: str, rule_id: str, target: str) -> str:
    with session_scope(url) as session:
        alert = alerts.fire(
            session,
            session.get_one(AlertRule, rule_id),
            target=target,
            title=f"{target} failed",
            message="",
            context={},
        )
        assert alert is not None
        return alert.id


def acknowledge(url: str, alert_id: str, actor: str = "lead@example.com") -> None:
    with session_scope(url) as session:
        assert alerts.acknowledge(session, session.get_one(Alert, alert_id), actor=actor)


def resolve(url: str, alert_id: str, actor: str = "lead@example.com") -> None:
    with session_scope(url) as session:
        alerts.resolve(session, session.get_one(Alert, alert_id), actor=actor)


# Listening ---------------------------------------------------------------------------------------------------


def listen(client: TestClient, token: str, **kwargs) -> WebSocketTestSession:
    return client.websocket_connect(f"{ALERTS}?token={token}", **kwargs)


def receive(ws: WebSocketTestSession, timeout: float = 10.0, *, pings: bool = False) -> dict:
    """The next message, or a failure after `timeout` (the TestClient's own receive would wait for ever). Keepalive
    pings (sent after 30 s without an event, which a slow run on a busy machine can take) are skipped unless
    `pings`."""
    deadline = time.monotonic() + timeout

    async def next_message() -> dict:
        with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
            return await ws._send_rx.receive()

    while True:
        message = ws.portal.call(next_message)
        ws._raise_on_close(message)
        decoded = json.loads(message["text"])
        if pings or decoded != {"type": "ping"}:
            return decoded


def summary(message: dict) -> tuple[str, str, str]:
    return message["type"], message["alert"]["id"], message["alert"]["status"]


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def stream_settings(tmp_path, db_url) -> Settings:
    return make_settings(tmp_path, database_url=db_url, alert_stream_poll_seconds=POLL)


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    return make_settings(tmp_path, alert_stream_poll_seconds=POLL)


@contextmanager
def running(settings: Settings):
    """An app with its lifespan running, and a viewer's token besides the admin's."""
    with role_clients(create_app(settings), settings) as clients:
        yield clients


# The lifecycle -----------------------------------------------------------------------------------------------


def test_a_client_receives_fired_acknowledged_resolved_in_order(stream_settings):
    url = stream_settings.metadata_url
    rule_id = add_rule(url)
    with running(stream_settings) as clients, listen(clients.anonymous, clients.tokens[Role.viewer]) as ws:
        first = fire(url, rule_id, "pipeline:orders")
        acknowledge(url, first)
        second = fire(url, rule_id, "pipeline:customers")
        resolve(url, first)
        with session_scope(url) as session:  # the condition cleared: the sensor resolves it
            alerts.clear(session, rule_id, "pipeline:customers", reason="a later run succeeded")
        messages = [receive(ws) for _ in range(5)]

    assert [summary(m) for m in messages] == [
        ("alert_fired", first, "firing"),
        ("alert_acknowledged", first, "acknowledged"),
        ("alert_fired", second, "firing"),
        ("alert_resolved", first, "resolved"),
        ("alert_resolved", second, "resolved"),
    ]
    fired, acked, *_, resolved, cleared = messages
    assert set(fired) == {"type", "alert"}
    assert fired["alert"]["rule_id"] == rule_id and fired["alert"]["title"] == "pipeline:orders failed"
    assert acked["alert"]["acknowledged_by"] == "lead@example.com" and acked["alert"]["acknowledged_at"]
    assert resolved["alert"]["resolved_by"] == "lead@example.com"
    assert cleared["alert"]["resolved_by"] == alerts.SYSTEM_ACTOR
    assert cleared["alert"]["context"] == {"resolution": "a later run succeeded"}
    with session_scope(url) as session:  # the alert as the API shows it
        assert resolved["alert"] == alerts.alert_payload(session.get_one(Alert, first))


def test_acknowledging_and_resolving_through_the_api_show_on_the_stream(sqlite_settings):
    """Fired by a sensor, acknowledged by a data engineer and resolved by a lead through the endpoints: the stream
    shows each change once (acknowledging again changes nothing) and the alert as the API returns it."""
    url = sqlite_settings.metadata_url
    rule_id = add_rule(url)
    alerts_path = f"/api/v1/projects/{project_of(url, rule_id)}/alerts"
    with running(sqlite_settings) as clients, listen(clients.anonymous, clients.tokens[Role.viewer]) as ws:
        alert_id = fire(url, rule_id, "pipeline:orders")
        engineer, lead = clients.as_role(Role.data_engineer), clients.as_role(Role.lead_data_engineer)
        for _ in range(2):
            assert engineer.post(f"{alerts_path}/{alert_id}/acknowledge").status_code == 200
        resolved = lead.post(f"{alerts_path}/{alert_id}/resolve")
        assert resolved.status_code == 200, resolved.text
        messages = [receive(ws) for _ in range(3)]
        fire(url, rule_id, "pipeline:next")  # what comes next is this one: nothing else was sent
        assert receive(ws)["alert"]["target"] == "pipeline:next"

    assert [summary(m) for m in messages] == [
        ("alert_fired", alert_id, "firing"),
        ("alert_acknowledged", alert_id, "acknowledged"),
        ("alert_resolved", alert_id, "resolved"),
    ]
    assert messages[1]["alert"]["acknowledged_by"] == "data_engineer@example.com"
    assert messages[2]["alert"] == resolved.json()


def test_events_written_before_the_connect_are_not_sent(sqlite_settings):
    url = sqlite_settings.metadata_url
    rule_id = add_rule(url)
    before = fire(url, rule_id, "pipeline:old")
    with running(sqlite_settings) as clients, listen(clients.anonymous, ADMIN_TOKEN) as ws:
        after = fire(url, rule_id, "pipeline:new")
        assert summary(receive(ws)) == ("alert_fired", after, "firing")
        acknowledge(url, before)
        assert summary(receive(ws)) == ("alert_acknowledged", before, "acknowledged")


def test_two_clients_both_get_each_event_and_are_counted(sqlite_settings):
    url = sqlite_settings.metadata_url
    rule_id = add_rule(url)
    connected = gauge("rime_alert_stream_clients")
    with running(sqlite_settings) as clients:
        hub = clients.app.state.alert_stream
        with (
            listen(clients.anonymous, clients.tokens[Role.viewer]) as one,
            listen(clients.anonymous, ADMIN_TOKEN) as two,
        ):
            assert gauge("rime_alert_stream_clients") == connected + 2
            alert_id = fire(url, rule_id, "pipeline:orders")
            acknowledge(url, alert_id)
            for ws in (one, two):
                assert [summary(receive(ws)) for _ in range(2)] == [
                    ("alert_fired", alert_id, "firing"),
                    ("alert_acknowledged", alert_id, "acknowledged"),
                ]
        # The last client gone, the reader stops; the next one starts another.
        wait_until(lambda: hub.task is None and hub.clients == 0, timeout=5, what="the reader stopping")
        assert gauge("rime_alert_stream_clients") == connected
        with listen(clients.anonymous, ADMIN_TOKEN) as again:
            resolve(url, alert_id)
            assert summary(receive(again)) == ("alert_resolved", alert_id, "resolved")


@pytest.mark.slow
def test_a_burst_larger_than_a_clients_queue_reaches_it(sqlite_settings, monkeypatch):
    """A client is dropped when it falls a queue behind, not when one commit writes more than a queue holds (a
    rule deleted with many open alerts): the reader reads a page at a time and the client takes a page at once."""
    monkeypatch.setattr(alert_stream, "PAGE", 50)
    url = sqlite_settings.metadata_url
    rule_id = add_rule(url)
    with running(sqlite_settings) as clients:
        clients.app.state.alert_stream.queue_limit = 100
        with listen(clients.anonymous, ADMIN_TOKEN) as ws:
            with session_scope(url) as session:
                rule = session.get_one(AlertRule, rule_id)
                fired = [
                    alerts.fire(session, rule, target=f"t{n}", title="", message="", context={}).id for n in range(600)
                ]
            assert [receive(ws)["alert"]["id"] for _ in fired] == fired


def test_a_client_of_another_tenant_gets_nothing_of_this_one(tmp_path, sqlite_settings):
    url = sqlite_settings.metadata_url
    ours, theirs = add_rule(url), add_rule(url, tenant="acme")
    acme_settings = make_settings(
        tmp_path, url, alert_stream_poll_seconds=POLL, tenant="acme", admin_token=None
    )  # the same store
    with running(sqlite_settings) as clients, TestClient(create_app(acme_settings)) as acme_client:
        with session_scope(url) as session:
            acme_user = user_service.create_user(
                session, tenant_id="acme", email="ops@acme.example", name="ops", role=Role.viewer
            )
            acme_token = user_service.create_token(session, acme_user, name="t", expires_at=None).secret
        with listen(clients.anonymous, ADMIN_TOKEN) as mine, listen(acme_client, acme_token) as acme:
            our_alert = fire(url, ours, "pipeline:orders")
            their_alert = fire(url, theirs, "pipeline:orders")
            # Events come in the order they were written: had ours reached acme, it would come first.
            assert summary(receive(acme)) == ("alert_fired", their_alert, "firing")
            assert summary(receive(mine)) == ("alert_fired", our_alert, "firing")
            acknowledge(url, our_alert)
            resolve(url, their_alert)
            assert summary(receive(acme)) == ("alert_resolved", their_alert, "resolved")
            assert summary(receive(mine)) == ("alert_acknowledged", our_alert, "acknowledged")


# Authentication ----------------------------------------------------------------------------------------------


class TestAuthentication:
    @pytest.fixture(scope="class")
    def refusing(self, tmp_path_factory) -> Iterator[Clients]:
        """One running app for the refused connects (a refusal changes nothing a next case sees)."""
        settings = make_settings(tmp_path_factory.mktemp("refusing"), alert_stream_poll_seconds=POLL)
        with running(settings) as clients:
            yield clients

    @pytest.mark.parametrize("query", ["", "?token=rime_not_a_token", "?token="], ids=["missing", "bad", "empty"])
    def test_a_bad_or_missing_token_is_refused_before_the_upgrade(self, refusing, query):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with refusing.anonymous.websocket_connect(ALERTS + query):
                pass
        assert denied.value.status_code == 401
        assert denied.value.json()["error"]["code"] == "unauthorized"

    def test_a_disabled_users_token_is_refused(self, sqlite_settings):
        with running(sqlite_settings) as clients:
            user_id = clients.user_ids[Role.viewer]
            changed = clients.admin.patch(f"/api/v1/users/{user_id}", json={"status": "disabled"})
            assert changed.status_code == 200, changed.text
            with pytest.raises(WebSocketDenialResponse) as denied:
                with listen(clients.anonymous, clients.tokens[Role.viewer]):
                    pass
        assert denied.value.status_code == 401

    def test_the_bearer_subprotocol_authenticates_and_is_the_one_accepted(self, sqlite_settings):
        url = sqlite_settings.metadata_url
        rule_id = add_rule(url)
        with running(sqlite_settings) as clients:
            token = clients.tokens[Role.viewer]
            with clients.anonymous.websocket_connect(ALERTS, subprotocols=["bearer", token]) as ws:
                assert ws.accepted_subprotocol == "bearer"
                alert_id = fire(url, rule_id, "pipeline:orders")
                assert summary(receive(ws)) == ("alert_fired", alert_id, "firing")

    def test_a_refused_connect_is_audited(self, sqlite_settings):
        with running(sqlite_settings) as clients:
            with pytest.raises(WebSocketDenialResponse):
                with listen(clients.anonymous, "rime_not_a_token"):
                    pass
            entries = clients.admin.get("/api/v1/audit-logs", params={"action": "alert.stream"}).json()["data"]
        assert [(e["actor"], e["status_code"], e["method"]) for e in entries] == [("anonymous", 401, "WEBSOCKET")]

    def test_a_token_revoked_while_listening_ends_the_stream(self, sqlite_settings, monkeypatch):
        monkeypatch.setattr(alert_stream, "RECHECK_SECONDS", 0.1)
        with running(sqlite_settings) as clients:
            admin = clients.admin
            user = admin.post("/api/v1/users", json={"email": "v@example.com", "name": "V", "role": "viewer"}).json()
            token = admin.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "t"}).json()
            with listen(clients.anonymous, token["token"]) as revoked, listen(clients.anonymous, ADMIN_TOKEN) as kept:
                assert admin.delete(f"/api/v1/users/{user['id']}/tokens/{token['id']}").status_code == 204
                assert receive(revoked) == {"type": "error", "message": alert_stream.TOKEN_GONE}
                with pytest.raises(WebSocketDisconnect) as closed:
                    receive(revoked)
                assert closed.value.code == 4401
                rule_id = add_rule(sqlite_settings.metadata_url)
                alert_id = fire(sqlite_settings.metadata_url, rule_id, "pipeline:orders")
                assert summary(receive(kept)) == ("alert_fired", alert_id, "firing")


def test_a_token_expiring_while_listening_ends_the_stream(sqlite_settings, monkeypatch):
    monkeypatch.setattr(alert_stream, "RECHECK_SECONDS", 0.1)
    with running(sqlite_settings) as clients:
        with session_scope(sqlite_settings.metadata_url) as session:
            user = session.get_one(User, clients.user_ids[Role.viewer])
            expires_at = datetime.now(UTC) + timedelta(seconds=1.5)
            token = user_service.create_token(session, user, name="short", expires_at=expires_at).secret
        with listen(clients.anonymous, token) as ws:
            assert receive(ws) == {"type": "error", "message": alert_stream.TOKEN_GONE}
            assert datetime.now(UTC) >= expires_at


@pytest.mark.slow
def test_the_token_never_reaches_the_logs(tmp_path):
    """The API as `rime up` runs it (a uvicorn process, INFO, access log): uvicorn logs the WebSocket's path with
    its query string, and the API masks the token in it."""
    settings = make_settings(tmp_path)
    log_path = tmp_path / "api.log"
    with uvicorn_api(settings, log_path, env={"RIME_LOG_LEVEL": "INFO"}, access_log=True) as base:
        ws_base = base.replace("http://", "ws://", 1)
        with ws_connect(f"{ws_base}{ALERTS}?token={ADMIN_TOKEN}", open_timeout=10):
            pass
        wait_until(lambda: f"{ALERTS}?token=***" in log_path.read_text(), timeout=10, what="the connect logged")
    log = log_path.read_text()
    assert ADMIN_TOKEN not in log and "accepted" in log, log[-2000:]


def test_a_quiet_stream_sends_pings(sqlite_settings):
    with running(sqlite_settings) as clients:
        clients.app.state.alert_stream.keepalive_seconds = 0.2
        with listen(clients.anonymous, ADMIN_TOKEN) as ws:
            assert receive(ws, timeout=5, pings=True) == {"type": "ping"}


# Several API processes, one reader per process ---------------------------------------------------------------


@pytest.mark.slow
def test_an_event_written_by_either_of_two_api_apps_reaches_the_clients_of_both(sqlite_settings):
    """Two API processes on one store (two apps, each its own hub and event loop): an alert fired by a sensor,
    acknowledged through the first app's endpoint and resolved through the second's reaches the clients of both."""
    url = sqlite_settings.metadata_url
    rule_id = add_rule(url)
    alerts_path = f"/api/v1/projects/{project_of(url, rule_id)}/alerts"
    first, second = create_app(sqlite_settings), create_app(sqlite_settings)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(first) as one, TestClient(second) as two:
        with listen(one, ADMIN_TOKEN) as on_first, listen(two, ADMIN_TOKEN) as on_second:
            alert_id = fire(url, rule_id, "pipeline:orders")
            assert one.post(f"{alerts_path}/{alert_id}/acknowledge", headers=admin).status_code == 200
            assert two.post(f"{alerts_path}/{alert_id}/resolve", headers=admin).status_code == 200
            for ws in (on_first, on_second):
                assert [summary(receive(ws)) for _ in range(3)] == [
                    ("alert_fired", alert_id, "firing"),
                    ("alert_acknowledged", alert_id, "acknowledged"),
                    ("alert_resolved", alert_id, "resolved"),
                ]
        assert first.state.alert_stream is not second.state.alert_stream


@contextmanager
def counting_reads(url: str) -> Iterator[list[float]]:
    """The times of the statements that read alert_events on the store's read-only engine (the stream reader's)."""
    times: list[float] = []

    def count(_conn, _cursor, statement: str, *_args) -> None:
        if "alert_events" in statement:
            times.append(time.monotonic())

    engine = engine_for(url, read_only=True)
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield times
    finally:
        event.remove(engine, "before_cursor_execute", count)


def reads_during(times: list[float], seconds: float) -> int:
    start = time.monotonic()
    time.sleep(seconds)
    return sum(1 for t in times if start <= t < start + seconds)


@pytest.mark.slow
def test_one_database_read_per_interval_whatever_the_number_of_clients(sqlite_settings):
    url = sqlite_settings.metadata_url
    rule_id = add_rule(url)
    window = 1.0
    most = window / POLL + 1  # one read per interval (a read takes time too: fewer, never more)
    with running(sqlite_settings) as clients, counting_reads(url) as times:
        with listen(clients.anonymous, ADMIN_TOKEN) as single:
            with_one = reads_during(times, window)
            with ExitStack() as stack:
                others = [stack.enter_context(listen(clients.anonymous, ADMIN_TOKEN)) for _ in range(19)]
                assert clients.app.state.alert_stream.clients == 20
                with_twenty = reads_during(times, window)
                alert_id = fire(url, rule_id, "pipeline:orders")
                for ws in [single, *others]:
                    assert summary(receive(ws)) == ("alert_fired", alert_id, "firing")
    assert 0.5 * window / POLL <= with_one <= most, with_one
    assert 0.5 * window / POLL <= with_twenty <= most, with_twenty


# Ids that commit out of order (PostgreSQL) -------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_event_committed_after_a_later_id_was_read_is_still_sent(stream_settings):
    """A transaction takes id N for its event and commits after another one took N+1 and committed, and after
    the reader read N+1: N is sent once it commits, once; a rolled-back id holds nothing up."""
    url = stream_settings.metadata_url
    slow_rule, fast_rule = add_rule(url), add_rule(url, project="other")
    sessions = session_factory(url)
    with running(stream_settings) as clients, listen(clients.anonymous, ADMIN_TOKEN) as ws:
        hub = clients.app.state.alert_stream
        with unit_of_work(sessions) as slow:
            late = alerts.fire(
                slow, slow.get_one(AlertRule, slow_rule), target="t", title="late", message="", context={}
            )
            slow.flush()  # the event's id is taken now
            late_event = slow.scalar(select(func.max(AlertEvent.id)))
            early = fire(url, fast_rule, "pipeline:orders")
            assert summary(receive(ws)) == ("alert_fired", early, "firing")
            assert hub.cursor.position > late_event  # read past the id still in flight
        assert summary(receive(ws)) == ("alert_fired", late.id, "firing")

        rolled_back = sessions()
        alerts.fire(
            rolled_back, rolled_back.get_one(AlertRule, fast_rule), target="x", title="", message="", context={}
        )
        rolled_back.flush()
        rolled_back.rollback()
        rolled_back.close()
        acknowledge(url, late.id)
        acknowledge(url, early)
        # Each id once: the late one is not sent again, and the id rolled back holds nothing up.
        assert [summary(receive(ws)) for _ in range(2)] == [
            ("alert_acknowledged", late.id, "acknowledged"),
            ("alert_acknowledged", early, "acknowledged"),
        ]
        assert not any(g.low <= late_event <= g.high for g in hub.cursor.gaps)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_event_in_flight_when_the_reader_starts_is_sent(stream_settings):
    """The reader starts at the newest id; an older id still in flight then is a gap from the start."""
    url = stream_settings.metadata_url
    slow_rule, fast_rule = add_rule(url), add_rule(url, project="other")
    sessions = session_factory(url)
    with running(stream_settings) as clients, ExitStack() as stack:
        with unit_of_work(sessions) as slow:
            late = alerts.fire(
                slow, slow.get_one(AlertRule, slow_rule), target="t", title="late", message="", context={}
            )
            slow.flush()
            fire(url, fast_rule, "pipeline:orders")  # committed: the newest id when the client connects
            ws = stack.enter_context(listen(clients.anonymous, ADMIN_TOKEN))
        assert summary(receive(ws)) == ("alert_fired", late.id, "firing")


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_stream_outlives_the_store_being_unreachable(stream_settings, postgres_url, caplog):
    """The store refuses connections for a while (its connections ended): the reader retries, its clients stay
    connected, and what is written once the store is back reaches them."""
    url = stream_settings.metadata_url
    database = make_url(url).database
    rule_id = add_rule(url)
    server = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with running(stream_settings) as clients, listen(clients.anonymous, ADMIN_TOKEN) as ws:
        hub = clients.app.state.alert_stream
        with server.connect() as admin, caplog.at_level(logging.WARNING, logger="api_shim.alert_stream"):
            admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            ended = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d")
            admin.execute(ended, {"d": database})
            reads = hub.reads
            wait_until(lambda: hub.reads >= reads + 2, timeout=10, what="reads failing")
            admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        assert "reading alert events failed" in caplog.text
        alert_id = fire(url, rule_id, "pipeline:orders")
        assert summary(receive(ws, timeout=20)) == ("alert_fired", alert_id, "firing")
    server.dispose()


class TestEventCursor:
    def test_gaps_are_asked_for_until_read_or_given_up(self):
        cursor = EventCursor(10)
        assert [cursor.take(i, now=0.0) for i in (11, 14, 12)] == [True, True, True]
        assert cursor.position == 14 and [(g.low, g.high) for g in cursor.gaps] == [(13, 13)]
        assert cursor.take(12, now=1.0) is False  # never twice
        cursor.expire(now=alert_stream.GAP_SECONDS - 1)
        assert cursor.take(13, now=2.0) is True and cursor.gaps == []
        cursor.take(20, now=3.0)
        cursor.expire(now=3.0 + alert_stream.GAP_SECONDS)
        assert cursor.gaps == [] and cursor.take(17, now=40.0) is False  # given up as rolled back

    def test_a_start_marks_the_missing_recent_ids_as_gaps(self):
        cursor = EventCursor.starting_at(10, [5, 6, 9, 10], floor=3, now=0.0)
        assert [(g.low, g.high) for g in cursor.gaps] == [(4, 4), (7, 8)]
        assert EventCursor.starting_at(0, [], floor=0, now=0.0).gaps == []

    def test_at_most_max_gaps_are_kept_the_oldest_given_up(self):
        cursor = EventCursor(0)
        for n in range(alert_stream.MAX_GAPS + 5):
            cursor.take(2 * (n + 1), now=float(n))
        assert len(cursor.gaps) == alert_stream.MAX_GAPS
        assert min(g.low for g in cursor.gaps) == 11  # ids 1, 3, 5, 7 and 9 given up


# A slow client -----------------------------------------------------------------------------------------------


@contextmanager
def served(app) -> Iterator[str]:
    """`app` served by uvicorn in a thread of the test process (its state stays inspectable); yields ws://...

    Its connections' kernel send buffers are 16 KiB, not autotuned (up to 4 MiB on loopback), so that a client
    that stops reading blocks the server's sends after a few dozen messages rather than thousands."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # accepted sockets inherit it
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what="uvicorn starting")
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def stalled_client(url: str) -> ClientConnection:
    """A client that reads nothing: a small receive buffer, and the client library stops reading from the socket
    once 16 messages wait unread, so the server's sends soon block."""
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    # Uncompressed: permessage-deflate shrinks these alike messages some thirty times, and the buffers hold more.
    return ws_connect(f"{url}{ALERTS}?token={ADMIN_TOKEN}", sock=sock, open_timeout=10, compression=None)


@dataclass
class Reader:
    """A client that reads everything, in a thread."""

    ws: ClientConnection
    messages: list[dict]
    thread: threading.Thread

    @classmethod
    def start(cls, url: str) -> Reader:
        ws = ws_connect(f"{url}{ALERTS}?token={ADMIN_TOKEN}", open_timeout=10)
        messages: list[dict] = []

        def read() -> None:
            with suppress(ConnectionClosed):
                for text in ws:
                    messages.append(json.loads(text))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return cls(ws, messages, thread)


@pytest.mark.slow
def test_a_slow_client_is_dropped_without_stalling_the_others(sqlite_settings):
    url = sqlite_settings.metadata_url
    rule_id = add_rule(url)
    app = create_app(sqlite_settings)
    hub = app.state.alert_stream
    hub.queue_limit = 150
    dropped = gauge("rime_alert_stream_dropped_total")
    with served(app) as base:
        stalled = stalled_client(base)
        readers = [Reader.start(base), Reader.start(base)]
        wait_until(lambda: hub.clients == 3, timeout=10, what="three clients")
        fired: list[str] = []
        # Until the stalled client's socket and queue are full (its messages are ~600 bytes: hundreds of them).
        while not any(s.ended for s in hub._all()) and len(fired) < 5000:
            with session_scope(url) as session:
                rule = session.get_one(AlertRule, rule_id)
                for _ in range(100):
                    n = len(fired)
                    fired.append(alerts.fire(session, rule, target=f"t{n}", title="", message="", context={}).id)
            time.sleep(0.05)
        ended = [s for s in hub._all() if s.ended]
        assert len(ended) == 1, f"no client was dropped after {len(fired)} events"
        # The others got every event, in order, while the stalled one sat there.
        for reader in readers:
            wait_until(lambda r=reader: len(r.messages) >= len(fired), timeout=30, what="the readers catching up")
            assert [m["alert"]["id"] for m in reader.messages] == fired
        assert gauge("rime_alert_stream_dropped_total") == dropped + 1
        # Reading again, the stalled client gets what had reached its socket, then the error and the close.
        received: list[dict] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(json.loads(stalled.recv(timeout=10)))
        assert received[-1] == {"type": "error", "message": alert_stream.FELL_BEHIND}
        ids = [m["alert"]["id"] for m in received[:-1]]
        assert ids == fired[: len(ids)] and len(ids) < len(fired)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        for reader in readers:
            reader.ws.close()
