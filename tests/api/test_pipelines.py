"""Pipeline definitions through the API: JSON and YAML bodies, DAG and resource validation, updates."""

from __future__ import annotations

import pytest


def sync(connector_id: str, step_id: str = "sync", **extra) -> dict:
    return {"id": step_id, "type": "connector_sync", "config": {"connector_id": connector_id, **extra}}


def test_create_returns_dag_and_order(clients, setup):
    body = {
        "name": "nightly",
        "steps": [
            {
                "id": "tidy",
                "type": "table_maintenance",
                "config": {"table": "shop__orders", "operation": "expire_snapshots"},
                "depends_on": ["sync"],
            },
            sync(setup["connector"]["id"]),
        ],
        "schedule": "0 1 * * *",
        "variables": {"region": "nz"},
        "retries": 2,
        "timeout_seconds": 3600,
    }
    created = clients.admin.post(setup["url"], json=body)
    assert created.status_code == 201, created.text
    pipeline = created.json()
    assert pipeline["execution_order"] == ["sync", "tidy"]
    assert pipeline["dag"] == {
        "nodes": [
            {"id": "tidy", "name": "tidy", "type": "table_maintenance"},
            {"id": "sync", "name": "sync", "type": "connector_sync"},
        ],
        "edges": [{"from": "sync", "to": "tidy"}],
    }
    assert (pipeline["retries"], pipeline["timeout_seconds"], pipeline["status"]) == (2, 3600, "active")
    assert clients.admin.get(f"{setup['url']}/{pipeline['id']}").json()["dag"] == pipeline["dag"]
    assert clients.admin.post(setup["url"], json=body).status_code == 409


def test_yaml_body(clients, setup):
    yaml_body = f"""
name: from yaml
steps:
  - id: sync
    type: connector_sync
    config: {{connector_id: {setup["connector"]["id"]}, tables: [orders]}}
  - id: again
    type: connector_sync
    config: {{connector_id: {setup["connector"]["id"]}}}
    depends_on: [sync]
"""
    created = clients.admin.post(setup["url"], content=yaml_body, headers={"Content-Type": "application/yaml"})
    assert created.status_code == 201, created.text
    assert created.json()["execution_order"] == ["sync", "again"]
    broken = clients.admin.post(setup["url"], content="name: [unclosed", headers={"Content-Type": "application/yaml"})
    assert broken.status_code == 400 and "Malformed YAML" in broken.json()["error"]["details"][0]["message"]
    invalid = clients.admin.post(
        setup["url"], content="name: x\nsteps: 3\n", headers={"Content-Type": "application/yaml"}
    )
    assert invalid.status_code == 400
    assert invalid.json()["error"]["details"][0]["field"] == "steps"


@pytest.mark.parametrize(
    ("steps", "words", "field"),
    [
        (
            lambda s: [sync(s["connector"]["id"], "a"), {**sync(s["connector"]["id"], "b"), "depends_on": ["zzz"]}],
            "unknown step 'zzz'",
            "steps.1.depends_on",
        ),
        (
            lambda s: [
                {**sync(s["connector"]["id"], "a"), "depends_on": ["b"]},
                {**sync(s["connector"]["id"], "b"), "depends_on": ["a"]},
            ],
            "cycle",
            "steps.0.depends_on",
        ),
        (lambda s: [sync("conn_nope")], "no connector conn_nope", "steps.0.config"),
        (lambda s: [sync(s["foreign"]["id"])], "in this project", "steps.0.config"),
        (lambda s: [sync(s["connector"]["id"], tables=["customers"])], "no table(s) customers", "steps.0.config"),
        (
            lambda s: [{"id": "d", "type": "dbt", "config": {"dbt_project_id": "dbt_nope"}}],
            "no dbt project",
            "steps.0.config",
        ),
        (
            lambda s: [
                {
                    "id": "m",
                    "type": "table_maintenance",
                    "config": {"table": "other__x", "operation": "expire_snapshots"},
                }
            ],
            "not a table",
            "steps.0.config",
        ),
        (
            lambda s: [{"id": "p", "type": "pipeline", "config": {"pipeline_id": "pipe_nope"}}],
            "no pipeline",
            "steps.0.config",
        ),
    ],
)
def test_invalid_dags_are_422_naming_the_step(clients, setup, steps, words, field):
    response = clients.admin.post(setup["url"], json={"name": "bad", "steps": steps(setup)})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert words in error["message"]
    assert error["details"][0]["field"] == field
    assert clients.admin.get(setup["url"]).json()["data"] == []


