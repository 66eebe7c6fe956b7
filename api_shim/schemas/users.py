"""Bodies of the Users group and its token endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import EmailStr, Field, field_validator

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.services.auth import Role


class UserCreate(RequestModel):
    email: EmailStr
    name: str = Field(min_length=1, max_length=200)
    role: Role


class UserUpdate(RequestModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    role: Role | None = None
    status: Literal["active", "disabled"] | None = None


class UserResponse(ResponseModel):
    id: str
    email: str
    name: str
    role: Role
    status: Literal["invited", "active", "disabled"]
    created_at: Timestamp
    updated_at: Timestamp
    last_seen_at: Timestamp | None


UserList = Page[UserResponse]


class TokenCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    expires_at: datetime | None = Field(None, description="RFC 3339 with a zone; absent means no expiry.")

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("Must include a time zone, e.g. 2027-01-01T00:00:00Z")
        return value


class TokenResponse(ResponseModel):
    id: str
    name: str
    prefix: str = Field(description="First characters of the secret, to recognise it.")
    created_at: Timestamp
    expires_at: Timestamp | None
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class TokenCreated(TokenResponse):
    token: str = Field(description="The secret. Shown once: it is stored only as a hash.")


TokenList = Page[TokenResponse]
