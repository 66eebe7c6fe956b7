"""The metadata store on both backends: migrations match the models, constraints, triggers, paging."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from api_shim.main import create_app
from api_shim.pagination import CursorCodec, PageRequest, paginate
from api_shim.services import projects, users
from api_shim.services.auth import Role
from rime_dagster.store.migrate import downgrade_to_base, upgrade_to_head
from rime_dagster.store.models import ApiToken, Base, Project, User
from rime_dagster.store.session import engine_for, session_scope
from tests.conftest import make_settings
from tests.support.postgres import fresh_database


def test_migrations_match_models(db_url):
    with engine_for(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_downgrade_and_upgrade_again(db_url):
    downgrade_to_base(db_url)
    with engine_for(db_url).connect() as conn:
        assert conn.dialect.has_table(conn, "projects") is False
    upgrade_to_head(db_url)
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Project)) == 0


def test_timestamps_are_aware_utc(db_url):
    with session_scope(db_url) as session:
        project = projects.create_project(session, tenant_id="t", name="p", description=None)
        project_id = project.id
    with session_scope(db_url) as session:
        created = session.get(Project, project_id).created_at
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_unique_names_per_tenant(db_url):
    with session_scope(db_url) as session:
        projects.create_project(session, tenant_id="a", name="same", description=None)
        projects.create_project(session, tenant_id="b", name="same", description=None)
    with pytest.raises(DBAPIError):  # the database enforces it even past the service check
        with session_scope(db_url) as session:
            session.add(Project(id="proj_dupe", tenant_id="a", name="same", namespace="other"))


def test_deleting_a_user_cascades_to_tokens(db_url):
    with session_scope(db_url) as session:
        users.create_user(session, tenant_id="t", email="keep@example.com", name="K", role=Role.admin)
        user = users.create_user(session, tenant_id="t", email="go@example.com", name="G", role=Role.viewer)
        users.create_token(session, user, name="a", expires_at=None)
        user_id = user.id
    with session_scope(db_url) as session:
        users.delete_user(session, session.get(User, user_id))
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == 0


@pytest.mark.parametrize("statement", ["UPDATE audit_logs SET actor = 'x'", "DELETE FROM audit_logs"])
def test_audit_log_append_only(db_url, statement):
    from api_shim.services import audit

    entry = audit.AuditEntry(
        tenant_id="t",
        project_id=None,
        actor_id=None,
        actor="a",
        action="x.y",
        resource_type="x",
        resource_id=None,
        request_id="req_1",
        method="POST",
        path="/",
        status_code=200,
        ip=None,
    )
    with session_scope(db_url) as session:
        audit.record(session, entry)
    with pytest.raises(DBAPIError, match="append-only"):
        with session_scope(db_url) as session:
            session.execute(text(statement))


def test_keyset_pages_cover_everything_once(db_url):
    with session_scope(db_url) as session:
        for i in range(23):
            projects.create_project(session, tenant_id="t", name=f"p{i:02d}", description=None)
    codec = CursorCodec("k")
    columns = {"created_at": Project.created_at, "name": Project.name}
    for sort, order in (("created_at", "desc"), ("name", "asc"), ("name", "desc")):
        seen, cursor = [], None
        while True:
            with session_scope(db_url) as session:
                page = paginate(
                    session,
                    select(Project).where(Project.tenant_id == "t"),
                    request=PageRequest(limit=5, cursor=cursor, sort=sort, order=order),
                    codec=codec,
                    sort_columns=columns,
                    id_column=Project.id,
                    scope="s",
                )
                seen.extend(p.name for p in page.items)
            if not page.has_more:
                break
            cursor = page.next_cursor
        expected = sorted(seen, reverse=order == "desc") if sort == "name" else seen
        assert len(seen) == len(set(seen)) == 23 and seen == expected


@pytest.mark.postgres
def test_readme_flow_on_postgresql(postgres_url, tmp_path):
    """The README's newcomer flow, end to end, with PostgreSQL as the metadata store."""
    with fresh_database(postgres_url, "readme_flow") as url:
        settings = make_settings(tmp_path, database_url=url)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            admin = {"Authorization": f"Bearer {settings.admin_token}"}
            project = client.post("/api/v1/projects", json={"name": "crm"}, headers=admin).json()
            viewer = client.post(
                "/api/v1/users", json={"email": "v@example.com", "name": "V", "role": "viewer"}, headers=admin
            ).json()
            secret = client.post(f"/api/v1/users/{viewer['id']}/tokens", json={"name": "t"}, headers=admin).json()[
                "token"
            ]
            denied = client.patch(
                f"/api/v1/projects/{project['id']}", json={"name": "x"}, headers={"Authorization": f"Bearer {secret}"}
            )
            assert denied.status_code == 403
            entries = client.get(f"/api/v1/projects/{project['id']}/audit-logs", headers=admin).json()["data"]
            assert (entries[0]["actor"], entries[0]["status_code"]) == ("v@example.com", 403)
            assert client.get("/health/ready").json()["dependencies"]["metadata_db"]["status"] == "ok"
        engine_for(url).dispose()
