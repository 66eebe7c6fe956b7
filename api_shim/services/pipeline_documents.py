"""Pipelines as documents: export one (JSON or YAML, with `format_version`) and import one, which creates the
pipeline or, when the project has one of that name, replaces its definition: what `rime apply -f pipeline.yaml`
does. A document holds the definition only (steps, triggers, schedule, variables, retries, timeout, status), so an
export imported back changes nothing; the ids its steps name must be the importing project's own (422 otherwise,
naming the step, as for any create)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.schemas.pipelines import (
    PIPELINE_FORMAT_VERSION,
    PipelineCreate,
    PipelineDetail,
    PipelineDocument,
    PipelineUpdate,
)
from api_shim.services.pipelines import (
    create_pipeline,
    get_pipeline,
    pipeline_detail,
    trigger_bodies,
    update_pipeline,
)
from rime_dagster.pipelines.versions import definition_of
from rime_dagster.store.models import Pipeline, Project

MEDIA_TYPES = {"json": "application/json", "yaml": "application/yaml"}


def document(row: Pipeline) -> dict[str, Any]:
    """The pipeline's definition as a document (JSON values)."""
    return definition_document(definition_of(row), paused=row.paused)


def definition_document(definition: Mapping[str, Any], *, paused: bool) -> dict[str, Any]:
    """A definition (the pipeline's, or one of its versions') as a document: triggers without their `since`."""
    return {
        "format_version": PIPELINE_FORMAT_VERSION,
        "kind": "pipeline",
        "pipeline": {
            "name": definition["name"],
            "description": definition.get("description"),
            "schedule": definition.get("schedule"),
            "status": "paused" if paused else "active",
            "retries": definition.get("retries") or 0,
            "timeout_seconds": definition.get("timeout_seconds"),
            "variables": definition.get("variables") or {},
            "steps": definition["steps"],
            "triggers": [t.model_dump(mode="json") for t in trigger_bodies(definition.get("triggers") or [])],
        },
    }


def render(doc: Mapping[str, Any], fmt: str) -> tuple[str, str]:
    """The document as text in `fmt` (json or yaml), and its media type."""
    if fmt == "yaml":
        return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True), MEDIA_TYPES["yaml"]
    return json.dumps(doc, indent=2) + "\n", MEDIA_TYPES["json"]


def export(session: Session, project: Project, pipeline_id: str, fmt: str) -> tuple[str, str]:
    """The document as text in `fmt` (json or yaml), and its media type."""
    return render(document(get_pipeline(session, project, pipeline_id)), fmt)


def import_document(
    session: Session, project: Project, body: PipelineDocument, *, by: str | None = None
) -> tuple[PipelineDetail, bool]:
    """Creates the pipeline, or replaces the definition of the project's pipeline of that name; says whether it
    created it."""
    definition = body.pipeline.model_dump(exclude={"status"})
    existing = session.scalar(
        select(Pipeline).where(Pipeline.project_id == project.id, Pipeline.name == body.pipeline.name)
    )
    if existing is None:
        row = create_pipeline(session, project, PipelineCreate.model_validate(definition), by=by)
        if body.pipeline.status == "paused":
            row = update_pipeline(session, project, row, PipelineUpdate(status="paused"), by=by)
        return pipeline_detail(session, row, project), True
    # Every field given: the document replaces the whole definition (a field it leaves out takes its default).
    update = PipelineUpdate.model_validate({**definition, "status": body.pipeline.status})
    row = update_pipeline(session, project, existing, update, by=by)
    return pipeline_detail(session, row, project), False
