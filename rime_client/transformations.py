"""Transformations: dbt projects (`/projects/{id}/dbt-projects`), their runs, models and lineage."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from rime_client._crud import Named, ProjectCrud
from rime_client.models import Model, RunStatus
from rime_client.resources import _items

DbtCommand = Literal["build", "run", "test", "seed"]


class LineageNode(Model):
    id: str
    type: str  # source, seed, model, snapshot, test, connector_table
    name: str


class LineageEdge(Model):
    from_: str = Field(alias="from")
    to: str


class Lineage(Model):
    nodes: list[LineageNode]
    edges: list[LineageEdge]


class DbtProject(Named):
    """A registered dbt project; `lineage` only in the detail view (`get`, `create`, `update`)."""

    source: dict[str, Any]
    target: dict[str, Any]
    target_credentials_set: bool
    vars: dict[str, Any] = {}
    schedule: str | None = None
    status: Literal["active", "paused"]
    dbt_project_name: str
    revision: int
    commit_sha: str | None = None
    models_count: int
    parsed_at: datetime
    created_at: datetime
    updated_at: datetime
    last_run: dict[str, Any] | None = None
    lineage: Lineage | None = None


class DbtRunStarted(Model):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    command: str
    selected: int
    started_at: datetime


class DbtRun(Model):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    command: str
    select: str | None = None
    exclude: str | None = None
    full_refresh: bool = False
    triggered_by: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    results: list[dict[str, Any]] = []
    error: str | None = None


class DbtModel(Model):
    name: str
    unique_id: str
    resource_type: str  # model, seed, snapshot
    materialization: str
    schema_: str = Field(alias="schema")  # `schema` would shadow pydantic's BaseModel.schema
    database: str | None = None
    description: str | None = None
    depends_on: list[str] = []
    columns: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    asset_key: list[str] = []
    published_table: str | None = None
    last_run_status: str | None = None


class DbtProjects(ProjectCrud[DbtProject]):
    """dbt projects by id or name. `create` body: {name, source: {"type": "path", "path"} | {"type": "git", "url",
    "ref"?}, target?, vars?, schedule?}; the API parses the project at once (a broken one: Unprocessable)."""

    collection, prefix, kind = "dbt-projects", "dbt_", "dbt project"
    model = DbtProject

    def delete(self, ref: str, *, project: str | None = None, purge_data: bool = False) -> None:
        """`purge_data` also drops the Iceberg tables its models published."""
        self._http.request("DELETE", self._path(ref, project), params={"purge_data": str(purge_data).lower()})

    def run(
        self,
        ref: str,
        *,
        project: str | None = None,
        command: DbtCommand = "build",
        select: str | None = None,
        exclude: str | None = None,
        full_refresh: bool = False,
        vars: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DbtRunStarted:
        """Launches the project's Dagster job (202), under an Idempotency-Key its retries reuse."""
        body = {"command": command, "select": select, "exclude": exclude, "full_refresh": full_refresh, "vars": vars}
        answer = self._http.request(
            "POST", f"{self._path(ref, project)}/run", json=body, idempotent_post=True, idempotency_key=idempotency_key
        )
        return DbtRunStarted.model_validate(answer)

    def runs(
        self, ref: str, *, project: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> Iterator[DbtRun]:
        """The run history, newest first."""
        return _items(self._http, f"{self._path(ref, project)}/runs", DbtRun, limit=limit, page_size=page_size)

    def models(
        self, ref: str, *, project: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> Iterator[DbtModel]:
        """Models, seeds and snapshots with their columns, tests and latest run status."""
        return _items(self._http, f"{self._path(ref, project)}/models", DbtModel, limit=limit, page_size=page_size)

    def lineage(self, ref: str, *, project: str | None = None) -> Lineage:
        return Lineage.model_validate(self._http.request("GET", f"{self._path(ref, project)}/lineage"))
