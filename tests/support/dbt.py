"""A dbt project fetched, given its profile and parsed as the API registers one, as the spec the code location
builds (shared by the dbt tests that run it without the API)."""

from __future__ import annotations

from pathlib import Path

from rime_dagster.dbt import workspace
from rime_dagster.settings import get_settings
from rime_dagster.specs import DbtProjectSpec


def parsed_spec(
    source: Path,
    files: workspace.ProjectFiles,
    *,
    name: str,
    profile: str,
    duckdb_file: Path,
    project_id: str = "prj_1",
    namespace: str = "ns",
    slug: str | None = None,
    dbt_project_id: str | None = None,
    target: dict | None = None,
    credentials_encrypted: str | None = None,
    sandboxed: bool = False,
) -> DbtProjectSpec:
    """`source` copied into `files`, parsed (in dbt's sandbox when `sandboxed`, as the API does)."""
    target = target or {"adapter": "duckdb"}
    workspace.fetch({"type": "path", "path": str(source)}, files.project_dir, allowed_roots=[], timeout=60)
    output = workspace.profile_output(target, duckdb_file=duckdb_file, namespace=namespace, threads=1)
    workspace.write_profiles(files, profile, output)
    confine = (
        workspace.sandbox_policy(get_settings(), files, duckdb_file=duckdb_file, target=target) if sandboxed else None
    )
    workspace.parse(files, vars={}, timeout=180, confine=confine)
    return DbtProjectSpec(
        id=dbt_project_id or f"dbt_{slug or name.lower()}",
        project_id=project_id,
        namespace=namespace,
        name=name,
        slug=slug or name.lower(),
        root=files.root,
        revision=1,
        target=target,
        credentials_encrypted=credentials_encrypted,
        vars={},
        schedule=None,
        paused=False,
        duckdb_file=duckdb_file,
        connector_tables=(),
    )
