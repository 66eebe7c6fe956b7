"""Several API workers (RIME_API_WORKERS=2, uvicorn --workers 2, as `rime up` runs them) over one metadata store and
the session's Dagster: what one client does through one worker holds for a client of the other.

Each client below keeps one keep-alive connection and knows which worker process serves it: the kernel says which
process holds the server's end of the connection (/proc/net/tcp names the socket, /proc/<pid>/fd its holder). So
"on the other worker" is checked, not hoped for.

* Rate limits: one quota for both workers (RateLimit-Remaining counts down across them, then 429 on either).
* Idempotency-Key: a repeat on the other worker answers the first response; a run launched once.
* Definitions: a burst of pipeline writes through both workers costs a few coalesced Dagster reloads (one lease in
  the store), and a pipeline created on one worker runs at once through the other.
* The run's WebSocket and its SSE log stream, on the worker that did not start it, follow it to its end; an alert
  fired outside the API and acknowledged through one worker reaches an alert-stream client of the other.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.api.test_alert_stream import add_rule, fire, project_of
from tests.dagster.conftest import Webserver, uvicorn_api

pytestmark = [pytest.mark.dagster, pytest.mark.slow]

WORKERS = 2
USERS_LIMIT = 6  # per hour: no window boundary within the test


class Workers:
    """The uvicorn parent of `url` and its worker processes."""

    def __init__(self, url: str):
        self.port = int(url.rsplit(":", 1)[1])
        self.parent = self._listener()
        self.pids = self._children()

    def _listener(self) -> int:
        inode = next(i for (local, remote), i in _tcp_sockets().items() if local == self.port and remote == 0)
        return next(pid for pid in _our_pids() if inode in _socket_inodes(pid) and self._is_parent(pid))

    @staticmethod
    def _is_parent(pid: int) -> bool:
        return b"--workers" in Path(f"/proc/{pid}/cmdline").read_bytes()

    def _children(self) -> list[int]:
        children = Path(f"/proc/{self.parent}/task/{self.parent}/children").read_text().split()
        # multiprocessing's resource tracker is a child too: the workers are the ones holding the listening socket.
        listening = next(i for (local, remote), i in _tcp_sockets().items() if local == self.port and remote == 0)
        return [int(pid) for pid in children if listening in _socket_inodes(int(pid))]

    def serving(self, client_port: int) -> int:
        """The worker holding the server's end of the connection from `client_port`."""
        inode = _tcp_sockets()[(self.port, client_port)]
        return next(pid for pid in self.pids if inode in _socket_inodes(pid))


