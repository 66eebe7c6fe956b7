"""The endpoint groups as resources: projects, connectors, pipelines and runs. Projects and pipelines may be named
by id, exact name or slug (a project's namespace) wherever an id is taken."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from rime_client._http import Http, not_found
from rime_client.errors import NotFound
from rime_client.models import (
    CheckResult,
    Connector,
    ConnectorRun,
    Pipeline,
    PipelineRun,
    PipelineRunPlan,
    Project,
    RunStarted,
    SourceTable,
    UploadedFile,
)
from rime_client.runs import RunHandle

M = TypeVar("M", bound=BaseModel)


def _seg(value: str) -> str:
    return quote(value, safe="")


def _items(
    http: Http,
    path: str,
    model: type[M],
    *,
    limit: int | None,
    page_size: int,
    params: Mapping[str, Any] | None = None,
) -> Iterator[M]:
    page_size = min(page_size, limit) if limit else page_size
    pages = http.pages(path, params=params, page_size=page_size)
    return islice((model.model_validate(item) for item in pages), limit)


class Projects:
    def __init__(self, http: Http):
        self._http = http

    def list(self, *, limit: int | None = None, page_size: int = 50) -> Iterator[Project]:
        """Every project (or the first `limit`), page by page as the iterator is consumed."""
        return _items(self._http, "/projects", Project, limit=limit, page_size=page_size)

    def get(self, project: str) -> Project:
        """By id, else by exact name, else by slug (its namespace)."""
        if project.startswith("proj_"):
            try:
                return Project.model_validate(self._http.request("GET", f"/projects/{_seg(project)}"))
            except NotFound:
                pass
        listed = list(self.list(page_size=100))
        for match in (lambda p: p.name == project, lambda p: p.namespace == project):
            found = next((p for p in listed if match(p)), None)
            if found is not None:
                return found
        raise not_found("project", project)

    def create(self, name: str, *, description: str | None = None) -> Project:
        body = {"name": name, "description": description}
        return Project.model_validate(self._http.request("POST", "/projects", json=body))

    def update(self, project: str, *, name: str | None = None, description: str | None = None) -> Project:
        """Renames or redescribes the project; the fields left None are kept."""
        changes = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
        path = f"/projects/{_seg(self.get(project).id)}"
        return Project.model_validate(self._http.request("PATCH", path, json=changes))

    def delete(self, project: str, *, purge_data: bool = False) -> None:
        """Deletes the project and all its resources (admins only); `purge_data` drops its Iceberg tables too."""
        path = f"/projects/{_seg(self.get(project).id)}"
        self._http.request("DELETE", path, params={"purge_data": "true" if purge_data else "false"})


class _InProject:
    def __init__(self, http: Http, projects: Projects, default_project: str | None):
        self._http, self._projects, self._default = http, projects, default_project

    def _project_id(self, project: str | None) -> str:
        wanted = project or self._default
        if not wanted:
            raise ValueError("Name the project: project=... (or Client(..., project=...)).")
        return self._projects.get(wanted).id


class Connectors(_InProject):
    def _base(self, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}/connectors"

    def list(self, *, project: str | None = None, limit: int | None = None, page_size: int = 50) -> Iterator[Connector]:
        return _items(self._http, self._base(project), Connector, limit=limit, page_size=page_size)

    def get(self, connector_id: str, *, project: str | None = None) -> Connector:
        return Connector.model_validate(self._http.request("GET", f"{self._base(project)}/{_seg(connector_id)}"))

    def create(self, body: dict[str, Any], *, project: str | None = None) -> Connector:
        """`body` as the API takes it: name, connector_type, config, credentials, selected_tables, schedule, ..."""
        return Connector.model_validate(self._http.request("POST", self._base(project), json=body))

    def update(self, connector_id: str, changes: dict[str, Any], *, project: str | None = None) -> Connector:
        """A partial update (JSON merge semantics): name, config, credentials, selected_tables, schedule, sync_mode,
        cursor_fields, status ("active" | "paused")."""
        path = f"{self._base(project)}/{_seg(connector_id)}"
        return Connector.model_validate(self._http.request("PATCH", path, json=changes))

    def delete(self, connector_id: str, *, project: str | None = None, purge_data: bool = False) -> None:
        """`purge_data` also drops the connector's Iceberg tables."""
        path = f"{self._base(project)}/{_seg(connector_id)}"
        self._http.request("DELETE", path, params={"purge_data": "true" if purge_data else "false"})

    def test(self, connector_id: str, *, project: str | None = None) -> CheckResult:
        """A real connection attempt; a failure is `success: false` with the reason, not an error."""
        path = f"{self._base(project)}/{_seg(connector_id)}/test"
        return CheckResult.model_validate(self._http.request("POST", path))

    def schema(self, connector_id: str, *, project: str | None = None) -> builtins.list[SourceTable]:
        """The source's tables and columns, discovered live (nothing is stored)."""
        answer = self._http.request("GET", f"{self._base(project)}/{_seg(connector_id)}/schema")
        return [SourceTable.model_validate(table) for table in answer["tables"]]

    def upload(
        self, connector_id: str, files: Mapping[str, bytes], *, project: str | None = None
    ) -> builtins.list[UploadedFile]:
        """Puts files (name -> content: CSV, Parquet or JSON lines, 32 MB each) in a `files` connector's upload
        area; the area's files after it."""
        parts = [("files", (name, content)) for name, content in files.items()]
        answer = self._http.request("POST", f"{self._base(project)}/{_seg(connector_id)}/files", files=parts)
        return [UploadedFile.model_validate(item) for item in answer["files"]]

    def files(self, connector_id: str, *, project: str | None = None) -> builtins.list[UploadedFile]:
        """The files in a `files` connector's upload area."""
        answer = self._http.request("GET", f"{self._base(project)}/{_seg(connector_id)}/files")
        return [UploadedFile.model_validate(item) for item in answer["files"]]

    def sync(
        self,
        connector_id: str,
        *,
        project: str | None = None,
        full_refresh: bool = False,
        idempotency_key: str | None = None,
    ) -> RunStarted:
        """Starts a sync (202), under an Idempotency-Key (`idempotency_key`, else a new one) its retries reuse."""
        path = f"{self._base(project)}/{_seg(connector_id)}/sync"
        body = {"full_refresh": full_refresh}
        answer = self._http.request("POST", path, json=body, idempotent_post=True, idempotency_key=idempotency_key)
        return RunStarted.model_validate(answer)

    def runs(
        self, connector_id: str, *, project: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> Iterator[ConnectorRun]:
        path = f"{self._base(project)}/{_seg(connector_id)}/runs"
        return _items(self._http, path, ConnectorRun, limit=limit, page_size=page_size)


class Pipelines(_InProject):
    def _base(self, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}/pipelines"

    def _resolve(self, pipeline: str, project: str | None) -> tuple[str, Pipeline]:
        """(the pipeline's path, the pipeline) by id, else exact name."""
        base = self._base(project)
        if pipeline.startswith("pipe_"):
            try:
                found = Pipeline.model_validate(self._http.request("GET", f"{base}/{_seg(pipeline)}"))
                return f"{base}/{_seg(found.id)}", found
            except NotFound:
                pass
        listed = _items(self._http, base, Pipeline, limit=None, page_size=100)
        match = next((p for p in listed if p.name == pipeline), None)
        if match is None:
            raise not_found("pipeline", pipeline, f" in project '{project or self._default}'")
        return f"{base}/{_seg(match.id)}", match

    def list(self, *, project: str | None = None, limit: int | None = None, page_size: int = 50) -> Iterator[Pipeline]:
        return _items(self._http, self._base(project), Pipeline, limit=limit, page_size=page_size)

    def get(self, pipeline: str, *, project: str | None = None) -> Pipeline:
        path, _ = self._resolve(pipeline, project)
        return Pipeline.model_validate(self._http.request("GET", path))

    def create(self, body: dict[str, Any], *, project: str | None = None) -> Pipeline:
        """`body` as the API takes it: name, steps (the DAG), schedule, variables, triggers, ..."""
        return Pipeline.model_validate(self._http.request("POST", self._base(project), json=body))

    def update(self, pipeline: str, changes: dict[str, Any], *, project: str | None = None) -> Pipeline:
        """A partial update (JSON merge semantics): only the fields in `changes`."""
        path, _ = self._resolve(pipeline, project)
        return Pipeline.model_validate(self._http.request("PATCH", path, json=changes))

    def delete(self, pipeline: str, *, project: str | None = None) -> None:
        path, _ = self._resolve(pipeline, project)
        self._http.request("DELETE", path)

    def run(
        self,
        pipeline: str,
        *,
        project: str | None = None,
        full_refresh: bool = False,
        variables: dict[str, Any] | None = None,
        environment: str = "development",
        idempotency_key: str | None = None,
    ) -> RunHandle:
        """Starts a run of `environment`'s version (development: the newest), under an Idempotency-Key
        (`idempotency_key`, else a new one) its retries reuse; `.wait()` on the answer follows it."""
        path, found = self._resolve(pipeline, project)
        body = {"full_refresh": full_refresh, "variables": variables, "environment": environment}
        started = self._http.request(
            "POST", f"{path}/run", json=body, idempotent_post=True, idempotency_key=idempotency_key
        )
        return RunHandle(self._http, base=path, pipeline_id=found.id, started=started)

    def plan(
        self,
        pipeline: str,
        *,
        project: str | None = None,
        full_refresh: bool = False,
        variables: dict[str, Any] | None = None,
        environment: str = "development",
    ) -> PipelineRunPlan:
        """A dry run: the steps of `environment`'s version validated and the ordered plan; nothing is launched."""
        path, _ = self._resolve(pipeline, project)
        body = {"full_refresh": full_refresh, "variables": variables, "dry_run": True, "environment": environment}
        return PipelineRunPlan.model_validate(
            self._http.request("POST", f"{path}/run", json=body, idempotent_post=True)
        )

    def export(self, pipeline: str, *, project: str | None = None) -> dict[str, Any]:
        """The pipeline's definition as a document (`format_version`, `kind`, `pipeline`): what `import_document`
        takes back."""
        path, _ = self._resolve(pipeline, project)
        return self._http.request("GET", f"{path}/export", params={"format": "json"})

    def import_document(self, document: dict[str, Any], *, project: str | None = None) -> Pipeline:
        """Creates the pipeline the document defines or, when the project has one of that name, replaces its
        definition (a field the document leaves out takes its default)."""
        return Pipeline.model_validate(self._http.request("POST", f"{self._base(project)}/import", json=document))

    def runs(
        self, pipeline: str, *, project: str | None = None, limit: int | None = None, page_size: int = 20
    ) -> Iterator[PipelineRun]:
        """The pipeline's run history, newest first."""
        path, _ = self._resolve(pipeline, project)
        return _items(self._http, f"{path}/runs", PipelineRun, limit=limit, page_size=page_size)


class Runs:
    """A pipeline's runs by id: read one (with its steps), cancel or retry one, or follow one to its end."""

    def __init__(self, http: Http, pipelines: Pipelines):
        self._http, self._pipelines = http, pipelines

    def handle(self, run_id: str, *, pipeline: str, project: str | None = None) -> RunHandle:
        """The run to read, cancel or `wait()` for."""
        path, found = self._pipelines._resolve(pipeline, project)
        return RunHandle(self._http, base=path, pipeline_id=found.id, run_id=run_id)

    def get(self, run_id: str, *, pipeline: str, project: str | None = None) -> PipelineRun:
        return self.handle(run_id, pipeline=pipeline, project=project).get()

    def cancel(self, run_id: str, *, pipeline: str, project: str | None = None) -> str:
        """Asks Dagster to terminate the run; the answer's status (`canceling`). A run already over: Conflict."""
        return self.handle(run_id, pipeline=pipeline, project=project).cancel()

    def retry(
        self,
        run_id: str,
        *,
        pipeline: str,
        project: str | None = None,
        from_failure: bool = True,
        idempotency_key: str | None = None,
    ) -> RunHandle:
        """Re-executes a failed or canceled run (see `RunHandle.retry`); `.wait()` on the answer follows the new run."""
        handle = self.handle(run_id, pipeline=pipeline, project=project)
        return handle.retry(from_failure=from_failure, idempotency_key=idempotency_key)
