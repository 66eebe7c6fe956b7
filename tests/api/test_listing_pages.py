"""Lists built from outside the metadata store page like every other list: a project's Iceberg tables (read from
the catalog) and a dbt project's models (read from its manifest)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rime_dagster.platform.iceberg import open_catalog


def _walk(client, url: str, **params) -> tuple[list[str], list[bool]]:
    names, more, cursor = [], [], None
    for _ in range(50):
        page = client.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        names += [item["name"] for item in body["data"]]
        more.append(body["has_more"])
        cursor = body["next_cursor"]
        assert (cursor is not None) == body["has_more"]
        if not cursor:
            return names, more
    raise AssertionError("the list never ended")


def test_tables_page_by_name(admin, settings, project):
    catalog = open_catalog(settings)
    catalog.create_namespace(project["namespace"])
    schema = pa.schema([("id", pa.int64())])
    names = [f"src__t{n}" for n in (3, 0, 4, 1, 2)]
    for name in names:
        catalog.create_table((project["namespace"], name), schema=schema)
    url = f"/api/v1/projects/{project['id']}/tables"

    assert _walk(admin, url, limit=2) == (sorted(names), [True, True, False])
    assert _walk(admin, url, limit=2, order="desc")[0] == sorted(names, reverse=True)
    assert _walk(admin, url)[0] == sorted(names)  # one page by default

    first = admin.get(url, params={"limit": 2}).json()
    other = f"/api/v1/projects/{project['id']}/connectors"
    refused = admin.get(other, params={"cursor": first["next_cursor"]})
    assert refused.status_code == 400  # a cursor belongs to its list
    assert admin.get(url, params={"cursor": first["next_cursor"] + "x"}).status_code == 400
    assert admin.get(url, params={"cursor": first["next_cursor"], "order": "desc"}).status_code == 400


@pytest.mark.slow
def test_models_page_by_name(admin, settings, project, tmp_path):
    source = tmp_path / "allowed" / "five"
    (source / "models").mkdir(parents=True)
    (source / "dbt_project.yml").write_text('name: five\nversion: "1.0.0"\nprofile: five\n')
    models = ["e", "a", "d", "b", "c"]
    for name in models:
        (source / "models" / f"{name}.sql").write_text("select 1 as id\n")
    settings.dbt_project_roots = [tmp_path / "allowed"]
    created = admin.post(
        f"/api/v1/projects/{project['id']}/dbt-projects",
        json={"name": "Five", "source": {"type": "path", "path": str(source)}},
    )
    assert created.status_code == 201, created.text
    url = f"/api/v1/projects/{project['id']}/dbt-projects/{created.json()['id']}/models"

    assert _walk(admin, url, limit=2) == (sorted(models), [True, True, False])
    assert _walk(admin, url, limit=3, order="desc")[0] == sorted(models, reverse=True)
    page = admin.get(url, params={"limit": 1}).json()
    assert page["data"][0]["unique_id"] == "model.five.a" and page["has_more"]
    tables = f"/api/v1/projects/{project['id']}/tables"
    assert admin.get(tables, params={"cursor": page["next_cursor"]}).status_code == 400
    assert admin.get(url, params={"sort": "created_at"}).status_code == 400
