"""`iceberg_table`: an Iceberg table of the project, with its schema, partition spec, sort order and properties.

Where: in the project's own namespace (`namespace` unset: listed by `GET .../tables` next to connector tables), or
in one of its declared `iceberg_namespace`s (`<project namespace>.<namespace>`, which the table then depends on).
In the project's own namespace a declared name may not contain `__`: that form belongs to connector tables
(`<prefix>__<table>`), so a declaration never takes over a table a sync writes.

Types are Iceberg's primitive types as Iceberg writes them (`long`, `string`, `timestamptz`, `decimal(12, 2)`,
`fixed[16]`); a declaration's spelling is normalised when it is stored, so plans compare like with like.
Transforms: `identity`, `year`, `month`, `day`, `hour`, `bucket[N]`, `truncate[W]`.

A change to a table that exists is a schema evolution where Iceberg allows one (pyiceberg's `update_schema`): new
columns are added (optional ones only: Iceberg cannot add a required column to rows already written), columns no
longer declared are dropped, types are widened (`int` to `long`, `float` to `double`, a wider decimal), a column may
become optional, docs change. The partition spec and sort order are replaced by the declared ones; declared
properties are set. What Iceberg refuses (narrowing a type, making a column required) fails the change with
Iceberg's own message. Deleting a declared table purges it: its data files go too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from rime_dagster.infrastructure.providers.base import (
    IDENTIFIER,
    ConfigInvalid,
    Declared,
    Provider,
    ProviderError,
    State,
    StrictModel,
    Target,
    register,
)

if TYPE_CHECKING:
    from pyiceberg.table import Table, Transaction
    from pyiceberg.transforms import Transform
    from pyiceberg.typedef import Identifier
    from pyiceberg.types import IcebergType

_TRANSFORM = re.compile(r"identity|year|month|day|hour|bucket\[[1-9][0-9]{0,5}\]|truncate\[[1-9][0-9]{0,5}\]")


def parse_type(text: str) -> IcebergType:
    """An Iceberg primitive type from its name (ValueError otherwise)."""
    from pydantic import TypeAdapter
    from pyiceberg.types import PrimitiveType

    try:
        parsed = TypeAdapter(PrimitiveType).validate_python(text.strip().lower())
    except Exception:
        raise ValueError(
            f"Unknown type '{text}': use an Iceberg primitive type (boolean, int, long, float, double, date, time, "
            "timestamp, timestamptz, string, uuid, binary, decimal(P, S), fixed[N])."
        ) from None
    return parsed


class Column(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    type: str = Field(description="An Iceberg primitive type: long, string, timestamptz, decimal(12, 2), ...")
    required: bool = False
    doc: str | None = Field(None, max_length=1000)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return str(parse_type(value))


class PartitionField(StrictModel):
    source: str = Field(description="A column of the schema.")
    transform: str = Field("identity", description="identity, year, month, day, hour, bucket[N] or truncate[W].")

    @field_validator("transform")
    @classmethod
    def _transform(cls, value: str) -> str:
        if not _TRANSFORM.fullmatch(value.lower()):
            raise ValueError("Must be identity, year, month, day, hour, bucket[N] or truncate[W].")
        return value.lower()


class SortField(StrictModel):
    source: str = Field(description="A column of the schema.")
    direction: Literal["asc", "desc"] = "asc"
    null_order: Literal["nulls-first", "nulls-last"] | None = Field(
        None, description="Default: nulls-first ascending, nulls-last descending (Iceberg's)."
    )


class TableConfig(StrictModel):
    namespace: str | None = Field(None, description="A declared iceberg_namespace; unset: the project's own.")
    schema_: list[Column] = Field(alias="schema", min_length=1, max_length=1000)
    partition_spec: list[PartitionField] = Field(default_factory=list, max_length=50)
    sort_order: list[SortField] = Field(default_factory=list, max_length=50)
    properties: dict[str, str] = Field(default_factory=dict)


def _null_order(field: Mapping[str, Any]) -> str:
    return field.get("null_order") or ("nulls-first" if field["direction"] == "asc" else "nulls-last")


def _cross_field_problems(config: Mapping[str, Any]) -> list[dict[str, str]]:
    """Columns declared twice, and partition or sort fields on a column the schema lacks."""
    names = [c["name"] for c in config["schema"]]
    problems = [
        {"field": f"config.schema.{i}.name", "message": f"Column '{name}' is declared twice."}
        for i, name in enumerate(names)
        if name in names[:i]
    ]
    for key in ("partition_spec", "sort_order"):
        problems += [
            {"field": f"config.{key}.{i}.source", "message": f"'{f['source']}' is not a column of the schema."}
            for i, f in enumerate(config[key])
            if f["source"] not in names
        ]
    return problems


@register
class IcebergTable(Provider):
    resource_type = "iceberg_table"
    config_model = TableConfig
    level = 20
    dependency_fields = (("iceberg_namespace", "namespace"),)
    description = "An Iceberg table: schema, partition spec, sort order, properties."

    def validate(self, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        stored, secrets = super().validate(config)
        problems = _cross_field_problems(stored)
        if problems:
            raise ConfigInvalid(problems)
        return stored, secrets

    def validate_name(self, name: str) -> str:
        name = super().validate_name(name)
        if "__" in name:
            raise ConfigInvalid(
                [{"field": "name", "message": "'__' is for connector tables (<prefix>__<table>): choose another name."}]
            )
        return name

    def identifier(self, target: Target, resource: Declared) -> Identifier:
        namespace = resource.config.get("namespace")
        return (target.namespace, namespace, resource.name) if namespace else (target.namespace, resource.name)

    def desired(self, resource: Declared) -> State:
        config = resource.config
        return {
            "schema": [
                {"name": c["name"], "type": c["type"], "required": c["required"], "doc": c.get("doc")}
                for c in config["schema"]
            ],
            "partition_spec": _partition_set(
                {"source": p["source"], "transform": p["transform"]} for p in config["partition_spec"]
            ),
            "sort_order": [
                {"source": s["source"], "direction": s["direction"], "null_order": _null_order(s)}
                for s in config["sort_order"]
            ],
            "properties": dict(config["properties"]),
        }

    def read_actual(self, target: Target, resource: Declared) -> State | None:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            table = target.catalog().load_table(self.identifier(target, resource))
        except (NoSuchTableError, NoSuchNamespaceError):
            return None
        return _state(table, declared_properties=resource.config.get("properties", {}))

    def create(self, target: Target, resource: Declared) -> None:
        from pyiceberg.exceptions import NoSuchNamespaceError, TableAlreadyExistsError
        from pyiceberg.schema import Schema
        from pyiceberg.types import NestedField

        desired = self.desired(resource)
        schema = Schema(
            *(
                NestedField(i + 1, c["name"], parse_type(c["type"]), required=c["required"], doc=c["doc"])
                for i, c in enumerate(desired["schema"])
            )
        )
        try:
            table = target.catalog().create_table(
                self.identifier(target, resource), schema=schema, properties=desired["properties"]
            )
        except TableAlreadyExistsError:
            raise ProviderError(f"Table '{resource.name}' was created meanwhile: plan again.") from None
        except NoSuchNamespaceError:
            raise ProviderError(
                f"Namespace '{resource.config.get('namespace')}' does not exist: declare it and apply it first."
            ) from None
        _evolve(table, desired, _state(table, declared_properties={}))

    def update(self, target: Target, resource: Declared, actual: State) -> None:
        table = target.catalog().load_table(self.identifier(target, resource))
        _evolve(table, self.desired(resource), actual)

    def delete(self, target: Target, resource: Declared) -> None:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            target.catalog().purge_table(self.identifier(target, resource))
        except (NoSuchTableError, NoSuchNamespaceError):
            return


def _state(table: Table, *, declared_properties: dict[str, str]) -> State:
    schema = table.schema()
    name_of = {f.field_id: f.name for f in schema.fields}
    return {
        "schema": [
            {"name": f.name, "type": str(f.field_type), "required": f.required, "doc": f.doc} for f in schema.fields
        ],
        "partition_spec": _partition_set(
            {"source": name_of.get(p.source_id, str(p.source_id)), "transform": str(p.transform)}
            for p in table.spec().fields
        ),
        "sort_order": [
            {
                "source": name_of.get(s.source_id, str(s.source_id)),
                "direction": s.direction.value,
                "null_order": s.null_order.value.replace(" ", "-"),
            }
            for s in table.sort_order().fields
        ],
        "properties": {k: table.properties[k] for k in declared_properties if k in table.properties},
    }


def _evolve(table: Table, desired: State, actual: State) -> None:
    """Makes the table's schema, spec, sort order and properties the desired ones, in one Iceberg transaction."""
    from pyiceberg.exceptions import CommitFailedException, ValidationError

    try:
        with table.transaction() as tx:
            if desired["schema"] != actual["schema"]:
                _evolve_schema(tx, desired["schema"], actual["schema"])
            if desired["partition_spec"] != actual["partition_spec"]:
                _evolve_spec(tx, table, desired["partition_spec"])
            if desired["sort_order"] != actual["sort_order"]:
                _replace_sort_order(tx, desired["sort_order"])
            changed = {k: v for k, v in desired["properties"].items() if actual["properties"].get(k) != v}
            if changed:
                tx.set_properties(changed)
    except (ValidationError, ValueError, CommitFailedException) as exc:
        raise ProviderError(f"Iceberg refused the change to '{table.name()[-1]}': {exc}") from None


