"""Pipeline versions and environments: list, read and compare versions; promote, demote and retire them.

Development runs the newest version; qa, uat and production each run the version promoted into them
(rime_dagster/pipelines/versions.py). development -> qa is direct; qa -> uat and uat -> production wait for a
lead's approval (api_shim/services/approvals.py). A version embedding another pipeline can enter an environment
only once that pipeline has a version there, and a pipeline cannot leave an environment while a version there
embeds it: an environment's job never runs another environment's code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.errors import Conflict, NotFound
from api_shim.pagination import CursorCodec, Listing, PageRequest
from api_shim.schemas.pipeline_versions import (
    Environment,
    EnvironmentState,
    FieldChange,
    PipelineEnvironments,
    PipelineVersionDetail,
    PipelineVersionDiff,
    PipelineVersionList,
    PipelineVersionSummary,
    PromotionResult,
    StepChange,
)
from api_shim.services.auth import Principal
from api_shim.services.pipelines import get_pipeline
from rime_dagster.pipelines.names import pipeline_job_name
from rime_dagster.pipelines.versions import (
    DEFINITION_FIELDS,
    DEVELOPMENT,
    ENVIRONMENTS,
    PRODUCTION,
    PROMOTED,
    QA,
    UAT,
    environment_slots,
    environment_suffix,
    latest_version,
    live_environment,
    next_environment,
    version_environment,
)
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import ApprovalRequest, Pipeline, PipelineEnvironment, PipelineVersion, Project
from rime_dagster.store.types import utcnow

VERSIONS = Listing("pipeline-versions", {"version": PipelineVersion.version}, PipelineVersion.id, "version")
# Moves that wait for a lead's approval: the environment they leave -> the one they enter.
NEEDS_APPROVAL = {QA: UAT, UAT: PRODUCTION}


class Standing:
    """A pipeline's versions as they stand: the newest version and what each environment runs."""

    def __init__(self, session: Session, row: Pipeline) -> None:
        latest = latest_version(session, row.id)
        self.head = latest.version if latest else 0
        self.slots = environment_slots(session, row.id)
        self.held = {env: slot.version_id for env, slot in self.slots.items()}

    def environment(self, version: PipelineVersion) -> str:
        return version_environment(version, self.head, self.held)

    def environments(self, version: PipelineVersion) -> list[str]:
        mine = [env for env in PROMOTED if self.held.get(env) == version.id]
        return ([DEVELOPMENT] if version.version == self.head else []) + mine


def _moved(status: str, environment: str, version: PipelineVersion, request_id: str | None = None) -> PromotionResult:
    return PromotionResult.model_validate(
        {"status": status, "environment": environment, "version": version.version, "approval_request_id": request_id}
    )


def get_version(session: Session, row: Pipeline, ref: str) -> PipelineVersion:
    """A version by its number (`3`) or id (`pver_...`)."""
    query = select(PipelineVersion).where(PipelineVersion.pipeline_id == row.id)
    if ref.isdigit() and len(ref) <= 9:  # a longer number is no version, and past PostgreSQL's integer
        version = session.scalar(query.where(PipelineVersion.version == int(ref)))
    else:
        version = session.scalar(query.where(PipelineVersion.id == ref))
    if version is None:
        raise NotFound.of("Version", ref, f" for pipeline {row.id}")
    return version


def summary(version: PipelineVersion, standing: Standing) -> PipelineVersionSummary:
    return PipelineVersionSummary.of(
        version, environment=standing.environment(version), environments=standing.environments(version)
    )


def detail(version: PipelineVersion, standing: Standing) -> PipelineVersionDetail:
    return PipelineVersionDetail.of(
        version,
        environment=standing.environment(version),
        environments=standing.environments(version),
        definition=version.definition,
    )


# Reading -------------------------------------------------------------------------------------------------------


def list_page(
    session: Session, codec: CursorCodec, project: Project, pipeline_id: str, page: PageRequest
) -> PipelineVersionList:
    row = get_pipeline(session, project, pipeline_id)
    standing = Standing(session, row)
    result = VERSIONS.page(
        session,
        select(PipelineVersion).where(PipelineVersion.pipeline_id == row.id),
        page,
        codec,
        {"pipeline": row.id},
    )
    return result.as_page(PipelineVersionList, lambda v: summary(v, standing))


