"""The `rime` code location: merges what each domain package builds from the metadata store."""

from __future__ import annotations

import dagster as dg

from rime_dagster.platform.housekeeping import housekeeping_job, housekeeping_schedule
from rime_dagster.resources import IcebergCatalogResource, MetadataStoreResource
from rime_dagster.specs import PlatformSpecs, load_specs


def build_definitions(specs: PlatformSpecs, store: MetadataStoreResource) -> dg.Definitions:
    # Domain factories (connectors -> assets and schedules, dbt, pipelines, sensors)
    # are merged here as they are added; each takes `specs` and returns Definitions.
    platform = dg.Definitions(jobs=[housekeeping_job], schedules=[housekeeping_schedule])
    return dg.Definitions.merge(
        platform,
        dg.Definitions(resources={"metadata_store": store, "iceberg": IcebergCatalogResource()}),
    )


def load_definitions() -> dg.Definitions:
    store = MetadataStoreResource()
    return build_definitions(load_specs(store), store)


defs = load_definitions()
