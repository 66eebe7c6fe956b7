"""connectors, and a fixed Iceberg namespace per project

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.store.types import UTCDateTime
from rime_dagster.platform.naming import unique_identifier


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connectors",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("connector_type", sa.String(length=50), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("credentials_encrypted", sa.Text(), nullable=True),
        sa.Column("selected_tables", sa.JSON(), nullable=True),
        sa.Column("schedule", sa.String(length=100), nullable=True),
        sa.Column("sync_mode", sa.String(length=20), nullable=False),
        sa.Column("cursor_fields", sa.JSON(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("table_prefix", sa.String(length=100), nullable=False),
        sa.Column("known_tables", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_connectors_project_name"),
    )
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.create_index("ix_connectors_project_created", ["project_id", "created_at", "id"], unique=False)

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("namespace", sa.String(length=100), nullable=True))
    _backfill_namespaces()
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.alter_column("namespace", existing_type=sa.String(length=100), nullable=False)
        batch_op.create_unique_constraint("uq_projects_tenant_namespace", ["tenant_id", "namespace"])


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_constraint("uq_projects_tenant_namespace", type_="unique")
        batch_op.drop_column("namespace")

    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.drop_index("ix_connectors_project_created")

    op.drop_table("connectors")


def _backfill_namespaces() -> None:
    bind = op.get_bind()
    projects = sa.table("projects", sa.column("id"), sa.column("tenant_id"), sa.column("name"), sa.column("namespace"))
    taken: dict[str, set[str]] = {}
    for row in bind.execute(sa.select(projects.c.id, projects.c.tenant_id, projects.c.name).order_by(projects.c.id)):
        namespace = unique_identifier(row.name, taken.setdefault(row.tenant_id, set()), fallback="p")
        taken[row.tenant_id].add(namespace)
        bind.execute(projects.update().where(projects.c.id == row.id).values(namespace=namespace))
