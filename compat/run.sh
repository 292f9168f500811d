#!/usr/bin/env bash
# Client compatibility suite (`make compat`): starts a 2-shard `shardproxy
# dev` on free loopback ports, loads pgbench's tables, then runs the same
# scripted scenario with psql, pgbench, pgx, lib/pq, node-postgres,
# psycopg2 and the PostgreSQL JDBC driver (compat/README.md) and prints a
# PASS/FAIL table. A client whose runtime is missing fails unless
# COMPAT_SKIP names it (space or comma separated, e.g. COMPAT_SKIP="jdbc node").
# COMPAT_CLIENTS runs only the named clients. COMPAT_VERBOSE=1 prints every
# client's log, not only the failing ones'.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$PATH:/usr/local/go/bin"

ALL_CLIENTS="psql pgbench pgx libpq node psycopg2 jdbc"
CLIENTS="${COMPAT_CLIENTS:-$ALL_CLIENTS}"
CLIENTS="${CLIENTS//,/ }"
SKIP=" ${COMPAT_SKIP:-} "
SKIP="${SKIP//,/ }"
PYTHON="${COMPAT_PYTHON:-/usr/bin/python3}"
JDBC_JAR="${COMPAT_JDBC_JAR:-/usr/share/java/postgresql.jar}"
CLIENT_TIMEOUT="${COMPAT_CLIENT_TIMEOUT:-180}"

die() { echo "compat: $*" >&2; exit 1; }
log() { echo "compat: $*"; }

[ -x bin/shardproxy ] || die "bin/shardproxy missing: run make build (make compat does)"

