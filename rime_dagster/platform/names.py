"""Names the API needs from the platform's own definitions (no Dagster import, so the API can use them)."""

HOUSEKEEPING_JOB = "rime_housekeeping"
# Metadata entry of the housekeeping job: the definitions generation the code location was built from.
GENERATION_METADATA_KEY = "rime/definitions_generation"
