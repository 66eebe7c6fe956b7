"""`rime up` end to end: the whole platform becomes ready and runs the demo, and SIGINT/SIGTERM leave no process
behind. One full boot serves the platform's tests; SIGTERM is checked on a platform still starting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import closed_port

pytestmark = pytest.mark.dagster


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid: int) -> set[int]:
    children: dict[int | None, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def _role(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    text = b" ".join(argv)
    if b"child_guard.py" in text:
        return "guard"
    if b"code-server" in text or (b"api" in argv and b"grpc" in argv):
        return "code-server"
    if b"dagster-webserver" in text:
        return "webserver"
    if b"dagster-daemon" in text:
        return "daemon"
    if b"uvicorn" in text:
        return "api"
    return "other"


TOKEN, KEY, UNRELATED = "rime_up_test_token_0123456789", "rime-up-env-secret-key-73f0", "deploy-token-sentinel-19"


def _secrets_held(pids) -> dict[str, list[set[str]]]:
    """Which of the admin token, the secret key and an unrelated shell secret each process's environment holds."""
    held: dict[str, list[set[str]]] = {}
    for pid in pids:
        values = set(_environ(pid).values())
        named = {name for name, v in (("token", TOKEN), ("key", KEY), ("unrelated", UNRELATED)) if v in values}
        held.setdefault(_role(pid), []).append(named)
    return held


def _wait_for_pipeline_run(api: str, headers: dict, url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}{url}", headers=headers, timeout=10).json()
        if run["status"] in ("succeeded", "failed", "canceled"):
            return run
        time.sleep(1)
    raise AssertionError(f"{url} did not finish in {timeout:.0f} s")


def _graphql(dagster_port: int, query: str, variables: dict | None = None) -> dict:
    answer = httpx.post(f"http://127.0.0.1:{dagster_port}/graphql", json={"query": query, "variables": variables or {}})
    answer.raise_for_status()
    return answer.json()["data"]


def _dagster_jobs(dagster_port: int) -> set[str]:
    query = (
        '{ repositoryOrError(repositorySelector: {repositoryLocationName: "rime", repositoryName: "__repository__"})'
        " { ... on Repository { jobs { name } } } }"
    )
    return {job["name"] for job in _graphql(dagster_port, query)["repositoryOrError"]["jobs"]}


def _dagster_run(dagster_port: int, rime_run_id: str) -> tuple[dict[str, str], str]:
    """The run's tags and job name, as the Dagster UI shows them."""
    hex_id = rime_run_id.removeprefix("run_")
    run_id = f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { jobName tags { key value } } } }"
    run = _graphql(dagster_port, query, {"id": run_id})["runOrError"]
    return {t["key"]: t["value"] for t in run["tags"]}, run["jobName"]


def _rime_up(tmp_path, *options: str) -> tuple[subprocess.Popen, int, int]:
    """`rime up` as a newcomer runs it, on free ports; returns the process, the API's port and the webserver's."""
    api_port, dagster_port, code_server_port = closed_port(), closed_port(), closed_port()
    env = {
        **os.environ,
        "RIME_HOME": str(tmp_path / "home"),
        "RIME_API_PORT": str(api_port),
        "RIME_DAGSTER_PORT": str(dagster_port),
        "RIME_CODE_SERVER_PORT": str(code_server_port),
        "RIME_ADMIN_TOKEN": TOKEN,
        "RIME_SECRET_KEY": KEY,
        "ACME_DEPLOY_TOKEN": UNRELATED,  # the operator's shell: not for the platform's processes
    }
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api_shim.cli", "up", *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, api_port, dagster_port