def _tcp_sockets() -> dict[tuple[int, int], str]:
    """(local port, remote port) -> socket inode, for loopback IPv4 sockets of this network namespace."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        found[(int(local.split(":")[1], 16), int(remote.split(":")[1], 16))] = inode
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _our_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and p.stat().st_uid == os.getuid()]


class WorkerClient:
    """An httpx client on one keep-alive connection; `worker`: the process that serves it (checked per request)."""

    def __init__(self, url: str, token: str, workers: Workers):
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=90,
            limits=httpx.Limits(max_connections=1, keepalive_expiry=600),  # idle for minutes: stays on its worker
        )
        self.workers = workers
        self.worker = self._served_by(self.http.get("/health"))

    def _served_by(self, response: httpx.Response) -> int:
        client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        return self.workers.serving(client_port)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        assert self._served_by(response) == self.worker, "the connection moved to another worker"
        return response

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture(scope="module")
def api_workers(dagster_webserver: Webserver, tmp_path_factory) -> Iterator[tuple[str, Workers]]:
    log_path = tmp_path_factory.mktemp("api-workers") / "api.log"
    env = {
        "RIME_API_WORKERS": str(WORKERS),
        "RIME_RATE_LIMITS": json.dumps({"users": f"{USERS_LIMIT}/hour"}),
    }
    # Idle keep-alive connections stay open for the whole test: each client stays on its worker.
    args = ("--workers", str(WORKERS), "--timeout-keep-alive", "120")
    with uvicorn_api(dagster_webserver.settings, log_path, env=env, args=args) as url:
        workers = Workers(url)
        assert len(workers.pids) == WORKERS
        yield url, workers


@pytest.fixture(scope="module")
def clients(api_workers, dagster_webserver: Webserver) -> Iterator[tuple[WorkerClient, WorkerClient]]:
    """A client on each worker: connections are opened until both workers serve one."""
    url, workers = api_workers
    token = dagster_webserver.settings.admin_token
    with ExitStack() as stack:
        by_worker: dict[int, WorkerClient] = {}
        for _ in range(40):
            client = WorkerClient(url, token, workers)
            stack.callback(client.http.close)
            by_worker.setdefault(client.worker, client)
            if len(by_worker) == WORKERS:
                break
        assert len(by_worker) == WORKERS, "the kernel never handed a connection to the second worker"
        first, second = by_worker.values()
        yield first, second


def test_rate_limits_are_one_quota_for_both_workers(clients):
    first, second = clients
    answers = [(first if n % 2 else second).get("/api/v1/users") for n in range(USERS_LIMIT)]
    assert [a.status_code for a in answers] == [200] * USERS_LIMIT
    assert [int(a.headers["RateLimit-Remaining"]) for a in answers] == list(range(USERS_LIMIT - 1, -1, -1))
    for client in (first, second):
        refused = client.get("/api/v1/users")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
        assert refused.headers["RateLimit-Limit"] == str(USERS_LIMIT)
    assert first.get("/api/v1/projects").status_code == 200  # another group's quota


def test_an_idempotent_repeat_on_the_other_worker_answers_the_first_response(clients):
    first, second = clients
    key = {"Idempotency-Key": f"two-workers-{time.monotonic_ns()}"}
    created = first.post("/api/v1/projects", json={"name": "made once"}, headers=key)
    repeated = second.post("/api/v1/projects", json={"name": "made once"}, headers=key)
    assert created.status_code == repeated.status_code == 201, repeated.text
    assert repeated.json() == created.json() and repeated.headers["Idempotent-Replayed"] == "true"
    names = [p["name"] for p in second.get("/api/v1/projects", params={"limit": 100}).json()["data"]]
    assert names.count("made once") == 1


def test_writes_on_both_workers_then_a_run_watched_on_the_other(clients, demo_shop):
    first, second = clients
    project, connector, _ = demo_shop
    pipelines = f"/api/v1/projects/{project['id']}/pipelines"
    reloads_before = _reloads(first) + _reloads(second)

    def definition(name: str) -> dict:
        step = {"id": "sync", "name": "Sync", "type": "connector_sync", "config": {"connector_id": connector["id"]}}
        return {"name": name, "steps": [step]}

    # A burst of writes through both workers at once, then one more pipeline run at once through the other.
    stamp = time.monotonic_ns()
    with ThreadPoolExecutor(2) as pool:
        made = list(
            pool.map(lambda n: (first, second)[n % 2].post(pipelines, json=definition(f"burst {stamp} {n}")), range(8))
        )
    assert [m.status_code for m in made] == [201] * 8, [m.text for m in made if m.status_code != 201]
    pipeline = first.post(pipelines, json=definition(f"watched {stamp}")).json()
    base = f"{pipelines}/{pipeline['id']}"
    key = {"Idempotency-Key": f"run-{stamp}"}
    started = second.post(f"{base}/run", json={}, headers=key)
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    assert first.post(f"{base}/run", json={}, headers=key).json()["run_id"] == run_id  # launched once

    # The worker that did not start it follows it, live: its WebSocket and (meanwhile) its SSE log stream.
    token = first.http.headers["Authorization"].split()[1]
    ws_url = first.http.base_url.copy_with(scheme="ws", path=f"/api/v1/ws/pipelines/{pipeline['id']}/runs/{run_id}")
    with ThreadPoolExecutor(1) as pool, _connect_on(first, str(ws_url), token) as ws:
        sse = pool.submit(_sse_events, first, f"{base}/runs/{run_id}/logs")
        messages = _drain(ws)
        events = sse.result(timeout=60)
    assert [m["status"] for m in messages if m["type"] == "run_update"][-1] == "succeeded", messages[-3:]
    assert [m["status"] for m in messages if m["type"] == "step_update" and m["step_id"] == "sync"][-1] == "completed"
    assert any(e == "log" and d["step_id"] == "sync" and d["event_type"] == "STEP_SUCCESS" for e, d in events)
    assert [d["status"] for e, d in events if e == "status"][-1] == "succeeded"

    # Nine writes through two processes: a few reloads (one at a time, behind one lease), not one per write.
    reloads = _reloads(first) + _reloads(second) - reloads_before
    assert 1 <= reloads <= 4, reloads


def test_an_alert_changed_anywhere_reaches_a_client_of_either_worker(clients, dagster_webserver: Webserver):
    first, second = clients
    url = dagster_webserver.settings.metadata_url
    rule_id = add_rule(url)
    token = first.http.headers["Authorization"].split()[1]
    stream_url = str(second.http.base_url.copy_with(scheme="ws", path="/api/v1/ws/alerts"))
    with _connect_on(second, stream_url, token) as ws:
        alert_id = fire(url, rule_id, "pipeline:two-workers")  # as a rule sensor of the daemon fires it
        path = f"/api/v1/projects/{project_of(url, rule_id)}/alerts/{alert_id}/acknowledge"
        assert first.post(path).status_code == 200  # on the other worker
        received = [json.loads(ws.recv(timeout=15)) for _ in range(2)]
    assert [(m["type"], m["alert"]["id"]) for m in received] == [
        ("alert_fired", alert_id),
        ("alert_acknowledged", alert_id),
    ]


# Helpers -------------------------------------------------------------------------------------------------------


def _reloads(client: WorkerClient) -> float:
    """This worker's rime_definitions_reloads_total (each process counts its own)."""
    text = client.get("/metrics").text
    match = re.search(r"^rime_definitions_reloads_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class _connect_on:
    """A WebSocket to `url` served by `client`'s worker: connects until the kernel hands one to that worker."""

    def __init__(self, client: WorkerClient, url: str, token: str):
        self.client, self.url, self.token = client, url, token
        self.stack = ExitStack()

    def __enter__(self) -> ClientConnection:
        for _ in range(40):
            ws = ws_connect(self.url, subprotocols=["bearer", self.token], open_timeout=30)
            if self.client.workers.serving(ws.socket.getsockname()[1]) == self.client.worker:
                return self.stack.enter_context(ws)
            ws.close()
        raise AssertionError("no WebSocket reached the worker")

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def _drain(ws: ClientConnection) -> list[dict]:
    """Every message until the server closes the socket (normally, after the run ends)."""
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=120)))
    except ConnectionClosedOK:
        return messages


def _sse_events(client: WorkerClient, path: str) -> list[tuple[str, dict]]:
    """The run's Server-Sent Events, until the stream ends with the run: (event, data) pairs."""
    events, event = [], None
    with client.http.stream("GET", path, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200 and client._served_by(response) == client.worker
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    return events
