"""`rime` command: `rime migrate`, `rime bootstrap`, `rime up` (the platform) and the API's client commands.

`rime up` runs the whole platform, supervised. The client commands (`rime login`, `rime pipelines run --wait`,
`rime apply -f`, ...) are rime_client/cli's: the SDK over HTTP.

`rime up` runs the `rime` code server, the Dagster webserver, the Dagster daemon and the API as
child process groups; Ctrl-C or SIGTERM stops every one of them (SIGTERM, then SIGKILL after a
grace period), and if any child dies the others are stopped too.

The code location is served by ONE standalone code server (`dagster code-server start`) that the
webserver and the daemon both reach through a `grpc_server` entry of the generated workspace
file. A reload asks that server to replace its one child process, and it stops the replaced one
at once; left to start their own code servers, the webserver and the daemon each start a new
process per reload and leave the old one to die of a missed heartbeat a minute later.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import NoReturn

import httpx

from api_shim.supervisor import GRACE_SECONDS, GaveUp, Supervisor
from rime_client import cli as client_cli
from rime_dagster.platform import environment
from rime_dagster.settings import Settings, get_settings

log = logging.getLogger("rime")
REPO_ROOT = Path(__file__).resolve().parent.parent
CODE_SERVER_NICENESS = 10


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)


def admin_token(settings: Settings) -> tuple[str, Path | None]:
    """RIME_ADMIN_TOKEN, or one generated once into RIME_HOME/admin-token (0600)."""
    if settings.admin_token:
        return settings.admin_token, None
    path = settings.home / "admin-token"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        _write_private(path, "rime_" + secrets.token_urlsafe(32))
    return path.read_text().strip(), path


def migrate(settings: Settings) -> None:
    from rime_dagster.store.migrate import upgrade_to_head

    upgrade_to_head(settings.metadata_url)


def bootstrap(settings: Settings, *, demo: bool) -> None:
    from api_shim.demo import ensure_demo
    from api_shim.main import bootstrap as ensure_admin

    ensure_admin(settings)
    if demo:
        ensure_demo(settings)


WORKSPACE_HEADER = """\
# Written by `rime up` at every start (edit RIME_CODE_SERVER_HOST/PORT instead): the webserver and the
# daemon reach the one `rime` code server that `rime up` starts.
"""


def write_workspace(settings: Settings) -> Path:
    """The Dagster workspace file for a platform whose code location is served by `code_server_command`."""
    path = settings.dagster_home_path / "workspace.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        WORKSPACE_HEADER + "load_from:\n"
        "  - grpc_server:\n"
        f"      host: {settings.code_server_host}\n"
        f"      port: {settings.code_server_port}\n"
        f"      location_name: {settings.dagster_location}\n"
    )
    return path


def process_env(settings: Settings, dagster_home: Path, *, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the processes `rime up` starts: an allow-list (platform/environment.py), DAGSTER_* and RIME_*.

    All four read the metadata store, so they get the RIME_* settings (the secret key and the store's URL among
    them): the API; the code server; the webserver and the daemon, whose run workers (children of the process
    that launches the run, rime_dagster/platform/run_launcher.py) decrypt connector credentials. None gets
    RIME_ADMIN_TOKEN: `rime up` ensures its admin before it starts them. Nothing else of the operator's shell is
    passed on unless named in RIME_ENV_PASSTHROUGH. dbt gets less again (workspace.dbt_env). See "Trust model" in
    the README.
    """
    environ = os.environ if environ is None else environ
    env = environment.allowed(environ, prefixes=("DAGSTER_",), passthrough=settings.env_passthrough)
    env.update({k: v for k, v in environ.items() if k.startswith("RIME_") and k != "RIME_ADMIN_TOKEN"})
    env["RIME_HOME"] = str(settings.home)
    env["DAGSTER_HOME"] = str(dagster_home)
    env.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    return env


def code_server_command(settings: Settings, bin_dir: Path) -> list[str]:
    return [
        str(bin_dir / "dagster"),
        "code-server",
        "start",
        "-m",
        "rime_dagster.definitions",
        "-h",
        settings.code_server_host,
        "-p",
        str(settings.code_server_port),
        "--location-name",
        settings.dagster_location,
    ]


def webserver_command(settings: Settings, bin_dir: Path, workspace: Path, *, read_only: bool = False) -> list[str]:
    """The Dagster webserver; `read_only`: the viewers' one, which refuses launches, reloads and other mutations.

    Dagster's UI has no authentication of its own: both listen on RIME_DAGSTER_HOST (loopback by default) and
    belong behind an authenticating proxy. See "The Dagster UI" in the README.
    """
    port = settings.dagster_viewer_port if read_only else settings.dagster_port
    command = [str(bin_dir / "dagster-webserver"), "-h", settings.dagster_host, "-p", str(port), "-w", str(workspace)]
    return [*command, "--read-only"] if read_only else command