def describe(session: Session, project: Project, pipeline_id: str, ref: str) -> PipelineVersionDetail:
    row = get_pipeline(session, project, pipeline_id)
    return detail(get_version(session, row, ref), Standing(session, row))


def _steps_by_id(definition: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in definition.get("steps") or []}


def diff(session: Session, project: Project, pipeline_id: str, from_ref: str, to_ref: str) -> PipelineVersionDiff:
    """What changed from one version to another: fields, then steps by id."""
    row = get_pipeline(session, project, pipeline_id)
    before, after = get_version(session, row, from_ref), get_version(session, row, to_ref)
    a, b = before.definition, after.definition
    fields = [
        FieldChange(field=f, before=a.get(f), after=b.get(f))
        for f in DEFINITION_FIELDS
        if f != "steps" and a.get(f) != b.get(f)
    ]
    old, new = _steps_by_id(a), _steps_by_id(b)
    steps = [StepChange(step_id=s, change="removed", before=old[s], after=None) for s in old if s not in new]
    for step_id, step in new.items():
        if step_id not in old:
            steps.append(StepChange(step_id=step_id, change="added", before=None, after=step))
        elif old[step_id] != step:
            steps.append(StepChange(step_id=step_id, change="changed", before=old[step_id], after=step))
    return PipelineVersionDiff(
        pipeline_id=row.id, from_version=before.version, to_version=after.version, fields=fields, steps=steps
    )


def environments(session: Session, project: Project, pipeline_id: str) -> PipelineEnvironments:
    """What each environment runs, its Dagster job, and which one is live."""
    row = get_pipeline(session, project, pipeline_id)
    standing = Standing(session, row)
    versions = {
        v.id: v
        for v in session.scalars(
            select(PipelineVersion).where(PipelineVersion.id.in_([s.version_id for s in standing.slots.values()]))
        )
    }
    live = live_environment(standing.held)
    states = []
    for env in ENVIRONMENTS:
        suffix = environment_suffix(env)
        job = pipeline_job_name(project.namespace, f"{row.slug}__{suffix}" if suffix else row.slug)
        slot = standing.slots.get(env)
        if env == DEVELOPMENT:
            head = latest_version(session, row.id)
            state = EnvironmentState(
                environment=cast("Environment", env),
                version=standing.head or None,
                version_id=head.id if head else None,
                since=head.created_at if head else None,
                by=head.created_by if head else None,
                job_name=job,
                live=live == env,
            )
        else:
            state = EnvironmentState(
                environment=cast("Environment", env),
                version=versions[slot.version_id].version if slot else None,
                version_id=slot.version_id if slot else None,
                since=slot.since if slot else None,
                by=slot.by if slot else None,
                job_name=job,
                live=live == env,
            )
        states.append(state)
    return PipelineEnvironments(pipeline_id=row.id, environments=states)


# Moving between environments -----------------------------------------------------------------------------------


def embedded_pipelines(definition: Mapping[str, Any]) -> set[str]:
    found = ((step.get("config") or {}).get("pipeline_id") for step in definition.get("steps") or [])
    return {
        pipeline_id
        for step, pipeline_id in zip(definition.get("steps") or [], found, strict=True)
        if step.get("type") == "pipeline" and isinstance(pipeline_id, str)
    }


def check_embedded_present(session: Session, project: Project, version: PipelineVersion, environment: str) -> None:
    """Conflict unless every pipeline the version embeds has a version in `environment`."""
    embedded = embedded_pipelines(version.definition)
    if not embedded:
        return
    present = set(
        session.scalars(
            select(PipelineEnvironment.pipeline_id).where(
                PipelineEnvironment.pipeline_id.in_(embedded), PipelineEnvironment.environment == environment
            )
        )
    )
    missing = sorted(embedded - present)
    if missing:
        names = session.scalars(
            select(Pipeline.name).where(Pipeline.id.in_(missing), Pipeline.project_id == project.id)
        )
        raise Conflict(
            f"Version {version.version} runs pipeline(s) {', '.join(sorted(names)) or ', '.join(missing)}, which "
            f"have no version in {environment}: promote them there first."
        )


