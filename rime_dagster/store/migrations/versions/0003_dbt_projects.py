"""dbt projects

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.store.types import UTCDateTime


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dbt_projects",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("target_credentials_encrypted", sa.Text(), nullable=True),
        sa.Column("vars", sa.JSON(), nullable=False),
        sa.Column("schedule", sa.String(length=100), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("commit_sha", sa.String(length=64), nullable=True),
        sa.Column("dbt_project_name", sa.String(length=200), nullable=False),
        sa.Column("profile_name", sa.String(length=200), nullable=False),
        sa.Column("models_count", sa.Integer(), nullable=False),
        sa.Column("parsed_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_dbt_projects_project_name"),
        sa.UniqueConstraint("project_id", "slug", name="uq_dbt_projects_project_slug"),
    )
    with op.batch_alter_table("dbt_projects", schema=None) as batch_op:
        batch_op.create_index("ix_dbt_projects_project_created", ["project_id", "created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dbt_projects", schema=None) as batch_op:
        batch_op.drop_index("ix_dbt_projects_project_created")
    op.drop_table("dbt_projects")
