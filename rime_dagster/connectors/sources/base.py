"""The connector plug-in interface: one class per `connector_type`, found through REGISTRY.

A plug-in owns its pydantic `config` and `credentials` models (unknown keys rejected),
its connection test, live schema discovery and a streaming batch reader. Adding a type
means adding a module here, named like the type (`<connector_type>.py`), and decorating its
class with `@register`; no route changes.

A plug-in also declares what on the server its config reaches (`path_fields`, `host_fields`) and where
its credentials are sent (`credentials_bound_to`): the API confines those (see `_access.SourceAccess`)
and asks for the credentials again when their destination changes.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from rime_dagster.connectors.sources._access import SourceAccess

DEFAULT_BATCH_ROWS = 65_536


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

    @abstractmethod
    def test(self, timeout: float) -> TestResult:
        """A real connection attempt bounded by `timeout` seconds; never raises, never leaks secrets."""

    @abstractmethod
    def discover(self, timeout: float) -> list[TableInfo]:
        """The tables this source offers, with columns, primary keys and row estimates."""

    @abstractmethod
    def arrow_schema(self, table: str) -> pa.Schema:
        """The Arrow schema `read` yields for `table` (faithful types, see landing)."""

    @abstractmethod
    def read(
        self,
        table: str,
        *,
        cursor_field: str | None = None,
        cursor_value: Any = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> Iterator[pa.RecordBatch]:
        """Streams `table` as record batches of `arrow_schema(table)`, bounded memory.

        With `cursor_field` and a `cursor_value`, only rows with cursor_field > cursor_value.
        Raises SourceError for user-actionable failures.
        """


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
