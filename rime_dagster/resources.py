"""Outside systems as Dagster ConfigurableResources: the metadata store and the Iceberg catalog."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from rime_dagster.settings import Settings, get_settings
from rime_dagster.store.session import read_scope, session_scope

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from sqlalchemy.orm import Session


class MetadataStoreResource(dg.ConfigurableResource):
    """Rime's metadata store (SQLAlchemy URL); defaults to the deployment's RIME_* settings."""

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default RIME_DATABASE_URL or SQLite under RIME_HOME."
    )

    def url(self) -> str:
        return self.database_url or get_settings().metadata_url

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.url()) as session:
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A snapshot that never holds up a writer (building the definitions reads every row)."""
        with read_scope(self.url()) as session:
            yield session


class IcebergCatalogResource(dg.ConfigurableResource):
    """The pyiceberg catalog connector tables land in (RIME_ICEBERG_* settings)."""

    def catalog(self) -> Catalog:
        from rime_dagster.platform.iceberg import open_catalog

        return open_catalog(get_settings())


def settings() -> Settings:
    return get_settings()
