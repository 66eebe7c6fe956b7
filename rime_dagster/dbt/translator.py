"""The dagster-dbt translator of a Rime dbt project: imported only inside runs (and by tests).

dagster-dbt imports dbt-core, which costs every process that imports it about 1.5 s; the code
location builds its specs without it (`rime_dagster/dbt/asset_specs.py`, same keys and groups). A
run needs the translator to turn dbt's events into asset keys.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings
from typing_extensions import override

from rime_dagster.dbt.asset_specs import asset_key
from rime_dagster.dbt.manifest import ConnectorIndex
from rime_dagster.specs import DbtProjectSpec


class RimeDbtTranslator(DagsterDbtTranslator):
    """Keys and groups under the Rime project; sources on connector tables map to the connector assets."""

    def __init__(self, namespace: str, slug: str, index: ConnectorIndex):
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))
        self.namespace = namespace
        self.slug = slug
        self.index = index

    @override
    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        return asset_key(self.namespace, self.slug, self.index, dbt_resource_props)

    @override
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return self.namespace


def translator_for(spec: DbtProjectSpec) -> RimeDbtTranslator:
    return RimeDbtTranslator(spec.namespace, spec.slug, ConnectorIndex(spec.connector_tables))
