"""The `rime` code location: merges what each domain package builds from the metadata store."""

from __future__ import annotations

import dagster as dg

from rime_dagster.connectors.assets import connector_definitions
from rime_dagster.platform.housekeeping import housekeeping_job, housekeeping_schedule
from rime_dagster.resources import IcebergCatalogResource, MetadataStoreResource
from rime_dagster.specs import PlatformSpecs, load_specs


def build_definitions(specs: PlatformSpecs, store: MetadataStoreResource) -> dg.Definitions:
    # Domain factories (connectors, dbt, pipelines, sensors) each turn specs into Definitions.
    platform = dg.Definitions(jobs=[housekeeping_job], schedules=[housekeeping_schedule])
    connectors = [connector_definitions(spec) for spec in specs.connectors]
    return dg.Definitions.merge(
        platform,
        *connectors,
        dg.Definitions(resources={"metadata_store": store, "iceberg": IcebergCatalogResource()}),
    )


def load_definitions() -> dg.Definitions:
    store = MetadataStoreResource()
    return build_definitions(load_specs(store), store)


defs = load_definitions()
