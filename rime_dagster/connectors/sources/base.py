"""The connector plug-in interface: one class per `connector_type`, found through REGISTRY.

A plug-in owns its pydantic `config` and `credentials` models (unknown keys rejected), and the
hooks behind its connection test, live schema discovery and streaming batch reader. Adding a type
means adding a module (or package) here, named like the type (`<connector_type>.py`), and
decorating its class with `@register`; no route changes. tests/connectors/test_source_conformance.py is the
test every type must pass: a new type starts by adding its case there.

What every plug-in shares lives here, in the public methods (`test`, `discover`, `arrow_schema`,
`read`) that wrap the plug-in's hooks (`_count_tables`, `_discover`, `_arrow_schema`, `_scan`):

* errors: the plug-in's driver exceptions (`driver_errors`) become SourceErrors through its one
  `_translate`, raised with no driver exception chained (a traceback never repeats a driver's
  message, which may quote a secret); `test` never raises and words success the same for all;
* types: every schema goes through the landing type rules (`connectors.landing_types`), so a
  type Iceberg can't store is converted, or refused with a SourceError naming the column;
* reads: `batch_rows` is checked, rows are filtered by the cursor (unless the plug-in compared
  in its own query), batches are conformed to the schema, empty ones dropped and the rest filled
  up to `batch_rows` rows.

A plug-in also declares what on the server its config reaches (`path_fields`, `host_fields`) and where
its credentials are sent (`credentials_bound_to`): the API confines those (see `_access.SourceAccess`)
and asks for the credentials again when their destination changes.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from rime_dagster.connectors.landing_types import (
    CursorValue,
    LandingTypeError,
    conform_batch,
    is_orderable,
    landing_schema,
)

if TYPE_CHECKING:
    from rime_dagster.connectors.sources._access import SourceAccess

DEFAULT_BATCH_ROWS = 65_536

# What a source was doing when its driver failed: `_translate` words the SourceError after it.
Action = Literal["connect", "test", "discover", "schema", "read"]
T = TypeVar("T")


class StrictModel(BaseModel):
    """Base of every config/credentials model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class NoCredentials(StrictModel):
    pass


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str  # the source's own type name, e.g. "numeric(12,2)", "timestamp with time zone"
    nullable: bool


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: list[ColumnInfo]
    primary_key: list[str] = field(default_factory=list)
    row_estimate: int | None = None


@dataclass(frozen=True)
class TestResult:
    success: bool
    message: str


class SourceError(Exception):
    """A failure the user can act on (bad credentials, unreachable host, missing table).

    Its message is shown to users and written to run logs: it must never contain a secret.
    """


class AccessRefused(SourceError):
    """A configured path or host that connectors may not reach; `field` is its config key."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def connection_successful(tables: int) -> str:
    """What a successful connection test says, for every source."""
    return f"Connection successful. {tables} {'table' if tables == 1 else 'tables'} accessible."


@dataclass(frozen=True)
class Cursor:
    """An incremental read: only rows with `field` > `value` (`value` None: the first sync, every row)."""

    field: str
    value: CursorValue | None


@dataclass(frozen=True)
class Scan:
    """An open read of one table, as a plug-in's `_scan` yields it."""

    schema: pa.Schema  # of `batches`; the base converts a type Iceberg can't store
    batches: Iterable[pa.RecordBatch]  # of any size: the base cuts and fills them to `batch_rows` rows
    cursor_applied: bool = False  # the plug-in's own query keeps only the rows past the cursor


