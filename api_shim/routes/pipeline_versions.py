"""Pipeline versions and environments: `/projects/{id}/pipelines/{pipelineId}/versions...` and `.../environments`.

Approval requests (qa -> uat, uat -> production) are routes/approvals.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query, Response, status

from api_shim.deps import CursorCodecDep, Engineer, Lead, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.pipeline_versions import (
    PipelineEnvironments,
    PipelineVersionDetail,
    PipelineVersionDiff,
    PipelineVersionList,
    PromotionResult,
)
from api_shim.services import pipeline_documents
from api_shim.services import pipeline_versions as service
from api_shim.services.pipelines import get_pipeline
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/pipelines/{pipelineId}", tags=["Pipelines"])
VersionPage = Annotated[PageRequest, page_params(service.VERSIONS)]
VERSION_REF = "A version's number (`3`) or id (`pver_...`)."


@router.get(
    "/versions",
    name="pipeline_version.list",
    response_model=PipelineVersionList,
    responses=error_responses(404),
    summary="List a pipeline's versions",
    description="Version 1 is the pipeline as created; each change of its definition made the next. Each says "
    "where it stands (`development` for the newest, `qa`, `uat`, `production`, `superseded`, `retired`). Sorted "
    "by `version`, oldest first (`order=desc`: newest first).",
)
def list_versions(
    id: str, pipelineId: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: VersionPage
) -> PipelineVersionList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, codec, project, pipelineId, page)


@router.get(
    "/versions/diff",
    name="pipeline_version.diff",
    response_model=PipelineVersionDiff,
    responses=error_responses(404),
    summary="Compare two versions",
)
def diff_versions(
    id: str,
    pipelineId: str,
    principal: Viewer,
    session: SessionDep,
    from_: Annotated[str, Query(alias="from", min_length=1, max_length=64, description=VERSION_REF)],
    to: Annotated[str, Query(min_length=1, max_length=64, description=VERSION_REF)],
) -> PipelineVersionDiff:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.diff(session, project, pipelineId, from_, to)


@router.get(
    "/versions/{version}",
    name="pipeline_version.get",
    response_model=PipelineVersionDetail,
    responses=error_responses(404),
    summary="Get a version with its whole definition",
)
def get_version(
    id: str, pipelineId: str, version: str, principal: Viewer, session: SessionDep
) -> PipelineVersionDetail:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), pipelineId, version)


@router.get(
    "/versions/{version}/export",
    name="pipeline_version.export",
    response_class=Response,
    responses={
        200: {
            "description": "The version as a pipeline document (as GET .../export writes the newest one).",
            "content": {media_type: {} for media_type in pipeline_documents.MEDIA_TYPES.values()},
        },
        **error_responses(404),
    },
    summary="Export a version as JSON or YAML",
)
def export_version(
    id: str,
    pipelineId: str,
    version: str,
    principal: Viewer,
    session: SessionDep,
    fmt: Literal["json", "yaml"] = Query("json", alias="format", description="json or yaml."),
) -> Response:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    row = get_pipeline(session, project, pipelineId)
    found = service.get_version(session, row, version)
    doc = pipeline_documents.definition_document(found.definition, paused=row.paused)
    text, media_type = pipeline_documents.render(doc, fmt)
    return Response(text, media_type=media_type)


@router.get(
    "/environments",
    name="pipeline_version.environments",
    response_model=PipelineEnvironments,
    responses=error_responses(404),
    summary="What each environment runs",
    description="development runs the newest version; qa, uat and production the version promoted into each. "
    "Each has its own Dagster job. The live one (production once it has a version) has the running schedule and "
    "the triggers; the others' schedules exist stopped.",
)
def environments(id: str, pipelineId: str, principal: Viewer, session: SessionDep) -> PipelineEnvironments:
    return service.environments(session, get_project(session, id, tenant_id=principal.tenant_id), pipelineId)


@router.post(
    "/versions/{version}/promote",
    name="pipeline_version.promote",
    response_model=PromotionResult,
    responses={
        202: {"model": PromotionResult, "description": "qa -> uat or uat -> production: an approval request."},
        **error_responses(404, 409),
    },
    summary="Promote a version to the next environment",
    description="development -> qa at once (200). qa -> uat and uat -> production make an approval request a "
    "lead other than the requester decides (202, `approval_request_id`). 409: the version runs nowhere "
    "(superseded, retired), is already in production, has a pending request for that move, or runs a pipeline "
    "that has no version in the target environment.",
)
def promote(
    id: str, pipelineId: str, version: str, principal: Engineer, session: SessionDep, response: Response
) -> PromotionResult:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    result = service.promote(session, project, pipelineId, version, principal)
    if result.status == "pending_approval":
        response.status_code = status.HTTP_202_ACCEPTED
    return result


@router.post(
    "/versions/{version}/demote",
    name="pipeline_version.demote",
    response_model=PromotionResult,
    responses=error_responses(404, 409),
    summary="Demote uat's version back to qa",
)
def demote(id: str, pipelineId: str, version: str, principal: Lead, session: SessionDep) -> PromotionResult:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.demote(session, project, pipelineId, version, principal)


@router.post(
    "/versions/{version}/retire",
    name="pipeline_version.retire",
    response_model=PromotionResult,
    responses=error_responses(404, 409),
    summary="Retire production's version",
    description="Production runs nothing afterwards: its job and schedule go, and development is live again.",
)
def retire(id: str, pipelineId: str, version: str, principal: Lead, session: SessionDep) -> PromotionResult:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.retire(session, project, pipelineId, version, principal)
