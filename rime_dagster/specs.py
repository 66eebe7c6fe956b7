"""Reads what the code location must build from Rime's metadata store.

Each domain (connectors, dbt, pipelines, monitoring) adds its own specs here as it
arrives; definitions.py hands them to that domain's factory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select

from rime_dagster.dbt.manifest import ConnectorTable
from rime_dagster.dbt.workspace import ProjectFiles, duckdb_path, project_root
from rime_dagster.pipelines.names import pipeline_job_name
from rime_dagster.pipelines.versions import (
    DEVELOPMENT,
    ENVIRONMENTS,
    environment_suffix,
    head_versions,
    live_environment,
)
from rime_dagster.resources import MetadataStoreResource, settings
from rime_dagster.store.generation import current_generation
from rime_dagster.store.models import (
    AlertRule,
    Connector,
    DbtProject,
    Pipeline,
    PipelineEnvironment,
    PipelineVersion,
    Project,
    TableRetentionPolicy,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.orm import Session

    from rime_dagster.connectors.sources import Source  # imported by build_source: only a run pays for the plug-ins


@dataclass(frozen=True)
class ProjectSpec:
    id: str
    name: str
    namespace: str


@dataclass(frozen=True)
class ConnectorSpec:
    id: str
    project_id: str
    namespace: str
    name: str
    connector_type: str
    config: dict[str, Any]
    credentials_encrypted: str | None
    tables: list[str]
    schedule: str | None
    paused: bool
    sync_mode: str
    cursor_fields: dict[str, str]
    table_prefix: str
    upload_dir: Path

    def build_source(self) -> Source:
        """The configured source plug-in, credentials decrypted only now, inside the run, confined by the
        deployment's access rules (RIME_CONNECTOR_* settings) as in the API."""
        from rime_dagster.connectors.sources import source_class
        from rime_dagster.connectors.sources._access import SourceAccess
        from rime_dagster.store.crypto import CredentialCipher

        credentials = (
            CredentialCipher.from_settings(settings()).decrypt(self.credentials_encrypted)
            if (self.credentials_encrypted)
            else {}
        )
        access = SourceAccess.from_settings(settings(), self.upload_dir)
        return source_class(self.connector_type).from_dicts(
            self.config, credentials, upload_dir=self.upload_dir, access=access
        )


@dataclass(frozen=True)
class DbtProjectSpec:
    id: str
    project_id: str
    namespace: str
    name: str
    slug: str
    root: Path
    revision: int
    target: dict[str, Any]
    credentials_encrypted: str | None
    vars: dict[str, Any]
    schedule: str | None
    paused: bool
    duckdb_file: Path
    connector_tables: tuple[ConnectorTable, ...]

    @property
    def files(self) -> ProjectFiles:
        return ProjectFiles(self.root, self.revision)

    @property
    def adapter(self) -> str:
        return self.target.get("adapter", "duckdb")

    def target_password(self) -> str | None:
        """The target's password, decrypted only now, inside the run."""
        if not self.credentials_encrypted:
            return None
        from rime_dagster.store.crypto import CredentialCipher

        return CredentialCipher.from_settings(settings()).decrypt(self.credentials_encrypted).get("password")


@dataclass(frozen=True)
class PipelineSpec:
    id: str
    project_id: str
    namespace: str
    name: str
    slug: str
    steps: list[dict[str, Any]]
    variables: dict[str, Any]
    schedule: str | None
    paused: bool
    retries: int
    timeout_seconds: int | None
    triggers: list[dict[str, Any]] = field(default_factory=list)
    # The environment this spec builds (rime_dagster/pipelines/versions.py), the version it runs, and whether it is
    # the pipeline's live environment (its schedule starts running, its triggers get sensors).
    environment: str = "development"
    version: int | None = None
    live: bool = True

    @property
    def base_name(self) -> str:
        """What its Dagster names start from after the namespace: the slug, `<slug>__<environment>` past
        development (slugs hold no `__`, so no other pipeline's names can clash)."""
        suffix = environment_suffix(self.environment)
        return f"{self.slug}__{suffix}" if suffix else self.slug

    @property
    def job_name(self) -> str:
        return pipeline_job_name(self.namespace, self.base_name)


