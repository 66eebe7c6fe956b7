"""pipeline versions, environments past development, approval requests and their comments

Every existing pipeline gets version 1: its definition as it stands.

Revision ID: 0012
Revises: 0011
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.store.ids import new_id
from rime_dagster.store.types import UTCDateTime, utcnow


revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

DEFINITION_FIELDS = ("name", "description", "steps", "variables", "schedule", "retries", "timeout_seconds", "triggers")


def upgrade() -> None:
    versions = op.create_table(
        "pipeline_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("pipeline_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=True),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.Column("retired_by", sa.String(length=320), nullable=True),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipelines.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pipeline_id", "version", name="uq_pipeline_versions_pipeline_version"),
    )
    op.create_table(
        "pipeline_environments",
        sa.Column("pipeline_id", sa.String(length=40), nullable=False),
        sa.Column("environment", sa.String(length=20), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("version_id", sa.String(length=40), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("by", sa.String(length=320), nullable=True),
        sa.Column("approval_request_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipelines.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["pipeline_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pipeline_id", "environment"),
    )
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("pipeline_id", sa.String(length=40), nullable=False),
        sa.Column("version_id", sa.String(length=40), nullable=False),
        sa.Column("from_environment", sa.String(length=20), nullable=False),
        sa.Column("to_environment", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("requested_by", sa.String(length=320), nullable=False),
        sa.Column("requested_by_user_id", sa.String(length=40), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("decided_by", sa.String(length=320), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipelines.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["pipeline_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_approval_requests_project_status", "approval_requests", ["project_id", "status", "requested_at", "id"]
    )
    op.create_table(
        "approval_comments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("approval_request_id", sa.String(length=40), nullable=False),
        sa.Column("author", sa.String(length=320), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["approval_request_id"], ["approval_requests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_approval_comments_request_created", "approval_comments", ["approval_request_id", "created_at", "id"]
    )
    pipelines = sa.table(
        "pipelines",
        sa.column("id", sa.String),
        sa.column("project_id", sa.String),
        sa.column("created_at", UTCDateTime()),
        sa.column("name", sa.String),
        sa.column("description", sa.Text),
        sa.column("steps", sa.JSON),
        sa.column("variables", sa.JSON),
        sa.column("schedule", sa.String),
        sa.column("retries", sa.Integer),
        sa.column("timeout_seconds", sa.Integer),
        sa.column("triggers", sa.JSON),
    )
    rows = op.get_bind().execute(sa.select(pipelines)).mappings().all()
    if rows:
        op.bulk_insert(
            versions,
            [
                {
                    "id": new_id("pipeline_version"),
                    "pipeline_id": row["id"],
                    "project_id": row["project_id"],
                    "version": 1,
                    "definition": {
                        field: (
                            row[field]
                            if row[field] is not None or field not in ("variables", "triggers")
                            else ({} if field == "variables" else [])
                        )
                        for field in DEFINITION_FIELDS
                    },
                    "created_at": row["created_at"] or utcnow(),
                    "created_by": None,
                }
                for row in rows
            ],
        )


def downgrade() -> None:
    op.drop_index("ix_approval_comments_request_created", table_name="approval_comments")
    op.drop_table("approval_comments")
    op.drop_index("ix_approval_requests_project_status", table_name="approval_requests")
    op.drop_table("approval_requests")
    op.drop_table("pipeline_environments")
    op.drop_table("pipeline_versions")
