"""Keyset pagination properties: no duplicates and no gaps, even while items are created mid-paging."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from api_shim.pagination import CursorCodec
from api_shim.services import projects
from rime_dagster.store.session import session_scope

_names = itertools.count()


def _seed(settings, count: int) -> set[str]:
    with session_scope(settings.metadata_url) as session:
        return {
            projects.create_project(
                session, tenant_id=settings.tenant, name=f"seed-{next(_names)}", description=None
            ).id
            for _ in range(count)
        }


def _walk(client, params: dict, *, on_page=None, max_pages: int = 500) -> list[dict]:
    seen: list[dict] = []
    cursor = None
    for _ in range(max_pages):
        response = client.get("/api/v1/projects", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        seen.extend(body["data"])
        assert body["has_more"] == (body["next_cursor"] is not None)
        if on_page:
            on_page()
        if not body["has_more"]:
            return seen
        cursor = body["next_cursor"]
    raise AssertionError(f"paging did not end within {max_pages} pages")


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    initial=st.integers(min_value=0, max_value=40),
    limit=st.integers(min_value=1, max_value=15),
    created_per_page=st.integers(min_value=0, max_value=3),
    sort=st.sampled_from(["created_at", "name", "updated_at"]),
    order=st.sampled_from([None, "asc", "desc"]),
)
@pytest.mark.slow
def test_no_duplicates_no_gaps_while_creating(clients, settings, initial, limit, created_per_page, sort, order):
    existing = {p["id"] for p in _walk(clients.admin, {"limit": 100})}
    existing |= _seed(settings, initial)
    params = {"limit": limit, "sort": sort, **({"order": order} if order else {})}
    pages = iter(range(3))

    def create_while_paging() -> None:
        # Only during the first pages: in ascending order new items land at the end, and
        # creating more per page than a page holds would make the list endless.
        if next(pages, None) is not None:
            _seed(settings, created_per_page)

    seen = _walk(clients.admin, params, on_page=create_while_paging)
    ids = [p["id"] for p in seen]
    assert len(ids) == len(set(ids)), "a project appeared twice"
    assert existing <= set(ids), "a project that existed before paging was skipped"
    values = [(p[sort], p["id"]) for p in seen if p["id"] in existing]
    descending = order == "desc" or (order is None and sort.endswith("_at"))
    assert values == sorted(values, reverse=descending)


def test_default_is_newest_first(admin, settings):
    _seed(settings, 3)
    data = admin.get("/api/v1/projects").json()["data"]
    stamps = [p["created_at"] for p in data]
    assert stamps == sorted(stamps, reverse=True)


def test_tampered_cursor_is_400(admin, settings):
    _seed(settings, 3)
    cursor = admin.get("/api/v1/projects", params={"limit": 1}).json()["next_cursor"]
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    response = admin.get("/api/v1/projects", params={"limit": 1, "cursor": tampered})
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "cursor"


def test_forged_cursor_with_another_key_is_400(admin, settings):
    forged = CursorCodec("not-the-server-key").encode({"s": "x", "k": "created_at", "o": "desc", "v": 1, "i": "proj_x"})
    assert admin.get("/api/v1/projects", params={"cursor": forged}).status_code == 400


@pytest.mark.parametrize("other", [{"sort": "name"}, {"order": "asc"}])
def test_cursor_bound_to_its_sort_order(admin, settings, other):
    _seed(settings, 3)
    cursor = admin.get("/api/v1/projects", params={"limit": 1}).json()["next_cursor"]
    response = admin.get("/api/v1/projects", params={"limit": 1, "cursor": cursor, **other})
    assert response.status_code == 400


def test_cursor_bound_to_its_list(admin, settings):
    _seed(settings, 3)
    cursor = admin.get("/api/v1/projects", params={"limit": 1}).json()["next_cursor"]
    assert admin.get("/api/v1/users", params={"cursor": cursor}).status_code == 400


def test_unknown_sort_field_is_400(admin):
    response = admin.get("/api/v1/projects", params={"sort": "description"})
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "sort"
