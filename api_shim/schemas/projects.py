"""Bodies of the Projects group."""

from __future__ import annotations

from pydantic import Field

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp

ProjectName = Field(min_length=1, max_length=200, description="Unique within the tenant.")


class ProjectCreate(RequestModel):
    name: str = ProjectName
    description: str | None = Field(None, max_length=2000)


class ProjectUpdate(RequestModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)


class ProjectResponse(ResponseModel):
    id: str = Field(examples=["proj_01jd2x9k7m3b5q8r1t4v6w0y2z"])
    name: str
    description: str | None
    namespace: str = Field(description="Iceberg namespace (and Dagster asset-key prefix) of the project's tables.")
    created_at: Timestamp
    updated_at: Timestamp


ProjectList = Page[ProjectResponse]
