"""Table retention policies: `/projects/{id}/tables/{table}/retention` (one per table: get, put, delete) and the
project's list at `/projects/{id}/retention-policies`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Response, status

from api_shim.dagster_client import DagsterClientDep
from api_shim.deps import CursorCodecDep, Engineer, SessionDep, Viewer
from api_shim.pagination import PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.retention_policies import RetentionPolicyList, RetentionPolicyPut, RetentionPolicyResponse
from api_shim.services import retention_policies as service
from api_shim.services.projects import get_project

router = rime_router(prefix="/projects/{id}", tags=["Tables"])
PolicyPage = Annotated[PageRequest, page_params(service.POLICIES)]

_RUNS = (
    "Each tick of the policy's cron (UTC) is one run of the project's table maintenance job, taking the table's "
    "write lease as other maintenance does: compaction first (when `compact` is set), then snapshot expiry, then "
    "orphan-file removal (when `remove_orphan_files` is set). Ages count back from the tick's scheduled time. The "
    "change reaches Dagster with the next definitions reload (the project's `definitions_generation`)."
)


@router.get(
    "/retention-policies",
    name="retention_policy.list",
    response_model=RetentionPolicyList,
    responses=error_responses(400, 404),
    summary="List the project's table retention policies",
)
def list_policies(
    id: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep, codec: CursorCodecDep, page: PolicyPage
) -> RetentionPolicyList:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    return service.list_page(session, dagster, codec, project, page)


@router.get(
    "/tables/{table}/retention",
    name="retention_policy.get",
    response_model=RetentionPolicyResponse,
    responses=error_responses(404),
    summary="Get the table's retention policy",
)
def get_policy(
    id: str, table: str, principal: Viewer, session: SessionDep, dagster: DagsterClientDep
) -> RetentionPolicyResponse:
    return service.describe(session, dagster, get_project(session, id, tenant_id=principal.tenant_id), table)


@router.put(
    "/tables/{table}/retention",
    name="retention_policy.put",
    response_model=RetentionPolicyResponse,
    responses={
        201: {"model": RetentionPolicyResponse, "description": "Created: the table had no policy."},
        **error_responses(400, 404, 409),
    },
    summary="Create or replace the table's retention policy",
    description=f"200 when it replaced the table's policy, 201 when it created one. {_RUNS}",
)
def put_policy(
    id: str,
    table: str,
    body: RetentionPolicyPut,
    request: Request,
    response: Response,
    principal: Engineer,
    session: SessionDep,
    dagster: DagsterClientDep,
) -> RetentionPolicyResponse:
    project = get_project(session, id, tenant_id=principal.tenant_id)
    policy, created = service.put(session, request.app.state.iceberg, dagster, project, table, body)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return policy


@router.delete(
    "/tables/{table}/retention",
    name="retention_policy.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete the table's retention policy (its schedule goes with the next definitions reload)",
)
def delete_policy(id: str, table: str, principal: Engineer, session: SessionDep) -> None:
    service.delete(session, get_project(session, id, tenant_id=principal.tenant_id), table)