@dataclass(frozen=True)
class AlertRuleSpec:
    """What an alert rule's sensor is built from. Only its existence and name: the sensor reads the rule's
    condition, channels and cursor from the store at each evaluation, so edits need no reload."""

    id: str
    project_id: str
    namespace: str
    name: str
    slug: str
    condition_type: str
    enabled: bool


@dataclass(frozen=True)
class RetentionPolicySpec:
    """A table's retention policy: its schedule launches the project's table maintenance job with these operations
    (rime_dagster/tables/retention.py). Durations in seconds; None: the operation's default."""

    id: str
    project_id: str
    namespace: str
    table: str
    schedule: str
    enabled: bool
    retain_last: int | None = None
    older_than_seconds: int | None = None
    remove_orphan_files: bool = False
    orphan_older_than_seconds: int | None = None
    compact: bool = False
    compact_target_file_rows: int | None = None
    compact_min_files: int | None = None

    @classmethod
    def of(cls, row: TableRetentionPolicy, namespace: str) -> RetentionPolicySpec:
        return cls(
            id=row.id,
            project_id=row.project_id,
            namespace=namespace,
            table=row.table_name,
            schedule=row.schedule,
            enabled=row.enabled,
            retain_last=row.retain_last,
            older_than_seconds=row.older_than_seconds,
            remove_orphan_files=row.remove_orphan_files,
            orphan_older_than_seconds=row.orphan_older_than_seconds,
            compact=row.compact,
            compact_target_file_rows=row.compact_target_file_rows,
            compact_min_files=row.compact_min_files,
        )


@dataclass(frozen=True)
class PlatformSpecs:
    # The definitions generation these specs include (rime_dagster.store.generation): read before the
    # rows, so the specs hold that generation's changes and perhaps later ones, never fewer.
    generation: int = 0
    projects: list[ProjectSpec] = field(default_factory=list)
    connectors: list[ConnectorSpec] = field(default_factory=list)
    dbt_projects: list[DbtProjectSpec] = field(default_factory=list)
    pipelines: list[PipelineSpec] = field(default_factory=list)
    alert_rules: list[AlertRuleSpec] = field(default_factory=list)
    retention_policies: list[RetentionPolicySpec] = field(default_factory=list)


def load_specs(store: MetadataStoreResource) -> PlatformSpecs:
    """The specs of this deployment's tenant (RIME_TENANT): deployments sharing a store build only their own."""
    home = settings().home
    dbt_home = settings().dbt_home
    tenant_projects = select(Project.id).where(Project.tenant_id == settings().tenant)
    with store.read_session() as session:
        generation = current_generation(session)
        projects = {
            p.id: ProjectSpec(id=p.id, name=p.name, namespace=p.namespace)
            for p in session.scalars(
                select(Project).where(Project.tenant_id == settings().tenant).order_by(Project.name)
            )
        }
        connectors = [
            ConnectorSpec(
                id=c.id,
                project_id=c.project_id,
                namespace=projects[c.project_id].namespace,
                name=c.name,
                connector_type=c.connector_type,
                config=dict(c.config),
                credentials_encrypted=c.credentials_encrypted,
                tables=c.tables,
                schedule=c.schedule,
                paused=c.paused,
                sync_mode=c.sync_mode,
                cursor_fields=dict(c.cursor_fields),
                table_prefix=c.table_prefix,
                upload_dir=home / "uploads" / c.project_id / c.id,
            )
            for c in session.scalars(
                select(Connector)
                .where(Connector.project_id.in_(tenant_projects))
                .order_by(Connector.created_at, Connector.id)
            )
        ]
        dbt_projects = [
            DbtProjectSpec(
                id=d.id,
                project_id=d.project_id,
                namespace=projects[d.project_id].namespace,
                name=d.name,
                slug=d.slug,
                root=project_root(dbt_home, d.project_id, d.id),
                revision=d.revision,
                target=dict(d.target),
                credentials_encrypted=d.target_credentials_encrypted,
                vars=dict(d.vars),
                schedule=d.schedule,
                paused=d.paused,
                duckdb_file=duckdb_path(dbt_home, d.project_id),
                connector_tables=tuple(
                    t for c in connectors if c.project_id == d.project_id for t in connector_tables_of(c)
                ),
            )
            for d in session.scalars(
                select(DbtProject)
                .where(DbtProject.project_id.in_(tenant_projects))
                .order_by(DbtProject.created_at, DbtProject.id)
            )
        ]
        pipelines = _pipeline_specs(session, tenant_projects, projects)
        alert_rules = [
            AlertRuleSpec(
                id=r.id,
                project_id=r.project_id,
                namespace=projects[r.project_id].namespace,
                name=r.name,
                slug=r.slug,
                condition_type=str(r.condition.get("type")),
                enabled=r.enabled,
            )
            for r in session.scalars(
                select(AlertRule)
                .where(AlertRule.project_id.in_(tenant_projects))
                .order_by(AlertRule.created_at, AlertRule.id)
            )
        ]
        retention_policies = [
            RetentionPolicySpec.of(r, projects[r.project_id].namespace)
            for r in session.scalars(
                select(TableRetentionPolicy)
                .where(TableRetentionPolicy.project_id.in_(tenant_projects))
                .order_by(TableRetentionPolicy.created_at, TableRetentionPolicy.id)
            )
        ]
    return PlatformSpecs(
        generation=generation,
        projects=list(projects.values()),
        connectors=connectors,
        dbt_projects=dbt_projects,
        pipelines=pipelines,
        alert_rules=alert_rules,
        retention_policies=retention_policies,
    )


