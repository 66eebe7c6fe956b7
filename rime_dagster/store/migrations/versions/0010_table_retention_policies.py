"""table retention policies: per table, what its scheduled maintenance keeps (snapshot expiry, optionally orphan-file
removal and compaction) and its cron schedule

Revision ID: 0010
Revises: 0009
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.store.types import UTCDateTime


revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "table_retention_policies",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("table_name", sa.String(length=300), nullable=False),
        sa.Column("schedule", sa.String(length=100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("retain_last", sa.Integer(), nullable=True),
        sa.Column("older_than_seconds", sa.BigInteger(), nullable=True),
        sa.Column("remove_orphan_files", sa.Boolean(), nullable=False),
        sa.Column("orphan_older_than_seconds", sa.BigInteger(), nullable=True),
        sa.Column("compact", sa.Boolean(), nullable=False),
        sa.Column("compact_target_file_rows", sa.Integer(), nullable=True),
        sa.Column("compact_min_files", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "table_name", name="uq_table_retention_policies_project_table"),
    )
    op.create_index(
        "ix_table_retention_policies_project_created",
        "table_retention_policies",
        ["project_id", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_table_retention_policies_project_created", table_name="table_retention_policies")
    op.drop_table("table_retention_policies")
