"""Provider plug-ins: one module per resource type (or per family of types), imported when first asked for."""

from rime_dagster.infrastructure.providers.base import (
    KNOWN_TYPES,
    REGISTRY,
    ConfigInvalid,
    Declared,
    NotConfigured,
    Provider,
    ProviderError,
    SqlProvider,
    Target,
    provider,
    register,
)

__all__ = [
    "KNOWN_TYPES",
    "REGISTRY",
    "ConfigInvalid",
    "Declared",
    "NotConfigured",
    "Provider",
    "ProviderError",
    "SqlProvider",
    "Target",
    "provider",
    "register",
]