WORK="$(mktemp -d /tmp/shardproxy-compat.XXXXXX)"
chmod 755 "$WORK" # the dev servers run as the postgres user under it
DEV_PID=""
cleanup() {
	local rc=$?
	if [ -n "$DEV_PID" ] && kill -0 "$DEV_PID" 2>/dev/null; then
		kill -TERM "$DEV_PID" 2>/dev/null
		for _ in $(seq 1 100); do kill -0 "$DEV_PID" 2>/dev/null || break; sleep 0.2; done
		if kill -0 "$DEV_PID" 2>/dev/null; then
			echo "compat: shardproxy dev (pid $DEV_PID) did not stop in 20 s; killing it" >&2
			kill -KILL "$DEV_PID" 2>/dev/null
		fi
		wait "$DEV_PID" 2>/dev/null
	fi
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port prints a 127.0.0.1 port nothing listens on, below the kernel's
# ephemeral range (32768 and up), so the outgoing connections shardproxy dev
# makes while it starts its servers cannot take it first.
free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((20000 + RANDOM % 12000))
		# Nothing answers: the port is free (a small race is acceptable).
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# start_dev runs shardproxy dev on fresh ports until it is ready; a port
# taken between free_port and bind (other servers run here too) means
# another try, anything else is fatal.
start_dev() {
	local attempt
	for attempt in 1 2 3; do
		PORT=$(free_port) || die "no free port"
		ADMIN_PORT=$(free_port) || die "no free port"
		while [ "$ADMIN_PORT" = "$PORT" ]; do ADMIN_PORT=$(free_port); done
		rm -rf "$WORK/dev"
		log "starting shardproxy dev (2 shards, 1 replica each) on 127.0.0.1:$PORT in $WORK/dev"
		bin/shardproxy dev --dir "$WORK/dev" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN_PORT" \
			--shards 2 --replicas 1 >"$WORK/dev.out" 2>"$WORK/dev.err" &
		DEV_PID=$!
		for _ in $(seq 1 480); do
			grep -q '^ready ' "$WORK/dev.out" && return 0
			kill -0 "$DEV_PID" 2>/dev/null || break
			sleep 0.25
		done
		if kill -0 "$DEV_PID" 2>/dev/null; then
			cat "$WORK/dev.out" "$WORK/dev.err" >&2
			die "shardproxy dev not ready in 120 s"
		fi
		wait "$DEV_PID" 2>/dev/null
		DEV_PID=""
		grep -q 'address already in use' "$WORK/dev.err" || { cat "$WORK/dev.out" "$WORK/dev.err" >&2; die "shardproxy dev exited"; }
		log "a port was taken meanwhile (attempt $attempt); retrying on others"
	done
	die "shardproxy dev: ports kept being taken"
}

START=$(date +%s)
start_dev
log "dev ready in $(($(date +%s) - START)) s"

SHARD0_DSN=$(awk '$1 == "node" && $2 == "shard0" && $3 == "primary" {print $4}' "$WORK/dev.out")
SHARD1_DSN=$(awk '$1 == "node" && $2 == "shard1" && $3 == "primary" {print $4}' "$WORK/dev.out")
[ -n "$SHARD0_DSN" ] && [ -n "$SHARD1_DSN" ] || die "no shard primaries in the dev output"
CERT="$WORK/dev/tls/server.crt"
[ -f "$CERT" ] || die "dev certificate $CERT missing"

# Direct psql to a shard primary (not through the proxy): setup and checks.
on_shard() { local dsn=$1; shift; PGCONNECT_TIMEOUT=5 psql -X -q -At -v ON_ERROR_STOP=1 "$dsn" "$@"; }

# pgbench's tables through the proxy: the dev config shards them, so the
# rows split over both shards.
log "pgbench -i -s 1 through the proxy"
PGPASSWORD=app PGSSLMODE=disable pgbench -i -s 1 -q -h 127.0.0.1 -p "$PORT" -U app app >"$WORK/pgbench-init.log" 2>&1 ||
	{ cat "$WORK/pgbench-init.log" >&2; die "pgbench -i through the proxy failed"; }

# Known balances (abalance = 3*aid) so the clients can check what they read,
# set on each primary directly; and the aids each shard holds.
for dsn in "$SHARD0_DSN" "$SHARD1_DSN"; do
	on_shard "$dsn" -c "UPDATE pgbench_accounts SET abalance = 3 * aid WHERE aid <= 1000" >/dev/null ||
		die "cannot set balances on $dsn"
done
AIDS0=($(on_shard "$SHARD0_DSN" -c "SELECT aid FROM pgbench_accounts WHERE aid <= 1000 ORDER BY aid LIMIT 10"))
AIDS1=($(on_shard "$SHARD1_DSN" -c "SELECT aid FROM pgbench_accounts WHERE aid <= 1000 ORDER BY aid LIMIT 10"))
((${#AIDS0[@]} == 10 && ${#AIDS1[@]} == 10)) || die "expected accounts on both shards (shard0: ${AIDS0[*]}; shard1: ${AIDS1[*]})"
log "accounts on shard0: ${AIDS0[*]}; on shard1: ${AIDS1[*]}"

export COMPAT_HOST=127.0.0.1 COMPAT_PORT=$PORT COMPAT_USER=app COMPAT_PASSWORD=app COMPAT_DB=app
export COMPAT_SSLROOTCERT=$CERT
# Keep libpq-based clients away from the caller's PG* settings.
for v in $(env | grep -o '^PG[A-Z]*'); do unset "$v"; done

declare -A RESULT DETAIL SECS
idx=0
run_client() { # name, command...
	local name=$1; shift
	local logf="$WORK/$name.log" t0 rc
	export COMPAT_CLIENT=$name
	# Each client gets its own pair of accounts (one per shard).
	export COMPAT_AID_A=${AIDS0[$idx]} COMPAT_AID_B=${AIDS1[$idx]} COMPAT_TID=$((1000 + idx))
	idx=$((idx + 1))
	log "---- $name (aids $COMPAT_AID_A on shard0, $COMPAT_AID_B on shard1)"
	t0=$(date +%s)
	timeout -k 5 "$CLIENT_TIMEOUT" "$@" >"$logf" 2>&1
	rc=$?
	SECS[$name]=$(($(date +%s) - t0))
	if [ "$rc" = 0 ]; then
		RESULT[$name]=PASS
		[ -n "${COMPAT_VERBOSE:-}" ] && sed 's/^/    /' "$logf"
	else
		RESULT[$name]=FAIL
		[ "$rc" = 124 ] && echo "timed out after $CLIENT_TIMEOUT s" >>"$logf"
		sed 's/^/    /' "$logf"
	fi
	DETAIL[$name]=$(grep -c '^ok ' "$logf")" steps ok"
	[ "$rc" = 0 ] || DETAIL[$name]="${DETAIL[$name]}; $(grep -m1 -E '^(FAIL|not ok)' "$logf" | cut -c1-120)"
	log "$name: ${RESULT[$name]} (${SECS[$name]} s)"
}
missing() { # name, reason
	idx=$((idx + 1))
	if [[ "$SKIP" == *" $1 "* ]]; then
		RESULT[$1]=SKIP
		DETAIL[$1]="$2 (COMPAT_SKIP)"
	else
		RESULT[$1]=FAIL
		DETAIL[$1]="$2 (set COMPAT_SKIP=$1 to skip)"
	fi
	SECS[$1]=0
	log "$1: ${RESULT[$1]}: ${DETAIL[$1]}"
}

for c in $CLIENTS; do
	if [[ "$SKIP" == *" $c "* ]]; then
		idx=$((idx + 1)); RESULT[$c]=SKIP; DETAIL[$c]="COMPAT_SKIP"; SECS[$c]=0
		continue
	fi
	case $c in
	psql)
		if command -v psql >/dev/null; then run_client psql bash compat/psql.sh; else missing psql "psql not installed"; fi ;;
	pgbench)
		if command -v pgbench >/dev/null; then run_client pgbench bash compat/pgbench.sh; else missing pgbench "pgbench not installed"; fi ;;
	pgx | libpq)
		dir=gopgx; [ "$c" = libpq ] && dir=golibpq
		if ! command -v go >/dev/null; then
			missing "$c" "go not installed"
		elif ! go build -o "$WORK/$dir" "./compat/$dir" >"$WORK/$dir.build" 2>&1; then
			cat "$WORK/$dir.build"; missing "$c" "go build ./compat/$dir failed"
		else
			run_client "$c" "$WORK/$dir"
		fi ;;
	node)
		if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
			missing node "node/npm not installed"
		elif ! (cd compat/node && npm ci --no-audit --no-fund --loglevel=error) >"$WORK/npm.log" 2>&1; then
			cat "$WORK/npm.log"; missing node "npm ci in compat/node failed"
		else
			run_client node node compat/node/scenario.js
		fi ;;
	psycopg2)
		if [ -x "$PYTHON" ] && "$PYTHON" -c 'import psycopg2' 2>/dev/null; then
			run_client psycopg2 "$PYTHON" compat/python/scenario.py
		else
			missing psycopg2 "$PYTHON with psycopg2 not available (apt-get install python3-psycopg2)"
		fi ;;
	jdbc)
		if ! command -v java >/dev/null || ! command -v javac >/dev/null; then
			missing jdbc "java/javac not installed"
		elif [ ! -f "$JDBC_JAR" ]; then
			missing jdbc "$JDBC_JAR missing (apt-get install libpostgresql-jdbc-java)"
		elif ! javac -nowarn -d "$WORK/java" -cp "$JDBC_JAR" compat/java/Scenario.java >"$WORK/javac.log" 2>&1; then
			cat "$WORK/javac.log"; missing jdbc "javac compat/java/Scenario.java failed"
		else
			run_client jdbc java -cp "$WORK/java:$JDBC_JAR" Scenario
		fi ;;
	*) die "unknown client $c (known: $ALL_CLIENTS)" ;;
	esac
