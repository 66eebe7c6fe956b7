"""The `rime` code location: merges what each domain package builds from the metadata store."""

from __future__ import annotations

import logging

import dagster as dg

from rime_dagster.connectors.assets import connector_definitions
from rime_dagster.dbt.assets import dbt_definitions
from rime_dagster.platform.housekeeping import housekeeping_job, housekeeping_schedule
from rime_dagster.resources import IcebergCatalogResource, MetadataStoreResource
from rime_dagster.specs import PlatformSpecs, load_specs

log = logging.getLogger(__name__)


def build_definitions(specs: PlatformSpecs, store: MetadataStoreResource) -> dg.Definitions:
    # Domain factories (connectors, dbt, pipelines, sensors) each turn specs into Definitions.
    platform = dg.Definitions(jobs=[housekeeping_job], schedules=[housekeeping_schedule])
    connectors = [_isolated(connector_definitions, spec) for spec in specs.connectors]
    dbt_projects = [_isolated(dbt_definitions, spec) for spec in specs.dbt_projects]
    return dg.Definitions.merge(
        platform,
        *connectors,
        *dbt_projects,
        dg.Definitions(resources={"metadata_store": store, "iceberg": IcebergCatalogResource()}),
    )


def _isolated(factory, spec) -> dg.Definitions:
    """One broken spec (say, a dbt manifest deleted from disk) must not take the whole location down."""
    try:
        return factory(spec)
    except Exception:
        log.exception("skipping %s %s: its definitions failed to build", type(spec).__name__, spec.id)
        return dg.Definitions()


def load_definitions() -> dg.Definitions:
    store = MetadataStoreResource()
    return build_definitions(load_specs(store), store)


defs = load_definitions()
