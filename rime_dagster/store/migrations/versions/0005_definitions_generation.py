"""definitions generation: one counter row, and each project's last generation

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.store.types import UTCDateTime, utcnow


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    state = op.create_table(
        "definitions_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("reload_owner", sa.String(length=64), nullable=True),
        sa.Column("reload_lease_until", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(state, [{"id": 1, "generation": 1, "changed_at": utcnow()}])
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("definitions_generation", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("definitions_generation")
    op.drop_table("definitions_state")
