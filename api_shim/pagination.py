"""Keyset (cursor) pagination shared by every list endpoint.

Cursors are signed with itsdangerous, so a client can neither read nor forge one:
a tampered cursor, or one minted for another list or sort order, is a 400.
Pages are fetched with `WHERE (sort_col, id) < (last_value, last_id)` on an index,
so page 100 costs the same as page 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import BaseModel, Field
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from api_shim.errors import ValidationFailed

T = TypeVar("T")
P = TypeVar("P", bound=BaseModel)

DEFAULT_LIMIT = 50
MAX_LIMIT = 100


class Page(BaseModel, Generic[T]):
    """A page of a list: `next_cursor` is null on the last page."""

    data: list[T]
    next_cursor: str | None = Field(None, description="Opaque cursor for the next page; pass it back as `cursor`.")
    has_more: bool


@dataclass(frozen=True)
class PageRequest:
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    sort: str = "created_at"
    order: Literal["asc", "desc"] = "desc"


@dataclass
class PageResult(Generic[T]):
    items: list[T]
    next_cursor: str | None
    has_more: bool

    def as_page(self, model: type[P], convert: Callable[[T], Any]) -> P:
        """This page as the list response `model` (`{data, next_cursor, has_more}`), each item through `convert`."""
        return model(data=[convert(item) for item in self.items], next_cursor=self.next_cursor, has_more=self.has_more)


class CursorCodec:
    """Signs and verifies cursor payloads with the deployment's secret."""

    def __init__(self, secret: str):
        self._serializer = URLSafeSerializer(secret, salt="rime.pagination.v1")

    def encode(self, payload: dict[str, Any]) -> str:
        return self._serializer.dumps(payload)

    def decode(self, cursor: str) -> dict[str, Any]:
        try:
            payload = self._serializer.loads(cursor)
        except BadSignature:
            raise ValidationFailed.field("cursor", "Invalid cursor: pass back a next_cursor value unchanged.") from None
        if not isinstance(payload, dict):
            raise ValidationFailed.field("cursor", "Invalid cursor.")
        return payload


def scope_of(list_name: str, filters: dict[str, Any]) -> str:
    """A short digest tying a cursor to one list and one set of filters."""
    blob = json.dumps([list_name, {k: str(v) for k, v in sorted(filters.items()) if v is not None}])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _dump(value: object) -> object:
    return {"dt": value.isoformat()} if isinstance(value, datetime) else value


def _load(value: object) -> object:
    if isinstance(value, dict) and "dt" in value:
        return datetime.fromisoformat(value["dt"])
    return value


def paginate(
    session: Session,
    stmt: Select,
    *,
    request: PageRequest,
    codec: CursorCodec,
    sort_columns: dict[str, InstrumentedAttribute],
    id_column: InstrumentedAttribute,
    scope: str,
) -> PageResult:
    """Run `stmt` (a select of one ORM entity, already filtered) as one keyset page."""
    if request.sort not in sort_columns:
        raise ValidationFailed.field("sort", f"Must be one of: {', '.join(sorted(sort_columns))}.")
    sort_col = sort_columns[request.sort]
    descending = request.order == "desc"

    if request.cursor:
        payload = codec.decode(request.cursor)
        if payload.get("s") != scope or payload.get("k") != request.sort or payload.get("o") != request.order:
            raise ValidationFailed.field("cursor", "Cursor belongs to another list, filter or sort order.")
        last_value, last_id = _load(payload.get("v")), payload.get("i")
        if last_value is None or not isinstance(last_id, str):
            raise ValidationFailed.field("cursor", "Invalid cursor.")
        # `col <= v AND (col < v OR id < i)` keeps an index-usable range on the sort column.
        if descending:
            stmt = stmt.where(and_(sort_col <= last_value, or_(sort_col < last_value, id_column < last_id)))
        else:
            stmt = stmt.where(and_(sort_col >= last_value, or_(sort_col > last_value, id_column > last_id)))

    ordering = (sort_col.desc(), id_column.desc()) if descending else (sort_col.asc(), id_column.asc())
    rows = list(session.scalars(stmt.order_by(*ordering).limit(request.limit + 1)))
    has_more = len(rows) > request.limit
    rows = rows[: request.limit]
    next_cursor = None
    if has_more:
        last = rows[-1]
        next_cursor = codec.encode(
            {
                "s": scope,
                "k": request.sort,
                "o": request.order,
                "v": _dump(getattr(last, sort_col.key)),
                "i": getattr(last, id_column.key),
            }
        )
    return PageResult(items=rows, next_cursor=next_cursor, has_more=has_more)


def paginate_items(
    items: Iterable[T], key: Callable[[T], tuple[str, ...]], *, request: PageRequest, codec: CursorCodec, scope: str
) -> PageResult[T]:
    """One keyset page of a list built in memory (a dbt manifest's models, a namespace's tables), ordered by
    `key`, which must be unique per item. Cursors work as `paginate`'s: signed, bound to the list and order."""
    descending = request.order == "desc"
    ordered = sorted(items, key=key, reverse=descending)
    if request.cursor:
        payload = codec.decode(request.cursor)
        if payload.get("s") != scope or payload.get("k") != request.sort or payload.get("o") != request.order:
            raise ValidationFailed.field("cursor", "Cursor belongs to another list, filter or sort order.")
        last = payload.get("v")
        if not isinstance(last, list) or not all(isinstance(part, str) for part in last):
            raise ValidationFailed.field("cursor", "Invalid cursor.")
        after = tuple(last)
        ordered = [item for item in ordered if (key(item) < after if descending else key(item) > after)]
    page, has_more = ordered[: request.limit], len(ordered) > request.limit
    next_cursor = (
        codec.encode({"s": scope, "k": request.sort, "o": request.order, "v": list(key(page[-1]))})
        if has_more
        else None
    )
    return PageResult(items=page, next_cursor=next_cursor, has_more=has_more)


@dataclass(frozen=True)
class Listing:
    """One paginated list: its name (cursors are bound to it), sortable columns and id column."""

    name: str
    sort_columns: dict[str, InstrumentedAttribute]
    id_column: InstrumentedAttribute
    default_sort: str = "created_at"

    def page(
        self, session: Session, stmt: Select, request: PageRequest, codec: CursorCodec, filters: dict | None = None
    ) -> PageResult:
        return paginate(
            session,
            stmt,
            request=request,
            codec=codec,
            sort_columns=self.sort_columns,
            id_column=self.id_column,
            scope=scope_of(self.name, filters or {}),
        )
