"""Iceberg table operations of a project: health, history, maintenance and schema evolution, and their job."""
