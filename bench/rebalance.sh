#!/usr/bin/env bash
# bench/rebalance.sh: how fast an online rebalance moves rows, against the
# simplest possible copy of the same rows between the same nodes.
#
#   (a) `shardctl shard add` + `shardctl rebalance start --even --wait` on
#       `shardproxy dev --shards 2 --replicas 0 --spares 1` after
#       `pgbench -i -s SCALE` through the proxy; rows = the sum of the
#       moves' rows_total in `shardctl rebalance status --json`, time = the
#       two shardctl commands.
#   (b) before (a), for each move of `shardctl rebalance plan --even`:
#       psql "\copy (SELECT * FROM pgbench_accounts WHERE <slot in the
#       move's slots>) to stdout" on the move's source primary, piped into
#       psql "\copy pgbench_accounts_copy from stdin" on the spare, where
#       pgbench_accounts_copy is pgbench_accounts' own definition (pg_dump
#       -s, primary key included), dropped afterwards. After pgbench -i,
#       pgbench_accounts holds all but about SCALE*11/3 of the rows the
#       rebalance moves (the rest: tellers and branches; history is empty).
#   Also printed: the copy phases alone (journal: copy -> catchup) and the
#   rebalance's time per phase.
#
# Prints both rates and their ratio. Everything on 127.0.0.1; the run is
# bounded by TIMEOUT seconds; only processes this script started are
# stopped, by PID.
#
# Usage: bash bench/rebalance.sh     (or: make bench-rebalance)
# Knobs: SCALE (20), TIMEOUT (1200 s for the whole run), KEEP_TMP (0).
set -euo pipefail

SCALE=${SCALE:-20}
TIMEOUT=${TIMEOUT:-1200}
KEEP_TMP=${KEEP_TMP:-0}
SLOTS=256

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
BIN_DIR=$BENCH_DIR/.bin
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

export PGSSLMODE=disable PGCONNECT_TIMEOUT=10
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGPASSWORD 2>/dev/null || true

TMP=""
DEV_PID=""
DEADLINE=0

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# cleanup stops shardproxy dev (which stops its Postgres servers), by PID,
# then removes the tmpdir unless the run failed.
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	if [[ -n $DEV_PID ]] && kill -0 "$DEV_PID" 2>/dev/null; then
		kill -TERM "$DEV_PID" 2>/dev/null
		wait_exit "$DEV_PID" 60 || { log "shardproxy dev did not stop in 60 s; killing it"; kill -KILL "$DEV_PID" 2>/dev/null; }
	fi
	if [[ -n $TMP && -d $TMP ]]; then
		if [[ $rc -ne 0 || $KEEP_TMP == 1 ]]; then
			log "logs kept in $TMP (Postgres data too; remove it when done)"
		else
			rm -rf "$TMP"
		fi
	fi
	exit "$rc"
}

# wait_exit PID SECS: true once PID is gone, false after SECS seconds.
wait_exit() {
	local pid=$1 i
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
		sleep 0.1
	done
	return 1
}

# free_port prints an unused 127.0.0.1 port below the ephemeral range.
USED_PORTS=" "
free_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 12000))
		[[ $USED_PORTS == *" $p "* ]] && continue
		if ! ss -Htln "sport = :$p" | grep -q .; then
			USED_PORTS+="$p "
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

# left: seconds left of TIMEOUT (at least 1), for timeout(1).
left() {
	local l=$((DEADLINE - SECONDS))
	((l > 0)) || die "TIMEOUT ($TIMEOUT s) reached"
	echo "$l"
}

# now_ms: wall clock in milliseconds.
now_ms() { date +%s%3N; }

need_tools() {
	local t
	for t in go jq ss awk timeout; do
		command -v "$t" >/dev/null || die "'$t' not found in PATH"
	done
	for t in pgbench psql pg_dump; do
		[[ -x $PGBIN/$t ]] || die "$PGBIN/$t not found (set PGBIN)"
	done
	[[ $SCALE =~ ^[0-9]+$ ]] && ((SCALE >= 1 && SCALE <= 1000)) || die "SCALE must be 1..1000"
	[[ $TIMEOUT =~ ^[0-9]+$ ]] && ((TIMEOUT >= 60)) || die "TIMEOUT must be >= 60 seconds"
}

