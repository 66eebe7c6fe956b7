"""The endpoint groups as resources: projects, connectors, pipelines and runs. Projects and pipelines may be named
by id, exact name or slug (a project's namespace) wherever an id is taken."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from rime_client._http import Http, not_found
from rime_client.errors import NotFound
from rime_client.models import (
    Connector,
    ConnectorRun,
    Pipeline,
    PipelineRun,
    PipelineRunPlan,
    Project,
    RunStarted,
)

if TYPE_CHECKING:
    from rime_client.runs import RunHandle

M = TypeVar("M", bound=BaseModel)


def _seg(value: str) -> str:
    return quote(value, safe="")


def _items(http: Http, path: str, model: type[M], *, limit: int | None, page_size: int) -> Iterator[M]:
    page_size = min(page_size, limit) if limit else page_size
    return islice((model.model_validate(item) for item in http.pages(path, page_size=page_size)), limit)


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

    def sync(self, connector_id: str, *, project: str | None = None, full_refresh: bool = False) -> RunStarted:
        """Starts a sync (202), under an Idempotency-Key its retries reuse."""
        path = f"{self._base(project)}/{_seg(connector_id)}/sync"
        return RunStarted.model_validate(
            self._http.request("POST", path, json={"full_refresh": full_refresh}, idempotent_post=True)
        )

    def runs(
        self, connector_id: str, *, project: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> Iterator[ConnectorRun]:
        path = f"{self._base(project)}/{_seg(connector_id)}/runs"
        return _items(self._http, path, ConnectorRun, limit=limit, page_size=page_size)


class Pipelines(_InProject):
    def _base(self, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}/pipelines"

    def _resolve(self, pipeline: str, project: str | None) -> tuple[str, Pipeline]:
        """(the project's pipelines path, the pipeline) by id, else exact name."""
        base = self._base(project)
        if pipeline.startswith("pipe_"):
            try:
                return base, Pipeline.model_validate(self._http.request("GET", f"{base}/{_seg(pipeline)}"))
            except NotFound:
                pass
        found = next(
            (p for p in _items(self._http, base, Pipeline, limit=None, page_size=100) if p.name == pipeline), None
        )
        if found is None:
            raise not_found("pipeline", pipeline, f" in project '{project or self._default}'")
        return base, found

    def list(self, *, project: str | None = None, limit: int | None = None, page_size: int = 50) -> Iterator[Pipeline]:
        return _items(self._http, self._base(project), Pipeline, limit=limit, page_size=page_size)

    def get(self, pipeline: str, *, project: str | None = None) -> Pipeline:
        base, found = self._resolve(pipeline, project)
        return Pipeline.model_validate(self._http.request("GET", f"{base}/{_seg(found.id)}"))

    def create(self, body: dict[str, Any], *, project: str | None = None) -> Pipeline:
        """`body` as the API takes it: name, steps (the DAG), schedule, variables, ..."""
        return Pipeline.model_validate(self._http.request("POST", self._base(project), json=body))

    def run(
        self,
        pipeline: str,
        *,
        project: str | None = None,
        full_refresh: bool = False,
        variables: dict[str, Any] | None = None,
    ) -> RunHandle:
        """Starts a run (under an Idempotency-Key its retries reuse); `.wait()` on the answer follows it."""
        from rime_client.runs import RunHandle

        base, found = self._resolve(pipeline, project)
        body: dict[str, Any] = {"full_refresh": full_refresh}
        if variables is not None:
            body["variables"] = variables
        started = self._http.request("POST", f"{base}/{_seg(found.id)}/run", json=body, idempotent_post=True)
        return RunHandle(self._http, base=f"{base}/{_seg(found.id)}", pipeline_id=found.id, started=started)

    def plan(
        self,
        pipeline: str,
        *,
        project: str | None = None,
        full_refresh: bool = False,
        variables: dict[str, Any] | None = None,
    ) -> PipelineRunPlan:
        """A dry run: the steps validated and the ordered plan; nothing is launched."""
        base, found = self._resolve(pipeline, project)
        body = {"full_refresh": full_refresh, "dry_run": True, "variables": variables}
        answer = self._http.request("POST", f"{base}/{_seg(found.id)}/run", json=body, idempotent_post=True)
        return PipelineRunPlan.model_validate(answer)

    def runs(
        self, pipeline: str, *, project: str | None = None, limit: int | None = None, page_size: int = 20
    ) -> Iterator[PipelineRun]:
        """The pipeline's run history, newest first."""
        base, found = self._resolve(pipeline, project)
        return _items(self._http, f"{base}/{_seg(found.id)}/runs", PipelineRun, limit=limit, page_size=page_size)


class Runs:
    """A pipeline's runs by id: read one (with its steps), cancel one, or follow one to its end."""

    def __init__(self, http: Http, pipelines: Pipelines):
        self._http, self._pipelines = http, pipelines

    def handle(self, run_id: str, *, pipeline: str, project: str | None = None) -> RunHandle:
        from rime_client.runs import RunHandle

        base, found = self._pipelines._resolve(pipeline, project)
        return RunHandle(self._http, base=f"{base}/{_seg(found.id)}", pipeline_id=found.id, run_id=run_id)

    def get(self, run_id: str, *, pipeline: str, project: str | None = None) -> PipelineRun:
        return self.handle(run_id, pipeline=pipeline, project=project).get()

    def cancel(self, run_id: str, *, pipeline: str, project: str | None = None) -> str:
        """Asks Dagster to terminate the run; the answer's status (`canceling`). A run already over: Conflict."""
        return self.handle(run_id, pipeline=pipeline, project=project).cancel()
