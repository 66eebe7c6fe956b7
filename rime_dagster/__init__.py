"""Rime's Dagster code location: connectors, dbt projects and pipelines become Dagster definitions."""