build() {
	log "building shardproxy and shardctl"
	mkdir -p "$BIN_DIR"
	(cd "$REPO_DIR" && timeout "$(left)" go build -o "$BIN_DIR/shardproxy" ./cmd/shardproxy && timeout "$(left)" go build -o "$BIN_DIR/shardctl" ./cmd/shardctl) ||
		die "go build failed"
}

# start_dev runs shardproxy dev and waits for its ready line; sets DEV_PID,
# PROXY_PORT, ADMIN, SRC_DSN (shard0 primary), DSN_<shard> and SPARE_DSN.
start_dev() {
	local attempt listen admin out err deadline
	for attempt in 1 2 3; do
		out=$TMP/dev$attempt.out err=$TMP/dev$attempt.err
		listen=$(free_port) admin=$(free_port)
		log "starting shardproxy dev --shards 2 --replicas 0 --spares 1 (listen 127.0.0.1:$listen, attempt $attempt)"
		"$BIN_DIR/shardproxy" dev --dir "$TMP/dev$attempt" --shards 2 --replicas 0 --spares 1 \
			--listen "127.0.0.1:$listen" --admin "127.0.0.1:$admin" >"$out" 2>"$err" </dev/null &
		DEV_PID=$!
		deadline=$((SECONDS + 120))
		while ((SECONDS < deadline)); do
			if grep -q '^ready ' "$out"; then
				PROXY_PORT=$listen
				ADMIN=127.0.0.1:$admin
				SPARE_DSN=$(awk '$1 == "node" && $3 == "spare" { print $4; exit }' "$out")
				[[ -n $SPARE_DSN ]] || die "no spare node line in: $(cat "$out")"
				NODES_FILE=$out
				log "ready: $(grep -c '^node ' "$out") nodes, proxy :$PROXY_PORT, admin $ADMIN"
				return 0
			fi
			kill -0 "$DEV_PID" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$DEV_PID" 2>/dev/null; then
			tail -20 "$err" >&2
			die "shardproxy dev not ready within 120 s"
		fi
		wait "$DEV_PID" 2>/dev/null || true
		DEV_PID=""
		if grep -q 'address already in use' "$err"; then
			log "port taken meanwhile, retrying"
			continue
		fi
		tail -20 "$err" >&2
		die "shardproxy dev exited before ready"
	done
	die "shardproxy dev: ports kept being taken"
}

# primary_dsn SHARD: the superuser DSN of that shard's primary (or spare).
primary_dsn() {
	awk -v s="$1" '$1 == "node" && $2 == s && ($3 == "primary" || $3 == "spare") { print $4; exit }' "$NODES_FILE"
}

ctl() { timeout "$(left)" "$BIN_DIR/shardctl" --admin "$ADMIN" "$@"; }

# slot_filter SLOTS_CSV: the WHERE clause selecting those slots of aid
# (pgbench's aid is int4: hashint4extended, as PostgreSQL's own hash
# partitioning of an integer column).
slot_filter() {
	echo "coalesce(((hashint4extended(aid, 8816678312871386365)::numeric + 5305509591434766563 + 18446744073709551616) % 18446744073709551616) % $SLOTS, 0) IN ($1)"
}

