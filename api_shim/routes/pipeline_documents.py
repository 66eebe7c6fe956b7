"""Pipelines as documents: `GET .../pipelines/{pipelineId}/export` and `POST .../pipelines/import` (JSON or YAML)."""

from __future__ import annotations

from typing import Literal

from fastapi import Query, Response, status

from api_shim.deps import Engineer, SessionDep, Viewer
from api_shim.routing import rime_router, yaml_body
from api_shim.schemas.common import error_responses
from api_shim.schemas.pipelines import PIPELINE_FORMAT_VERSION, PipelineDetail, PipelineDocument
from api_shim.services import pipeline_documents as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/pipelines", tags=["Pipelines"])


@router.get(
    "/{pipelineId}/export",
    name="pipeline.export",
    response_class=Response,
    responses={
        200: {
            "description": f"`{{format_version: {PIPELINE_FORMAT_VERSION}, kind: pipeline, pipeline: {{name, "
            "description, schedule, status, retries, timeout_seconds, variables, steps, triggers}}}`: what "
            "POST .../pipelines/import takes back.",
            "content": {media_type: {} for media_type in service.MEDIA_TYPES.values()},
        },
        **error_responses(404),
    },
    summary="Export a pipeline as JSON or YAML",
)
def export_pipeline(
    id: str,
    pipelineId: str,
    principal: Viewer,
    session: SessionDep,
    fmt: Literal["json", "yaml"] = Query("json", alias="format", description="json or yaml."),
) -> Response:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    text, media_type = service.export(session, project, pipelineId, fmt)
    return Response(text, media_type=media_type)


@router.post(
    "/import",
    name="pipeline.import",
    response_model=PipelineDetail,
    responses={
        201: {"model": PipelineDetail, "description": "Created: the project had no pipeline of that name."},
        **error_responses(404, 409, 422),
    },
    summary="Import a pipeline document (create, or replace the definition of the pipeline of that name)",
    description="A document from GET .../export, as JSON or YAML (`Content-Type: application/yaml`). A "
    f"`format_version` above {PIPELINE_FORMAT_VERSION} is a 400 naming it. 200 when it replaced the definition of "
    "the project's pipeline of that name (fields the document leaves out take their defaults), 201 when it created "
    "one. Steps and triggers are checked as on create (422 naming the step).",
    openapi_extra=yaml_body("PipelineDocument"),
)
def import_pipeline(
    id: str, body: PipelineDocument, response: Response, principal: Engineer, session: SessionDep
) -> PipelineDetail:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    detail, created = service.import_document(session, project, body, by=principal.email)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return detail
