"""Source plug-ins. Importing this package registers every connector type in REGISTRY."""

from rime_dagster.connectors.sources import files, postgresql, sqlite  # noqa: F401  (registers)
from rime_dagster.connectors.sources.base import REGISTRY, Source, SourceError, register, source_class

__all__ = ["REGISTRY", "Source", "SourceError", "register", "source_class"]