class Source(ABC):
    """One configured source. Instances are cheap; connections open per call."""

    connector_type: ClassVar[str]
    config_model: ClassVar[type[StrictModel]]
    credentials_model: ClassVar[type[StrictModel]] = NoCredentials
    # Config keys naming a server file or folder the source reads, and a host it connects to: confined by
    # `access` when the connector is created or changed, and again each time the source opens them.
    path_fields: ClassVar[tuple[str, ...]] = ()
    host_fields: ClassVar[tuple[str, ...]] = ()
    # Where the credentials go ("config.host", "credentials.username"): changing one of these needs the
    # credentials again, so that a stored password never follows a connector to another server.
    credentials_bound_to: ClassVar[tuple[str, ...]] = ()
    # The exceptions of the plug-in's drivers, which `_translate` turns into SourceErrors.
    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(
        self,
        config: StrictModel,
        credentials: StrictModel | None,
        *,
        upload_dir: Path | None = None,
        access: SourceAccess | None = None,
    ):
        self.config = config
        self.credentials = credentials or self.credentials_model()
        self.upload_dir = upload_dir  # the connector's upload area (used by `files`)
        # What the deployment lets connectors reach. None (direct use in tests, dbt targets): no confinement.
        self.access = access

    @classmethod
    def from_dicts(
        cls,
        config: dict[str, Any],
        credentials: dict[str, Any] | None,
        *,
        upload_dir: Path | None = None,
        access: SourceAccess | None = None,
    ) -> Source:
        """Validates raw dicts (pydantic.ValidationError on bad input) and builds the source."""
        return cls(
            cls.config_model.model_validate(config),
            cls.credentials_model.model_validate(credentials or {}),
            upload_dir=upload_dir,
            access=access,
        )

    def check_access(self) -> None:
        """AccessRefused when a configured path or host is off limits; other SourceErrors (a host that does not
        resolve yet, a missing folder) mean it can't be judged now: it is checked again at every use."""
        if self.access is None:
            return
        for key in self.path_fields:
            if value := getattr(self.config, key):
                self.access.confine(value, field=key)
        for key in self.host_fields:
            self.access.addresses(getattr(self.config, key), field=key)

    def _confined(self, path: str | Path, *, field: str, shown: str | None = None) -> Path:
        """`path` to open: symlinks resolved and checked against `access` (unchanged without one)."""
        return self.access.confine(path, field=field, shown=shown) if self.access else Path(path)

    # -- the interface: the same for every plug-in --------------------------------------------------

    def test(self, timeout: float) -> TestResult:
        """A real connection attempt bounded by `timeout` seconds; never raises, never leaks secrets."""
        try:
            tables = self._guarded("test", None, lambda: self._count_tables(timeout))
        except SourceError as exc:
            return TestResult(False, str(exc))
        except Exception as exc:  # a connection test reports, whatever happens
            return TestResult(False, f"Connection test failed: {type(exc).__name__}: {self._scrub(str(exc))}")
        return TestResult(True, connection_successful(tables))

    def discover(self, timeout: float) -> list[TableInfo]:
        """The tables this source offers, with columns (in the source's own type names), primary keys and
        row estimates."""
        return self._guarded("discover", None, lambda: self._discover(timeout))

    def arrow_schema(self, table: str) -> pa.Schema:
        """The Arrow schema `read` yields for `table`: landing types only (see landing_types)."""
        return self._guarded("schema", table, lambda: self._landing(self._arrow_schema(table), table))

    def read(
        self,
        table: str,
        *,
        cursor_field: str | None = None,
        cursor_value: CursorValue | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> Iterator[pa.RecordBatch]:
        """Streams `table` as record batches of `arrow_schema(table)`, bounded memory: `batch_rows` rows each
        (the last one fewer); ValueError when `batch_rows` is below 1.

        `cursor_field` must be a column with an order; with a `cursor_value`, only rows with
        cursor_field > cursor_value (not those with a null cursor). Raises SourceError for user-actionable
        failures: when called for what can be checked without connecting (`_early_schema`), else when read.
        """
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        cursor = Cursor(cursor_field, cursor_value) if cursor_field is not None else None

        def check_early() -> None:
            schema = self._early_schema(table)
            if schema is not None:
                self._cursor_filter(cursor, self._landing(schema, table), table, applied=False)

        self._guarded("read", table, check_early)
        return self._stream(table, cursor, batch_rows)

    # -- hooks: what a plug-in writes ----------------------------------------------------------------

    @abstractmethod
    def _count_tables(self, timeout: float) -> int:
        """Connects within `timeout` seconds and counts the tables `discover` would list; raises what stops it."""

    @abstractmethod
    def _discover(self, timeout: float) -> list[TableInfo]:
        """`discover`, raising driver exceptions as they come."""

    @abstractmethod
    def _arrow_schema(self, table: str) -> pa.Schema:
        """The schema of `table`'s batches, as `_scan` yields them."""

    @abstractmethod
    def _scan(self, table: str, cursor: Cursor | None, batch_rows: int) -> AbstractContextManager[Scan]:
        """Opens a read of `table`, closed on exit (also when the reader stops early).

        The plug-in may compare the cursor in its own query (then `cursor_applied`), when `cursor.field` is one
        of the table's columns; a cursor naming no column is the base's to refuse.
        """

    def _early_schema(self, _table: str) -> pa.Schema | None:
        """The table's schema when the plug-in knows it without connecting (files: from the files' samples), so
        that `read` refuses a missing table or a bad cursor when called; None (this default): once the read
        starts."""
        return None

    def _translate(self, exc: Exception, action: Action, table: str | None) -> SourceError:
        """The user-facing, secret-free SourceError for one of `driver_errors`, raised while doing `action`."""
        doing = {
            "connect": "Connecting",
            "test": "The connection test",
            "discover": "Discovery",
            "schema": f"Reading the schema of table '{table}'",
            "read": f"Reading table '{table}'",
        }[action]
        return SourceError(f"{doing} failed: {self._scrub(str(exc)).strip()}")

    def _scrub(self, message: str) -> str:
        """`message` without the plug-in's secrets (it holds none by default)."""
        return message

    # -- the shared plumbing -------------------------------------------------------------------------

    def _guarded(self, action: Action, table: str | None, call: Callable[[], T]) -> T:
        """`call()`, its driver exceptions and type rule refusals raised as SourceErrors, nothing chained."""
        error: SourceError | None = None
        try:
            return call()
        except Exception as exc:
            error = self._source_error(exc, action, table)
            if error is None:
                raise
        raise error  # outside the `except`: the driver's exception is neither the cause nor the context

    def _source_error(self, exc: Exception, action: Action, table: str | None) -> SourceError | None:
        if isinstance(exc, LandingTypeError):
            return SourceError(str(exc))
        if isinstance(exc, self.driver_errors):
            return self._translate(exc, action, table)
        return None

    @staticmethod
    def _landing(schema: pa.Schema, table: str) -> pa.Schema:
        return landing_schema(schema, where=f"table '{table}'")

    def _stream(self, table: str, cursor: Cursor | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        error: SourceError | None = None
        try:
            with self._scan(table, cursor, batch_rows) as scan:
                schema = self._landing(scan.schema, table)
                keep = self._cursor_filter(cursor, schema, table, applied=scan.cursor_applied)
                yield from _filled(_conformed(scan.batches, schema, keep, table), batch_rows)
        except Exception as exc:
            error = self._source_error(exc, "read", table)
            if error is None:
                raise
        if error is not None:
            raise error

    @staticmethod
    def _cursor_filter(
        cursor: Cursor | None, schema: pa.Schema, table: str, *, applied: bool
    ) -> Callable[[pa.RecordBatch], pa.RecordBatch] | None:
        """What keeps a batch's rows past `cursor` (None: all of them); SourceError for an unusable cursor."""
        if cursor is None:
            return None
        if cursor.field not in schema.names:
            raise SourceError(f"Cursor column '{cursor.field}' not found in table '{table}'.")
        column_type = schema.field(cursor.field).type
        if not is_orderable(column_type):
            raise SourceError(
                f"Cursor column '{cursor.field}' of table '{table}' has type {column_type}, which has no usable order."
            )
        if applied or cursor.value is None:
            return None
        bound = _cursor_scalar(cursor.value, column_type, cursor.field, table)

        def keep(batch: pa.RecordBatch) -> pa.RecordBatch:
            try:
                return batch.filter(pc.greater(batch.column(cursor.field), bound))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SourceError(f"Can't compare cursor column '{cursor.field}': {e}") from None

        return keep


def _cursor_scalar(value: CursorValue, t: pa.DataType, column: str, table: str) -> pa.Scalar:
    """The stored cursor `value` as a scalar of the column's type `t` (text without an offset is UTC)."""
    errors = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError)
    try:
        if isinstance(value, pa.Scalar):
            return value.cast(t)
        try:
            return pa.scalar(value, type=t)
        except errors:
            scalar = pa.scalar(value)
            if pa.types.is_timestamp(t) and t.tz and pa.types.is_string(scalar.type):
                try:
                    return scalar.cast(t)
                except pa.ArrowInvalid:  # no offset in the text: it is UTC
                    return scalar.cast(pa.timestamp("us")).cast(t)
            return scalar.cast(t)
    except errors as e:
        raise SourceError(
            f"Cursor value {value!r} cannot be compared with column '{column}' ({t}) of table '{table}': {e}"
        ) from None


def _conformed(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    keep: Callable[[pa.RecordBatch], pa.RecordBatch] | None,
    table: str,
) -> Iterator[pa.RecordBatch]:
    """`batches` in `schema`, only the rows `keep` keeps, empty batches left out."""
    for batch in batches:
        if batch.schema != schema:
            batch = conform_batch(batch, schema, where=f"Table '{table}'")
        if keep is not None:
            batch = keep(batch)
        if batch.num_rows:
            yield batch


def _filled(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `size` rows (the last one may be shorter); a batch of `size` rows passes as it is."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - rows, batch.num_rows)
            pending.append(batch.slice(0, take))
            rows += take
            batch = batch.slice(take)
            if rows == size:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, rows = [], 0
    if rows:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


REGISTRY: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    REGISTRY[cls.connector_type] = cls
    return cls


def _plugin_modules() -> list[str]:
    """The plug-in modules of this package: every module but `base` and the private helpers."""
    import pkgutil

    from rime_dagster.connectors import sources

    return [m.name for m in pkgutil.iter_modules(sources.__path__) if m.name != "base" and not m.name.startswith("_")]


def source_class(connector_type: str) -> type[Source]:
    """The plug-in of `connector_type`, from the module of the same name, imported on first use: a run
    of a `files` connector never imports the PostgreSQL driver."""
    if connector_type not in REGISTRY and connector_type in _plugin_modules():
        importlib.import_module(f"rime_dagster.connectors.sources.{connector_type}")
    try:
        return REGISTRY[connector_type]
    except KeyError:
        raise KeyError(f"unknown connector_type {connector_type!r}; known: {known_types()}") from None


def known_types() -> list[str]:
    """Every connector type there is a plug-in for (imports them all)."""
    for name in _plugin_modules():
        importlib.import_module(f"rime_dagster.connectors.sources.{name}")
    return sorted(REGISTRY)
