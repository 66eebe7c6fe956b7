"""Our dbt asset specs (built without dagster-dbt) against what `@dbt_assets` with RimeDbtTranslator builds,
for the demo project and every fixture project, parsed by dbt: keys, deps, groups, checks, and the dbt
selection of subset runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest
from dagster_dbt import dbt_assets
from dagster_dbt.asset_utils import get_subset_selection_for_context

from api_shim.cli import REPO_ROOT
from rime_dagster.dbt import workspace
from rime_dagster.dbt.asset_specs import DbtAssetSpecs, build_asset_specs, subset_selection
from rime_dagster.dbt.manifest import ConnectorIndex, ConnectorTable, load_manifest
from rime_dagster.dbt.translator import RimeDbtTranslator

pytestmark = pytest.mark.slow  # dbt parses every fixture project

NAMESPACE = "shop"
PROJECTS = {
    "demo_shop": REPO_ROOT / "dbt_projects" / "demo_shop",
    "jaffle_shop": REPO_ROOT / "tests" / "fixtures" / "dbt" / "jaffle_shop",
    "slow": REPO_ROOT / "tests" / "fixtures" / "dbt" / "slow",
    "tiny": REPO_ROOT / "tests" / "fixtures" / "dbt" / "tiny",
}
# The demo's sources read the Demo Shop connector's tables: their deps are that connector's assets.
CONNECTOR_TABLES = [
    ConnectorTable("conn_demo", "Demo Shop", "demo_shop", t, NAMESPACE) for t in ("customers", "orders")
]
# What dagster-dbt adds for its own helpers only (the manifest and the translator as objects).
DAGSTER_DBT_OBJECTS = {"dagster_dbt/manifest", "dagster_dbt/dagster_dbt_translator"}


# dbt's own runner parses every project in one Python process: importing dbt is most of a `dbt parse`'s CPU,
# paid once here instead of once per project. Each invocation takes the arguments `workspace.run_dbt` gives.
PARSE_ALL = """
import json, sys
from dbt.cli.main import dbtRunner

for args in json.loads(sys.argv[1]):
    result = dbtRunner().invoke(args)
    if not result.success:
        sys.exit(f"dbt {' '.join(args)} failed: {result.exception}")
