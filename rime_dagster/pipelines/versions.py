"""Pipeline versions and the environments that run them (no Dagster import: the API and the code location share it).

A pipeline's definition is versioned: creating it makes version 1, and each change of its definition (name,
description, steps, variables, schedule, retries, timeout, triggers) the next version, immutable. Pausing is not a
change of definition. Development always runs the newest version. qa, uat and production each run the version
promoted into them (`pipeline_environments`), through a Dagster job and schedule of their own, so production keeps
running its approved version while development moves on.

Only one environment is *live*: production when a version is there, else development. Its schedule starts
running and its triggers' sensors exist; the other environments' schedules exist stopped (start one in Dagster's
UI to run it on its cron) and their jobs run when launched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Pipeline, PipelineEnvironment, PipelineVersion

DEVELOPMENT, QA, UAT, PRODUCTION = "development", "qa", "uat", "production"
ENVIRONMENTS = (DEVELOPMENT, QA, UAT, PRODUCTION)
# Environments past development: each holds at most one version (a row of pipeline_environments).
PROMOTED = (QA, UAT, PRODUCTION)
# A version that holds no environment: replaced where it ran, or retired from production.
SUPERSEDED, RETIRED = "superseded", "retired"
# What the pipeline's row holds that a version keeps.
DEFINITION_FIELDS = ("name", "description", "steps", "variables", "schedule", "retries", "timeout_seconds", "triggers")


def next_environment(environment: str) -> str | None:
    i = ENVIRONMENTS.index(environment)
    return ENVIRONMENTS[i + 1] if i + 1 < len(ENVIRONMENTS) else None


def environment_suffix(environment: str) -> str | None:
    """What the environment adds to the pipeline's Dagster names: none for development (its job keeps the name it
    always had), `qa`, `uat` or `production` otherwise."""
    return None if environment == DEVELOPMENT else environment


def definition_of(row: Pipeline) -> dict[str, Any]:
    """The pipeline's definition as a version keeps it (JSON values, triggers as stored, with their `since`)."""
    values = {field: getattr(row, field) for field in DEFINITION_FIELDS}
    values["variables"] = dict(values["variables"] or {})
    values["triggers"] = list(values["triggers"] or [])
    values["steps"] = list(values["steps"])
    return values


def latest_version(session: Session, pipeline_id: str) -> PipelineVersion | None:
    return session.scalar(
        select(PipelineVersion)
        .where(PipelineVersion.pipeline_id == pipeline_id)
        .order_by(PipelineVersion.version.desc())
        .limit(1)
    )


def record_version(session: Session, row: Pipeline, *, by: str | None) -> PipelineVersion | None:
    """A new version when the row's definition differs from its newest version's (None when it does not).

    Versions are numbered in commit order: the pipeline's row is locked first (PostgreSQL), and a concurrent
    writer that took the same number fails on the unique constraint rather than overwriting."""
    session.execute(select(Pipeline.id).where(Pipeline.id == row.id).with_for_update())
    definition = definition_of(row)
    latest = latest_version(session, row.id)
    if latest is not None and latest.definition == definition:
        return None
    version = PipelineVersion(
        id=new_id("pipeline_version"),
        pipeline_id=row.id,
        project_id=row.project_id,
        version=(latest.version if latest else 0) + 1,
        definition=definition,
        created_by=by,
    )
    session.add(version)
    session.flush()
    return version


def head_versions(session: Session, pipeline_ids: list[str] | None = None) -> dict[str, int]:
    """Each pipeline's newest version number (what development runs)."""
    query = select(PipelineVersion.pipeline_id, func.max(PipelineVersion.version)).group_by(PipelineVersion.pipeline_id)
    if pipeline_ids is not None:
        query = query.where(PipelineVersion.pipeline_id.in_(pipeline_ids))
    return {pipeline_id: version for pipeline_id, version in session.execute(query)}


def environment_slots(session: Session, pipeline_id: str) -> dict[str, PipelineEnvironment]:
    """The environments past development that hold a version of the pipeline."""
    rows = session.scalars(select(PipelineEnvironment).where(PipelineEnvironment.pipeline_id == pipeline_id))
    return {row.environment: row for row in rows}


def version_environment(version: PipelineVersion, head: int, held: Mapping[str, str]) -> str:
    """Where a version stands: the furthest environment it runs in, `development` for the newest version, else
    `retired` or `superseded`. `held`: environment -> version id."""
    mine = [env for env in PROMOTED if held.get(env) == version.id]
    if mine:
        return mine[-1]
    if version.version == head:
        return DEVELOPMENT
    return RETIRED if version.retired_at is not None else SUPERSEDED


def live_environment(held: Mapping[str, Any]) -> str:
    """The environment whose schedule runs and whose triggers start runs: production when it has a version."""
    return PRODUCTION if PRODUCTION in held else DEVELOPMENT