done

# After all clients: the cross-shard transactions left nothing prepared,
# and every client's COPY split its rows over both shards.
POST=PASS
for dsn in "$SHARD0_DSN" "$SHARD1_DSN"; do
	n=$(on_shard "$dsn" -c "SELECT count(*) FROM pg_prepared_xacts") || n=err
	if [ "$n" != 0 ]; then POST=FAIL; log "FAIL: $n prepared transactions left on $dsn"; fi
done
for c in psql pgx libpq node psycopg2 jdbc; do
	[ "${RESULT[$c]:-}" = PASS ] || continue
	grep -q '^ok copy' "$WORK/$c.log" || continue
	a=$(on_shard "$SHARD0_DSN" -c "SELECT count(*) FROM pgbench_history WHERE filler = 'compat $c'")
	b=$(on_shard "$SHARD1_DSN" -c "SELECT count(*) FROM pgbench_history WHERE filler = 'compat $c'")
	if [ "${a:-0}" -gt 0 ] && [ "${b:-0}" -gt 0 ]; then
		log "ok $c COPY rows on the primaries: shard0 $a, shard1 $b"
	else
		POST=FAIL; log "FAIL: $c COPY rows not split over both shards (shard0 ${a:-?}, shard1 ${b:-?})"
	fi
done

echo
printf '%-10s %-5s %5s  %s\n' client result secs detail
fail=0
for c in $CLIENTS; do
	printf '%-10s %-5s %5s  %s\n' "$c" "${RESULT[$c]}" "${SECS[$c]}" "${DETAIL[$c]}"
	[ "${RESULT[$c]}" = FAIL ] && fail=1
done
printf '%-10s %-5s %5s  %s\n' post-check "$POST" - "no prepared transactions left; COPY rows on both shards"
[ "$POST" = PASS ] || fail=1
echo "compat: $(($(date +%s) - START)) s in total"
if [ "$fail" = 0 ]; then echo "compat: PASS"; else echo "compat: FAIL"; fi
exit "$fail"