def wait_for_code_server(settings: Settings, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether the code server answers within `timeout` s. It listens only once its location has loaded."""
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=settings.code_server_port, host=settings.code_server_host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            client.ping("")
            return True
        except Exception:
            time.sleep(0.5)
    return False


def initialize_dagster_storage(dagster_home: Path) -> None:
    """Create Dagster's SQLite storages once, before its processes start: the webserver and the
    daemon creating them at the same moment can stamp two Alembic heads into one database."""
    from dagster import DagsterInstance

    DagsterInstance.from_config(str(dagster_home)).dispose()


def busy_ports(settings: Settings) -> list[str]:
    """Each port `rime up` needs that something else holds, as the line that says so and which setting moves it."""
    wanted = [
        (settings.api_host, settings.api_port, "RIME_API_PORT"),
        (settings.dagster_host, settings.dagster_port, "RIME_DAGSTER_PORT"),
        (settings.code_server_host, settings.code_server_port, "RIME_CODE_SERVER_PORT"),
    ]
    if settings.dagster_viewer_port:
        wanted.append((settings.dagster_host, settings.dagster_viewer_port, "RIME_DAGSTER_VIEWER_PORT"))
    busy = []
    for host, port, setting in wanted:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no owner
            try:
                probe.bind((host, port))
            except OSError:
                busy.append(f"port {port} on {host} is in use (set {setting} to use another)")
    return busy


def wait_ready(api: str, instance_id: str, timeout: float, supervisor: Supervisor) -> bool:
    """Whether OUR API (its /health names the instance id `rime up` gave it) is ready within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.check()
        try:
            health = httpx.get(f"{api}/health", timeout=5)
            ours = health.status_code == 200 and health.json().get("instance_id") == instance_id
            if ours and httpx.get(f"{api}/health/ready", timeout=10).status_code == 200:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    return False


def reload_code_location(settings: Settings) -> None:
    """After the code server restarted: wait until it listens, then have the webserver load it again (the daemon
    reconnects by itself)."""
    if not wait_for_code_server(settings, 120):
        log.warning("the restarted code server did not answer within 120 s")
        return
    query = "mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) { __typename } }"
    httpx.post(
        settings.graphql_url,
        json={"query": query, "variables": {"name": settings.dagster_location}},
        timeout=120,
    )


# How long an API worker told to stop may finish its requests (less than the supervisor's grace period).
API_DRAIN_SECONDS = GRACE_SECONDS / 2


def api_command(settings: Settings, bin_dir: Path, log_level: str) -> list[str]:
    """uvicorn serving the API; with RIME_API_WORKERS > 1, that many worker processes on one socket (uvicorn's
    parent process restarts a worker that dies). Each worker builds the app from the same environment."""
    command = [
        str(bin_dir / "uvicorn"),
        "--factory",
        "api_shim.main:app_from_env",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        "--no-access-log",
        "--log-level",
        log_level,
    ]
    if settings.api_workers > 1:
        # A worker stops within the grace period even with WebSockets open: it holds the port until it has.
        command += ["--workers", str(settings.api_workers), "--timeout-graceful-shutdown", str(int(API_DRAIN_SECONDS))]
    return command


def up(settings: Settings, *, demo: bool, ready_timeout: float, verbose: bool = False) -> int:
    busy = busy_ports(settings)
    if busy:
        for line in busy:
            print(f"rime up: {line}", file=sys.stderr)
        return 2
    from api_shim.dagster_client import ensure_dagster_home  # the platform's modules: not for client commands

    # Migrations and Dagster's storage set-up log every step at INFO: only their warnings are news.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    bin_dir = Path(sys.executable).parent
    dagster_home = ensure_dagster_home(settings)
    initialize_dagster_storage(dagster_home)
    token, token_path = admin_token(settings)
    instance_id = secrets.token_hex(8)
    env = {**process_env(settings, dagster_home), "RIME_STOP_GRACE_SECONDS": str(GRACE_SECONDS)}
    settings = Settings(**{**settings.model_dump(exclude={"admin_token"}), "admin_token": token})
    migrate(settings)
    bootstrap(settings, demo=demo)

    write_workspace(settings)
    supervisor = Supervisor(cwd=REPO_ROOT)
    level = "info" if verbose else "warning"  # the processes' own logs: warnings and errors unless --verbose

    def on_signal(_signum: int, _frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background leaves SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        # Reloads (a new process loading the definitions) are background work: on a busy machine the API's
        # requests come first. Run workers lower their own priority the same way (platform/run_launcher.py).
        supervisor.start(
            "code-server",
            [*code_server_command(settings, bin_dir), "--log-level", level],
            {**env, "RIME_GUARD_REAP": "1"},  # its `dagster api grpc` child ends with it
            nice=CODE_SERVER_NICENESS,
            on_restart=lambda: reload_code_location(settings),
        )
        # The webserver and the daemon would show a load error until the code server listens.
        if not wait_for_code_server(settings, ready_timeout, alive=lambda: supervisor.alive("code-server")):
            log.error("the rime code server did not start; see the logs above")
            return 1
        _start_servers(supervisor, settings, bin_dir, env, level=level, instance_id=instance_id)
        api = f"http://{settings.api_host}:{settings.api_port}"
        if wait_ready(api, instance_id, ready_timeout, supervisor):
            _print_summary(settings, api, token_path)
        else:
            log.error("the platform did not become ready within %.0f s; see the logs above", ready_timeout)
        while True:
            supervisor.check()
            time.sleep(0.5)
    except GaveUp as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("stopping the platform")
        return 0
    finally:
        supervisor.stop()


def _start_servers(
    supervisor: Supervisor, settings: Settings, bin_dir: Path, env: dict[str, str], *, level: str, instance_id: str
) -> None:
    """The webserver (and the read-only one), the daemon and the API, once the code server listens."""
    workspace = settings.dagster_home_path / "workspace.yaml"
    webserver = webserver_command(settings, bin_dir, workspace)
    supervisor.start("dagster-webserver", [*webserver, "--dagster-log-level", level], env)
    if settings.dagster_viewer_port:
        viewer_argv = webserver_command(settings, bin_dir, workspace, read_only=True)
        supervisor.start("dagster-viewer", [*viewer_argv, "--dagster-log-level", level], env)
    daemon = [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace), "--log-level", level]
    supervisor.start("dagster-daemon", daemon, env)
    api_env = {**env, "RIME_INSTANCE_ID": instance_id}  # every worker's /health names it
    if settings.api_workers > 1:
        # The workers are uvicorn's children: if its parent dies they must go with it (they hold the port).
        api_env["RIME_GUARD_REAP"] = "1"
    supervisor.start("api", api_command(settings, bin_dir, level), api_env)


def _print_summary(settings: Settings, api: str, token_path: Path | None) -> None:
    token_hint = f"export RIME_TOKEN=$(cat {token_path})" if token_path else "export RIME_TOKEN=$RIME_ADMIN_TOKEN"
    viewer = settings.dagster_viewer_port
    print(
        "\n  Rime is up.\n"
        f"    Dagster UI : {settings.dagster_ui_base}\n"
        + (f"    read-only  : http://{settings.dagster_host}:{viewer}\n" if viewer else "")
        + f"    API        : {api}/api/v1   (docs: {api}/api/docs)\n"
        + (f"    API workers: {settings.api_workers}, {_shared_limits(settings)}\n" if settings.api_workers > 1 else "")
        + f"    Readiness  : {api}/health/ready\n"
        f"    Admin token: {token_hint}\n"
        "  A process that dies is restarted. Ctrl-C stops everything.\n",
        flush=True,
    )


def _shared_limits(settings: Settings) -> str:
    storage = settings.rate_limit_storage_uri
    if storage.startswith("rime-store://"):
        return "rate limits shared through the metadata store (RIME_RATE_LIMIT_STORAGE to change)"
    return f"rate limits counted in {storage.split('://', 1)[0]}://"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply metadata-store migrations")
    boot = sub.add_parser("bootstrap", help="migrate, ensure the RIME_ADMIN_TOKEN admin, optionally the demo project")
    boot.add_argument("--demo", action="store_true")
    start = sub.add_parser("up", help="start Dagster webserver + daemon and the API")
    start.add_argument("--no-demo", action="store_true", help="do not load the demo project")
    start.add_argument("--ready-timeout", type=float, default=180.0)
    start.add_argument("--verbose", action="store_true", help="show the processes' INFO logs, not only warnings")
    client_cli.add_commands(sub)  # login, projects, connectors, pipelines, runs, apply: the SDK over HTTP
    args = parser.parse_args(argv)
    if client_cli.handles(args):
        return client_cli.run(args)

    settings = get_settings()
    from api_shim.main import configure_logging

    configure_logging(settings.log_level)
    if args.command == "migrate":
        migrate(settings)
    elif args.command == "bootstrap":
        migrate(settings)
        bootstrap(settings, demo=args.demo)
    elif args.command == "up":
        return up(settings, demo=not args.no_demo, ready_timeout=args.ready_timeout, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
