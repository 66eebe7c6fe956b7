"""Turns a keyset page of ORM rows into the `{data, next_cursor, has_more}` response."""

from __future__ import annotations

from pydantic import BaseModel

from api_shim.pagination import Page, PageResult


def to_page(result: PageResult, model: type[BaseModel]) -> Page:
    return Page[model](
        data=[model.model_validate(row) for row in result.items],
        next_cursor=result.next_cursor,
        has_more=result.has_more,
    )
