#!/usr/bin/env bash
# Entrypoint of a replica container: on first start, clones the primary
# with pg_basebackup -R (which writes standby.signal and primary_conninfo),
# then hands over to the postgres image's own entrypoint, which sees an
# initialised data directory and just starts the server as a hot standby.
set -Eeuo pipefail

: "${PRIMARY_HOST:?PRIMARY_HOST must name the primary}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD is required}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
REPLICATION_USER="${REPLICATION_USER:-replicator}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	# depends_on waits for the primary when the whole project starts, but
	# not when this container is restarted or recreated on its own.
	until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -d postgres; do
		echo "replica: waiting for primary $PRIMARY_HOST:$PRIMARY_PORT" >&2
		sleep 1
	done
	mkdir -p "$PGDATA"
	# Leftovers of an interrupted clone would make pg_basebackup refuse.
	find "$PGDATA" -mindepth 1 -delete
	chown postgres:postgres "$PGDATA"
	chmod 0700 "$PGDATA"
	echo "replica: cloning $PRIMARY_HOST:$PRIMARY_PORT" >&2
	slot_args=()
	if [ -n "${REPLICATION_SLOT:-}" ]; then
		slot_args=(--slot="$REPLICATION_SLOT")
	fi
	gosu postgres env PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup \
		--host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username="$REPLICATION_USER" \
		--pgdata="$PGDATA" --write-recovery-conf --wal-method=stream \
		--checkpoint=fast "${slot_args[@]}"
fi

exec docker-entrypoint.sh "$@"
