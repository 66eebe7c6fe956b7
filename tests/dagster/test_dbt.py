"""dbt projects end to end on a real Dagster: register through the API -> code location reload ->
Dagster run through dagster-dbt -> models, tests, runs and lineage back out of the API."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from api_shim.cli import REPO_ROOT
from tests.dagster.conftest import POLL_SECONDS, Webserver, graphql

pytestmark = pytest.mark.dagster

JAFFLE = REPO_ROOT / "tests" / "fixtures" / "dbt" / "jaffle_shop"

ASSET_NODES = "{ assetNodes { assetKey { path } dependencyKeys { path } groupName hasAssetChecks } }"


def _asset_nodes(settings) -> dict[tuple[str, ...], dict]:
    return {tuple(n["assetKey"]["path"]): n for n in graphql(settings, ASSET_NODES)["assetNodes"]}


def _wait_for_assets(settings, keys: list[list[str]], timeout: float = 60) -> dict[tuple[str, ...], dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = _asset_nodes(settings)
        if all(tuple(k) in nodes for k in keys):
            return nodes
        time.sleep(0.5)
    raise AssertionError(f"assets {keys} never appeared in the code location")


def _wait_for_dbt_run(api, base: str, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.get(f"{base}/runs").json()["data"]
        run = next((r for r in runs if r["run_id"] == run_id), None)
        if run and run["status"] in ("succeeded", "failed", "canceled"):
            return run
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"dbt run {run_id} did not finish in {timeout:.0f}s")


def _check_executions(settings, key: list[str], check: str) -> list[str]:
    query = """query($key: AssetKeyInput!, $name: String!) {
      assetCheckExecutions(assetKey: $key, checkName: $name, limit: 5) { status } }"""
    data = graphql(settings, query, {"key": {"path": key}, "name": check})
    return [e["status"] for e in data["assetCheckExecutions"]]


def _copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb"))
    return dest


def test_third_party_project_builds_through_dagster(api, dagster_webserver: Webserver, tmp_path):
    settings = dagster_webserver.settings
    folder = _copy_project(JAFFLE, tmp_path / "dropped" / "jaffle_shop")  # "dropped in a folder"
    project = api.post("/api/v1/projects", json={"name": "dbt third party"}).json()
    created = api.post(
        f"/api/v1/projects/{project['id']}/dbt-projects",
        json={"name": "Jaffle Shop", "source": {"type": "path", "path": str(folder)}, "schedule": "0 3 * * *"},
    )
    assert created.status_code == 201, created.text
    dbt = created.json()
    assert dbt["dbt_project_name"] == "jaffle_shop" and dbt["models_count"] == 5 and dbt["revision"] == 1
    assert dbt["target"] == {"adapter": "duckdb", "schema": "main"} and dbt["last_run"] is None
    lineage_types = {n["type"] for n in dbt["lineage"]["nodes"]}
    assert lineage_types == {"seed", "model", "snapshot", "test"}
    base = f"/api/v1/projects/{project['id']}/dbt-projects/{dbt['id']}"
    ns = project["namespace"]

    # Assets (grouped under the project) and checks show in the Dagster UI's asset graph.
    nodes = _wait_for_assets(settings, [[ns, "jaffle_shop", "customers"], [ns, "jaffle_shop", "raw_orders"]])
    customers = nodes[(ns, "jaffle_shop", "customers")]
    assert customers["groupName"] == ns and customers["hasAssetChecks"]
    assert [ns, "jaffle_shop", "stg_customers"] in [d["path"] for d in customers["dependencyKeys"]]
    assert (ns, "jaffle_shop", "customers_snapshot") in nodes
    schedules = graphql(
        settings,
        '{ schedulesOrError(repositorySelector: {repositoryLocationName: "rime", repositoryName: "__repository__"})'
        " { ... on Schedules { results { name cronSchedule } } } }",
    )["schedulesOrError"]["results"]
    assert {"name": f"{ns}__jaffle_shop_schedule", "cronSchedule": "0 3 * * *"} in schedules

    started = api.post(f"{base}/run", json={"command": "build"})
    assert started.status_code == 202, started.text
    assert started.json()["selected"] == 9  # 5 models, 3 seeds, 1 snapshot
    run = _wait_for_dbt_run(api, base, started.json()["run_id"])
    assert run["status"] == "succeeded", run
    statuses = {r["name"]: r["status"] for r in run["results"]}
    assert statuses["customers"] == "success" and statuses["raw_orders"] == "success"
    assert statuses["unique_customers_customer_id"] == "pass"
    assert len(run["results"]) == 36 and run["command"] == "build" and run["error"] is None

    models = {m["name"]: m for m in api.get(f"{base}/models").json()["data"]}
    assert models["customers"]["materialization"] == "table" and models["customers"]["last_run_status"] == "success"
    assert models["stg_orders"]["materialization"] == "view"
    assert sorted(models["customers"]["depends_on"]) == [
        "model.jaffle_shop.stg_customers",
        "model.jaffle_shop.stg_orders",
        "model.jaffle_shop.stg_payments",
    ]
    assert {t["last_status"] for t in models["customers"]["tests"]} == {"pass"}
    assert {c["name"] for c in models["customers"]["columns"]} >= {"customer_id", "number_of_orders"}
    assert models["customers_snapshot"]["resource_type"] == "snapshot"
    assert _check_executions(settings, [ns, "jaffle_shop", "customers"], "unique_customers_customer_id") == [
        "SUCCEEDED"
    ]

    # select/exclude are dbt's own selection syntax.
    only = api.post(f"{base}/run", json={"command": "run", "select": "stg_orders+", "exclude": "customers"})
    assert only.status_code == 202, only.text
    assert only.json()["selected"] == 2  # stg_orders and orders
    run = _wait_for_dbt_run(api, base, only.json()["run_id"])
    assert run["status"] == "succeeded", run
    assert sorted(r["name"] for r in run["results"]) == ["orders", "stg_orders"]
    assert run["select"] == "stg_orders+" and run["exclude"] == "customers"

    bad = api.post(f"{base}/run", json={"select": "no_such_model"})
    assert bad.status_code == 422 and "matches no" in bad.json()["error"]["message"]

    lineage = api.get(f"{base}/lineage").json()
    assert {"from": "model.jaffle_shop.stg_customers", "to": "model.jaffle_shop.customers"} in lineage["edges"]


def test_failing_dbt_test_fails_the_check_and_the_run(api, dagster_webserver: Webserver, tmp_path):
    settings = dagster_webserver.settings
    folder = _copy_project(JAFFLE, tmp_path / "jaffle_failing")
    schema = folder / "models" / "marts" / "schema.yml"
    allowed = "values: ['placed', 'shipped', 'completed', 'return_pending', 'returned']"
    assert allowed in schema.read_text()
    # The orders mart's status test now allows only 'placed': the data has other statuses.
    schema.write_text(schema.read_text().replace(allowed, "values: ['placed']"))
    project = api.post("/api/v1/projects", json={"name": "dbt failing test"}).json()
    created = api.post(
        f"/api/v1/projects/{project['id']}/dbt-projects",
        json={"name": "Strict Jaffle", "source": {"type": "path", "path": str(folder)}},
    )
    assert created.status_code == 201, created.text
    dbt = created.json()
    base = f"/api/v1/projects/{project['id']}/dbt-projects/{dbt['id']}"
    ns = project["namespace"]
    _wait_for_assets(settings, [[ns, "strict_jaffle", "orders"]])

    run = _wait_for_dbt_run(api, base, api.post(f"{base}/run").json()["run_id"])
    assert run["status"] == "failed", run
    check = "accepted_values_orders_status__placed"
    result = next(r for r in run["results"] if r["name"] == check)
    assert result["status"] == "fail" and run["error"]
    orders = next(m for m in api.get(f"{base}/models").json()["data"] if m["name"] == "orders")
    assert orders["last_run_status"] == "success"  # the model built; its test failed
    assert {t["name"]: t["last_status"] for t in orders["tests"]}[check] == "fail"
    assert _check_executions(settings, [ns, "strict_jaffle", "orders"], check) == ["FAILED"]
    assert api.get(base).json()["last_run"]["status"] == "failed"


def test_broken_project_is_refused_with_dbts_message(api, dagster_webserver: Webserver, tmp_path):
    folder = _copy_project(JAFFLE, tmp_path / "jaffle_broken")
    (folder / "models" / "marts" / "broken.sql").write_text("select * from {{ ref('does_not_exist') }}\n")
    project = api.post("/api/v1/projects", json={"name": "dbt broken"}).json()
    url = f"/api/v1/projects/{project['id']}/dbt-projects"
    refused = api.post(url, json={"name": "Broken", "source": {"type": "path", "path": str(folder)}})
    assert refused.status_code == 422, refused.text
    assert "does_not_exist" in refused.json()["error"]["message"]
    assert api.get(url).json()["data"] == []
    assert not any((dagster_webserver.settings.dbt_home / project["id"]).glob("*/rev-*"))


def test_demo_project_reads_connector_tables_from_iceberg(api, dagster_webserver: Webserver, demo_shop):
    settings = dagster_webserver.settings
    project, connector, dbt = demo_shop  # the connector and the dbt project, as created
    pid, ns = project["id"], project["namespace"]
    conn_base = f"/api/v1/projects/{pid}/connectors/{connector['id']}"
    _wait_for_assets(settings, [[ns, "demo_shop", "orders"]])
    sync = api.post(f"{conn_base}/sync").json()["run_id"]
    from tests.dagster.conftest import wait_for_run

    assert wait_for_run(api, conn_base, sync)["status"] == "succeeded"

    edges = dbt["lineage"]["edges"]
    connector_node = f"connector_table.{connector['id']}.orders"
    assert {"from": connector_node, "to": "source.demo_shop.demo_shop.orders"} in edges
    base = f"/api/v1/projects/{pid}/dbt-projects/{dbt['id']}"

    # The asset graph runs connector table -> staging -> mart.
    nodes = _wait_for_assets(settings, [[ns, "shop_models", "customer_orders"]])

    def upstream(name: str) -> list[list[str]]:
        return [d["path"] for d in nodes[(ns, "shop_models", name)]["dependencyKeys"]]

    assert [ns, "demo_shop", "orders"] in upstream("stg_orders")
    assert [ns, "shop_models", "stg_orders"] in upstream("customer_orders")

    run = _wait_for_dbt_run(api, base, api.post(f"{base}/run").json()["run_id"])
    assert run["status"] == "succeeded", run
    assert all(r["status"] in ("success", "pass") for r in run["results"])

    # customer_orders is published back to Iceberg, so the tables endpoints see it.
    tables = {t["name"]: t for t in api.get(f"/api/v1/projects/{pid}/tables").json()["data"]}
    published = tables["shop_models__customer_orders"]
    assert published["row_count"] == 50
    assert published["source"] == {"dbt_project_id": dbt["id"], "model": "model.demo_shop.customer_orders"}
    models = {m["name"]: m for m in api.get(f"{base}/models").json()["data"]}
    assert models["customer_orders"]["published_table"] == f"{ns}.shop_models__customer_orders"
