"""The one read path: every read of a project's table data (previews, SQL queries, exports) goes through here.

A read gets a DuckDB database of its own (in memory, made for it and closed after it), in which each project
table it reads is a view named as `GET .../tables` lists it (`crm__customer`) over the table's Iceberg metadata
(`iceberg_scan`), whose select list masks every column the caller's role reads masked (governance/masking.py).
Nothing else is in that database, so a query sees masked values by construction: however it filters, joins or
aggregates, it only ever reads the views.

User SQL is fenced three times: sql_guard.check_query (one SELECT over the project's tables, no table functions),
a database holding only the views it reads, and, before the query runs, external access off (files only under
the read tables' own locations, which the views need), the configuration locked (no SET can undo any of it),
the memory and thread limits set, and a timer that interrupts the statement at its timeout.

Loading the iceberg and avro extensions verifies their signatures (about 0.5 s for their 80 MB). The first read
of a process loads them verified; later reads load the same files, from the installed packages, without
verifying them again (`allow_unsigned_extensions` on their own database): a read never runs LOAD on user input
(the guard refuses it and the configuration is locked), so this only skips re-checking files already checked.
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
from duckdb.func import PythonUDFType
from duckdb.sqltypes import VARCHAR

from rime_dagster.connectors.sources._duckdb import extension_directory
from rime_dagster.connectors.sources._sql import quote_ident, quote_literal
from rime_dagster.governance import masking
from rime_dagster.governance.sql_guard import QueryRefused, check_query

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

__all__ = ["QueryRefused", "DataRead", "ProjectData", "ReadLimits", "read_query", "read_table"]

BATCH_ROWS = 8192


class ReadFailed(Exception):
    """The query ran and DuckDB refused it (a misspelt column, a failed cast): the message is DuckDB's first line."""


class ReadTimedOut(ReadFailed):
    pass


class ReadOutOfMemory(ReadFailed):
    pass


class NoSuchTable(LookupError):
    pass


class NoSuchSnapshot(LookupError):
    pass


@dataclass(frozen=True)
class ReadLimits:
    timeout_seconds: float
    memory_limit: str  # DuckDB's spelling: "1GB"
    threads: int
    spare_databases: int = 2  # fresh databases kept open ahead of reads with these limits (0: none)


@dataclass(frozen=True)
class ProjectData:
    """A project's tables as one caller may read them."""

    catalog: Catalog
    namespace: str
    plan: masking.MaskPlan
    hash_key: bytes

    def table_names(self) -> list[str]:
        from pyiceberg.exceptions import NoSuchNamespaceError

        try:
            return [identifier[-1] for identifier in self.catalog.list_tables(self.namespace)]
        except NoSuchNamespaceError:
            return []

    def load(self, name: str) -> Table:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            return self.catalog.load_table((self.namespace, name))
        except (NoSuchTableError, NoSuchNamespaceError):
            raise NoSuchTable(name) from None


class DataRead:
    """An open read: masked Arrow batches, the tables read, and the columns read in clear by exemption (what the
    audit entry of an exempt read names). Close it (or use it as a context manager) to free its database."""

    def __init__(self, con: duckdb.DuckDBPyConnection, tables: list[str], unmasked: dict[str, list[str]]):
        self._con = con
        self.tables = tables
        self.unmasked = unmasked
        self._timer: threading.Timer | None = None
        self._timed_out = False
        self._reader: pa.RecordBatchReader | None = None
        self._timeout = 0.0
        self._limits: ReadLimits | None = None

    def _start(self, sql: str, limits: ReadLimits) -> None:
        self._timeout = limits.timeout_seconds
        self._limits = limits
        self._timer = threading.Timer(limits.timeout_seconds, self._interrupt)
        self._timer.daemon = True
        self._timer.start()
        with self._errors():
            self._reader = self._con.execute(sql).fetch_record_batch(BATCH_ROWS)

    def _interrupt(self) -> None:
        self._timed_out = True
        try:
            self._con.interrupt()
        except duckdb.ConnectionException:  # the read closed as the timer fired: nothing left to stop
            pass

    @property
    def schema(self) -> pa.Schema:
        assert self._reader is not None
        return self._reader.schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        assert self._reader is not None
        while True:
            with self._errors():
                try:
                    batch = self._reader.read_next_batch()
                except StopIteration:
                    return
            yield batch

    def head(self, rows: int) -> tuple[pa.Table, bool]:
        """At most `rows` rows, and whether there were more."""
        batches, count = [], 0
        for batch in self.batches():
            batches.append(batch)
            count += batch.num_rows
            if count > rows:
                break
        table = pa.Table.from_batches(batches, schema=self.schema)
        return table.slice(0, rows), table.num_rows > rows

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._limits is None:  # never started: its opener closes it on the spot
            self._con.close()
        else:
            _spares.retire(self._con, self._limits)

    def __enter__(self) -> DataRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _errors(self) -> _ErrorMap:
        return _ErrorMap(self)


