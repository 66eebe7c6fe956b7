"""Pipelines as documents: export as JSON or YAML with `format_version`, import back losslessly (an export imported
into its project changes nothing; into a project of the same connectors' names it is refused where ids differ),
newer formats refused with a clear message, a document of a new name creating the pipeline."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.api.test_pipelines import sync


@pytest.fixture
def pipeline(clients, setup) -> dict:
    body = {
        "name": "nightly",
        "description": "Sync, then again",
        "schedule": "0 2 * * *",
        "variables": {"region": "eu", "limits": {"rows": 10}},
        "retries": 2,
        "timeout_seconds": 3600,
        "steps": [
            sync(setup["connector"]["id"], tables=["orders"]),
            {**sync(setup["connector"]["id"], "again"), "depends_on": ["sync"]},
        ],
        "triggers": [{"type": "on_upload", "connector_id": setup["connector"]["id"]}],
    }
    created = clients.admin.post(setup["url"], json=body)
    assert created.status_code == 201, created.text
    return created.json()


def export(clients, setup, pipeline: dict, fmt: str) -> str:
    response = clients.as_role("viewer").get(f"{setup['url']}/{pipeline['id']}/export", params={"format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(f"application/{fmt}")
    return response.text


def test_export_holds_the_definition_and_imports_back_unchanged(clients, setup, pipeline):
    as_json = json.loads(export(clients, setup, pipeline, "json"))
    as_yaml = yaml.safe_load(export(clients, setup, pipeline, "yaml"))
    assert as_json == as_yaml
    assert as_json["format_version"] == 1 and as_json["kind"] == "pipeline"
    definition = as_json["pipeline"]
    assert definition["name"] == "nightly" and definition["status"] == "active" and definition["retries"] == 2
    assert [s["id"] for s in definition["steps"]] == ["sync", "again"]
    assert definition["triggers"] == [{"type": "on_upload", "connector_id": setup["connector"]["id"]}]

    engineer = clients.as_role("data_engineer")
    for text, content_type in (
        (json.dumps(as_json), "application/json"),
        (yaml.safe_dump(as_yaml), "application/yaml"),
    ):
        imported = engineer.post(f"{setup['url']}/import", content=text, headers={"Content-Type": content_type})
        assert imported.status_code == 200, imported.text  # the project's pipeline of that name: replaced
        assert imported.json()["id"] == pipeline["id"]
        assert json.loads(export(clients, setup, pipeline, "json")) == as_json  # lossless


def test_a_document_replaces_the_whole_definition_and_a_new_name_creates(clients, setup, pipeline):
    doc = json.loads(export(clients, setup, pipeline, "json"))
    doc["pipeline"] = {"name": "nightly", "steps": doc["pipeline"]["steps"][:1], "status": "paused"}
    engineer = clients.as_role("data_engineer")
    replaced = engineer.post(f"{setup['url']}/import", json=doc)
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["status"] == "paused" and body["schedule"] is None and body["retries"] == 0 and body["triggers"] == []
    assert [s["id"] for s in body["steps"]] == ["sync"]

    doc["pipeline"]["name"] = "copy"
    created = engineer.post(f"{setup['url']}/import", json=doc)
    assert (
        created.status_code == 201 and created.json()["id"] != pipeline["id"] and created.json()["status"] == "paused"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"format_version": 2}, "format_version"),
        ({"format_version": 0}, "format_version"),
        ({"kind": "connector"}, "kind"),
        ({"pipeline": {"name": "x"}}, "pipeline.steps"),
    ],
)
def test_bad_documents_are_400_naming_the_field(clients, setup, pipeline, change, field):
    doc = {**json.loads(export(clients, setup, pipeline, "json")), **change}
    response = clients.as_role("data_engineer").post(f"{setup['url']}/import", json=doc)
    assert response.status_code == 400, response.text
    details = response.json()["error"]["details"]
    assert [d["field"] for d in details] == [field]
    if change.get("format_version") == 2:
        assert "newer than this server reads (1): upgrade Rime" in details[0]["message"]


def test_ids_of_another_project_are_refused_and_roles_hold(clients, setup, pipeline):
    doc = json.loads(export(clients, setup, pipeline, "json"))
    doc["pipeline"]["steps"][0]["config"]["connector_id"] = setup["foreign"]["id"]
    refused = clients.as_role("data_engineer").post(f"{setup['url']}/import", json=doc)
    assert refused.status_code == 422 and "sync" in refused.text
    assert clients.as_role("viewer").post(f"{setup['url']}/import", json=doc).status_code == 403
    assert clients.as_role("viewer").get(f"{setup['url']}/pipe_nope/export").status_code == 404