def _stops_everything(proc: subprocess.Popen, stop_signal: int, family: set[int]) -> None:
    """`stop_signal` makes `rime up` stop its processes and exit 0 (its own handler ran, not the signal's default);
    none of `family` outlives it."""
    proc.send_signal(stop_signal)
    assert proc.wait(timeout=30) == 0, proc.stdout.read() if proc.stdout else ""
    deadline = time.monotonic() + 5  # killed processes are gone once the kernel has reaped them
    while (survivors := [pid for pid in family if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivors == [], f"left behind: {survivors}"


def _kill_leftovers(proc: subprocess.Popen, family: set[int]) -> None:
    if proc.poll() is None:
        proc.kill()
    for pid in family | _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(600)  # one boot for all of it: the demo, a second `rime up`, three faults and a schedule tick
def test_up_ready_runs_the_demo_then_ctrl_c_stops_everything(tmp_path):
    """`rime up` as a newcomer runs it: ready, the demo loaded, the demo pipeline run end to end, each process
    holding only the secrets it needs (issue 11, item 3), and nothing left after Ctrl-C (SIGINT)."""
    proc, api_port, dagster_port = _rime_up(tmp_path)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{api_port}/health/ready", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, ready.text if ready else "API never answered"
        assert {d["status"] for d in ready.json()["dependencies"].values()} == {"ok"}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        api = f"http://127.0.0.1:{api_port}/api/v1"
        projects = httpx.get(f"{api}/projects", headers=headers).json()["data"]
        demo = next(p for p in projects if p["name"] == "demo")
        connectors = httpx.get(f"{api}/projects/{demo['id']}/connectors", headers=headers).json()["data"]
        assert [(c["name"], c["connector_type"]) for c in connectors] == [("Demo Shop", "files")]
        dbt_projects = httpx.get(f"{api}/projects/{demo['id']}/dbt-projects", headers=headers).json()["data"]
        assert [(d["name"], d["dbt_project_name"], d["models_count"]) for d in dbt_projects] == [
            ("Shop Models", "demo_shop", 4)
        ]
        pipelines = httpx.get(f"{api}/projects/{demo['id']}/pipelines", headers=headers).json()["data"]
        assert [(p["name"], [s["type"] for s in p["steps"]]) for p in pipelines] == [
            ("Shop nightly", ["connector_sync", "dbt"])
        ]
        family = _descendants(proc.pid)
        assert len(family) >= 4  # code server (+ its child), webserver, daemon, API
        held = _secrets_held(family)
        assert {"code-server", "webserver", "daemon", "api"} <= held.keys(), held
        # Every process reads the store (the webserver's and the daemon's run workers decrypt credentials); none
        # holds the admin token or anything else of the shell.
        roles = ("api", "code-server", "webserver", "daemon", "guard")
        assert all(s == {"key"} for role in roles for s in held[role]), held
        # The demo connector syncs every minute from now: the daemon's schedule ticks through the faults below.
        connector_url = f"{api}/projects/{demo['id']}/connectors/{connectors[0]['id']}"
        assert httpx.patch(connector_url, headers=headers, json={"schedule": "* * * * *"}).status_code == 200

        # The demo pipeline, as the README's first five minutes run it: a sync, then dbt in its sandbox, each in a
        # run worker that the webserver starts.
        nightly = f"/projects/{demo['id']}/pipelines/{pipelines[0]['id']}"
        started = httpx.post(f"{api}{nightly}/run", headers=headers, timeout=120)
        assert started.status_code == 202, started.text
        run = _wait_for_pipeline_run(api, headers, f"{nightly}/runs/{started.json()['run_id']}")
        assert run["status"] == "succeeded", run
        assert [s["status"] for s in run["steps"]] == ["completed", "completed"], run["steps"]
        # The Dagster UI shows the demo's jobs by readable names, and who launched the API's run.
        assert {"sync_demo", "demo__shop_models", "demo__shop_nightly"} <= _dagster_jobs(dagster_port)
        tags, job_name = _dagster_run(dagster_port, run["run_id"])
        assert job_name == "demo__shop_nightly"
        assert tags["user"] == tags["rime/triggered_by"] == run["triggered_by"] != "", tags

        _second_up_on_the_same_ports_exits_at_once(tmp_path, api_port, dagster_port)
        _faults_survived(proc, api_port, dagster_port, headers, connector_url)
        family = _descendants(proc.pid)
        _stops_everything(proc, signal.SIGINT, family)
    finally:
        _kill_leftovers(proc, family)


def _pid_of(proc: subprocess.Popen, role: str) -> int | None:
    """The process doing `role`'s work (not its guard, not a child of its own)."""
    pids = [pid for pid in _descendants(proc.pid) if _role(pid) == role and _role(_parent(pid) or 0) == "guard"]
    return pids[0] if pids else None


def _second_up_on_the_same_ports_exits_at_once(tmp_path, api_port: int, dagster_port: int) -> None:
    """Another `rime up` (another home) on the running platform's ports says so and exits, touching nothing."""
    env = {
        **os.environ,
        "RIME_HOME": str(tmp_path / "second"),
        "RIME_API_PORT": str(api_port),
        "RIME_DAGSTER_PORT": str(dagster_port),
    }
    env.pop("DAGSTER_HOME", None)
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "api_shim.cli", "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert time.monotonic() - started < 30  # an interpreter start and the port check: seconds even on a busy machine
    assert f"port {api_port} on 127.0.0.1 is in use (set RIME_API_PORT to use another)" in second.stderr
    assert f"port {dagster_port} on 127.0.0.1 is in use (set RIME_DAGSTER_PORT to use another)" in second.stderr
    assert not (tmp_path / "second").exists()


def _restarted(proc: subprocess.Popen, role: str, old: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _pid_of(proc, role)
        if new is not None and new != old:
            return new
        assert proc.poll() is None, "rime up exited"
        time.sleep(0.2)
    raise AssertionError(f"{role} was not restarted within {timeout:.0f} s")


DEMO_SCHEDULE = "demo__demo_shop_schedule"  # the demo connector's schedule


def _scheduled_times(dagster_port: int) -> list[datetime]:
    """The minute of each run the demo connector's schedule launched, oldest first (one per run), from its ticks."""
    query = (
        'query($name: String!) { scheduleOrError(scheduleSelector: {repositoryLocationName: "rime", '
        'repositoryName: "__repository__", scheduleName: $name}) { ... on Schedule { scheduleState { '
        "ticks(limit: 100) { timestamp status runIds } } } } }"
    )
    ticks = _graphql(dagster_port, query, {"name": DEMO_SCHEDULE})["scheduleOrError"]["scheduleState"]["ticks"]
    return sorted(datetime.fromtimestamp(t["timestamp"], UTC) for t in ticks for _ in t["runIds"])


def _scheduled_runs(dagster_port: int) -> int:
    """How many runs carry the demo schedule's name, ticks or not."""
    runs = "query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs { results { runId } } } }"
    tags = [{"key": "dagster/schedule_name", "value": DEMO_SCHEDULE}]
    return len(_graphql(dagster_port, runs, {"tags": tags})["runsOrError"]["results"])


def _faults_survived(proc, api_port: int, dagster_port: int, headers: dict, connector_url: str) -> None:
    """Each of the webserver, the daemon and the API killed: `rime up` restarts it; meanwhile what needs Dagster
    answers 503 at once and the rest works; no scheduled sync is lost or doubled."""
    api = f"http://127.0.0.1:{api_port}"
    sync = f"{connector_url}/sync"

    print(f"{time.strftime('%X')} faults: the webserver", file=sys.stderr)
    webserver = _pid_of(proc, "webserver")
    os.kill(webserver, signal.SIGKILL)
    started = time.monotonic()
    refused = httpx.post(sync, headers=headers, timeout=10)
    assert refused.status_code == 503 and time.monotonic() - started < 1, refused.text
    assert httpx.get(connector_url, headers=headers).status_code == 200  # the rest keeps working
    _restarted(proc, "webserver", webserver)
    deadline = time.monotonic() + 30
    while (answer := httpx.post(sync, headers=headers, timeout=30)).status_code != 202:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)

    # The daemon killed just before a minute's tick: restarted, it still launches that tick, once.
    print(f"{time.strftime('%X')} faults: the daemon", file=sys.stderr)
    while not _scheduled_times(dagster_port):  # the schedule has ticked once
        time.sleep(1)
    time.sleep(max(0.0, 59 - time.time() % 60))  # down across the minute: its tick is caught up after the restart
    daemon = _pid_of(proc, "daemon")
    os.kill(daemon, signal.SIGKILL)
    _restarted(proc, "daemon", daemon)
    due = datetime.fromtimestamp((int(time.time() // 60) + 1) * 60, UTC)  # the first tick after the restart
    deadline = time.monotonic() + 120
    while (times := _scheduled_times(dagster_port))[-1] < due:
        assert time.monotonic() < deadline, times
        time.sleep(1)
    assert times == [times[0] + timedelta(minutes=n) for n in range(len(times))], times  # none lost, none doubled
    # Every run of the schedule is one of its ticks' (a tick records its run just after launching it: at most the
    # newest one may not be counted yet).
    assert _scheduled_runs(dagster_port) - len(times) in (0, 1)

    print(f"{time.strftime('%X')} faults: the API", file=sys.stderr)
    api_pid = _pid_of(proc, "api")
    instance = httpx.get(f"{api}/health").json()["instance_id"]
    os.kill(api_pid, signal.SIGKILL)
    _restarted(proc, "api", api_pid)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=2).json()["instance_id"] == instance:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not come back"
        time.sleep(0.2)


def test_sigkill_of_rime_up_leaves_nothing_behind(tmp_path):
    """`rime up` killed outright (no handler can run): the kernel stops its processes' guards, which stop their
    process groups; nothing keeps the ports."""
    proc, api_port, _ = _rime_up(tmp_path, "--no-demo")
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while _pid_of(proc, "api") is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the API never started"
            time.sleep(0.1)
        family = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (survivors := [pid for pid in family if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert survivors == [], f"left behind: {[(pid, _role(pid)) for pid in survivors]}"
    finally:
        _kill_leftovers(proc, family)


def test_sigterm_while_starting_stops_everything(tmp_path):
    """SIGTERM (what a service manager sends) stops `rime up` as Ctrl-C does, here while the platform is still
    starting: its code server is loading the code location. One handler serves every stop signal, so the full
    platform's stop is the test above; this one needs no second full boot."""
    proc, _, _ = _rime_up(tmp_path, "--no-demo")  # the demo's set-up (a dbt parse) is the test above's
    family: set[int] = set()
    try:
        # The code server's own child (`dagster api grpc`) is loading the definitions: by then `rime up` has
        # recorded the code server it started and is waiting for it to listen.
        deadline = time.monotonic() + 120
        while not any(_role(pid) == "code-server" and _parent(pid) != proc.pid for pid in _descendants(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "the code server never started its child"
            time.sleep(0.1)
        family = _descendants(proc.pid)
        _stops_everything(proc, signal.SIGTERM, family)
    finally:
        _kill_leftovers(proc, family)