# plain_copy: (b), per planned move, source primary -> spare.
plain_copy() {
	local plan=$1 n i from slots src rows t0 t1 copied total_ms=0 total_rows=0
	log "plain copy: creating pgbench_accounts_copy on the spare from shard0's pgbench_accounts definition"
	"$PGBIN/pg_dump" -s -t public.pgbench_accounts -O -x "$(primary_dsn shard0)" >"$TMP/accounts.sql" || die "pg_dump -s failed"
	sed 's/pgbench_accounts/pgbench_accounts_copy/g' "$TMP/accounts.sql" |
		"$PGBIN/psql" -Xq -v ON_ERROR_STOP=1 "$SPARE_DSN" >/dev/null || die "creating pgbench_accounts_copy on the spare failed"
	n=$(jq '.moves | length' "$plan")
	for ((i = 0; i < n; i++)); do
		from=$(jq -r ".moves[$i].from" "$plan")
		slots=$(jq -r ".moves[$i].slots | map(tostring) | join(\",\")" "$plan")
		src=$(primary_dsn "$from")
		[[ -n $src ]] || die "no node line for shard $from"
		"$PGBIN/psql" -Xqc "TRUNCATE pgbench_accounts_copy" "$SPARE_DSN" >/dev/null
		t0=$(now_ms)
		timeout "$(left)" "$PGBIN/psql" -Xq -v ON_ERROR_STOP=1 "$src" -c "\\copy (SELECT * FROM pgbench_accounts WHERE $(slot_filter "$slots")) to stdout" |
			timeout "$(left)" "$PGBIN/psql" -Xq -v ON_ERROR_STOP=1 "$SPARE_DSN" -c "\\copy pgbench_accounts_copy from stdin" ||
			die "plain copy from $from failed"
		t1=$(now_ms)
		copied=$("$PGBIN/psql" -XAtq "$SPARE_DSN" -c "SELECT count(*) FROM pgbench_accounts_copy")
		log "plain copy $from -> spare0: $copied rows of pgbench_accounts ($(jq ".moves[$i].slots | length" "$plan") slots) in $((t1 - t0)) ms"
		total_ms=$((total_ms + t1 - t0))
		total_rows=$((total_rows + copied))
	done
	"$PGBIN/psql" -Xqc "DROP TABLE pgbench_accounts_copy" "$SPARE_DSN" >/dev/null || die "drop pgbench_accounts_copy failed"
	PLAIN_ROWS=$total_rows PLAIN_MS=$total_ms
}

