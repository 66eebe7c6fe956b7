"""Pipeline definitions: steps, their per-type config, and DAG validation (no Dagster, no database).

A pipeline is a DAG of steps. Each step has a type with its own config model:

    connector_sync     {connector_id, tables?}             sync a connector (all or some tables)
    dbt                {dbt_project_id, command?, select?, exclude?}
    table_maintenance  {table, operation, ...}              Iceberg upkeep or schema change of one project table
    pipeline           {pipeline_id}                        run another pipeline of the project

`validate_dag` checks the graph itself (ids, dependencies, cycles) and returns the steps in a
deterministic topological order; whether the referenced resources exist is the API's business.
Every error names the offending step.
"""

from __future__ import annotations

import re
from datetime import datetime
from graphlib import CycleError, TopologicalSorter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
MAX_STEPS = 200


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ConnectorSyncConfig(_Config):
    connector_id: str = Field(min_length=1, max_length=40)
    tables: list[str] | None = Field(None, min_length=1, description="Default: every table of the connector.")


class DbtStepConfig(_Config):
    dbt_project_id: str = Field(min_length=1, max_length=40)
    command: Literal["build", "run", "test", "seed"] = "build"
    select: str | None = Field(None, max_length=2000)
    exclude: str | None = Field(None, max_length=2000)


MaintenanceOperation = Literal[
    "expire_snapshots", "compact", "remove_orphan_files", "add_column", "rename_column", "drop_column"
]
SCHEMA_OPERATIONS = ("add_column", "rename_column", "drop_column")


class TableMaintenanceConfig(_Config):
    """One Iceberg operation on one table of the project (rime_dagster/tables/operations.py carries them out).

    The same config is a pipeline step's and a run of the project's table maintenance job's (the API's table
    operations), so every operation the API offers is also a pipeline step.
    """

    table: str = Field(min_length=1, max_length=255, description="A table of the project, as the tables API names it.")
    operation: MaintenanceOperation
    older_than_days: int | None = Field(
        None,
        ge=0,
        le=3650,
        description="expire_snapshots: keep snapshots newer than this (default 7); remove_orphan_files: remove "
        "only files older than this (default 3, as Iceberg's own default).",
    )
    older_than: datetime | None = Field(
        None, description="expire_snapshots, remove_orphan_files: an absolute cut-off instead of older_than_days."
    )
    retain_last: int = Field(1, ge=1, le=1000, description="expire_snapshots: always keep this many snapshots.")
    target_file_rows: int | None = Field(
        None,
        ge=1000,
        le=100_000_000,
        description="compact: rows per rewritten data file. Default: as many as fit the table's target file size "
        "(write.target-file-size-bytes, else 512 MiB) at its current bytes per row.",
    )
    min_files: int = Field(2, ge=2, le=100_000, description="compact: do nothing below this many data files.")
    column: str | None = Field(
        None, min_length=1, max_length=255, description="rename_column, drop_column: the column to change."
    )
    name: str | None = Field(
        None, min_length=1, max_length=255, description="add_column: the new column; rename_column: its new name."
    )
    type: str | None = Field(None, max_length=64, description="add_column: an Iceberg type (string, long, ...).")
    doc: str | None = Field(None, max_length=1000, description="add_column: the column's comment.")

    @model_validator(mode="after")
    def _operation_fields(self) -> TableMaintenanceConfig:
        needed = {"add_column": ("name", "type"), "rename_column": ("column", "name"), "drop_column": ("column",)}
        missing = [f for f in needed.get(self.operation, ()) if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{self.operation} needs {' and '.join(missing)}")
        return self


class PipelineStepConfig(_Config):
    pipeline_id: str = Field(min_length=1, max_length=40)


StepConfig = ConnectorSyncConfig | DbtStepConfig | TableMaintenanceConfig | PipelineStepConfig
CONFIG_MODELS: dict[str, type[StepConfig]] = {
    "connector_sync": ConnectorSyncConfig,
    "dbt": DbtStepConfig,
    "table_maintenance": TableMaintenanceConfig,
    "pipeline": PipelineStepConfig,
}
StepType = Literal["connector_sync", "dbt", "table_maintenance", "pipeline"]


class StepBody(_Config):
    id: Annotated[str, Field(min_length=1, max_length=63)]
    name: str | None = Field(None, max_length=200, description="Display name; default: the id.")
    type: StepType
    config: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)


