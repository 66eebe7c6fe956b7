"""Pipeline triggers through the API: stored with `since` and a sensor, validated (400 for the shape, 422 naming
`triggers[i]`), and read back by the code location's specs, whose sensors then see the project's uploads."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from api_shim.main import create_app
from rime_dagster.pipelines.jobs import Resources, pipeline_definitions
from rime_dagster.resources import MetadataStoreResource, get_settings
from rime_dagster.specs import load_specs
from tests.conftest import make_settings, role_clients, use_settings


@pytest.fixture
def setup(clients, tmp_path) -> dict:
    return make_setup(clients.admin, tmp_path)


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> Iterator[tuple[TestClient, dict]]:
    """An admin and a set-up shared by the tests whose every request is refused (400 or 422: nothing changes for
    the next one), made once for them instead of an app, its users and five connectors per case."""
    tmp_path = tmp_path_factory.mktemp("refused")
    settings = make_settings(tmp_path)
    with role_clients(create_app(settings), settings) as clients:
        yield clients.admin, make_setup(clients.admin, tmp_path)


def make_setup(admin: TestClient, tmp_path: Path) -> dict:
    """A project with three files connectors (one reading a folder under `tmp_path`) and its pipelines' URL; and
    another project's connector."""
    project = admin.post("/api/v1/projects", json={"name": "triggers"}).json()
    base = f"/api/v1/projects/{project['id']}"

    def connector(name: str, config: dict) -> dict:
        response = admin.post(
            f"{base}/connectors",
            json={"name": name, "connector_type": "files", "config": config, "selected_tables": ["orders"]},
        )
        assert response.status_code == 201, response.text
        return response.json()

    (tmp_path / "folder").mkdir()
    other = admin.post("/api/v1/projects", json={"name": "elsewhere"}).json()
    foreign = admin.post(
        f"/api/v1/projects/{other['id']}/connectors",
        json={"name": "Foreign", "connector_type": "files", "config": {}},
    ).json()
    return {
        "project": project,
        "shop": connector("Shop", {}),
        "crm": connector("CRM", {}),
        "folder": connector("Folder", {"path": str(tmp_path / "folder")}),
        "foreign": foreign,
        "url": f"{base}/pipelines",
        "uploads": f"{base}/connectors",
    }


def sync(connector_id: str, step_id: str = "sync") -> dict:
    return {"id": step_id, "type": "connector_sync", "config": {"connector_id": connector_id}}


def create(admin, setup, name: str, triggers: list[dict], steps: list[dict] | None = None):
    return admin.post(
        setup["url"], json={"name": name, "steps": steps or [sync(setup["shop"]["id"])], "triggers": triggers}
    )


def created(admin, setup, name: str, triggers: list[dict], steps: list[dict] | None = None) -> dict:
    response = create(admin, setup, name, triggers, steps)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_returns_triggers_with_since_and_sensor(clients, setup):
    admin = clients.admin
    upstream = created(admin, setup, "upstream", [])
    steps = [sync(setup["shop"]["id"]), sync(setup["crm"]["id"], "crm")]
    triggers = [
        {"type": "on_upload", "connector_id": setup["shop"]["id"]},
        {"type": "on_upload", "connector_id": setup["crm"]["id"]},
        {"type": "on_success", "pipeline_id": upstream["id"]},
        {"type": "on_table_update", "table": "folder__orders"},
    ]
    before = datetime.now().astimezone()
    pipeline = created(admin, setup, "triggered", triggers, steps)
    namespace = setup["project"]["namespace"]
    slug = f"{namespace}__triggered"
    assert [(t["type"], t["sensor_name"]) for t in pipeline["triggers"]] == [
        ("on_upload", f"{slug}__on_upload"),
        ("on_upload", f"{slug}__on_upload_2"),
        ("on_success", f"{slug}__on_success"),
        ("on_table_update", f"{slug}__on_table_update"),
    ]
    assert [{k: t[k] for k in t if k not in ("since", "sensor_name")} for t in pipeline["triggers"]] == triggers
    since = datetime.fromisoformat(pipeline["triggers"][0]["since"].replace("Z", "+00:00"))
    assert abs((since - before).total_seconds()) < 5
    assert admin.get(f"{setup['url']}/{pipeline['id']}").json()["triggers"] == pipeline["triggers"]
    listed = admin.get(setup["url"]).json()["data"]
    assert next(p for p in listed if p["id"] == pipeline["id"])["triggers"] == pipeline["triggers"]


