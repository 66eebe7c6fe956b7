"""dbt projects: files and parsing (workspace), manifest reading, the DuckDB plugin, Dagster assets."""
