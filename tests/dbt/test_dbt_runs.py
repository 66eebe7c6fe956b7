"""The dbt project's multi-asset run in process (real dbt, DuckDB): a run of everything, and subset runs whose
dbt selection we compute from the asset context (a check left out, a test dbt picks that Dagster did not)."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from rime_dagster.dbt import asset_specs, workspace
from rime_dagster.dbt.assets import SUBSET_SELECTOR, DbtRunConfig, dbt_definitions
from rime_dagster.dbt.run_config import DbtRunOptions
from rime_dagster.resources import IcebergCatalogResource
from rime_dagster.specs import DbtProjectSpec
from tests.support.dbt import parsed_spec

pytestmark = pytest.mark.slow  # dbt runs

NS, SLUG = "shop", "models"
A, B = dg.AssetKey([NS, SLUG, "a"]), dg.AssetKey([NS, SLUG, "b"])
SCHEMA = """
version: 2
models:
  - name: a
    columns:
      - name: id
        data_tests: [not_null, unique]
  - name: b
    columns:
      - name: id
        data_tests:
          - not_null
          - relationships: {arguments: {to: ref('a'), field: id}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> DbtProjectSpec:
    root = tmp_path_factory.mktemp("dbt_runs")
    source = root / "source"
    (source / "models").mkdir(parents=True)
    (source / "dbt_project.yml").write_text('name: two\nversion: "1.0.0"\nprofile: two\nmodel-paths: ["models"]\n')
    (source / "models" / "a.sql").write_text("select 1 as id")
    (source / "models" / "b.sql").write_text("select id from {{ ref('a') }}")
    (source / "models" / "schema.yml").write_text(SCHEMA)
    files = workspace.ProjectFiles(root / "project", 1)
    return parsed_spec(
        source,
        files,
        name="Two",
        slug=SLUG,
        dbt_project_id="dbt_two",
        profile="two",
        duckdb_file=root / "warehouse.duckdb",
        namespace=NS,
    )


def _run(spec: DbtProjectSpec, selection) -> dg.ExecuteInProcessResult:
    [assets] = dbt_definitions(spec).assets
    return dg.materialize(
        [assets],
        selection=selection,
        resources={"iceberg": IcebergCatalogResource()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _observed(result) -> set[dg.AssetKey]:
    return {e.asset_key for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"}


def _dbt_args(spec: DbtProjectSpec, result) -> dict:
    """The arguments dbt recorded for the run (run_results.json in the run's folder)."""
    return json.loads((spec.files.run_dir(result.run_id) / "run_results.json").read_text())["args"]


def test_runs_of_everything_and_of_subsets(project, monkeypatch):
    everything = _run(project, None)
    assert everything.success
    assert {e.asset_key for e in everything.get_asset_materialization_events()} == {A, B}
    assert _checks(everything) == {
        "not_null_a_id": True,
        "unique_a_id": True,
        "not_null_b_id": True,
        "relationships_b_id__id__ref_a_": True,
    }
    assert everything.dagster_run.tags["rime/dbt_project_id"] == "dbt_two"  # tagged as a UI-started run

    # b with one of its checks: the other is left out, so dbt's indirect selection is off.
    one_check = _run(
        project,
        dg.AssetSelection.assets(B).without_checks() | dg.AssetSelection.checks(dg.AssetCheckKey(B, "not_null_b_id")),
    )
    assert one_check.success
    assert {e.asset_key for e in one_check.get_asset_materialization_events()} == {B}
    assert _checks(one_check) == {"not_null_b_id": True}
    assert not _observed(one_check)  # the relationships test did not run

    # a with its checks: dbt's eager indirect selection also runs b's relationships test, which reads a;
    # its check is not selected, so it is reported as observations, as dagster-dbt does. This selection is made
    # too long for the command line: it goes through a selector in a copy of the project.
    monkeypatch.setattr(asset_specs, "MAX_SELECT_ARG", 1)
    only_a = _run(project, dg.AssetSelection.assets(A))
    monkeypatch.undo()
    assert only_a.success
    assert {e.asset_key for e in only_a.get_asset_materialization_events()} == {A}
    assert _checks(only_a) == {"not_null_a_id": True, "unique_a_id": True}
    assert _observed(only_a) == {A, B}
    assert _dbt_args(project, only_a).get("selector") == SUBSET_SELECTOR
    assert not (project.files.project_dir / "selectors.yml").exists()  # the revision itself is never edited

    # A check alone: only its test runs.
    check_only = _run(project, dg.AssetSelection.checks(dg.AssetCheckKey(A, "unique_a_id")))
    assert check_only.success
    assert not check_only.get_asset_materialization_events()
    assert _checks(check_only) == {"unique_a_id": True}


def test_the_run_options_the_api_launches_with_are_what_the_job_reads(project):
    options = DbtRunOptions(command="seed", full_refresh=True, vars={"day": "2026-01-01"}, select="a+", exclude="b")
    built = dbt_definitions(project)
    [assets], [job] = built.assets, built.jobs
    defs = dg.Definitions(assets=[assets], jobs=[job], resources={"iceberg": IcebergCatalogResource()})
    # The API's run config is valid for the project's job, and its op reads the same options back.
    assert dg.validate_run_config(defs.resolve_job_def(job.name), options.run_config(assets.op.name))
    read = DbtRunOptions.from_op_config(DbtRunConfig(**options.op_config()))
    assert (read.command, read.full_refresh, dict(read.vars)) == ("seed", True, {"day": "2026-01-01"})
    # The run history reads command, flags and selection back from the run's tags (vars stay in the config).
    assert DbtRunOptions.from_tags(options.tags()) == DbtRunOptions(
        command="seed", full_refresh=True, select="a+", exclude="b"
    )
    assert DbtRunOptions.from_tags({}) == DbtRunOptions()  # a run started from the Dagster UI