def test_yaml_body_with_triggers(clients, setup):
    body = f"""
name: from yaml
steps:
  - id: sync
    type: connector_sync
    config: {{connector_id: {setup["shop"]["id"]}}}
triggers:
  - type: on_upload
    connector_id: {setup["shop"]["id"]}
"""
    response = clients.admin.post(setup["url"], content=body, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["triggers"][0]["type"] == "on_upload"


@pytest.mark.parametrize(
    ("triggers", "field"),
    [
        ([{"type": "on_schedule", "connector_id": "x"}], "triggers.0"),
        ([{"type": "on_upload"}], "triggers.0.on_upload.connector_id"),
        ([{"type": "on_upload", "connector_id": "x", "table": "y"}], "triggers.0.on_upload.table"),
        ([{"type": "on_table_update", "table": ""}], "triggers.0.on_table_update.table"),
        ([{"type": "on_table_update", "table": f"t{n}"} for n in range(11)], "triggers"),
        ("not a list", "triggers"),
    ],
)
def test_malformed_triggers_are_400(refused, triggers, field):
    admin, setup = refused
    response = create(admin, setup, "bad", triggers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["field"] == field


def test_the_same_trigger_twice_is_400(refused):
    admin, setup = refused
    shop = {"type": "on_upload", "connector_id": setup["shop"]["id"]}
    response = create(admin, setup, "twice", [shop, shop])
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "triggers.1"


@pytest.mark.parametrize(
    ("trigger", "words", "field"),
    [
        (lambda s: {"type": "on_upload", "connector_id": "conn_nope"}, "no connector conn_nope", "connector_id"),
        (lambda s: {"type": "on_upload", "connector_id": s["foreign"]["id"]}, "no connector", "connector_id"),
        (lambda s: {"type": "on_upload", "connector_id": s["folder"]["id"]}, "has no upload area", "connector_id"),
        (lambda s: {"type": "on_upload", "connector_id": s["crm"]["id"]}, "no connector_sync step", "connector_id"),
        (lambda s: {"type": "on_success", "pipeline_id": "pipeline_nope"}, "no pipeline", "pipeline_id"),
        (lambda s: {"type": "on_table_update", "table": "nope__orders"}, "is not a table", "table"),
        (lambda s: {"type": "on_table_update", "table": "crm__customers"}, "is not a table", "table"),
        (lambda s: {"type": "on_table_update", "table": "shop__orders"}, "writes shop__orders itself", "table"),
    ],
)
def test_unfit_triggers_are_422_naming_the_trigger(refused, trigger, words, field):
    admin, setup = refused
    fine = {"type": "on_table_update", "table": "crm__orders"}
    response = create(admin, setup, "unfit", [fine, trigger(setup)])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith("triggers[1]: ") and words in error["message"], error
    assert error["details"][0]["field"] == f"triggers.1.{field}"


def test_on_success_loops_are_refused(clients, setup):
    admin = clients.admin
    a = created(admin, setup, "a", [])
    b = created(admin, setup, "b", [{"type": "on_success", "pipeline_id": a["id"]}])
    c = created(admin, setup, "c", [{"type": "on_success", "pipeline_id": b["id"]}])
    itself = admin.patch(
        f"{setup['url']}/{a['id']}", json={"triggers": [{"type": "on_success", "pipeline_id": a["id"]}]}
    )
    assert itself.status_code == 422 and "its own success" in itself.json()["error"]["message"]
    loop = admin.patch(f"{setup['url']}/{a['id']}", json={"triggers": [{"type": "on_success", "pipeline_id": c["id"]}]})
    assert loop.status_code == 422, loop.text
    assert loop.json()["error"]["message"] == "triggers[0]: a loop of triggers: c -> a -> b -> c."
    # a -> b, a -> c (b and c both after a) is no loop.
    fan = admin.patch(f"{setup['url']}/{c['id']}", json={"triggers": [{"type": "on_success", "pipeline_id": a["id"]}]})
    assert fan.status_code == 200, fan.text
    # A pipeline another one starts after is not deleted from under it.
    refused = admin.delete(f"{setup['url']}/{a['id']}")
    assert refused.status_code == 409 and "b, c" in refused.json()["error"]["message"]


def test_patch_keeps_since_and_sensor_of_kept_triggers(clients, setup):
    admin = clients.admin
    steps = [sync(setup["shop"]["id"]), sync(setup["crm"]["id"], "crm")]
    shop = {"type": "on_upload", "connector_id": setup["shop"]["id"]}
    crm = {"type": "on_upload", "connector_id": setup["crm"]["id"]}
    pipeline = created(admin, setup, "p", [shop, crm], steps)
    url = f"{setup['url']}/{pipeline['id']}"
    kept = pipeline["triggers"][1]
    assert kept["sensor_name"].endswith("__on_upload_2")

    # The first trigger goes: the second keeps its sensor (and so its cursor and run keys) and its since.
    response = admin.patch(url, json={"triggers": [crm]})
    assert response.status_code == 200, response.text
    assert response.json()["triggers"] == [kept]
    # Another change (not to the triggers) leaves them be; a new one takes the free name and starts now.
    assert admin.patch(url, json={"description": "x"}).json()["triggers"] == [kept]
    both = admin.patch(url, json={"triggers": [crm, shop]}).json()["triggers"]
    assert both[0] == kept and both[1]["sensor_name"].endswith("__on_upload") and both[1]["since"] > kept["since"]
    # Steps that no longer sync a connector an on_upload trigger watches: 422, naming the trigger.
    dropped = admin.patch(url, json={"steps": [sync(setup["crm"]["id"], "crm")]})
    assert dropped.status_code == 422 and dropped.json()["error"]["details"][0]["field"] == "triggers.1.connector_id"
    assert admin.patch(url, json={"triggers": None}).status_code == 400
    assert admin.patch(url, json={"triggers": []}).json()["triggers"] == []


def test_a_file_uploaded_after_the_trigger_starts_one_run(clients, setup, settings, monkeypatch):
    """API -> store -> the code location's specs -> the sensor: the file uploaded before the trigger was added
    starts nothing, the one uploaded right after it starts one run."""
    admin = clients.admin
    # A connector that syncs whatever its upload area holds: each upload's discovery stores the new tables.
    landing = admin.post(setup["uploads"], json={"name": "Landing", "connector_type": "files", "config": {}})
    assert landing.status_code == 201, landing.text
    shop = landing.json()["id"]
    upload = f"{setup['uploads']}/{shop}/files"

    def put(name: str) -> None:
        response = admin.post(upload, files={"files": (name, io.BytesIO(b"id,amount\n1,2.5\n"), "text/csv")})
        assert response.status_code == 201, response.text

    put("before.csv")
    pipeline = created(admin, setup, "on upload", [{"type": "on_upload", "connector_id": shop}], [sync(shop)])
    put("after.csv")

    use_settings(monkeypatch, settings)
    try:
        specs = load_specs(MetadataStoreResource())
        [spec] = [p for p in specs.pipelines if p.id == pipeline["id"]]
        resources = Resources({c.id: c for c in specs.connectors}, {}, {p.id: p for p in specs.pipelines})
        [sensor] = pipeline_definitions(spec, resources).sensors
        assert sensor.name == pipeline["triggers"][0]["sensor_name"]
        with dg.DagsterInstance.ephemeral() as instance:
            result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    finally:
        get_settings.cache_clear()
    assert [json.loads(r.tags["rime/trigger_event"])["file"] for r in result.run_requests] == ["after.csv"]
    assert result.run_requests[0].tags["rime/pipeline_id"] == pipeline["id"]
