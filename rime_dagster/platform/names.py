"""Names the API needs from the platform's own definitions (no Dagster import, so the API can use them)."""

HOUSEKEEPING_JOB = "rime_housekeeping"
