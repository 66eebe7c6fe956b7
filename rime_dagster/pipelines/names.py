"""How pipelines are named in Dagster: one place, used by the API and the code location (no Dagster import)."""

from __future__ import annotations

import re

from rime_dagster.platform import run_tags
from rime_dagster.platform.names import dagster_name

# A pipeline step may run another pipeline, which may run another: this many levels at most.
MAX_NESTING = 8
# The node of a pipeline's job that runs after its last steps (`done` ends when the whole pipeline has).
DONE_NODE = "done"


def pipeline_job_name(namespace: str, slug: str) -> str:
    """The pipeline's job: `demo__shop_nightly` (project namespace, pipeline slug)."""
    return dagster_name(namespace, slug)


def pipeline_tags(project_id: str, pipeline_id: str) -> dict[str, str]:
    return {run_tags.PROJECT_ID: project_id, run_tags.PIPELINE_ID: pipeline_id, run_tags.KIND: run_tags.KIND_PIPELINE}


def step_node_name(step_id: str) -> str:
    """A step's node in its pipeline's job: `step_<step id>`."""
    return "step_" + re.sub(r"[^A-Za-z0-9_]", "_", step_id)
