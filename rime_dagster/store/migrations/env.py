"""Alembic environment: migrates the metadata store named by the Rime settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from rime_dagster.settings import get_settings
from rime_dagster.store.models import Base
from rime_dagster.store.session import make_engine

config = context.config
url = config.attributes.get("url") or get_settings().metadata_url


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
