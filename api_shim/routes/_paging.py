"""Turns a keyset page of ORM rows into the `{data, next_cursor, has_more}` response."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from pydantic import BaseModel

from api_shim.deps import pagination
from api_shim.pagination import Listing, Page, PageRequest, PageResult


def to_page(result: PageResult, model: type[BaseModel]) -> Page:
    return result.as_page(Page[model], model.model_validate)


def page_params(listing: Listing):
    """The `limit/cursor/sort/order` query parameters of `listing`, as an annotated dependency."""
    return Annotated[PageRequest, Depends(pagination(*listing.sort_columns, default_sort=listing.default_sort))]
