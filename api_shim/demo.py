"""The demo project `make up` loads: a `files` connector over demo/data (customers, orders)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from api_shim.crypto import CredentialCipher
from api_shim.db.models import Connector, Project
from api_shim.db.session import session_scope
from api_shim.schemas.connectors import ConnectorCreate
from api_shim.services import connectors, projects
from api_shim.settings import Settings

DEMO_DATA = Path(__file__).resolve().parent.parent / "demo" / "data"


def ensure_demo(settings: Settings) -> None:
    """Idempotent: creates what is missing, never touches what a user changed."""
    with session_scope(settings.metadata_url) as session:
        project = session.scalar(select(Project).where(Project.tenant_id == settings.tenant, Project.name == "demo"))
        if project is None:
            project = projects.create_project(
                session, tenant_id=settings.tenant, name="demo", description="Demo project loaded by `make up`."
            )
        if (
            DEMO_DATA.is_dir()
            and session.scalar(select(Connector.id).where(Connector.project_id == project.id)) is None
        ):
            body = ConnectorCreate(
                name="Demo Shop",
                connector_type="files",
                config={"path": str(DEMO_DATA)},
                selected_tables=["customers", "orders"],
                schedule="0 * * * *",
            )
            connectors.create_connector(session, project, body, CredentialCipher.from_settings(settings))
