"""Source plug-ins: one module (or package) per connector type, `<connector_type>`, imported when first asked for."""

from rime_dagster.connectors.sources.base import (
    REGISTRY,
    AccessRefused,
    Source,
    SourceError,
    known_types,
    register,
    source_class,
)

__all__ = ["REGISTRY", "AccessRefused", "Source", "SourceError", "known_types", "register", "source_class"]
