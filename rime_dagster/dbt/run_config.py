"""What one dbt run is asked to do: the run config and tags the API launches it with, as the job reads them back.

The API's `POST .../dbt-projects/{id}/run` builds `DbtRunOptions`; the job's op reads the same options back from
its config (`DbtRunConfig` in assets.py has these fields), and the API's run history from the run's tags. A run
started from the Dagster UI gets the defaults. No Dagster import, so the API can use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rime_dagster.platform import run_tags

if TYPE_CHECKING:
    from rime_dagster.dbt.assets import DbtRunConfig  # its module imports this one

DEFAULT_COMMAND = "build"


@dataclass(frozen=True)
class DbtRunOptions:
    command: str = DEFAULT_COMMAND  # build, run, test or seed
    full_refresh: bool = False
    vars: Mapping[str, Any] = field(default_factory=dict)  # over the project's own vars
    # dbt's node selection; the API turns it into the run's asset selection, the tags keep it for the history.
    select: str | None = None
    exclude: str | None = None

    def op_config(self) -> dict[str, Any]:
        """The dbt op's config (`DbtRunConfig`): vars travel as JSON, since a Dagster config field is typed."""
        return {"command": self.command, "full_refresh": self.full_refresh, "vars_json": json.dumps(dict(self.vars))}

    def run_config(self, op_name: str) -> dict[str, Any]:
        """The run config of a launch of the dbt project's job, whose op is `op_name` (rime_dagster.dbt.names)."""
        return {"ops": {op_name: {"config": self.op_config()}}}

    def tags(self) -> dict[str, str]:
        """The run tags that show the options in the run history (vars are in the run config only)."""
        tags = {run_tags.DBT_COMMAND: self.command, run_tags.FULL_REFRESH: run_tags.flag(self.full_refresh)}
        if self.select:
            tags[run_tags.DBT_SELECT] = self.select
        if self.exclude:
            tags[run_tags.DBT_EXCLUDE] = self.exclude
        return tags

    @classmethod
    def from_op_config(cls, config: DbtRunConfig) -> DbtRunOptions:
        """The options as the job's op got them (`config`: its `DbtRunConfig`)."""
        return cls(command=config.command, full_refresh=config.full_refresh, vars=json.loads(config.vars_json or "{}"))

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> DbtRunOptions:
        """The options as the run's tags tell them (a run without them, from the Dagster UI: the defaults)."""
        return cls(
            command=tags.get(run_tags.DBT_COMMAND, DEFAULT_COMMAND),
            full_refresh=run_tags.is_set(tags, run_tags.FULL_REFRESH),
            select=tags.get(run_tags.DBT_SELECT),
            exclude=tags.get(run_tags.DBT_EXCLUDE),
        )
