"""The demo project `make up` loads: a `files` connector with demo/data's files (customers, orders) in its
upload area, the dbt project dbt_projects/demo_shop (staging views and marts over the connector's tables),
and the pipeline "Shop nightly" that syncs the connector, then builds the dbt project.

The files are copied into the upload area, as a user would upload them, rather than read from demo/data:
a connector reads only its upload area unless RIME_CONNECTOR_PATH_ROOTS says otherwise, and the demo
should need no setting in the API, the code server and every run worker."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_shim.schemas.connectors import ConnectorCreate
from api_shim.services import connectors, pipelines, projects, uploads
from rime_dagster.platform.iceberg import CatalogProvider
from rime_dagster.settings import Settings
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.models import Connector, DbtProject, Pipeline, Project
from rime_dagster.store.session import session_scope

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "demo" / "data"
DEMO_DBT = REPO / "dbt_projects" / "demo_shop"


def ensure_demo(settings: Settings) -> None:
    """Idempotent: creates what is missing, never touches what a user changed."""
    with session_scope(settings.metadata_url) as session:
        project = session.scalar(select(Project).where(Project.tenant_id == settings.tenant, Project.name == "demo"))
        if project is None:
            project = projects.create_project(
                session, tenant_id=settings.tenant, name="demo", description="Demo project loaded by `make up`."
            )
        shop = session.scalar(select(Connector).where(Connector.project_id == project.id))
        if DEMO_DATA.is_dir() and shop is None:
            body = ConnectorCreate(
                name="Demo Shop",
                connector_type="files",
                config={},
                selected_tables=["customers", "orders"],
                schedule="0 * * * *",
            )
            cipher, catalog = CredentialCipher.from_settings(settings), CatalogProvider(settings)
            shop = connectors.create_connector(session, project, body, cipher, settings=settings, catalog=catalog)
            _upload_demo_data(settings, shop)
        elif shop is not None and shop.config.get("path") == str(DEMO_DATA):  # loaded by an older `make up`
            _upload_demo_data(settings, shop)
            shop.config = {**shop.config, "path": None}
        if (
            DEMO_DBT.is_dir()
            and session.scalar(select(DbtProject.id).where(DbtProject.project_id == project.id)) is None
        ):
            _register_demo_dbt(session, settings, project)
        connector_id = session.scalar(select(Connector.id).where(Connector.project_id == project.id))
        dbt_id = session.scalar(select(DbtProject.id).where(DbtProject.project_id == project.id))
        if (
            connector_id
            and dbt_id
            and session.scalar(select(Pipeline.id).where(Pipeline.project_id == project.id)) is None
        ):
            _register_demo_pipeline(session, project, connector_id, dbt_id)


def _upload_demo_data(settings: Settings, connector: Connector) -> None:
    directory = connectors.upload_dir(settings, connector)
    for path in sorted(DEMO_DATA.glob("*.csv")):
        with path.open("rb") as handle:
            uploads.store(directory, path.name, handle)


def _register_demo_pipeline(session: Session, project: Project, connector_id: str, dbt_id: str) -> None:
    from api_shim.schemas.pipelines import PipelineCreate

    # The body a client would POST, validated as the route would.
    body = PipelineCreate.model_validate(
        {
            "name": "Shop nightly",
            "description": "Sync the Demo Shop files, then build the Shop Models marts.",
            "schedule": "0 3 * * *",
            "steps": [
                {
                    "id": "sync",
                    "name": "Sync Demo Shop",
                    "type": "connector_sync",
                    "config": {"connector_id": connector_id},
                },
                {
                    "id": "models",
                    "name": "Build Shop Models",
                    "type": "dbt",
                    "config": {"dbt_project_id": dbt_id, "command": "build"},
                    "depends_on": ["sync"],
                },
            ],
        }
    )
    pipelines.create_pipeline(session, project, body)


def _register_demo_dbt(session: Session, settings: Settings, project: Project) -> None:
    """Parses dbt_projects/demo_shop (a few seconds of `dbt parse`) and records it."""
    from api_shim.schemas.dbt import DbtProjectCreate
    from api_shim.services import dbt
    from rime_dagster.dbt import workspace
    from rime_dagster.store.ids import new_id

    body = DbtProjectCreate.model_validate({"name": "Shop Models", "source": {"type": "path", "path": str(DEMO_DBT)}})
    target, password = dbt.target_settings(None)
    dbt_id = new_id("dbt_project")
    files = workspace.ProjectFiles(workspace.project_root(settings.dbt_home, project.id, dbt_id), 1)
    revision = dbt.prepare_revision(
        settings,
        files=files,
        source=body.source.model_dump(mode="json"),
        target=target,
        namespace=project.namespace,
        vars={},
    )
    dbt.record_new(
        session,
        dbt_id=dbt_id,
        project=project,
        body=body,
        slug=dbt.new_slug(session, project.id, body.name),
        target=target,
        password=password,
        revision=revision,
        cipher=CredentialCipher.from_settings(settings),
    )
