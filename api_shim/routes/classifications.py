"""Governance group, classifications: `/projects/{id}/classifications...` (CRUD, and classifying tables now)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, Request, status
from starlette.concurrency import run_in_threadpool

from api_shim.deps import CursorCodecDep, Lead, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.classifications import (
    ClassificationCreate,
    ClassificationList,
    ClassificationResponse,
    ClassificationRunRequest,
    ClassificationRunResult,
    ClassificationUpdate,
)
from api_shim.schemas.common import error_responses
from api_shim.services import classifications as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}/classifications", tags=["Governance"])
ClassificationPage = Annotated[PageRequest, page_params(service.CLASSIFICATIONS)]


@router.get(
    "",
    name="classification.list",
    response_model=ClassificationList,
    responses=error_responses(404),
    summary="List classifications",
)
def list_classifications(
    id: str, principal: Viewer, session: SessionDep, codec: CursorCodecDep, page: ClassificationPage
) -> ClassificationList:
    return service.list_page(session, codec, get_project(session, id, tenant_id=principal.tenant_id), page)


@router.post(
    "",
    name="classification.create",
    status_code=status.HTTP_201_CREATED,
    response_model=ClassificationResponse,
    responses=error_responses(404, 409),
    summary="Create a classification",
    description="Its rules tag matching columns after each sync of a table (and on POST .../classifications/run); "
    "its `assignments` are tagged at once and kept across re-classification. Patterns are checked here (400).",
)
def create_classification(
    id: str, body: ClassificationCreate, principal: Lead, session: SessionDep
) -> ClassificationResponse:
    return service.create(session, get_project(session, id, tenant_id=principal.tenant_id), body)


@router.post(
    "/run",
    name="classification.run",
    response_model=ClassificationRunResult,
    responses=error_responses(404, 409),
    summary="Classify the project's tables now",
    description="Synchronous: each table costs one bounded sample (the first 200 non-blank values of each string "
    "column within its first 2,000 rows). Replaces the tables' rule tags; manual assignments stay. "
    "An unknown table is a 400 naming it.",
)
async def run_classifications(
    id: str,
    request: Request,
    principal: Lead,
    body: Annotated[ClassificationRunRequest | None, Body()] = None,
) -> ClassificationRunResult:
    state = request.app.state
    return await run_in_threadpool(
        service.run,
        state.sessions,
        state.iceberg,
        tenant_id=principal.tenant_id,
        project_id=id,
        body=body or ClassificationRunRequest(),
    )


@router.get(
    "/{classificationId}",
    name="classification.get",
    response_model=ClassificationResponse,
    responses=error_responses(404),
    summary="Get a classification",
)
def get_classification(
    id: str, classificationId: str, principal: Viewer, session: SessionDep
) -> ClassificationResponse:
    return service.describe(session, get_project(session, id, tenant_id=principal.tenant_id), classificationId)


@router.patch(
    "/{classificationId}",
    name="classification.update",
    response_model=ClassificationResponse,
    responses=error_responses(404, 409),
    summary="Update a classification",
)
def update_classification(
    id: str, classificationId: str, body: ClassificationUpdate, principal: Lead, session: SessionDep
) -> ClassificationResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.update(session, project, classificationId, body)


@router.delete(
    "/{classificationId}",
    name="classification.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a classification",
    description="Removes its column tags too. Refused with 409 while a masking policy uses it.",
)
def delete_classification(id: str, classificationId: str, principal: Lead, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), classificationId)
