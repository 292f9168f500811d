#!/usr/bin/env bash
# Runs once, on a primary's first start, inside the postgres image's
# initialisation (temporary server, socket only). Creates what the proxy
# and a replica need: the app role and database, a replication role, a
# physical slot for the replica when REPLICATION_SLOT names one, and the
# pg_hba line that lets a replica stream.
# No -u: if the file loses its exec bit the image sources it instead of
# running it, and its own entrypoint is not written for nounset.
set -Eeo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v app_password="${APP_PASSWORD:?}" \
	-v repl_password="${REPLICATION_PASSWORD:?}" <<'SQL'
CREATE ROLE app LOGIN PASSWORD :'app_password';
-- The owner of a database owns its public schema on PostgreSQL 15, so app
-- can create tables without further grants.
ALTER DATABASE app OWNER TO app;
CREATE ROLE replicator REPLICATION LOGIN PASSWORD :'repl_password';
SQL

# Only for a primary that has a replica: a slot nobody consumes pins WAL
# (up to max_slot_wal_keep_size). Created here rather than by
# pg_basebackup --create-slot, so that re-creating a lost replica does not
# fail on an existing slot.
if [ -n "${REPLICATION_SLOT:-}" ]; then
	psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
		-v slot="$REPLICATION_SLOT" <<'SQL'
SELECT pg_create_physical_replication_slot(:'slot');
SQL
fi

# The image's default rules cover "all" databases, which does not include
# replication connections.
echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