def _pipeline_specs(
    session: Session, tenant_projects: Select[Any], projects: Mapping[str, ProjectSpec]
) -> list[PipelineSpec]:
    """A spec per pipeline and environment: development from the pipeline's row (its newest version), each
    environment past it from the version it holds."""
    rows = session.scalars(
        select(Pipeline).where(Pipeline.project_id.in_(tenant_projects)).order_by(Pipeline.created_at, Pipeline.id)
    ).all()
    heads = head_versions(session, [p.id for p in rows])
    held: dict[str, dict[str, PipelineVersion]] = {}
    for slot, version in session.execute(
        select(PipelineEnvironment, PipelineVersion)
        .join(PipelineVersion, PipelineVersion.id == PipelineEnvironment.version_id)
        .where(PipelineEnvironment.project_id.in_(tenant_projects))
    ).tuples():
        held.setdefault(slot.pipeline_id, {})[slot.environment] = version
    specs = []
    for p in rows:
        live = live_environment(held.get(p.id, {}))
        common = {"id": p.id, "project_id": p.project_id, "namespace": projects[p.project_id].namespace, "slug": p.slug}
        specs.append(
            PipelineSpec(
                **common,
                name=p.name,
                steps=list(p.steps),
                variables=dict(p.variables),
                schedule=p.schedule,
                paused=p.paused,
                retries=p.retries,
                timeout_seconds=p.timeout_seconds,
                triggers=list(p.triggers or []),
                version=heads.get(p.id),
                live=live == DEVELOPMENT,
            )
        )
        for environment, version in sorted(held.get(p.id, {}).items(), key=lambda e: ENVIRONMENTS.index(e[0])):
            d = version.definition
            specs.append(
                PipelineSpec(
                    **common,
                    name=d["name"],
                    steps=list(d["steps"]),
                    variables=dict(d.get("variables") or {}),
                    schedule=d.get("schedule"),
                    paused=p.paused,
                    retries=d.get("retries") or 0,
                    timeout_seconds=d.get("timeout_seconds"),
                    triggers=list(d.get("triggers") or []),
                    environment=environment,
                    version=version.version,
                    live=live == environment,
                )
            )
    return specs


def connector_tables_of(connector: ConnectorSpec | Connector, namespace: str | None = None) -> list[ConnectorTable]:
    """The connector's tables as dbt sources can reference them. A `Connector` row has no namespace: pass its
    project's."""
    ns = namespace or (connector.namespace if isinstance(connector, ConnectorSpec) else None)
    if not ns:
        raise ValueError(f"connector {connector.id}: no namespace given for a Connector row")
    return [
        ConnectorTable(
            connector_id=connector.id,
            connector_name=connector.name,
            table_prefix=connector.table_prefix,
            table=table,
            namespace=ns,
        )
        for table in connector.tables
    ]
