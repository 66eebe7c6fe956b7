"""What the `rime` code location is built from: each domain package's definitions, merged from the metadata store.

Importing this module builds nothing (rime_dagster/definitions.py does, at its import): the run worker template
(rime_dagster/platform/run_worker_template.py) imports it ahead of time, so a run worker forked from the template
finds every module the code location needs already loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dagster as dg

from rime_dagster.connectors.assets import project_connector_definitions
from rime_dagster.dbt.assets import dbt_definitions
from rime_dagster.infrastructure.jobs import infrastructure_definitions
from rime_dagster.monitoring.definitions import monitoring_definitions
from rime_dagster.pipelines.jobs import Resources as PipelineResources
from rime_dagster.pipelines.jobs import pipeline_definitions
from rime_dagster.platform.housekeeping import housekeeping_definitions
from rime_dagster.resources import IcebergCatalogResource, MetadataStoreResource
from rime_dagster.specs import (
    ConnectorSpec,
    DbtProjectSpec,
    PipelineSpec,
    PlatformSpecs,
    RetentionPolicySpec,
    load_specs,
)
from rime_dagster.tables.jobs import table_maintenance_definitions

log = logging.getLogger(__name__)


def build_definitions(specs: PlatformSpecs, store: MetadataStoreResource) -> dg.Definitions:
    # Domain factories (connectors, dbt, pipelines, sensors) each turn specs into Definitions.
    platform = housekeeping_definitions(specs.generation)
    by_project: dict[str, list[ConnectorSpec]] = {}
    for connector in specs.connectors:
        by_project.setdefault(connector.project_id, []).append(connector)
    connectors = [
        project_connector_definitions(project, by_project[project.id])
        for project in specs.projects
        if project.id in by_project
    ]
    policies: dict[str, list[RetentionPolicySpec]] = {}
    for policy in specs.retention_policies:
        policies.setdefault(policy.project_id, []).append(policy)
    maintenance = [
        table_maintenance_definitions(project, by_project.get(project.id, []), policies.get(project.id, []))
        for project in specs.projects
    ]
    dbt_projects = [_isolated(dbt_definitions, spec) for spec in specs.dbt_projects]
    pipelines = [_isolated(pipeline_definitions, spec, _pipeline_resources(specs, spec)) for spec in specs.pipelines]
    monitoring = monitoring_definitions(specs)  # isolates each rule's sensor itself
    return dg.Definitions.merge(
        platform,
        infrastructure_definitions(),
        *connectors,
        *maintenance,
        *dbt_projects,
        *pipelines,
        monitoring,
        dg.Definitions(resources={"metadata_store": store, "iceberg": IcebergCatalogResource()}),
    )


def _pipeline_resources(specs: PlatformSpecs, pipeline: PipelineSpec) -> PipelineResources:
    """What a pipeline's steps may refer to: its own project's connectors, dbt projects and pipelines (in the
    environment being built; in their live environment for the runs its triggers follow)."""
    same = pipeline.project_id
    return PipelineResources(
        {c.id: c for c in specs.connectors if c.project_id == same},
        {d.id: d for d in specs.dbt_projects if d.project_id == same},
        {p.id: p for p in specs.pipelines if p.project_id == same and p.environment == pipeline.environment},
        {p.id: p for p in specs.pipelines if p.project_id == same and p.live},
    )


def _isolated(
    factory: Callable[..., dg.Definitions], spec: DbtProjectSpec | PipelineSpec, *args: Any
) -> dg.Definitions:
    """One broken spec (say, a dbt manifest deleted from disk) must not take the whole location down."""
    try:
        return factory(spec, *args)
    except Exception:
        log.exception("skipping %s %s: its definitions failed to build", type(spec).__name__, spec.id)
        return dg.Definitions()


def load_definitions() -> dg.Definitions:
    store = MetadataStoreResource()
    return build_definitions(load_specs(store), store)
