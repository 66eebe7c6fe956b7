"""Bodies of the Transformations group: dbt projects, their runs, models and lineage."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.schemas.connectors import RunStatus, _ScheduleMixin

DbtCommand = Literal["build", "run", "test", "seed"]


class PathSource(RequestModel):
    type: Literal["path"]
    path: str = Field(min_length=1, max_length=4096, description="Absolute folder on the server with dbt_project.yml.")


class GitSource(RequestModel):
    type: Literal["git"]
    url: str = Field(min_length=1, max_length=4096, description="file://, http(s)://, ssh:// URL or absolute path.")
    ref: str | None = Field(None, max_length=255, description="Branch, tag or commit; default the remote HEAD.")
    subdirectory: str | None = Field(None, max_length=1024, description="Folder of dbt_project.yml in the repo.")

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("-") or any(c.isspace() for c in value)):
            raise ValueError("Not a git ref")
        return value


DbtSource = Annotated[PathSource | GitSource, Field(discriminator="type")]


class DuckDBTarget(RequestModel):
    adapter: Literal["duckdb"] = "duckdb"
    schema_: str = Field("main", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=63)
    threads: int | None = Field(None, ge=1, le=32)


class PostgresTarget(RequestModel):
    adapter: Literal["postgres"]
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(5432, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=255)
    password: SecretStr | None = Field(None, description="Encrypted at rest; never returned or written to disk.")
    dbname: str = Field(min_length=1, max_length=255)
    schema_: str = Field("public", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=63)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    threads: int | None = Field(None, ge=1, le=32)


DbtTarget = Annotated[DuckDBTarget | PostgresTarget, Field(discriminator="adapter")]


class DbtProjectCreate(_ScheduleMixin, RequestModel):
    name: str = Field(min_length=1, max_length=200)
    source: DbtSource
    target: DbtTarget | None = Field(None, description="Default: DuckDB, one database file per Rime project.")
    vars: dict[str, Any] | None = Field(None, description="dbt vars for every run (a run's own vars win).")
    schedule: str | None = Field(None, description="5-field cron, run by a Dagster schedule; null = manual only.")


class DbtProjectUpdate(_ScheduleMixin, RequestModel):
    """Any change to `source`, `target` or `vars` fetches and parses a new revision (422 if it is broken)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    source: DbtSource | None = None
    target: DbtTarget | None = None
    vars: dict[str, Any] | None = None
    schedule: str | None = None
    status: Literal["active", "paused"] | None = Field(None, description="`paused` stops the schedule.")
    refresh: bool = Field(False, description="Re-fetch the same source (e.g. pull new commits) and re-parse.")


class DbtRunRequest(RequestModel):
    command: DbtCommand = "build"
    select: str | None = Field(None, max_length=2000, description="dbt node selection, e.g. `stg_orders+`.")
    exclude: str | None = Field(None, max_length=2000)
    full_refresh: bool = False
    vars: dict[str, Any] | None = None


class LineageNode(ResponseModel):
    id: str
    type: Literal["source", "seed", "model", "snapshot", "test", "connector_table"]
    name: str


class LineageEdge(ResponseModel):
    model_config = {"populate_by_name": True}

    from_: str = Field(alias="from", serialization_alias="from")
    to: str


class Lineage(ResponseModel):
    nodes: list[LineageNode]
    edges: list[LineageEdge]


class DbtLastRun(ResponseModel):
    run_id: str
    status: RunStatus
    started_at: Timestamp | None
    finished_at: Timestamp | None


class DbtProjectResponse(ResponseModel):
    id: str
    name: str
    source: dict[str, Any]
    target: dict[str, Any]
    target_credentials_set: bool
    vars: dict[str, Any]
    schedule: str | None
    status: Literal["active", "paused"]
    dbt_project_name: str
    revision: int
    commit_sha: str | None
    models_count: int
    parsed_at: Timestamp
    created_at: Timestamp
    updated_at: Timestamp
    last_run: DbtLastRun | None


class DbtProjectDetail(DbtProjectResponse):
    lineage: Lineage


class DbtProjectList(Page[DbtProjectResponse]):
    pass


class DbtRunStarted(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: Literal["queued", "running"]
    command: DbtCommand
    selected: int = Field(description="Models, seeds and snapshots the run covers.")
    started_at: Timestamp


class DbtNodeResult(ResponseModel):
    unique_id: str
    name: str
    resource_type: str
    status: str | None = Field(description="dbt's status: success, error, skipped, pass, fail, warn.")
    execution_time: float | None
    rows_affected: int | None
    message: str | None


class DbtRun(ResponseModel):
    run_id: str
    dagster_run_id: str
    dagster_url: str
    status: RunStatus
    command: str
    select: str | None
    exclude: str | None
    full_refresh: bool
    triggered_by: str | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_seconds: float | None
    results: list[DbtNodeResult] = Field(description="One entry per node dbt ran (empty until it writes results).")
    error: str | None


class DbtRunList(Page[DbtRun]):
    pass


class DbtColumn(ResponseModel):
    name: str
    data_type: str | None
    description: str | None


class DbtTest(ResponseModel):
    name: str
    unique_id: str
    type: str
    column: str | None
    severity: str
    last_status: str | None


class DbtModel(ResponseModel):
    name: str
    unique_id: str
    resource_type: Literal["model", "seed", "snapshot"]
    materialization: str
    schema_: str = Field(alias="schema", serialization_alias="schema")
    database: str | None
    description: str | None
    depends_on: list[str]
    columns: list[DbtColumn]
    tests: list[DbtTest]
    asset_key: list[str]
    published_table: str | None = Field(description="Iceberg table the model is published to, if it is.")
    last_run_status: str | None = Field(description="dbt's status for this node in the latest run that ran it.")


class DbtModelList(Page[DbtModel]):
    pass