class _ErrorMap:
    """DuckDB's errors as the read path's: the timer's interrupt is a timeout, an allocation failure out of memory."""

    def __init__(self, read: DataRead):
        self._read = read

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, duckdb.Error):
            return
        if isinstance(exc, duckdb.InterruptException) or self._read._timed_out:
            raise ReadTimedOut(f"The query ran longer than {self._read._timeout:g} s and was stopped.") from None
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise ReadOutOfMemory("The query needs more memory than a query may use.") from None
        raise ReadFailed(_first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_verified = threading.Event()
_verify_lock = threading.Lock()


def _open_database(limits: ReadLimits, *, verified: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        ":memory:",
        config={
            "extension_directory": extension_directory(),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_unsigned_extensions": verified,
            "threads": limits.threads,
            "memory_limit": limits.memory_limit,
            "temp_directory": "",  # no spilling to disk: the memory limit is the limit
        },
    )
    try:
        con.execute("LOAD avro")
        con.execute("LOAD iceberg")
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
    except Exception:
        con.close()
        raise
    return con


class _SpareDatabases:
    """Fresh databases opened ahead of the reads that will use them, a few per (threads, memory limit), and the
    closing of the databases reads are done with.

    Opening a DuckDB database costs about 10 ms on an idle machine (its catalog of built-in functions), several
    times that on a busy one, and closing one 1-2 ms: most of a small read's fixed cost. A spare is exactly what
    `_open_database` makes for a read, opened earlier on a background thread: it is handed to one read only, so
    nothing (views, settings, the hash function, temporary objects) can pass from one read to another. A read
    that ends retires its database: the same background thread closes it (it is never handed out again), then
    opens spares up to the count. That work starts as a read ends, not as it starts, so that it does not compete
    with the read's query for the CPU (on 2 cores, refilling as a read started made a 1 M-row aggregate ~20 ms
    slower). A read that finds no spare opens its own database. Spares are only opened once a read has loaded
    the extensions verified (the first read of a process). A forked child drops its parent's databases without
    touching them (their threads did not survive the fork); at exit they are closed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[tuple[int, str], list[duckdb.DuckDBPyConnection]] = {}
        self._retired: dict[tuple[int, str], list[duckdb.DuckDBPyConnection]] = {}
        self._working: set[tuple[int, str]] = set()  # keys with a background thread at work
        self._abandoned: list[duckdb.DuckDBPyConnection] = []  # a fork's inherited databases, never closed

    def take(self, limits: ReadLimits) -> duckdb.DuckDBPyConnection | None:
        with self._lock:
            ready = self._ready.get(_key(limits), [])
            return ready.pop() if ready else None

    def retire(self, con: duckdb.DuckDBPyConnection, limits: ReadLimits) -> None:
        """Closes a read's database, on the background thread (which then refills) unless spares are off."""
        if limits.spare_databases <= 0:
            con.close()
            return
        key = _key(limits)
        with self._lock:
            self._retired.setdefault(key, []).append(con)
            if key in self._working:  # it closes this one before it decides to stop (under the same lock)
                return
            self._working.add(key)
        # Not a daemon: the interpreter waits for it (a few databases' worth) rather than stop it inside DuckDB.
        threading.Thread(target=self._work, args=(limits,), name="rime-read-spares").start()

    def _work(self, limits: ReadLimits) -> None:
        key = _key(limits)
        try:
            while True:
                with self._lock:
                    retired = self._retired.pop(key, [])
                    if not retired and len(self._ready.get(key, [])) >= limits.spare_databases:
                        self._working.discard(key)
                        return
                for con in retired:
                    con.close()
                if not retired:
                    con = _open_database(limits, verified=True)
                    with self._lock:
                        self._ready.setdefault(key, []).append(con)
        except Exception:  # a read opens its own database instead; it reports whatever fails there
            with self._lock:
                self._working.discard(key)

    def count(self, limits: ReadLimits) -> int:
        with self._lock:
            return len(self._ready.get(_key(limits), []))

    def clear(self) -> None:
        """Closes every spare and retired database (tests; a process that stops reading)."""
        with self._lock:
            databases = [con for group in (*self._ready.values(), *self._retired.values()) for con in group]
            self._ready.clear()
            self._retired.clear()
        for con in databases:
            con.close()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._abandoned.extend(con for group in (*self._ready.values(), *self._retired.values()) for con in group)
        self._ready = {}
        self._retired = {}
        self._working = set()


def _key(limits: ReadLimits) -> tuple[int, str]:
    return limits.threads, limits.memory_limit


_spares = _SpareDatabases()
atexit.register(_spares.clear)  # closed in order, not left to the interpreter's finalisation
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_spares._after_fork)


