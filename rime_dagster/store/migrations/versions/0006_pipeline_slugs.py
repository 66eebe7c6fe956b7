"""pipelines.slug: readable Dagster names (`<namespace>__<slug>`), fixed at creation

Existing pipelines get a slug of their name, unique among the project's connector prefixes, dbt slugs and
pipeline slugs (oldest pipeline first). Their jobs' earlier runs stay reachable: the API finds runs by their
rime/pipeline_id tag, which the renamed job keeps.

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa

from rime_dagster.platform.naming import unique_identifier


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slug", sa.String(length=100), nullable=True))
    bind = op.get_bind()
    taken: dict[str, set[str]] = {}
    for project_id, prefix in bind.execute(sa.text("SELECT project_id, table_prefix FROM connectors")).tuples():
        taken.setdefault(project_id, set()).add(prefix)
    for project_id, slug in bind.execute(sa.text("SELECT project_id, slug FROM dbt_projects")).tuples():
        taken.setdefault(project_id, set()).add(slug)
    pipelines = (
        bind.execute(sa.text("SELECT id, project_id, name FROM pipelines ORDER BY created_at, id")).tuples().all()
    )
    for pipeline_id, project_id, name in pipelines:
        slugs = taken.setdefault(project_id, set())
        slug = unique_identifier(name, slugs, fallback="pipeline")
        slugs.add(slug)
        bind.execute(sa.text("UPDATE pipelines SET slug = :slug WHERE id = :id"), {"slug": slug, "id": pipeline_id})
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.alter_column("slug", existing_type=sa.String(length=100), nullable=False)
        batch_op.create_unique_constraint("uq_pipelines_project_slug", ["project_id", "slug"])


def downgrade() -> None:
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.drop_constraint("uq_pipelines_project_slug", type_="unique")
        batch_op.drop_column("slug")
