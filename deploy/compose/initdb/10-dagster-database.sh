#!/bin/sh
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d): Dagster's storage gets a
# database of its own beside the metadata store's (POSTGRES_DB), owned by the same user.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$DAGSTER_PG_DB\" OWNER \"$POSTGRES_USER\""
