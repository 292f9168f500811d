#!/usr/bin/env bash
# bench/soak.sh: soak benchmark (make soak; minutes, not in CI).
#
# Mixed pgbench load through `shardproxy dev --shards 2 --replicas 1`:
#   reads:  pgbench -S, READ_CLIENTS (8) clients
#   writes: pgbench tpcb-like, WRITE_CLIENTS (4) clients
# for SOAK_MINUTES (10), each run as back-to-back 60 s pgbench runs (so a
# client pgbench aborted comes back the next minute and every minute has
# its own numbers; -P 10 progress is kept in the logs), while a loop kills a
# random replica with kill -9 (postmaster and its children, by PID) every
# 30-90 s at random and starts it again (pg_ctl as the postgres OS user) a
# few seconds later. Every 10 s it samples the proxy's RSS (VmRSS of the
# `shardproxy dev` process, which runs the proxy in-process) and its Go heap
# (go_memstats_heap_inuse_bytes from the admin API's /metrics).
#
# At the end it prints a table (minute, read tps, write tps, errors, kills,
# RSS MB, heap MB) and two verdicts:
#   memory flat: mean RSS of the last third of the samples after warm-up is
#                within MEM_TOLERANCE % (20) of the first third's;
#   errors only around kills: every minute with errors has a replica kill
#                in it or in the 15 s before it.
# The report goes to stdout and bench/results/soak-<date>.txt; the exit
# status is 1 if a verdict is FAIL.
#
# Everything listens on 127.0.0.1; only processes this script started are
# stopped, by PID.
#
# Knobs: SOAK_MINUTES (10), SCALE (5), READ_CLIENTS (8), WRITE_CLIENTS (4),
#        KILL_MIN/KILL_MAX seconds between kills (30/90), DOWN_SECONDS (5),
#        MEM_TOLERANCE percent (20), KEEP_TMP (0), BIN (bin/shardproxy),
#        PGBIN (/usr/lib/postgresql/15/bin).
set -euo pipefail

SOAK_MINUTES=${SOAK_MINUTES:-10}
SCALE=${SCALE:-5}
READ_CLIENTS=${READ_CLIENTS:-8}
WRITE_CLIENTS=${WRITE_CLIENTS:-4}
KILL_MIN=${KILL_MIN:-30}
KILL_MAX=${KILL_MAX:-90}
DOWN_SECONDS=${DOWN_SECONDS:-5}
MEM_TOLERANCE=${MEM_TOLERANCE:-20}
KEEP_TMP=${KEEP_TMP:-0}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
BIN=${BIN:-$REPO_DIR/bin/shardproxy}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
RESULTS=$BENCH_DIR/results

export PGSSLMODE=disable PGCONNECT_TIMEOUT=10 PGPASSWORD=app
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS 2>/dev/null || true