"""


def _prepare(name: str, source: Path, root: Path) -> workspace.ProjectFiles:
    files = workspace.ProjectFiles(root / name, 1)
    workspace.fetch({"type": "path", "path": str(source)}, files.project_dir, allowed_roots=[], timeout=60)
    profile = workspace.read_project_file(files.project_dir).profile
    output = workspace.profile_output(
        {"adapter": "duckdb"}, duckdb_file=root / "warehouse.duckdb", namespace=NAMESPACE, threads=1
    )
    workspace.write_profiles(files, profile, output)
    return files


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("dbt")
    projects = {name: _prepare(name, source, root) for name, source in PROJECTS.items()}
    invocations = [
        ["--log-format", "json", "--no-use-colors", "parse"]
        + ["--project-dir", str(files.project_dir), "--profiles-dir", str(files.profiles_dir)]
        + ["--target-path", str(files.target_dir), "--log-path", str(files.target_dir / "logs")]
        for files in projects.values()
    ]
    done = subprocess.run(
        [sys.executable, "-c", PARSE_ALL, json.dumps(invocations)],
        env=workspace.dbt_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, workspace.dbt_errors(done.stdout, done.stderr)
    return {name: load_manifest(files.manifest_path) for name, files in projects.items()}


def _slug(name: str) -> str:
    return f"{name}_models"


def _ours(name: str, manifest) -> tuple[dg.AssetsDefinition, DbtAssetSpecs]:
    specs = build_asset_specs(manifest, namespace=NAMESPACE, slug=_slug(name), index=ConnectorIndex(CONNECTOR_TABLES))

    @dg.multi_asset(name=f"ours_{name}", specs=specs.specs, check_specs=specs.check_specs, can_subset=True)
    def ours(): ...

    return ours, specs


def _dagster_dbts(name: str, manifest) -> dg.AssetsDefinition:
    translator = RimeDbtTranslator(NAMESPACE, _slug(name), ConnectorIndex(CONNECTOR_TABLES))

    @dbt_assets(manifest=manifest, dagster_dbt_translator=translator, name=f"theirs_{name}")
    def theirs(): ...

    return theirs


def _spec_fields(spec: dg.AssetSpec) -> dict[str, Any]:
    return {
        "deps": {dep.asset_key for dep in spec.deps},
        "group": spec.group_name,
        "description": spec.description,
        "code_version": spec.code_version,
        "kinds": spec.kinds,
        "tags": spec.tags,
        "owners": spec.owners,
        "skippable": spec.skippable,
        "metadata": {k: v for k, v in spec.metadata.items() if k not in DAGSTER_DBT_OBJECTS},
    }


def _check_fields(spec: dg.AssetCheckSpec) -> dict[str, Any]:
    return {
        "additional_deps": {dep.asset_key for dep in spec.additional_deps},
        "blocking": spec.blocking,
        "description": spec.description,
        "metadata": spec.metadata,
    }


@pytest.mark.parametrize("name", PROJECTS)
def test_specs_equal_what_dbt_assets_builds(manifests, name):
    manifest = manifests[name]
    ours, _ = _ours(name, manifest)
    theirs = _dagster_dbts(name, manifest)

    assert set(ours.keys) == set(theirs.keys) and ours.keys
    for key in theirs.keys:
        assert _spec_fields(ours.get_asset_spec(key)) == _spec_fields(theirs.get_asset_spec(key)), key
    assert ours.asset_deps == theirs.asset_deps
    assert set(ours.check_keys) == set(theirs.check_keys)
    for key in theirs.check_keys:
        assert _check_fields(ours.get_spec_for_check_key(key)) == _check_fields(theirs.get_spec_for_check_key(key))
    assert {s.group_name for s in ours.specs} == {NAMESPACE}


def test_the_projects_exercise_the_rules(manifests):
    """What the comparison above covers: connector deps, multi-parent checks, tests that are no checks."""
    demo, _ = _ours("demo_shop", manifests["demo_shop"])
    stg_orders = demo.get_asset_spec(dg.AssetKey([NAMESPACE, "demo_shop_models", "stg_orders"]))
    assert dg.AssetKey([NAMESPACE, "demo_shop", "orders"]) in {d.asset_key for d in stg_orders.deps}
    source_tests = [
        u
        for u, n in manifests["demo_shop"]["nodes"].items()
        if u.startswith("test") and all(p.startswith("source.") for p in n["depends_on"]["nodes"])
    ]
    assert source_tests and not any(c.asset_key.path[1] == "demo_shop" for c in demo.check_keys)

    jaffle, _ = _ours("jaffle_shop", manifests["jaffle_shop"])
    relationships = [jaffle.get_spec_for_check_key(k) for k in jaffle.check_keys if k.name.startswith("relationships")]
    assert relationships and all(spec.additional_deps for spec in relationships)
    # A singular test on one model is a check on it.
    assert any(k.name == "assert_order_amounts_are_non_negative" for k in jaffle.check_keys)


def _selections(ours: dg.AssetsDefinition) -> list[tuple[set[dg.AssetKey], set[dg.AssetCheckKey]]]:
    keys = sorted(ours.keys, key=lambda k: k.path)
    checks = sorted(ours.check_keys, key=lambda c: (c.asset_key.path, c.name))
    checked = next((k for k in keys if any(c.asset_key == k for c in checks)), keys[0])
    checks_of = {c for c in checks if c.asset_key == checked}
    other_check = next((c for c in checks if c.asset_key != keys[0]), None)
    cases = [
        (set(keys), set(checks)),  # everything: dbt's own default selection
        (set(keys), set()),  # assets without any check
        ({checked}, checks_of),  # one asset with its checks
        ({checked}, set()),  # one asset, its checks left out: indirect selection off
        (set(), set(checks[:1])),  # a check alone
        ({keys[0]}, {other_check} if other_check else set()),  # an asset and another asset's check
        (set(keys[: len(keys) // 2]), {c for c in checks if c.asset_key in keys[: len(keys) // 2]}),
    ]
    return [(k, c) for k, c in cases if k or c]


@pytest.mark.parametrize("name", PROJECTS)
def test_subset_selection_equals_dagster_dbts(manifests, name):
    manifest = manifests[name]
    ours, specs = _ours(name, manifest)
    theirs = _dagster_dbts(name, manifest)
    translator = RimeDbtTranslator(NAMESPACE, _slug(name), ConnectorIndex(CONNECTOR_TABLES))
    for keys, checks in _selections(ours):
        context = SimpleNamespace(
            assets_def=theirs.subset_for(keys, checks), selected_asset_keys=keys, selected_asset_check_keys=checks
        )
        args, indirect = get_subset_selection_for_context(context, manifest, "fqn:*", None, None, translator, None)
        selection = subset_selection(manifest, specs, keys, checks)
        assert args[0] == "--select"
        assert set(selection.select.split(" ")) == set(args[1].split(" ")), (keys, checks)
        assert selection.indirect_selection == indirect, (keys, checks)
