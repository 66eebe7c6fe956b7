"""Platform-wide Dagster definitions (housekeeping of the metadata store)."""