TMP=""
DEV_PID=""
BG_PIDS=()
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# as_pg runs a command as the postgres OS user when we are root.
as_pg() {
	if [[ $(id -u) == 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# postmaster_pid DATADIR: the PID in postmaster.pid if that process lives.
postmaster_pid() {
	local pid
	pid=$(head -1 "$1/postmaster.pid" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	local p
	for p in "${BG_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in "${BG_PIDS[@]}"; do
		wait "$p" 2>/dev/null
	done
	# Replicas this script restarted are not children of shardproxy dev:
	# stop them ourselves (by data directory, i.e. by their postmaster PID).
	if [[ -n $TMP && -f $TMP/restarted ]]; then
		local dd
		for dd in $(sort -u "$TMP/restarted"); do
			if postmaster_pid "$dd" >/dev/null; then
				as_pg "$PGBIN/pg_ctl" -D "$dd" -m fast -w -t 30 stop >/dev/null 2>&1
			fi
		done
	fi
	if [[ -n $DEV_PID ]] && kill -0 "$DEV_PID" 2>/dev/null; then
		kill -TERM "$DEV_PID" 2>/dev/null
		for ((i = 0; i < 600; i++)); do
			kill -0 "$DEV_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$DEV_PID" 2>/dev/null && { log "shardproxy dev did not stop in 60 s; killing it"; kill -KILL "$DEV_PID"; }
		wait "$DEV_PID" 2>/dev/null
	fi
	if [[ -n $TMP && -d $TMP ]]; then
		if [[ $rc -ne 0 || $KEEP_TMP == 1 ]]; then
			log "logs and data kept in $TMP"
		else
			rm -rf "$TMP"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

for t in pgbench psql pg_ctl; do
	[[ -x $PGBIN/$t ]] || die "$PGBIN/$t not found (set PGBIN)"
done
for t in curl ss awk; do
	command -v "$t" >/dev/null || die "'$t' not found in PATH"
done
[[ -x $BIN ]] || die "$BIN not found: run make build (make soak does)"
[[ $SOAK_MINUTES =~ ^[0-9]+$ ]] && ((SOAK_MINUTES >= 1)) || die "SOAK_MINUTES must be a whole number >= 1"
((KILL_MIN >= 5 && KILL_MAX >= KILL_MIN)) || die "need 5 <= KILL_MIN <= KILL_MAX"

TMP=$(mktemp -d /tmp/shardproxy-soak-XXXXXX)
chmod 755 "$TMP" # the servers run as postgres

# --- start the cluster and the proxy ---------------------------------------
for attempt in 1 2 3; do
	LISTEN=$(free_port) ADMIN_PORT=$(free_port)
	log "starting shardproxy dev --shards 2 --replicas 1 (proxy 127.0.0.1:$LISTEN, admin :$ADMIN_PORT)"
	"$BIN" dev --dir "$TMP/dev" --shards 2 --replicas 1 --listen "127.0.0.1:$LISTEN" \
		--admin "127.0.0.1:$ADMIN_PORT" >"$TMP/dev.out" 2>"$TMP/dev.err" </dev/null &
	DEV_PID=$!
	for ((i = 0; i < 1200; i++)); do
		grep -qs '^ready ' "$TMP/dev.out" && break
		kill -0 "$DEV_PID" 2>/dev/null || break
		sleep 0.1
	done
	grep -q '^ready ' "$TMP/dev.out" && break
	kill -0 "$DEV_PID" 2>/dev/null && { tail -20 "$TMP/dev.err" >&2; die "shardproxy dev not ready within 120 s"; }
	wait "$DEV_PID" 2>/dev/null || true
	DEV_PID=""
	grep -q 'address already in use' "$TMP/dev.err" || { tail -20 "$TMP/dev.err" >&2; die "shardproxy dev exited"; }
	log "port taken meanwhile, retrying"
done
[[ -n $DEV_PID ]] || die "shardproxy dev: ports kept being taken"
METRICS=http://127.0.0.1:$ADMIN_PORT/metrics

# Replicas: name, data dir, port, and their primary's port.
REP_NAME=() REP_DIR=() REP_PORT=() REP_UPPORT=()
while read -r _ shard role dsn; do
	[[ $role == replica ]] || continue
	port=${dsn#*@127.0.0.1:}
	port=${port%%/*}
	pport=$(awk -v s="$shard" '$1 == "node" && $2 == s && $3 == "primary" { d = $4; sub(/.*@127\.0\.0\.1:/, "", d); sub(/\/.*/, "", d); print d; exit }' "$TMP/dev.out")
	n=$(( ${#REP_NAME[@]} ))
	# One replica per shard: localcluster names it <shard>-replica1.
	REP_NAME[n]=$shard-replica1 REP_DIR[n]=$TMP/dev/$shard-replica1 REP_PORT[n]=$port REP_UPPORT[n]=$pport
done < <(grep '^node ' "$TMP/dev.out")
((${#REP_NAME[@]} == 2)) || die "expected 2 replicas in: $(cat "$TMP/dev.out")"
for d in "${REP_DIR[@]}"; do
	[[ -f $d/PG_VERSION ]] || die "no data directory $d"
done
log "ready: proxy pid $DEV_PID, replicas ${REP_NAME[*]} on ports ${REP_PORT[*]}"

bench() { "$PGBIN/pgbench" -h 127.0.0.1 -p "$LISTEN" -U app "$@" app; }

log "pgbench -i -s $SCALE through the proxy"
bench -i -q -s "$SCALE" >"$TMP/init.log" 2>&1 || { cat "$TMP/init.log" >&2; die "pgbench -i failed"; }

START=$(date +%s)
END=$((START + SOAK_MINUTES * 60))

# --- load: one 60 s pgbench per minute, reads and writes side by side -------
# run_load NAME ARGS...: minute m's output in $TMP/NAME.m.log.
run_load() {
	local name=$1 m rc
	shift
	for ((m = 1; m <= SOAK_MINUTES; m++)); do
		# Start minute m at START + (m-1)*60 even if the last run overran.
		local at=$((START + (m - 1) * 60)) now
		now=$(date +%s)
		((now < at)) && sleep $((at - now))
		rc=0
		bench -n "$@" -T 60 -P 10 >"$TMP/$name.$m.log" 2>&1 || rc=$?
		echo "exit $rc" >>"$TMP/$name.$m.log"
	done
}
run_load reads -S -c "$READ_CLIENTS" -j 2 &
BG_PIDS+=($!)
run_load writes -c "$WRITE_CLIENTS" -j 1 &
BG_PIDS+=($!)
LOAD_PIDS=("${BG_PIDS[@]}")

# --- memory sampler ------------------------------------------------------------
sampler() {
	while :; do
		local now rss heap
		now=$(date +%s)
		rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DEV_PID/status" 2>/dev/null || echo 0)
		heap=$(curl -fsS -m 3 "$METRICS" 2>/dev/null | awk '$1 == "go_memstats_heap_inuse_bytes" { print $2 }')
		echo "$((now - START)) ${rss:-0} ${heap:-0}" >>"$TMP/mem.tsv"
		sleep 10
	done
}
sampler &
BG_PIDS+=($!)

# --- replica killer ------------------------------------------------------------
# kill_tree PID: SIGKILL the postmaster and its children, by PID.
kill_tree() {
	local pm=$1 kids
	kids=$(ps -o pid= --ppid "$pm" 2>/dev/null || true)
	kill -KILL "$pm" 2>/dev/null || true
	for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
}
restart_replica() {
	local i=$1 dd=${REP_DIR[$1]} lf=$TMP/${REP_NAME[$1]}.restart.log
	echo "$dd" >>"$TMP/restarted"
	# The server writes its log as postgres; $TMP/dev is not its to write.
	touch "$lf"
	[[ $(id -u) == 0 ]] && chown postgres "$lf"
	as_pg "$PGBIN/pg_ctl" -D "$dd" -l "$lf" -w -t 60 \
		-o "-p ${REP_PORT[$i]} -c 'primary_conninfo=host=127.0.0.1 port=${REP_UPPORT[$i]} user=postgres application_name=${REP_NAME[$i]}'" \
		start >>"$TMP/killer.log" 2>&1
}
killer() {
	while :; do
		local wait=$((KILL_MIN + RANDOM % (KILL_MAX - KILL_MIN + 1))) now i pm
		now=$(date +%s)
		((now + wait + DOWN_SECONDS + 10 < END)) || return 0
		sleep "$wait"
		i=$((RANDOM % ${#REP_NAME[@]}))
		pm=$(postmaster_pid "${REP_DIR[$i]}") || { echo "no postmaster for ${REP_NAME[$i]}" >>"$TMP/killer.log"; continue; }
		kill_tree "$pm"
		now=$(date +%s)
		echo "$((now - START)) kill ${REP_NAME[$i]} $pm" >>"$TMP/events.tsv"
		log "kill -9 ${REP_NAME[$i]} (postmaster $pm) at +$((now - START)) s"
		sleep "$DOWN_SECONDS"
		if restart_replica "$i"; then
			now=$(date +%s)
			echo "$((now - START)) restart ${REP_NAME[$i]} $(postmaster_pid "${REP_DIR[$i]}" || echo '?')" >>"$TMP/events.tsv"
			log "restarted ${REP_NAME[$i]} at +$((now - START)) s"
		else
			echo "$(($(date +%s) - START)) restart-failed ${REP_NAME[$i]}" >>"$TMP/events.tsv"
			log "restart of ${REP_NAME[$i]} failed; see $TMP/killer.log"
		fi
	done
}
: >"$TMP/events.tsv"
killer &
BG_PIDS+=($!)

log "soaking for $SOAK_MINUTES minutes"
for p in "${LOAD_PIDS[@]}"; do wait "$p"; done
sleep 1

# --- report --------------------------------------------------------------------
# field FILE REGEX: the first number after REGEX in FILE (0 if none).
field() { grep -oE "$2[0-9.]+" "$1" 2>/dev/null | head -1 | grep -oE '[0-9.]+$' || echo 0; }
errors_in() {
	local f=$1 failed aborted other
	failed=$(field "$f" 'number of failed transactions: ')
	aborted=$(grep -cE 'client [0-9]+ (script [0-9]+ )?aborted' "$f" || true)
	other=$(grep -cE '^pgbench: error' "$f" || true)
	# An abort line is also a "pgbench: error" line: count errors as
	# failed transactions + error lines.
	echo $((${failed%.*} + (other > aborted ? other : aborted)))
}

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
REPORT=$RESULTS/soak-$STAMP.txt
{
	echo "# shardproxy soak $(date -u +%Y-%m-%dT%H:%M:%SZ): ${SOAK_MINUTES} min, 2 shards x (primary + 1 replica), scale $SCALE"
	echo "# load: pgbench -S $READ_CLIENTS clients + tpcb-like $WRITE_CLIENTS clients, 60 s runs; replica kill -9 every ${KILL_MIN}-${KILL_MAX} s, restarted after ${DOWN_SECONDS} s"
	echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $("$BIN" --version 2>/dev/null | head -1 || true)"
	echo
	printf '%6s %10s %10s %7s %6s %8s %8s\n' minute read_tps write_tps errors kills rss_MB heap_MB
	ERR_MINUTES=""
	for ((m = 1; m <= SOAK_MINUTES; m++)); do
		r=$TMP/reads.$m.log w=$TMP/writes.$m.log
		rt=$(field "$r" 'tps = ') wt=$(field "$w" 'tps = ')
		e=$(($(errors_in "$r") + $(errors_in "$w")))
		lo=$(((m - 1) * 60)) hi=$((m * 60))
		k=$(awk -v lo="$lo" -v hi="$hi" '$2 == "kill" && $1 >= lo && $1 < hi' "$TMP/events.tsv" | wc -l)
		read -r rss heap < <(awk -v lo="$lo" -v hi="$hi" '$1 >= lo && $1 < hi { r = $2; h = $3 } END { printf "%.1f %.1f\n", r / 1024, h / 1048576 }' "$TMP/mem.tsv")
		printf '%6d %10.0f %10.0f %7d %6d %8s %8s\n' "$m" "$rt" "$wt" "$e" "$k" "$rss" "$heap"
		if ((e > 0)); then
			# A kill in this minute or in the 15 s before it explains the errors.
			near=$(awk -v lo="$((lo - 15))" -v hi="$hi" '$2 == "kill" && $1 >= lo && $1 < hi' "$TMP/events.tsv" | wc -l)
			((near > 0)) || ERR_MINUTES+=" $m"
		fi
	done
	echo
	echo "replica kills and restarts (seconds from start):"
	sed 's/^/  +/' "$TMP/events.tsv"
	echo
	echo "memory samples (s, RSS MB, heap MB):"
	awk '{ printf "  +%ds %.1f/%.1f", $1, $2 / 1024, $3 / 1048576; if (NR % 6 == 0) print "" } END { if (NR % 6) print "" }' "$TMP/mem.tsv"
	echo
	# Memory verdict: skip the warm-up (the first sixth of the run, at
	# most 60 s), then compare the mean RSS of the last third of the
	# samples with the first third's.
	WARM=$((SOAK_MINUTES * 60 / 6))
	((WARM > 60)) && WARM=60
	awk -v warm="$WARM" -v tol="$MEM_TOLERANCE" '
		$1 >= warm { n++; rss[n] = $2; heap[n] = $3 }
		END {
			if (n < 3) { print "memory: FAIL (too few samples)"; exit 1 }
			t = int(n / 3)
			for (i = 1; i <= t; i++) { a += rss[i]; ha += heap[i] }
			for (i = n - t + 1; i <= n; i++) { b += rss[i]; hb += heap[i] }
			a /= t; b /= t; ha /= t; hb /= t
			d = (b - a) / a * 100
			printf "memory: first third mean RSS %.1f MB (heap %.1f MB), last third %.1f MB (heap %.1f MB): %+.1f%% (tolerance %d%%, %d samples after %d s warm-up) -> %s\n",
				a / 1024, ha / 1048576, b / 1024, hb / 1048576, d, tol, n, warm, (d <= tol ? "PASS" : "FAIL")
			exit d <= tol ? 0 : 1
		}' "$TMP/mem.tsv" && MEM_OK=1 || MEM_OK=0
	if [[ -z $ERR_MINUTES ]]; then
		echo "errors: only in minutes with a replica kill (or none) -> PASS"
		ERR_OK=1
	else
		echo "errors: in minutes without a replica kill:$ERR_MINUTES -> FAIL"
		ERR_OK=0
	fi
	echo "MEM_OK=$MEM_OK ERR_OK=$ERR_OK" >"$TMP/verdict"
} | tee "$REPORT"
log "report: $REPORT (pgbench logs in $TMP when KEEP_TMP=1)"
# shellcheck disable=SC1091
source "$TMP/verdict"
((MEM_OK == 1 && ERR_OK == 1)) || exit 3
