"""governance: classifications, the columns they were found in or assigned to, masking policies; audit entries'
details (the tables and columns an exempt role read unmasked)

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.store.types import UTCDateTime


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "classifications",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("sensitivity", sa.String(length=20), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("assignments", sa.JSON(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_classifications_project_name"),
    )
    op.create_index("ix_classifications_project_created", "classifications", ["project_id", "created_at", "id"])
    op.create_table(
        "column_classifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("table_name", sa.String(length=300), nullable=False),
        sa.Column("column_name", sa.String(length=300), nullable=False),
        sa.Column("classification_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("detail", sa.String(length=300), nullable=True),
        sa.Column("classified_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["classification_id"], ["classifications.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "project_id", "table_name", "column_name", "classification_id", "source", name="uq_column_classifications"
        ),
    )
    op.create_index("ix_column_classifications_table", "column_classifications", ["project_id", "table_name"])
    op.create_table(
        "masking_policies",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("classification_id", sa.String(length=40), nullable=True),
        sa.Column("columns", sa.JSON(), nullable=True),
        sa.Column("strategy", sa.String(length=20), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("exempt_roles", sa.JSON(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["classification_id"], ["classifications.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_masking_policies_project_name"),
    )
    op.create_index("ix_masking_policies_project_created", "masking_policies", ["project_id", "created_at", "id"])
    op.add_column("audit_logs", sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_logs", "details")  # not batch mode: a copied SQLite table would lose its triggers
    op.drop_index("ix_masking_policies_project_created", table_name="masking_policies")
    op.drop_table("masking_policies")
    op.drop_index("ix_column_classifications_table", table_name="column_classifications")
    op.drop_table("column_classifications")
    op.drop_index("ix_classifications_project_created", table_name="classifications")
    op.drop_table("classifications")
