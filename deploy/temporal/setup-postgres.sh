#!/bin/sh
# Creates (or upgrades) Temporal's two PostgreSQL databases; runs once in temporalio/admin-tools before
# the server starts (service temporal-schema of docker-compose.temporal.yml). Same steps as Temporal's
# own compose files (github.com/temporalio/samples-server, compose/scripts/setup-postgres.sh).
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${SQL_PASSWORD:?SQL_PASSWORD is required}"
PORT="${DB_PORT:-5432}"

until nc -z -w 5 "$POSTGRES_SEEDS" "$PORT"; do
  echo "Waiting for PostgreSQL at $POSTGRES_SEEDS:$PORT..."
  sleep 2
done

for db in temporal temporal_visibility; do
  if [ "$db" = temporal ]; then schema=temporal; else schema=visibility; fi
  sql() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -u "$POSTGRES_USER" -p "$PORT" --db "$db" "$@"; }
  sql create
  sql setup-schema -v 0.0
  sql update-schema -d "/etc/temporal/schema/postgresql/v12/$schema/versioned"
done
echo "Temporal's PostgreSQL schema is ready."