main() {
	need_tools
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	TMP=$(mktemp -d "${TMPDIR:-/tmp}/shardproxy-bench-rebalance.XXXXXX")
	chmod 711 "$TMP" # the servers run as the postgres OS user when we are root
	# The whole run is bounded: every step that can take long runs under
	# timeout with what is left of TIMEOUT.
	DEADLINE=$((SECONDS + TIMEOUT))
	build
	start_dev
	log "pgbench -i -s $SCALE through the proxy"
	local t0 t1
	t0=$(now_ms)
	PGPASSWORD=app timeout "$(left)" "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PROXY_PORT" -U app app >"$TMP/init.log" 2>&1 ||
		{ cat "$TMP/init.log" >&2; die "pgbench -i through the proxy failed"; }
	t1=$(now_ms)
	log "loaded in $((t1 - t0)) ms"

	# The plan the rebalance will follow once spare0 is in.
	ctl shard add --name spare0 --primary "$SPARE_DSN" >"$TMP/add.out" 2>&1 || { cat "$TMP/add.out" >&2; die "shardctl shard add failed"; }
	local add_ms=$(( $(now_ms) - t1 ))
	ctl rebalance plan --even --json >"$TMP/plan.json" 2>"$TMP/plan.err" || { cat "$TMP/plan.err" >&2; die "shardctl rebalance plan failed"; }
	log "plan: $(jq -c '[.moves[] | {from, to, slots: (.slots | length), rows}]' "$TMP/plan.json")"

	# (b) first: after (a) the moved rows are gone from their sources.
	plain_copy "$TMP/plan.json"

	# (a)
	log "shardctl rebalance start --even --wait"
	t0=$(now_ms)
	ctl rebalance start --even --wait >"$TMP/rebalance.out" 2>&1 || { tail -20 "$TMP/rebalance.out" >&2; die "shardctl rebalance start --wait failed"; }
	t1=$(now_ms)
	local rb_ms=$((t1 - t0 + add_ms))
	ctl rebalance status --json >"$TMP/status.json" || die "shardctl rebalance status failed"
	[[ $(jq -r .state "$TMP/status.json") == done ]] || die "rebalance state $(jq -r .state "$TMP/status.json")"
	local rb_rows acc_slots_plan acc_slots_done
	rb_rows=$(jq '[.moves[].rows_total] | add // 0' "$TMP/status.json")
	acc_slots_plan=$(jq -c '[.moves[] | {from, slots: (.slots | sort)}] | sort' "$TMP/plan.json")
	acc_slots_done=$(jq -c '[.moves[] | {from, slots: (.slots | sort)}] | sort' "$TMP/status.json")
	[[ $acc_slots_plan == "$acc_slots_done" ]] || log "WARNING: the rebalance moved other slots than planned; the plain copy used the plan's"
	log "rebalance: $(jq -c '[.moves[] | {from, to, rows_total, pause_ms, verified}]' "$TMP/status.json")"
	jq -r '.log[]? | "  journal \(.at) move=\(.move) \(.phase): \(.message)"' "$TMP/status.json" >&2

	# The copy phases alone, from the journal: each move's "copy" entry to
	# its "catchup" entry (differences only, so the zone does not matter).
	local copy_ms copy_rows
	copy_ms=$(jq '
		def secs: capture("^(?<d>[0-9-]+T[0-9:]+)(?<f>[.][0-9]+)?") | ((.d + "Z") | fromdateiso8601) + ((.f // "0") | tonumber);
		[.log // [] | group_by(.move)[] | select(.[0].move >= 0)
		 | (map(select(.phase == "copy")) | first | .at) as $a
		 | (map(select(.phase == "catchup")) | first | .at) as $b
		 | select($a != null and $b != null) | (($b | secs) - ($a | secs))] | add // 0 | . * 1000 | floor' "$TMP/status.json")
	copy_rows=$(jq '[.moves[].rows_copied] | add // 0' "$TMP/status.json")
	# Until the switch: each move's "prepare" entry to its "cleanup" entry
	# (copy, catch-up, verification and cutover; from then on the target
	# serves the rows, and cleanup only deletes the source's old copies).
	local switch_ms
	switch_ms=$(jq '
		def secs: capture("^(?<d>[0-9-]+T[0-9:]+)(?<f>[.][0-9]+)?") | ((.d + "Z") | fromdateiso8601) + ((.f // "0") | tonumber);
		[.log // [] | group_by(.move)[] | select(.[0].move >= 0)
		 | (map(select(.phase == "prepare")) | first | .at) as $a
		 | (map(select(.phase == "cleanup")) | first | .at) as $b
		 | select($a != null and $b != null) | (($b | secs) - ($a | secs))] | add // 0 | . * 1000 | floor' "$TMP/status.json")
	# Seconds per phase summed over the moves: each journal entry of a move
	# to its next one.
	local phases
	phases=$(jq -r '
		def secs: capture("^(?<d>[0-9-]+T[0-9:]+)(?<f>[.][0-9]+)?") | ((.d + "Z") | fromdateiso8601) + ((.f // "0") | tonumber);
		[.log // [] | group_by(.move)[] | select(.[0].move >= 0) | sort_by(.at | secs)
		 | . as $e | range(0; length - 1) | {phase: $e[.].phase, s: (($e[. + 1].at | secs) - ($e[.].at | secs))}]
		| group_by(.phase) | map("\(.[0].phase) \(map(.s) | add * 100 | round / 100) s") | join(", ")' "$TMP/status.json")
	awk -v rr="$rb_rows" -v rms="$rb_ms" -v add="$add_ms" -v pr="$PLAIN_ROWS" -v pms="$PLAIN_MS" -v scale="$SCALE" \
		-v cr="$copy_rows" -v cms="$copy_ms" -v sms="$switch_ms" 'BEGIN {
		rrate = rms > 0 ? rr / (rms / 1000) : 0
		prate = pms > 0 ? pr / (pms / 1000) : 0
		printf "scale %d, 2 shards + 1 added, %d slots, all on 127.0.0.1\n", scale, 256
		printf "rebalance (shard add + rebalance start --even --wait): %d rows in %.2f s (shard add %.2f s) = %.0f rows/s\n", rr, rms / 1000, add / 1000, rrate
		printf "plain psql \\copy pipe (same slots of pgbench_accounts, source -> spare): %d rows in %.2f s = %.0f rows/s\n", pr, pms / 1000, prate
		if (prate > 0) printf "ratio rebalance / plain copy: %.2f\n", rrate / prate
		if (sms > 0) {
			srate = rr / (sms / 1000)
			printf "moved (prepare -> switch: copy, catch-up, verify, cutover): %d rows in %.2f s = %.0f rows/s", rr, sms / 1000, srate
			if (prate > 0) printf " (ratio to the plain copy %.2f)", srate / prate
			printf "\n"
		}
		if (cms > 0) {
			crate = cr / (cms / 1000)
			printf "of which the copy phases (journal, copy -> catchup): %d rows in %.2f s = %.0f rows/s", cr, cms / 1000, crate
			if (prate > 0) printf " (ratio to the plain copy %.2f)", crate / prate
			printf "\n"
		}
	}'
	[[ -n $phases ]] && echo "rebalance time per phase, summed over the moves: $phases"
}

main "$@"