class DagError(ValueError):
    """An invalid pipeline graph; `step` is the offending step's id (or None for the whole graph)."""

    def __init__(self, message: str, *, step: str | None = None, field: str = "steps") -> None:
        super().__init__(message)
        self.step = step
        self.field = field


def parse_step_config(step: StepBody, index: int) -> StepConfig:
    try:
        return CONFIG_MODELS[step.type].model_validate(step.config)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise DagError(
            f"Step '{step.id}': config.{where}: {message}.", step=step.id, field=f"steps.{index}.config.{where}"
        ) from None


def validate_dag(steps: list[StepBody]) -> list[str]:
    """Checks ids, dependencies, configs and acyclicity; returns the step ids in execution order.

    The order is a topological order that breaks ties by the steps' order in the body, so plans
    and dry runs are stable.
    """
    if not steps:
        raise DagError("A pipeline needs at least one step.")
    if len(steps) > MAX_STEPS:
        raise DagError(f"A pipeline has at most {MAX_STEPS} steps.")
    position = _positions(steps)
    for i, step in enumerate(steps):
        _check_dependencies(step, i, position)
        parse_step_config(step, i)
    return _execution_order(steps, position)


def _positions(steps: list[StepBody]) -> dict[str, int]:
    """Each step's index, once its id is checked (well formed, not used twice)."""
    position: dict[str, int] = {}
    for i, step in enumerate(steps):
        if not STEP_ID.match(step.id):
            raise DagError(
                f"Step id '{step.id}' must start with a letter and use letters, digits, '_' or '-'.",
                step=step.id,
                field=f"steps.{i}.id",
            )
        if step.id in position:
            raise DagError(f"Step id '{step.id}' is used twice.", step=step.id, field=f"steps.{i}.id")
        position[step.id] = i
    return position


def _check_dependencies(step: StepBody, index: int, position: dict[str, int]) -> None:
    field = f"steps.{index}.depends_on"
    for dep in step.depends_on:
        if dep == step.id:
            raise DagError(f"Step '{step.id}' depends on itself.", step=step.id, field=field)
        if dep not in position:
            raise DagError(f"Step '{step.id}' depends on unknown step '{dep}'.", step=step.id, field=field)
    if len(set(step.depends_on)) != len(step.depends_on):
        raise DagError(f"Step '{step.id}' lists a dependency twice.", step=step.id, field=field)


def _execution_order(steps: list[StepBody], position: dict[str, int]) -> list[str]:
    """A topological order, ties broken by the steps' order in the body; a cycle is refused."""
    sorter = TopologicalSorter({s.id: s.depends_on for s in steps})
    try:
        sorter.prepare()
    except CycleError as exc:
        cycle = exc.args[1]
        raise DagError(
            f"Steps form a cycle: {' -> '.join(cycle)}.", step=cycle[0], field=f"steps.{position[cycle[0]]}.depends_on"
        ) from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def dag_of(steps: list[StepBody]) -> dict[str, list[dict[str, str]]]:
    """{nodes: [{id, name, type}], edges: [{from, to}]} as the pipeline detail returns it."""
    return {
        "nodes": [{"id": s.id, "name": s.name or s.id, "type": s.type} for s in steps],
        "edges": [{"from": dep, "to": s.id} for s in steps for dep in s.depends_on],
    }


def downstream_of(steps: list[StepBody], failed: set[str]) -> set[str]:
    """Every step that (transitively) depends on one of `failed`: these are skipped."""
    children: dict[str, list[str]] = {}
    for s in steps:
        for dep in s.depends_on:
            children.setdefault(dep, []).append(s.id)
    skipped: set[str] = set()
    stack = list(failed)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in skipped:
                skipped.add(child)
                stack.append(child)
    return skipped - failed
