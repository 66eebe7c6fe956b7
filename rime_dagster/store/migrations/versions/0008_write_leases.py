"""write leases: one writer of a pool's Iceberg tables at a time, whatever Dagster's storage

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.store.types import UTCDateTime


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "write_leases",
        sa.Column("pool", sa.String(length=300), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pool"),
    )


def downgrade() -> None:
    op.drop_table("write_leases")
