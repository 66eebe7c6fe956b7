"""The infrastructure provider plug-in interface: one class per `resource_type`, found through REGISTRY.

A resource is declared desired state (`{resource_type, name, config}` in a project). A provider knows, for its type:

* what a declaration may say: `config_model` (pydantic, unknown keys rejected), `validate_name`, and which config
  fields are secrets (`secret_fields`: stored encrypted apart from the config, never answered, never logged; the
  provider gets them in `Declared.secrets`);
* what exists: `read_actual` returns the resource's actual state in the same shape as `desired`, or None when it
  does not exist. Only what the declaration can say is compared, so the plan's `before`/`after` are the two;
* what a change does: `create`, `update` (from `actual` to desired) and `delete` (of what the last applied
  declaration made); a SqlProvider also renders `statements`, the SQL a change runs, into the plan before any
  apply. Checks across config fields are the config model's own validators;
* the order changes go in: `level` (lower levels are created and updated first and deleted last: a namespace before
  its tables) and `depends_on` (the declared resources a change needs to have succeeded).

Adding a type is one module here named like the type (`<resource_type>.py`, or one module registering several
related types), its class decorated with `@register`; no route changes.

Failures: a provider raises ProviderError with a message a user can act on (no driver exception chained: a
driver's message may quote a secret), and NotConfigured when this deployment cannot reach that kind of system at
all (Snowflake without an account): the API answers that as a 422 at apply.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from rime_dagster.settings import Settings

Action = Literal["create", "update", "delete", "no-op"]
State = dict[str, Any]  # a resource's state: JSON values only, compared with ==
T = TypeVar("T", bound="type[Provider]")

# A resource's name, unless its provider says otherwise: a lower-case SQL identifier.
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are an error, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ProviderError(Exception):
    """A read or a change failed; the message says what and is safe to show (it quotes no secret)."""


class NotConfigured(ProviderError):
    """This deployment has no way to reach the resource's system (no account or server configured)."""


class ConfigInvalid(ValueError):
    """The declaration is not valid for its type: `details` are `{field, message}`, `field` dotted under `config`
    (`config.schema.0.type`) or `name`."""

    def __init__(self, details: list[dict[str, str]]):
        super().__init__("; ".join(f"{d['field']}: {d['message']}" for d in details))
        self.details = details


@dataclass(frozen=True)
class Target:
    """Where a project's resources live, as the providers reach it."""

    project_id: str
    namespace: str  # the project's Iceberg namespace; also the prefix of its schemas elsewhere
    settings: Settings
    catalog: Callable[[], Catalog]  # the platform's Iceberg catalog, opened on first use


@dataclass(frozen=True)
class Declared:
    """One declared resource as a provider sees it: its validated config, and its secrets decrypted."""

    resource_id: str
    resource_type: str
    name: str
    config: Mapping[str, Any]
    secrets: Mapping[str, Any] = field(default_factory=dict)


class Provider(ABC):
    resource_type: ClassVar[str]
    config_model: ClassVar[type[StrictModel]]
    secret_fields: ClassVar[frozenset[str]] = frozenset()  # top-level config keys kept encrypted
    level: ClassVar[int] = 0  # created/updated in ascending level, deleted in descending
    # (resource type, config key): the config names another declared resource this one needs (see depends_on).
    dependency_fields: ClassVar[tuple[tuple[str, str], ...]] = ()
    # The setting (a Settings field) without which this deployment cannot apply changes of this type: an apply
    # that would carry one out is refused up front (422 naming it) instead of failing in the run.
    required_setting: ClassVar[str | None] = None
    description: ClassVar[str] = ""

    # -- declarations --------------------------------------------------------------------------------------------

    def validate_name(self, name: str) -> str:
        """The name, normalised, or ConfigInvalid naming `name`."""
        if not IDENTIFIER.fullmatch(name):
            raise ConfigInvalid(
                [{"field": "name", "message": "Must be a lower-case identifier: a-z, 0-9 and _, at most 63 long."}]
            )
        return name

    def validate(self, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The config as stored (JSON, defaults filled) and its secrets apart, or ConfigInvalid per field."""
        try:
            model = self.config_model.model_validate(dict(config))
        except ValidationError as exc:
            raise ConfigInvalid(
                [
                    {"field": ".".join(["config", *(str(p) for p in err["loc"])]), "message": err["msg"]}
                    for err in exc.errors()
                ]
            ) from None
        dumped = model.model_dump(mode="json", by_alias=True)
        secrets = {key: dumped.pop(key) for key in self.secret_fields if key in dumped}
        return dumped, {key: value for key, value in secrets.items() if value is not None}

    def depends_on(self, resource: Declared) -> list[tuple[str, str]]:
        """The declared resources (type, name) this one needs: their changes go first, their failure stops it.
        Default: those named by the config fields of `dependency_fields`."""
        return [(kind, resource.config[key]) for kind, key in self.dependency_fields if resource.config.get(key)]

    def unavailable(self, target: Target) -> str | None:
        """Why this deployment cannot apply changes of this type (None: it can)."""
        if self.required_setting and not getattr(target.settings, self.required_setting, None):
            setting = f"RIME_{self.required_setting.upper()}"
            return f"{self.resource_type} changes cannot be applied here: {setting} is not set."
        return None

    # -- state -------------------------------------------------------------------------------------------------------

    def desired(self, resource: Declared) -> State:
        """The state the declaration asks for, in `read_actual`'s shape (default: its config)."""
        return dict(resource.config)

    @abstractmethod
    def read_actual(self, target: Target, resource: Declared) -> State | None:
        """What exists for this declaration (None: nothing), in `desired`'s shape."""

    def diff(self, desired: State, actual: State | None) -> Action:
        if actual is None:
            return "create"
        return "no-op" if desired == actual else "update"

    # -- changes -----------------------------------------------------------------------------------------------------

    @abstractmethod
    def create(self, target: Target, resource: Declared) -> None: ...

    @abstractmethod
    def update(self, target: Target, resource: Declared, actual: State) -> None: ...

    @abstractmethod
    def delete(self, target: Target, resource: Declared) -> None: ...


class SqlProvider(Provider):
    """A provider whose changes run SQL: the plan shows the statements each change would run."""

    @abstractmethod
    def statements(self, target: Target, resource: Declared, action: Action, actual: State | None) -> list[str]:
        """The SQL the change runs, in order."""


REGISTRY: dict[str, type[Provider]] = {}
# Modules that register more than one type, by the types they register (others: the module named like the type).
_MODULES: dict[str, str] = {
    "snowflake_warehouse": "snowflake",
    "snowflake_database": "snowflake",
    "snowflake_schema": "snowflake",
}
# Every type a declaration may name, in the order the API documents them.
KNOWN_TYPES: tuple[str, ...] = (
    "iceberg_namespace",
    "iceberg_table",
    "storage_location",
    "postgres_schema",
    "snowflake_warehouse",
    "snowflake_database",
    "snowflake_schema",
)


def register(cls: T) -> T:
    REGISTRY[cls.resource_type] = cls
    return cls


def provider(resource_type: str) -> Provider:
    """The provider of `resource_type` (its module imported on first use), or KeyError."""
    if resource_type not in REGISTRY:
        if resource_type not in KNOWN_TYPES:
            raise KeyError(resource_type)
        module = _MODULES.get(resource_type, resource_type)
        importlib.import_module(f"rime_dagster.infrastructure.providers.{module}")
    return REGISTRY[resource_type]()
