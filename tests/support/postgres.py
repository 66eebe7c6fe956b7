"""A throwaway PostgreSQL server for the tests: pytest-postgresql's executor runs initdb, starts and stops the server
and removes its files; its janitor makes and drops databases (a copy of a template, when one is named).

It runs the machine's PostgreSQL programs (Debian's `postgresql`; `make test` installs it up front when pg_ctl is
missing, never the tests). initdb and the server refuse to run as root: as root, as in CI, pg_ctl runs as the
`postgres` user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import make_url

USER = "rime"


def find_pg_ctl() -> str | None:
    found = shutil.which("pg_ctl")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return found or (candidates[-1] if candidates else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server(PostgreSQLExecutor):
    """initdb with --no-sync (4 s less on a busy disk): the server is thrown away, its files never need the disk.

    `_build_initdb_command` is the executor's one place that builds initdb's options (pytest-postgresql 10)."""

    def _build_initdb_command(self, initdb_options: list[str], pgdata: str | None = None) -> list[str]:
        return super()._build_initdb_command([*initdb_options, "--no-sync"], pgdata)


def _as_postgres_user(pg_ctl: str, root: Path) -> str:
    """A pg_ctl that runs as `postgres`, for a root test process; `root` becomes that user's."""
    shutil.chown(root, "postgres")
    root.chmod(0o755)
    wrapper = root / "pg_ctl"
    wrapper.write_text(f'#!/bin/sh\nexec runuser -u postgres -- {shlex.quote(pg_ctl)} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a fresh server with database `rime` (user `rime`, trusted); stops and deletes it."""
    with throwaway_postgres_server() as (url, _server):
        yield url


@contextmanager
def throwaway_postgres_server() -> Iterator[tuple[str, PostgreSQLExecutor]]:
    """`throwaway_postgres`, with the server's executor: a test may `stop()` it and `start()` it again (its data
    stays: the executor initialises its directory once)."""
    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        raise RuntimeError("PostgreSQL's pg_ctl was not found: install Debian's `postgresql` (`make test` does)")
    root = Path(tempfile.mkdtemp(prefix="rime-pg-"))
    executable = _as_postgres_user(pg_ctl, root) if os.geteuid() == 0 else pg_ctl
    port = _free_port()
    server = _Server(
        executable=executable,
        host="127.0.0.1",
        port=port,
        datadir=str(root / "data"),
        unixsocketdir=str(root),
        logfile=str(root / "log"),
        startparams="-w",
        dbname="rime",
        user=USER,
        # -F (no fsync) is the executor's. Connections: a test process's pools, Dagster's and the servers' it starts.
        postgres_options="-c listen_addresses=127.0.0.1 -c full_page_writes=off -c max_connections=300",
    )
    try:
        server.start()
        DatabaseJanitor(user=USER, host=server.host, port=port, dbname="rime").init()
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/rime", server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str, name: str, *, template: str | None = None) -> Iterator[str]:
    """A new database `name` on the throwaway server, empty or a copy of `template`; dropped afterwards (its
    connections ended first)."""
    url = make_url(server_url)
    janitor = DatabaseJanitor(
        user=url.username, host=url.host, port=url.port, dbname=name, template_dbname=template, password=url.password
    )
    janitor.init()
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        janitor.drop()
