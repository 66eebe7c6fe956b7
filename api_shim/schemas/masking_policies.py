"""Bodies of the Governance group's masking policies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from api_shim.services.auth import Role

Strategy = Literal["redact", "hash", "partial", "null"]
MAX_POLICY_COLUMNS = 500
MAX_KEEP_LAST = 32
DEFAULT_KEEP_LAST = 4


class MaskedColumn(RequestModel):
    table: str = Field(min_length=1, max_length=300, description="As GET .../tables lists it, e.g. `crm__customer`.")
    column: str = Field(min_length=1, max_length=300)


class MaskingOptions(RequestModel):
    keep_last: int = Field(
        ge=1, le=MAX_KEEP_LAST, description=f"`partial` only: trailing characters shown (default {DEFAULT_KEEP_LAST})."
    )


_STRATEGY_DOC = (
    "`redact`: `****`; `hash`: HMAC-SHA256, keyed per project, hex (equal values hash alike, so joins still "
    "match); `partial`: `****` and the last `options.keep_last` characters (a value no longer than that is "
    "redacted whole); `null`: NULL. NULL stays NULL under every strategy."
)


class MaskingPolicyCreate(RequestModel):
    """Exactly one of `classification_id` and `columns`."""

    name: str = Field(min_length=1, max_length=200)
    classification_id: str | None = Field(None, description="Masks every column tagged with this classification.")
    columns: list[MaskedColumn] | None = Field(None, min_length=1, max_length=MAX_POLICY_COLUMNS)
    strategy: Strategy = Field(description=_STRATEGY_DOC)
    options: MaskingOptions | None = None
    exempt_roles: list[Role] = Field(
        default_factory=list,
        max_length=len(Role),
        description="Roles that read the columns in clear (exact roles: list `admin` too if it is meant). Each such "
        "read is audited as `table.read_unmasked`.",
    )


class MaskingPolicyUpdate(RequestModel):
    """A partial update; set `classification_id` or `columns` to switch what the policy covers (the other to
    null)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    classification_id: str | None = None
    columns: list[MaskedColumn] | None = Field(None, min_length=1, max_length=MAX_POLICY_COLUMNS)
    strategy: Strategy | None = None
    options: MaskingOptions | None = None
    exempt_roles: list[Role] | None = Field(None, max_length=len(Role))


class MaskedColumnResponse(ResponseModel):
    table: str
    column: str


class MaskingPolicyResponse(ResponseModel):
    id: str
    name: str
    classification_id: str | None
    columns: list[MaskedColumnResponse] | None
    strategy: Strategy
    options: dict[str, Any]
    exempt_roles: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class MaskingPolicyList(Page[MaskingPolicyResponse]):
    pass
