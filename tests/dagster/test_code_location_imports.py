"""Loading the `rime` code location imports only what building its definitions needs: every code
server and run worker pays for each import, and dbt-core, DuckDB, pyiceberg/pyarrow, the source
drivers and FastAPI cost seconds. They are imported inside the runs that use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rime_dagster.dbt.workspace import ProjectFiles, project_root
from rime_dagster.store.models import Connector, DbtProject, Pipeline, Project
from rime_dagster.store.session import session_scope
from tests.conftest import make_settings

pytestmark = pytest.mark.slow  # loads the code location in a fresh interpreter

HEAVY = ("dagster_dbt", "dbt", "duckdb", "pyiceberg", "pyarrow", "psycopg", "fastapi", "dagster_graphql")

PROBE = f"""
import json, sys
import rime_dagster.definitions as location
repository = location.defs.get_repository_def()  # what a run worker resolves too
print(json.dumps({{
    "modules": sorted(m for m in {HEAVY!r} if m in sys.modules),
    "jobs": sorted(job.name for job in repository.get_all_jobs()),
    "assets": sorted(key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()),
}}))
"""

# A parsed dbt project as far as the code location reads it: a staging model over a connector table, tested.
MANIFEST = {
    "metadata": {"project_name": "shop", "adapter_type": "duckdb"},
    "nodes": {
        "model.shop.stg_orders": {
            "unique_id": "model.shop.stg_orders",
            "resource_type": "model",
            "name": "stg_orders",
            "package_name": "shop",
            "fqn": ["shop", "staging", "stg_orders"],
            "config": {"materialized": "view"},
            "depends_on": {"nodes": ["source.shop.inbox.orders"]},
            "raw_code": "select * from {{ source('inbox', 'orders') }}",
            "database": "warehouse",
            "schema": "main",
            "alias": "stg_orders",
            "original_file_path": "models/staging/stg_orders.sql",
        },
        "test.shop.not_null_stg_orders_id.1": {
            "unique_id": "test.shop.not_null_stg_orders_id.1",
            "resource_type": "test",
            "name": "not_null_stg_orders_id",
            "package_name": "shop",
            "fqn": ["shop", "staging", "not_null_stg_orders_id"],
            "config": {"severity": "ERROR"},
            "attached_node": "model.shop.stg_orders",
            "depends_on": {"nodes": ["model.shop.stg_orders"]},
        },
    },
    "sources": {
        "source.shop.inbox.orders": {
            "unique_id": "source.shop.inbox.orders",
            "resource_type": "source",
            "source_name": "inbox",
            "name": "orders",
            "identifier": "orders",
            "schema": "inbox",
        }
    },
    "parent_map": {
        "model.shop.stg_orders": ["source.shop.inbox.orders"],
        "test.shop.not_null_stg_orders_id.1": ["model.shop.stg_orders"],
    },
    "child_map": {
        "source.shop.inbox.orders": ["model.shop.stg_orders"],
        "model.shop.stg_orders": ["test.shop.not_null_stg_orders_id.1"],
    },
}


def test_loading_the_code_location_imports_no_heavy_module(tmp_path):
    settings = make_settings(tmp_path)
    with session_scope(settings.metadata_url) as session:
        session.add(Project(id="prj_1", tenant_id="default", name="Shop", namespace="shop"))
        session.flush()
        session.add(
            Connector(
                id="conn_1",
                project_id="prj_1",
                name="Inbox",
                connector_type="files",
                config={"path": str(tmp_path / "inbox")},
                selected_tables=["orders", "customers"],
                table_prefix="inbox",
                schedule="0 * * * *",
            )
        )
        session.add(
            DbtProject(
                id="dbt_1",
                project_id="prj_1",
                name="Shop Models",
                slug="shop_models",
                source={"type": "path", "path": str(tmp_path)},
                target={"adapter": "duckdb"},
                dbt_project_name="shop",
                profile_name="shop",
            )
        )
        session.add(
            Pipeline(
                id="pipe_1",
                project_id="prj_1",
                name="Nightly",
                slug="nightly",
                steps=[
                    {"id": "sync", "type": "connector_sync", "config": {"connector_id": "conn_1"}},
                    {"id": "models", "type": "dbt", "config": {"dbt_project_id": "dbt_1"}, "depends_on": ["sync"]},
                ],
            )
        )
    manifest = ProjectFiles(project_root(settings.dbt_home, "prj_1", "dbt_1"), 1).manifest_path
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(MANIFEST))

    env = {k: v for k, v in os.environ.items() if not k.startswith("RIME_")}
    env.update(RIME_HOME=str(settings.home), RIME_SECRET_KEY="test-secret-key")
    if settings.database_url:
        env["RIME_DATABASE_URL"] = settings.database_url
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])

    # A store on PostgreSQL is read with its driver (make test-postgres); nothing else heavy is loaded either way.
    assert loaded["modules"] == (["psycopg"] if settings.metadata_url.startswith("postgresql+psycopg") else [])
    # The probe built what it should have: the project's sync job, the dbt project's and the pipeline's jobs,
    # named by the project's namespace and the objects' slugs.
    assert {"sync_shop", "shop__shop_models", "shop__nightly"} <= set(loaded["jobs"])
    assert {"shop/inbox/orders", "shop/inbox/customers", "shop/shop_models/stg_orders"} <= set(loaded["assets"])
