"""Users group: `/users`, `/users/{userId}` and the user's API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import status
from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.deps import Admin, CursorCodecDep, PrincipalDep, SessionDep, Viewer
from api_shim.errors import ValidationFailed
from api_shim.pagination import Listing, PageRequest
from api_shim.routes._paging import page_params
from api_shim.routing import rime_router
from api_shim.schemas.common import error_responses
from api_shim.schemas.users import (
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenResponse,
    UserCreate,
    UserList,
    UserResponse,
    UserUpdate,
)
from api_shim.services import users as service
from api_shim.services.auth import Principal
from rime_dagster.store.models import ApiToken, User

router = rime_router(prefix="/users", tags=["Users"])

USERS = Listing("users", {"created_at": User.created_at, "updated_at": User.updated_at, "email": User.email}, User.id)
TOKENS = Listing("tokens", {"created_at": ApiToken.created_at}, ApiToken.id)
UserPage = Annotated[PageRequest, page_params(USERS)]
TokenPage = Annotated[PageRequest, page_params(TOKENS)]


@router.get("", name="user.list", response_model=UserList, summary="List users in the tenant")
def list_users(
    principal: Viewer,
    session: SessionDep,
    codec: CursorCodecDep,
    page: UserPage,
) -> UserList:
    stmt = select(User).where(User.tenant_id == principal.tenant_id)
    return USERS.page(session, stmt, page, codec).as_page(UserList, UserResponse.model_validate)


@router.post(
    "",
    name="user.create",
    status_code=status.HTTP_201_CREATED,
    response_model=UserResponse,
    responses=error_responses(409),
    summary="Invite a new user",
)
def create_user(body: UserCreate, principal: Admin, session: SessionDep) -> User:
    return service.create_user(session, tenant_id=principal.tenant_id, email=body.email, name=body.name, role=body.role)


@router.get(
    "/{userId}",
    name="user.get",
    response_model=UserResponse,
    responses=error_responses(404),
    summary="Get user details",
)
def get_user(userId: str, principal: Viewer, session: SessionDep) -> User:
    return service.get_user(session, userId, tenant_id=principal.tenant_id)


@router.patch(
    "/{userId}",
    name="user.update",
    response_model=UserResponse,
    responses=error_responses(404, 409),
    summary="Update user role or settings",
)
def update_user(userId: str, body: UserUpdate, principal: Admin, session: SessionDep) -> User:
    user = service.get_user(session, userId, tenant_id=principal.tenant_id)
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "role", "status"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.field(field, "Cannot be null.")
    return service.update_user(session, user, changes=changes)


@router.delete(
    "/{userId}",
    name="user.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Remove a user",
)
def delete_user(userId: str, principal: Admin, session: SessionDep) -> None:
    service.delete_user(session, service.get_user(session, userId, tenant_id=principal.tenant_id))


def _token_owner(session: Session, principal: Principal, user_id: str) -> User:
    user = service.get_user(session, user_id, tenant_id=principal.tenant_id)
    service.ensure_can_manage_tokens(principal, user)
    return user


@router.get(
    "/{userId}/tokens",
    name="token.list",
    response_model=TokenList,
    responses=error_responses(404),
    summary="List a user's API tokens (never their secrets)",
)
def list_tokens(
    userId: str,
    principal: PrincipalDep,
    session: SessionDep,
    codec: CursorCodecDep,
    page: TokenPage,
) -> TokenList:
    user = _token_owner(session, principal, userId)
    stmt = select(ApiToken).where(ApiToken.user_id == user.id)
    return TOKENS.page(session, stmt, page, codec, {"user": user.id}).as_page(TokenList, TokenResponse.model_validate)


@router.post(
    "/{userId}/tokens",
    name="token.create",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses=error_responses(404),
    summary="Mint an API token (the secret is returned once)",
)
def create_token(userId: str, body: TokenCreate, principal: PrincipalDep, session: SessionDep) -> TokenCreated:
    user = _token_owner(session, principal, userId)
    issued = service.create_token(session, user, name=body.name, expires_at=body.expires_at)
    return TokenCreated.of(issued.token, token=issued.secret)


@router.delete(
    "/{userId}/tokens/{tokenId}",
    name="token.delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Revoke an API token",
)
def revoke_token(userId: str, tokenId: str, principal: PrincipalDep, session: SessionDep) -> None:
    user = _token_owner(session, principal, userId)
    service.revoke_token(session, service.get_token(session, user, tokenId))