def _connect(limits: ReadLimits) -> duckdb.DuckDBPyConnection:
    """A fresh database for one read: a spare opened ahead of it when there is one."""
    if not _verified.is_set():
        with _verify_lock:
            if not _verified.is_set():
                con = _open_database(limits, verified=False)
                _verified.set()  # spares are opened once this read ends (DataRead.close)
                return con
    return _spares.take(limits) or _open_database(limits, verified=True)


class UnsupportedStorage(ReadFailed):
    """The table's files are not on this host's file system (an object-store warehouse): DuckDB here has no
    extension to read them (httpfs is not installed), so the read path cannot serve them."""


def metadata_path(location: str) -> str:
    """The local path of a table's metadata file, or UnsupportedStorage for any other storage."""
    scheme = location.split("://", 1)[0] if "://" in location else "file"
    if scheme != "file":
        raise UnsupportedStorage(
            f"Tables stored at {scheme}:// cannot be read here: previews, queries and exports need a local "
            "warehouse (RIME_ICEBERG_WAREHOUSE on this host's file system)."
        )
    return location.removeprefix("file://")


def _metadata_path(table: Table) -> str:
    return metadata_path(table.metadata_location)


def _add_view(
    con: duckdb.DuckDBPyConnection,
    project: ProjectData,
    name: str,
    table: Table,
    snapshot_id: int | None = None,
) -> None:
    """The view `name` over `table` (at `snapshot_id`, or the current snapshot), masked for the caller."""
    scan = f"iceberg_scan({quote_literal(_metadata_path(table))}"
    masks = project.plan.table_masks(name)
    schema = table.schema()
    if snapshot_id is not None:
        snapshot = table.snapshot_by_id(snapshot_id)
        if snapshot is None:
            raise NoSuchSnapshot(str(snapshot_id))
        scan += f", snapshot_from_id => {int(snapshot_id)}"
        masks = _masks_at(table, masks, snapshot.schema_id)
        if snapshot.schema_id is not None:
            schema = table.schemas().get(snapshot.schema_id, schema)
    scan += ")"
    # The scan's columns are the schema's top-level fields, in order (iceberg_scan reads a snapshot with the
    # schema it was written with): taken from the metadata pyiceberg has read, not from a DESCRIBE of the scan.
    columns = [field.name for field in schema.fields]
    items = []
    for column in columns:
        ident = quote_ident(column)
        mask = masks.get(column)
        items.append(f"{masking.masked_expression(ident, mask)} AS {ident}" if mask else ident)
    con.execute(f"CREATE VIEW {quote_ident(name)} AS SELECT {', '.join(items) or '*'} FROM {scan}")


def _masks_at(
    table: Table, masks: dict[str, masking.ColumnMask], schema_id: int | None
) -> dict[str, masking.ColumnMask]:
    """The masks of the current schema's columns, by their names in an older schema (Iceberg field ids: a renamed
    column stays masked in the snapshots from before the rename); a name listed by a policy is masked too."""
    current = table.schema()
    schemas = table.schemas()
    old = schemas.get(schema_id, current) if schema_id is not None else current
    found = dict(masks)
    for column, mask in masks.items():
        try:
            field_id = current.find_field(column).field_id
            old_name = old.find_column_name(field_id)
        except ValueError:
            continue
        if old_name is not None and old_name not in found:
            found[old_name] = mask
    return found