def test_unknown_step_type_is_400(clients, setup):
    response = clients.admin.post(
        setup["url"], json={"name": "x", "steps": [{"id": "a", "type": "spark", "config": {}}]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"].startswith("steps.0.type")


def test_sub_pipelines_cannot_form_a_cycle_and_block_deletion(clients, setup):
    inner = clients.admin.post(setup["url"], json={"name": "inner", "steps": [sync(setup["connector"]["id"])]}).json()
    outer = clients.admin.post(
        setup["url"],
        json={
            "name": "outer",
            "steps": [{"id": "run_inner", "type": "pipeline", "config": {"pipeline_id": inner["id"]}}],
        },
    )
    assert outer.status_code == 201, outer.text
    loop = clients.admin.patch(
        f"{setup['url']}/{inner['id']}",
        json={"steps": [{"id": "back", "type": "pipeline", "config": {"pipeline_id": outer.json()["id"]}}]},
    )
    assert loop.status_code == 422 and "cycle" in loop.json()["error"]["message"]
    itself = clients.admin.patch(
        f"{setup['url']}/{inner['id']}",
        json={"steps": [{"id": "me", "type": "pipeline", "config": {"pipeline_id": inner["id"]}}]},
    )
    assert itself.status_code == 422 and "itself" in itself.json()["error"]["message"]
    blocked = clients.admin.delete(f"{setup['url']}/{inner['id']}")
    assert blocked.status_code == 409 and "outer" in blocked.json()["error"]["message"]
    assert clients.admin.delete(f"{setup['url']}/{outer.json()['id']}").status_code == 204
    assert clients.admin.delete(f"{setup['url']}/{inner['id']}").status_code == 204


def test_update_keeps_what_is_not_given(clients, setup):
    created = clients.admin.post(
        setup["url"], json={"name": "p", "steps": [sync(setup["connector"]["id"])], "retries": 1}
    ).json()
    url = f"{setup['url']}/{created['id']}"
    updated = clients.admin.patch(url, json={"schedule": "*/15 * * * *", "status": "paused"}).json()
    assert (updated["schedule"], updated["status"], updated["retries"], updated["steps"]) == (
        "*/15 * * * *",
        "paused",
        1,
        created["steps"],
    )
    assert clients.admin.patch(url, json={"steps": None}).status_code == 400
    assert clients.admin.patch(url, json={"schedule": "not cron"}).status_code == 400


# Runs (what needs no Dagster; tests/dagster/test_pipeline_runs.py runs them for real) -------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"variables": [1, 2]}, "variables"),
        ({"dry_run": "maybe"}, "dry_run"),
        ({"full_refresh": True, "surprise": 1}, "surprise"),
        ({"variables": {"blob": "x" * (64 * 1024)}}, "variables"),
    ],
)
def test_run_request_is_validated(clients, setup, body, field):
    pipeline = clients.admin.post(setup["url"], json={"name": "v", "steps": [sync(setup["connector"]["id"])]}).json()
    response = clients.admin.post(f"{setup['url']}/{pipeline['id']}/run", json=body)
    assert response.status_code == 400, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]


def test_dry_run_returns_the_nested_plan_and_merged_variables(clients, setup):
    inner = clients.admin.post(setup["url"], json={"name": "inner", "steps": [sync(setup["connector"]["id"])]}).json()
    outer = clients.admin.post(
        setup["url"],
        json={
            "name": "outer",
            "variables": {"a": 1, "b": 2},
            "steps": [
                {"id": "nested", "type": "pipeline", "config": {"pipeline_id": inner["id"]}},
                sync(setup["connector"]["id"], step_id="after") | {"depends_on": ["nested"]},
            ],
        },
    ).json()
    plan = clients.admin.post(f"{setup['url']}/{outer['id']}/run", json={"dry_run": True, "variables": {"b": 3}})
    assert plan.status_code == 200, plan.text
    body = plan.json()
    assert body["dry_run"] is True and body["run_id"] is None and body["status"] == "validated"
    assert body["variables"] == {"a": 1, "b": 3}
    assert [(s["order"], s["step_id"]) for s in body["plan"]] == [(1, "nested"), (2, "after")]
    assert [s["step_id"] for s in body["plan"][0]["steps"]] == ["sync"]


def test_run_of_a_pipeline_whose_connector_is_gone_is_422_naming_the_step(clients, setup):
    pipeline = clients.admin.post(setup["url"], json={"name": "g", "steps": [sync(setup["connector"]["id"])]}).json()
    project_id = setup["project"]["id"]
    assert (
        clients.admin.delete(f"/api/v1/projects/{project_id}/connectors/{setup['connector']['id']}").status_code == 204
    )
    for body in ({"dry_run": True}, {}):
        response = clients.admin.post(f"{setup['url']}/{pipeline['id']}/run", json=body)
        assert response.status_code == 422, response.text
        assert "Step 'sync'" in response.json()["error"]["message"]


@pytest.mark.parametrize("run_id", ["nope", "run_" + "z" * 32, "run_" + "0" * 32])
def test_unknown_or_malformed_run_ids_are_404(clients, setup, run_id):
    pipeline = clients.admin.post(setup["url"], json={"name": "r", "steps": [sync(setup["connector"]["id"])]}).json()
    base = f"{setup['url']}/{pipeline['id']}/runs/{run_id}"
    for method, url in (("GET", base), ("POST", f"{base}/cancel"), ("GET", f"{base}/logs")):
        response = clients.admin.request(method, url)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["error"]["code"] == "resource_not_found"
