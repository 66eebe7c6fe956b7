"""Engine and session factory for the metadata store (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

# Registers the session hooks that bump the definitions generation on every commit that changes
# what Dagster builds; every session of the metadata store is made here.
from rime_dagster.store import generation as _generation  # noqa: F401


def _sqlite_pragmas(busy_timeout: float) -> Callable[[sqlite3.Connection, ConnectionPoolEntry], None]:
    def apply(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the Dagster code location read while the API writes; foreign keys make
        # project deletion cascade; busy_timeout waits out a concurrent writer.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return apply


# How long a write waits for another writer before "database is locked" (the API answers 503 then);
# the API takes RIME_METADATA_BUSY_TIMEOUT_SECONDS.
BUSY_TIMEOUT_SECONDS = 10.0
_gates: dict[str, threading.Lock] = {}
_gates_lock = threading.Lock()


def sqlite_write_gate(url: str) -> threading.Lock:
    """The lock this process's write transactions on the SQLite database of `url` queue on."""
    database = str(Path(make_url(url).database or ":memory:").resolve())
    with _gates_lock:
        return _gates.setdefault(database, threading.Lock())


class _GatedConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions queue on one lock per database file in this process.

    SQLite makes a writer that finds the database locked poll with growing sleeps (up to 100 ms each,
    no fairness), so under a burst of concurrent requests some wait for seconds while others pass.
    Waiting on a lock instead hands the database over the moment the previous writer commits.
    Other processes (the code location, run workers) still meet SQLite's own lock and busy timeout.
    """

    gate: threading.Lock | None = None
    busy_timeout = BUSY_TIMEOUT_SECONDS
    holding = False

    def enter_write(self) -> None:
        if self.gate is not None and not self.gate.acquire(timeout=self.busy_timeout):
            raise sqlite3.OperationalError("database is locked (another write transaction of this process)")
        self.holding = self.gate is not None

    def leave_write(self) -> None:
        if self.holding and self.gate is not None:
            self.holding = False
            self.gate.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_write()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_write()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_write()


def _begin_immediate(conn: Connection) -> None:
    # Listened for only on engines whose connections are _GatedConnections (sqlite3's factory).
    dbapi = cast(_GatedConnection, conn.connection.dbapi_connection)
    try:
        dbapi.enter_write()
    except sqlite3.OperationalError as exc:  # as SQLite's own "database is locked" would reach callers
        raise OperationalError("BEGIN IMMEDIATE", None, exc) from None
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        dbapi.leave_write()
        raise


def make_engine(
    url: str, *, read_only: bool = False, deferred: bool = False, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> Engine:
    """The engine of the metadata store. `read_only`: for readers that never write (the code location
    building its definitions, the definitions sync): on SQLite their transactions are plain
    snapshots that never take the write lock, so they never make a writer wait. `deferred`: for
    units of work that mostly read (the API's GET requests): on SQLite a snapshot as well, which takes
    the write lock only if it writes, so reads still answer while another writer holds the lock. `busy_timeout`
    (seconds): how long a SQLite writer waits for the write lock, and any connection for a connect,
    before an OperationalError."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None hands transaction control to us: every transaction starts
        # with BEGIN IMMEDIATE. With pysqlite's deferred BEGIN, a transaction that read
        # before another connection committed a write fails its own write at once
        # ("database is locked", no busy wait); taking the write lock up front makes
        # concurrent writers queue on busy_timeout instead. A read-only transaction is a
        # deferred BEGIN: in WAL mode it reads one consistent snapshot and locks nothing.
        connect_args = {
            "check_same_thread": False,
            "timeout": busy_timeout,
            "isolation_level": None,
            "factory": _GatedConnection,
        }
        # Enough pooled connections for the API's worker threads: a connection made past the pool
        # runs the PRAGMAs above and is closed again, once per request under a burst.
        engine = create_engine(url, connect_args=connect_args, pool_size=20, max_overflow=20)
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
        if read_only or deferred:
            if read_only:
                event.listen(engine, "connect", lambda conn, _record: conn.execute("PRAGMA query_only=ON"))
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        else:
            gate = sqlite_write_gate(url)

            def attach_gate(dbapi_connection: _GatedConnection, _record: ConnectionPoolEntry) -> None:
                dbapi_connection.gate = gate
                dbapi_connection.busy_timeout = busy_timeout

            event.listen(engine, "connect", attach_gate)
            event.listen(engine, "begin", _begin_immediate)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        # psycopg (v3) is the driver we install; a bare postgresql:// URL means it.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        # A server that does not answer fails a connect within 5 s (or the busy timeout, if shorter); a row or
        # table lock held by another transaction fails the wait after the busy timeout, as on SQLite.
        connect_args={
            "connect_timeout": max(1, math.ceil(min(busy_timeout, 5.0))),
            "options": f"-c lock_timeout={int(busy_timeout * 1000)}",
        },
    )


def engine_for(
    url: str, *, read_only: bool = False, deferred: bool = False, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> Engine:
    """The process's one engine for these arguments (keyed by value, however they are passed)."""
    deferred = deferred and make_url(url).get_backend_name() == "sqlite"  # PostgreSQL has no lock to defer
    return _engine(url, read_only, deferred, float(busy_timeout))


_ENGINES: OrderedDict[tuple[str, bool, bool, float], Engine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
_MAX_ENGINES = 16


def _engine(url: str, read_only: bool, deferred: bool, busy_timeout: float) -> Engine:
    """Cached; the least recently used engine past 16 is disposed (its pooled connections closed), not left for
    the garbage collector with its connections open."""
    key = (url, read_only, deferred, busy_timeout)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            _ENGINES.move_to_end(key)
            return engine
        engine = _ENGINES[key] = make_engine(url, read_only=read_only, deferred=deferred, busy_timeout=busy_timeout)
        evicted = _ENGINES.popitem(last=False)[1] if len(_ENGINES) > _MAX_ENGINES else None
    if evicted is not None:
        evicted.dispose()
    return engine


def dispose_engines() -> None:
    """Disposes and forgets every cached engine (tests that make a database per test)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()


def session_factory(
    url: str, *, read_only: bool = False, deferred: bool = False, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> sessionmaker[Session]:
    engine = engine_for(url, read_only=read_only, deferred=deferred, busy_timeout=busy_timeout)
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """A read-only unit of work: one consistent snapshot, no lock that a writer would wait for."""
    session = session_factory(url, read_only=True)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A unit of work outside a request: commits on success, rolls back on error."""
    with unit_of_work(session_factory(url)) as session:
        yield session


@contextmanager
def unit_of_work(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """Commits when the block succeeds, rolls back when it raises, always closes."""
    session = sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def release(session: Session) -> None:
    """Ends the request's transaction before slow work that needs no metadata store (Dagster calls).

    On SQLite every transaction holds the write lock from its first statement (BEGIN IMMEDIATE),
    so a run launch (seconds) inside it would make every other writer queue. Nothing is lost:
    it commits, loaded rows stay readable (expire_on_commit=False), and a later query simply
    opens a new transaction, which the unit of work commits as usual.
    """
    session.commit()
