"""Pipelines: DAGs of steps (connector syncs, dbt, table maintenance, other pipelines) as Dagster jobs."""