def _partition_set(fields: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Partition fields in a stable order: evolution appends new fields at the end, so the spec is compared as a
    set of (column, transform), not in the order it was declared."""
    return sorted(fields, key=lambda f: (f["source"], f["transform"]))


def _evolve_spec(tx: Transaction, table: Table, desired: list[dict[str, str]]) -> None:
    schema = table.schema()
    have = {(schema.find_column_name(f.source_id), str(f.transform)): f.name for f in table.spec().fields}
    want = [(f["source"], f["transform"]) for f in desired]
    with tx.update_spec() as spec:
        for key, name in have.items():
            if key not in want:
                spec.remove_field(name)
        for source, transform in want:
            if (source, transform) not in have:
                spec.add_field(source, _transform(transform))


def _evolve_schema(tx: Transaction, desired: list[dict[str, Any]], actual: list[dict[str, Any]]) -> None:
    have = {c["name"]: c for c in actual}
    want = {c["name"]: c for c in desired}
    with tx.update_schema() as update:
        for name in have.keys() - want.keys():
            update.delete_column(name)
        for column in desired:
            old = have.get(column["name"])
            if old is None:
                if column["required"]:
                    raise ValueError(f"Column '{column['name']}' cannot be added as required: declare it optional.")
                update.add_column(column["name"], parse_type(column["type"]), doc=column["doc"])
                continue
            if old["type"] != column["type"]:
                update.update_column(column["name"], field_type=parse_type(column["type"]))
            if old["required"] != column["required"]:
                if column["required"]:
                    raise ValueError(f"Column '{column['name']}' cannot become required.")
                update.make_column_optional(column["name"])
            if old["doc"] != column["doc"]:
                update.update_column(column["name"], doc=column["doc"])


def _transform(text: str) -> Transform[Any, Any]:
    from pyiceberg.transforms import parse_transform

    return parse_transform(text)


def _replace_sort_order(tx: Transaction, fields: list[dict[str, Any]]) -> None:
    from pyiceberg.table.sorting import NullOrder

    with tx.update_sort_order() as order:
        for field in fields:
            nulls = NullOrder.NULLS_FIRST if field["null_order"] == "nulls-first" else NullOrder.NULLS_LAST
            add = order.asc if field["direction"] == "asc" else order.desc
            add(field["source"], _transform("identity"), nulls)


__all__ = ["IDENTIFIER", "IcebergTable", "TableConfig", "parse_type"]
