"""`iceberg_namespace`: a namespace of the platform's Iceberg catalog, inside the project's own.

A declared namespace `marts` of the project whose namespace is `demo` is the Iceberg namespace `demo.marts`: a
project can only ever declare namespaces under its own, so no declaration reaches another project's tables, and
the tables its connectors land (`demo.<prefix>__<table>`) stay apart from the declared ones.

Its config needs nothing; `properties` (string to string) are the namespace's Iceberg properties. Only the
properties a declaration names are compared: Iceberg and other tools keep their own (`location`, `exists`), which
a plan must not offer to remove.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from rime_dagster.infrastructure.providers.base import (
    Declared,
    Provider,
    ProviderError,
    State,
    StrictModel,
    Target,
    register,
)

if TYPE_CHECKING:
    from pyiceberg.typedef import Identifier


class NamespaceConfig(StrictModel):
    properties: dict[str, str] = Field(default_factory=dict, description="Iceberg namespace properties.")


def namespace_identifier(target: Target, name: str) -> Identifier:
    return (target.namespace, name)


@register
class IcebergNamespace(Provider):
    resource_type = "iceberg_namespace"
    config_model = NamespaceConfig
    level = 0
    description = "A namespace of the platform's Iceberg catalog, `<project namespace>.<name>`."

    def read_actual(self, target: Target, resource: Declared) -> State | None:
        from pyiceberg.exceptions import NoSuchNamespaceError

        try:
            actual = target.catalog().load_namespace_properties(namespace_identifier(target, resource.name))
        except NoSuchNamespaceError:
            return None
        declared = resource.config.get("properties", {})
        return {"properties": {key: actual[key] for key in declared if key in actual}}

    def create(self, target: Target, resource: Declared) -> None:
        from pyiceberg.exceptions import NamespaceAlreadyExistsError

        try:
            target.catalog().create_namespace(
                namespace_identifier(target, resource.name), dict(resource.config.get("properties", {}))
            )
        except NamespaceAlreadyExistsError:
            raise ProviderError(f"Namespace '{resource.name}' was created meanwhile: plan again.") from None

    def update(self, target: Target, resource: Declared, actual: State) -> None:
        wanted = dict(resource.config.get("properties", {}))
        changed = {key: value for key, value in wanted.items() if actual["properties"].get(key) != value}
        target.catalog().update_namespace_properties(namespace_identifier(target, resource.name), updates=changed)

    def delete(self, target: Target, resource: Declared) -> None:
        from pyiceberg.exceptions import NamespaceNotEmptyError, NoSuchNamespaceError

        try:
            target.catalog().drop_namespace(namespace_identifier(target, resource.name))
        except NoSuchNamespaceError:
            return
        except NamespaceNotEmptyError:
            raise ProviderError(
                f"Namespace '{resource.name}' still holds tables: delete their declarations (or the tables) first."
            ) from None
