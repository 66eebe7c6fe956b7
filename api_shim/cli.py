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
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import NoReturn

import httpx

from api_shim.dagster_client import ensure_dagster_home
from rime_client import cli as client_cli
from rime_dagster.platform import environment
from rime_dagster.settings import Settings, get_settings

log = logging.getLogger("rime")
REPO_ROOT = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 10.0
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


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False

    def start(self, name: str, argv: list[str], env: dict[str, str], *, nice: int = 0) -> None:
        # Each child leads its own process group so stopping it stops its own children
        # (the code server's child and run workers) too.
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self.children.append((name, proc))
        log.info("started %s (pid %d)", name, proc.pid)

    def first_exited(self) -> tuple[str, int] | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for _, proc in self.children:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, proc in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", name, GRACE_SECONDS)
        # Kill every group, even those whose leader exited: stragglers must not survive.
        for _, proc in self.children:
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_ready(url: str, timeout: float, supervisor: Supervisor) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor.first_exited():
            return False
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def up(settings: Settings, *, demo: bool, ready_timeout: float) -> int:
    bin_dir = Path(sys.executable).parent
    dagster_home = ensure_dagster_home(settings)
    initialize_dagster_storage(dagster_home)
    token, token_path = admin_token(settings)
    env = process_env(settings, dagster_home)
    settings = Settings(**{**settings.model_dump(exclude={"admin_token"}), "admin_token": token})
    migrate(settings)
    bootstrap(settings, demo=demo)

    workspace = write_workspace(settings)
    supervisor = Supervisor()

    def on_signal(_signum: int, _frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background leaves SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        # Reloads (a new process loading the definitions) are background work: on a busy machine the API's
        # requests come first. Run workers lower their own priority the same way (platform/run_launcher.py).
        supervisor.start("code-server", code_server_command(settings, bin_dir), env, nice=CODE_SERVER_NICENESS)
        # The webserver and the daemon would show a load error until the code server listens.
        if not wait_for_code_server(settings, ready_timeout, alive=lambda: supervisor.first_exited() is None):
            log.error("the rime code server did not start; see the logs above")
            return 1
        supervisor.start("dagster-webserver", webserver_command(settings, bin_dir, workspace), env)
        if settings.dagster_viewer_port:
            supervisor.start("dagster-viewer", webserver_command(settings, bin_dir, workspace, read_only=True), env)
        supervisor.start("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], env)
        supervisor.start(
            "api",
            [
                str(bin_dir / "uvicorn"),
                "--factory",
                "api_shim.main:app_from_env",
                "--host",
                settings.api_host,
                "--port",
                str(settings.api_port),
                "--no-access-log",
                "--log-level",
                settings.log_level.lower(),
            ],
            env,
        )
        api = f"http://{settings.api_host}:{settings.api_port}"
        if wait_ready(f"{api}/health/ready", ready_timeout, supervisor):
            token_hint = (
                f"export RIME_TOKEN=$(cat {token_path})" if token_path else "export RIME_TOKEN=$RIME_ADMIN_TOKEN"
            )
            viewer = settings.dagster_viewer_port
            print(
                "\n  Rime is up.\n"
                f"    Dagster UI : {settings.dagster_ui_base}\n"
                + (f"    read-only  : http://{settings.dagster_host}:{viewer}\n" if viewer else "")
                + f"    API        : {api}/api/v1   (docs: {api}/api/docs)\n"
                f"    Readiness  : {api}/health/ready\n"
                f"    Admin token: {token_hint}\n"
                "  Ctrl-C stops everything.\n",
                flush=True,
            )
        else:
            log.error("the platform did not become ready within %.0f s; see the logs above", ready_timeout)
        while True:
            exited = supervisor.first_exited()
            if exited:
                log.error("%s exited with code %s; stopping the platform", *exited)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        log.info("stopping the platform")
        return 0
    finally:
        supervisor.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply metadata-store migrations")
    boot = sub.add_parser("bootstrap", help="migrate, ensure the RIME_ADMIN_TOKEN admin, optionally the demo project")
    boot.add_argument("--demo", action="store_true")
    start = sub.add_parser("up", help="start Dagster webserver + daemon and the API")
    start.add_argument("--no-demo", action="store_true", help="do not load the demo project")
    start.add_argument("--ready-timeout", type=float, default=180.0)
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
        return up(settings, demo=not args.no_demo, ready_timeout=args.ready_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