def _register_hash(con: duckdb.DuckDBPyConnection, key: bytes) -> None:
    def keyed_hash(values: pa.Array) -> pa.Array:
        return pa.array([None if v is None else masking.keyed_hash(key, v) for v in values.to_pylist()], pa.string())

    con.create_function(
        masking.HASH_FUNCTION, keyed_hash, [VARCHAR], VARCHAR, type=PythonUDFType.ARROW, side_effects=False
    )


def _lock_down(con: duckdb.DuckDBPyConnection, tables: list[Table]) -> None:
    """Files only under the read tables' own locations, then no more configuration changes."""
    directories = set()
    for table in tables:
        location = table.location().rstrip("/") + "/"
        directories |= {location, location.removeprefix("file://")}
    listed = ", ".join(quote_literal(d) for d in sorted(directories))
    con.execute(f"SET allowed_directories = [{listed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _open(
    project: ProjectData,
    limits: ReadLimits,
    views: Mapping[str, tuple[Table, int | None]],
    sql: str,
    con: duckdb.DuckDBPyConnection,
) -> DataRead:
    read: DataRead | None = None
    try:
        _register_hash(con, project.hash_key)
        for name, (table, snapshot_id) in views.items():
            _add_view(con, project, name, table, snapshot_id)
        _lock_down(con, [table for table, _ in views.values()])
        read = DataRead(con, sorted(views), project.plan.exempt_columns(views))
        read._start(sql, limits)
    except BaseException:
        if read is not None and read._timer is not None:
            read._timer.cancel()
        _spares.retire(con, limits)  # a refused or failed read's database goes as a finished read's does
        raise
    return read


def read_table(
    project: ProjectData, name: str, *, limits: ReadLimits, limit: int | None = None, snapshot_id: int | None = None
) -> DataRead:
    """The rows of one table (at a snapshot, if given), masked for the caller."""
    table = project.load(name)
    sql = f"SELECT * FROM {quote_ident(name)}" + (f" LIMIT {int(limit)}" if limit is not None else "")
    return _open(project, limits, {name: (table, snapshot_id)}, sql, _connect(limits))


_PLAIN_NAME = re.compile(r"[a-z0-9_]{1,255}")


class _ProjectTables:
    """The project's tables as sql_guard asks for them, by lower-case name, each loaded once: a name the query
    reads is loaded directly (one catalog lookup), and only a name that is not found that way, which is rare (a
    table whose name has capitals, or no such table), lists the namespace to decide."""

    def __init__(self, project: ProjectData) -> None:
        self._project = project
        self._loaded: dict[str, tuple[str, Table]] = {}
        self._listed: dict[str, str] | None = None

    def __contains__(self, lowered: object) -> bool:
        if not isinstance(lowered, str):
            return False
        if lowered in self._loaded:
            return True
        if _PLAIN_NAME.fullmatch(lowered):  # as the platform names tables; anything else is only looked up in the list
            try:
                self._loaded[lowered] = (lowered, self._project.load(lowered))
                return True
            except NoSuchTable:
                pass
        if self._listed is None:
            self._listed = {name.lower(): name for name in self._project.table_names()}
        name = self._listed.get(lowered)
        if name is None:
            return False
        self._loaded[lowered] = (name, self._project.load(name))
        return True

    def views(self, referenced: list[str]) -> dict[str, tuple[Table, int | None]]:
        return {self._loaded[ref][0]: (self._loaded[ref][1], None) for ref in referenced}


def read_query(project: ProjectData, sql: str, *, limits: ReadLimits) -> DataRead:
    """The result of the user's SQL (QueryRefused unless sql_guard allows it), masked for the caller."""
    tables = _ProjectTables(project)
    con = _connect(limits)
    try:
        views = tables.views(check_query(con, sql, tables))
    except BaseException:
        _spares.retire(con, limits)
        raise
    return _open(project, limits, views, sql, con)