def check_not_embedded(session: Session, project: Project, row: Pipeline, environments: Iterable[str]) -> None:
    """Conflict if a version another pipeline runs in one of `environments` embeds this pipeline."""
    for slot, version in session.execute(
        select(PipelineEnvironment, PipelineVersion)
        .join(PipelineVersion, PipelineVersion.id == PipelineEnvironment.version_id)
        .where(PipelineEnvironment.project_id == project.id, PipelineEnvironment.environment.in_(list(environments)))
    ).tuples():
        if slot.pipeline_id != row.id and row.id in embedded_pipelines(version.definition):
            raise Conflict(
                f"Pipeline '{version.definition.get('name')}' runs this pipeline in {slot.environment} (version "
                f"{version.version}): move it out of {slot.environment} first."
            )


def place(session: Session, row: Pipeline, version: PipelineVersion, environment: str, **how: Any) -> None:
    """`environment` runs `version` from now on."""
    slot = session.get(PipelineEnvironment, (row.id, environment))
    if slot is None:
        slot = PipelineEnvironment(pipeline_id=row.id, environment=environment, project_id=row.project_id)
        session.add(slot)
    slot.version_id = version.id
    slot.since = utcnow()
    slot.by = how.get("by")
    slot.approval_request_id = how.get("approval_request_id")
    session.flush()


def promote(session: Session, project: Project, pipeline_id: str, ref: str, principal: Principal) -> PromotionResult:
    """development -> qa at once; qa -> uat and uat -> production as an approval request (its id in the result)."""
    row = get_pipeline(session, project, pipeline_id)
    version = get_version(session, row, ref)
    standing = Standing(session, row)
    current = standing.environment(version)
    if current not in ENVIRONMENTS:
        raise Conflict(f"Version {version.version} is {current}: promote a version that runs in an environment.")
    target = next_environment(current)
    if target is None:
        raise Conflict(f"Version {version.version} is already in production.")
    check_embedded_present(session, project, version, target)
    if current not in NEEDS_APPROVAL:
        place(session, row, version, target, by=principal.email)
        return _moved("promoted", target, version)
    pending = session.scalar(
        select(ApprovalRequest.id).where(
            ApprovalRequest.version_id == version.id,
            ApprovalRequest.to_environment == target,
            ApprovalRequest.status == "pending",
        )
    )
    if pending is not None:
        raise Conflict(f"Version {version.version}'s move to {target} already waits for approval ({pending}).")
    request = ApprovalRequest(
        id=new_id("approval"),
        project_id=project.id,
        pipeline_id=row.id,
        version_id=version.id,
        from_environment=current,
        to_environment=target,
        requested_by=principal.email,
        requested_by_user_id=principal.user_id,
    )
    session.add(request)
    session.flush()
    return _moved("pending_approval", current, version, request.id)


def _leaving(
    session: Session, project: Project, pipeline_id: str, ref: str, environment: str, action: str
) -> tuple[Pipeline, PipelineVersion]:
    """The pipeline and version about to leave `environment` (which it must run; no other pipeline there may embed
    it), with the environment's slot removed."""
    row = get_pipeline(session, project, pipeline_id)
    version = get_version(session, row, ref)
    slot = session.get(PipelineEnvironment, (row.id, environment))
    if slot is None or slot.version_id != version.id:
        raise Conflict(
            f"Version {version.version} is not in {environment}: only {environment}'s version can be {action}."
        )
    check_not_embedded(session, project, row, [environment])
    session.delete(slot)
    return row, version


def demote(session: Session, project: Project, pipeline_id: str, ref: str, principal: Principal) -> PromotionResult:
    """uat -> qa: qa runs the version again and uat runs none."""
    row, version = _leaving(session, project, pipeline_id, ref, UAT, "demoted (to qa)")
    place(session, row, version, QA, by=principal.email)
    return _moved("demoted", QA, version)


def retire(session: Session, project: Project, pipeline_id: str, ref: str, principal: Principal) -> PromotionResult:
    """Production stops running the version: its job and schedule go, and development is live again."""
    row, version = _leaving(session, project, pipeline_id, ref, PRODUCTION, "retired")
    version.retired_at = utcnow()
    version.retired_by = principal.email
    session.flush()
    return _moved("retired", Standing(session, row).environment(version), version)
