"""The `rime` code location (workspace.yaml, `rime up`): built from the metadata store when this module is imported,
by every code server and every run worker."""

from rime_dagster.code_location import build_definitions, load_definitions

__all__ = ["build_definitions", "defs", "load_definitions"]

defs = load_definitions()
