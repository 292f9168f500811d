#!/usr/bin/env bash
# bench/run.sh: pgbench -S throughput of one local PostgreSQL primary reached
# (a) directly, (b) through shardproxy, (c) through PgBouncer in transaction
# pooling mode. Targets are interleaved round by round in a rotating order so
# that drift on the machine (other processes, thermal, caches) spreads over
# all targets instead of biasing whichever ran last.
#
# Usage: bash bench/run.sh            (or: make bench)
# Knobs: ROUNDS (5), SECONDS (10), CLIENTS ("16 64"),
#        MODES ("simple extended prepared"), WARMUP (3), THREADS (2),
#        SCALE (10), KEEP_TMP (0: set 1 to keep the tmpdir with all logs),
#        SHARDS (1: with 2 or more, shardproxy fronts that many shards with
#        pgbench's rows split among them, loaded through the proxy, while
#        "direct" and PgBouncer use one separate PostgreSQL holding all rows),
#        PGBOUNCER_NEW (auto: also measure the PgBouncer Debian 13 ships,
#        built from Debian's source package by bench/pgbouncer-build.sh,
#        which unlike Debian 12's 1.18 runs -M prepared; 0: skip it; a path:
#        use that pgbouncer binary).
# Output: a Markdown table on stdout, also written to bench/results/latest.md;
#         per-run numbers in bench/results/latest-raw.tsv.
set -euo pipefail

# SECONDS is a bash special variable (seconds since shell start, 0 when the
# caller set nothing), so $SECONDS cannot tell "unset" from a value: read the
# caller's environment through printenv, and use our own name from here on.
RUN_SECONDS=$(printenv SECONDS || true)
RUN_SECONDS=${RUN_SECONDS:-10}
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-"16 64"}
MODES=${MODES:-"simple extended prepared"}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
KEEP_TMP=${KEEP_TMP:-0}
SHARDS=${SHARDS:-1}
PGBOUNCER_NEW=${PGBOUNCER_NEW:-auto}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR=$BENCH_DIR/results
PROXY_BIN=$BENCH_DIR/.bin/shardproxy
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}

# Every connection below is to 127.0.0.1 with sslmode=disable: the proxy
# offers TLS and libpq's default sslmode=prefer would encrypt only the proxy
# leg, which measures OpenSSL rather than the proxy.
export PGSSLMODE=disable PGCONNECT_TIMEOUT=10
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS 2>/dev/null || true

TMP=""
PROXY_PID=""
DIRECT_PID=""
BOUNCER_PID=""
NEW_PID=""
STARTED_PID=""
NEW_BIN=""
USED_PORTS=" "

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# validate_knobs rejects values that would make the run unbounded or the
# table meaningless before anything is started.
validate_knobs() {
	local v
	for v in "$ROUNDS" "$RUN_SECONDS" "$WARMUP" "$THREADS" "$SCALE" "$SHARDS"; do
		[[ $v =~ ^[0-9]+$ ]] || die "ROUNDS, SECONDS, WARMUP, THREADS, SCALE must be integers (got '$v')"
	done
	((ROUNDS >= 1 && RUN_SECONDS >= 1 && RUN_SECONDS <= 3600)) || die "need ROUNDS >= 1 and 1 <= SECONDS <= 3600"
	((SHARDS >= 1 && SHARDS <= 8)) || die "SHARDS must be 1..8"
	for v in $CLIENTS; do
		[[ $v =~ ^[0-9]+$ ]] && ((v >= 1 && v <= 150)) || die "CLIENTS entries must be 1..150 (max_client_conn/max_connections), got '$v'"
	done
	for v in $MODES; do
		case $v in simple | extended | prepared) ;; *) die "unknown mode '$v' in MODES" ;; esac
	done
}

# cleanup stops exactly the processes this script started, by PID, and
# removes the tmpdir (Postgres data). It runs on normal exit, failure and
# Ctrl-C alike.
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	local pid
	for pid in $BOUNCER_PID $NEW_PID $STARTED_PID; do
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null
			wait_exit "$pid" 10 || kill -KILL "$pid" 2>/dev/null
		fi
	done
	for pid in $PROXY_PID $DIRECT_PID; do
		if kill -0 "$pid" 2>/dev/null; then
			# SIGTERM lets shardproxy dev stop its own Postgres servers;
			# SIGKILL would orphan them, so only as a last resort.
			kill -TERM "$pid" 2>/dev/null
			wait_exit "$pid" 60 || { log "shardproxy did not stop in 60 s; killing it"; kill -KILL "$pid" 2>/dev/null; }
		fi
	done
	if [[ -n $TMP && -d $TMP ]]; then
		if [[ $rc -eq 130 || $rc -eq 143 ]]; then
			log "interrupted"
			[[ $KEEP_TMP == 1 ]] && log "logs kept in $TMP" || rm -rf "$TMP"
		elif [[ $rc -ne 0 || $KEEP_TMP == 1 ]]; then
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

# free_port prints an unused 127.0.0.1 TCP port below the kernel's ephemeral
# range (so outgoing connections cannot grab it meanwhile), never one this
# run already handed out. Other engineers run servers here too, so starters
# still retry on "address already in use".
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

need_tools() {
	local t
	for t in go pgbench psql ss awk sort timeout setpriv; do
		command -v "$t" >/dev/null || die "'$t' not found in PATH"
	done
	if [[ ! -x $PGBOUNCER_BIN ]]; then
		[[ $EUID -eq 0 ]] || die "$PGBOUNCER_BIN missing; install the Debian package: apt-get install -y pgbouncer"
		log "installing pgbouncer (Debian package)"
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer) >&2 ||
			die "apt-get install pgbouncer failed"
	fi
}

build_proxy() {
	log "building shardproxy"
	mkdir -p "$(dirname "$PROXY_BIN")"
	(cd "$REPO_DIR" && go build -o "$PROXY_BIN" ./cmd/shardproxy) || die "go build ./cmd/shardproxy failed"
}

# start_proxy SHARDS NAME runs `shardproxy dev` (SHARDS primaries, no
# replicas) and waits for its "ready" line. It sets PRIMARY_PORT (the first
# shard's primary), PROXY_PORT, ADMIN_PORT and PROXY_PID. Retries with
# fresh ports when a port was taken between free_port and bind.
start_proxy() {
	local shards=$1 name=$2 attempt dir out err listen admin deadline
	for attempt in 1 2 3; do
		dir=$TMP/$name$attempt out=$TMP/proxy-$name$attempt.out err=$TMP/proxy-$name$attempt.err
		listen=$(free_port) admin=$(free_port)
		log "starting shardproxy dev --shards $shards (listen 127.0.0.1:$listen, attempt $attempt)"
		"$PROXY_BIN" dev --dir "$dir" --shards "$shards" --replicas 0 \
			--listen "127.0.0.1:$listen" --admin "127.0.0.1:$admin" >"$out" 2>"$err" </dev/null &
		PROXY_PID=$!
		deadline=$((SECONDS + 120))
		while ((SECONDS < deadline)); do
			if grep -q '^ready ' "$out"; then
				PRIMARY_PORT=$(awk '$1 == "node" && $3 == "primary" { n = split($4, a, "[:/@?]"); for (i = 1; i <= n; i++) if (a[i] ~ /^[0-9]+$/) { print a[i]; exit } }' "$out")
				PROXY_PORT=$(awk '$1 == "ready" { sub(/.*@127\.0\.0\.1:/, "", $2); sub(/\/.*/, "", $2); print $2; exit }' "$out")
				[[ $PRIMARY_PORT =~ ^[0-9]+$ && $PROXY_PORT =~ ^[0-9]+$ ]] || die "cannot parse shardproxy dev output: $(cat "$out")"
				ADMIN_PORT=$admin
				log "shardproxy ready on :$PROXY_PORT, primary on :$PRIMARY_PORT"
				return 0
			fi
			kill -0 "$PROXY_PID" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$PROXY_PID" 2>/dev/null; then
			tail -20 "$err" >&2
			die "shardproxy dev not ready within 120 s"
		fi
		wait "$PROXY_PID" 2>/dev/null || true
		PROXY_PID=""
		if grep -q 'address already in use' "$err"; then
			log "port taken meanwhile, retrying"
			continue
		fi
		tail -20 "$err" >&2
		die "shardproxy dev exited before ready"
	done
	die "shardproxy dev: ports kept being taken"
}

# init_data loads pgbench's tables directly into the primary as the app role,
# the same role every target authenticates as; with several shards, also
# through the proxy, which splits the rows among them.
init_data() {
	log "pgbench -i -s $SCALE on the primary"
	PGPASSWORD=app timeout 600 pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app app \
		>"$TMP/init.log" 2>&1 || { cat "$TMP/init.log" >&2; die "pgbench -i failed"; }
	if ((SHARDS > 1)); then
		log "pgbench -i -s $SCALE through shardproxy over $SHARDS shards"
		PGPASSWORD=app timeout 600 pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PROXY_PORT" -U app app \
			>"$TMP/init-sharded.log" 2>&1 || { cat "$TMP/init-sharded.log" >&2; die "pgbench -i through the proxy failed"; }
	fi
}

# start_targets: one shardproxy dev with one shard serves every target; with
# SHARDS > 1 a second one, over SHARDS shards, is the shardproxy target and
# the first one's primary is "direct".
start_targets() {
	start_proxy 1 dev
	if ((SHARDS > 1)); then
		DIRECT_PID=$PROXY_PID
		local primary=$PRIMARY_PORT
		start_proxy "$SHARDS" sharded
		PRIMARY_PORT=$primary
	fi
}

# start_pgbouncer NAME BIN [INI_LINE...] runs a PgBouncer in transaction mode
# in front of the same primary, and sets STARTED_PID/STARTED_PORT. Its pool
# size matches the proxy's default (20). PgBouncer refuses to run as root,
# so as root it runs as the postgres OS user via setpriv, which execs
# (unlike runuser, which forks), so $! is pgbouncer's own PID and cleanup
# can stop it by that PID.
start_pgbouncer() {
	local name=$1 bin=$2 attempt dir port line
	shift 2
	dir=$TMP/$name
	mkdir -p "$dir"
	printf '"app" "app"\n' >"$dir/userlist.txt"
	for attempt in 1 2 3; do
		port=$(free_port)
		cat >"$dir/pgbouncer.ini" <<-EOF
			[databases]
			app = host=127.0.0.1 port=$PRIMARY_PORT dbname=app
			[pgbouncer]
			listen_addr = 127.0.0.1
			listen_port = $port
			unix_socket_dir =
			auth_type = scram-sha-256
			auth_file = $dir/userlist.txt
			pool_mode = transaction
			default_pool_size = 20
			max_client_conn = 200
			logfile = $dir/pgbouncer.log
			log_connections = 0
			log_disconnections = 0
			ignore_startup_parameters = extra_float_digits,options
		EOF
		for line in "$@"; do echo "$line" >>"$dir/pgbouncer.ini"; done
		: >"$dir/pgbouncer.log"
		if [[ $EUID -eq 0 ]]; then
			chown -R postgres:postgres "$dir"
			chmod 700 "$dir"
			setpriv --reuid=postgres --regid=postgres --init-groups \
				"$bin" "$dir/pgbouncer.ini" >"$dir/stdout" 2>&1 </dev/null &
		else
			"$bin" "$dir/pgbouncer.ini" >"$dir/stdout" 2>&1 </dev/null &
		fi
		STARTED_PID=$!
		if wait_listen "$port" 20 "$STARTED_PID"; then
			STARTED_PORT=$port
			log "pgbouncer $(bouncer_version "$bin") ready on :$port"
			return 0
		fi
		if kill -0 "$STARTED_PID" 2>/dev/null; then
			cat "$dir/pgbouncer.log" "$dir/stdout" >&2
			die "pgbouncer not listening within 20 s"
		fi
		wait "$STARTED_PID" 2>/dev/null || true
		STARTED_PID=""
		if grep -qi 'address already in use' "$dir/pgbouncer.log" "$dir/stdout"; then
			log "port taken meanwhile, retrying"
			continue
		fi
		cat "$dir/pgbouncer.log" "$dir/stdout" >&2
		die "pgbouncer exited at start"
	done
	die "pgbouncer: ports kept being taken"
}

# start_bouncers starts Debian 12's PgBouncer and, unless PGBOUNCER_NEW=0,
# the newer one (its prepared-statement support on: max_prepared_statements).
# A newer one that cannot be built is left out with a note, not fatal: the
# 1.18 comparison still stands.
start_bouncers() {
	start_pgbouncer pgbouncer "$PGBOUNCER_BIN"
	BOUNCER_PID=$STARTED_PID BOUNCER_PORT=$STARTED_PORT
	case $PGBOUNCER_NEW in
	0) ;;
	auto)
		NEW_BIN=$(bash "$BENCH_DIR/pgbouncer-build.sh" "$BENCH_DIR/.bin" 2>"$TMP/pgbouncer-build.log") || {
			NEW_BIN=""
			tail -5 "$TMP/pgbouncer-build.log" >&2
			log "could not build a newer PgBouncer; measuring without it (PGBOUNCER_NEW=0 skips the attempt)"
		}
		;;
	*)
		[[ -x $PGBOUNCER_NEW ]] || die "PGBOUNCER_NEW=$PGBOUNCER_NEW is not an executable"
		NEW_BIN=$PGBOUNCER_NEW
		;;
	esac
	if [[ -n $NEW_BIN ]]; then
		start_pgbouncer pgbouncer-new "$NEW_BIN" "max_prepared_statements = 200"
		NEW_PID=$STARTED_PID NEW_PORT=$STARTED_PORT
	fi
}

# bouncer_version BIN prints PgBouncer's version number.
bouncer_version() { "$1" --version | head -1 | awk '{print $2}'; }

# wait_listen PORT SECS PID: true once PID listens on 127.0.0.1:PORT.
wait_listen() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$3" 2>/dev/null || return 1
		ss -Htln "sport = :$1" | grep -q . && return 0
		sleep 0.1
	done
	return 1
}

# port_of TARGET prints the TCP port pgbench connects to for that target.
port_of() {
	case $1 in
	direct) echo "$PRIMARY_PORT" ;;
	shardproxy) echo "$PROXY_PORT" ;;
	pgbouncer) echo "$BOUNCER_PORT" ;;
	pgbouncer-new) echo "$NEW_PORT" ;;
	*) die "unknown target $1" ;;
	esac
}

# targets_for MODE: PgBouncer 1.18 has no prepared-statement support in
# transaction mode (protocol-level named statements live on one server
# connection, the next transaction may get another: "prepared statement
# P_0 does not exist"; support came in 1.21), so -M prepared compares the
# proxy against direct and the newer PgBouncer only.
targets_for() {
	local t="direct shardproxy"
	[[ $1 == prepared ]] || t+=" pgbouncer"
	[[ -n $NEW_BIN ]] && t+=" pgbouncer-new"
	echo "$t"
}

# run_pgbench TARGET MODE CLIENTS SECS LABEL: one bounded pgbench -S run;
# prints "tps latency_ms". Any failed transaction, abort or error is fatal:
# a number from a partly failing run would be meaningless.
run_pgbench() {
	local target=$1 mode=$2 clients=$3 secs=$4 label=$5 port outf rc=0 tps lat failed
	port=$(port_of "$target")
	outf=$TMP/pgbench.$label.$target.$mode.c$clients.log
	# -n: no VACUUM before the run (pgbench -i already vacuumed, and a
	# pooler need not accept VACUUM); timeout bounds a hung run, and
	# --foreground keeps pgbench in our process group so Ctrl-C reaches it.
	PGPASSWORD=app timeout --foreground $((secs + 60)) pgbench -n -S -M "$mode" -c "$clients" -j "$THREADS" -T "$secs" \
		-h 127.0.0.1 -p "$port" -U app app >"$outf" 2>&1 || rc=$?
	tps=$(awk '/^tps = .*without initial connection time/ { print $3; exit }' "$outf")
	lat=$(awk '/^latency average = / { print $4; exit }' "$outf")
	failed=$(awk '/^number of failed transactions: / { print $5; exit }' "$outf")
	# Killed by Ctrl-C or SIGTERM: pass the signal status up, no error dump.
	if [[ $rc -eq 130 || $rc -eq 143 ]]; then exit "$rc"; fi
	if [[ $rc -ne 0 || -z $tps || -z $lat || ${failed:-0} != 0 ]] ||
		grep -qiE 'error|abort|fatal' "$outf"; then
		log "pgbench against $target (mode $mode, clients $clients) failed (exit $rc):"
		cat "$outf" >&2
		[[ $rc -eq 124 ]] && log "pgbench did not finish within $((secs + 60)) s (hung; killed by timeout)"
		diagnose "$target"
		die "pgbench run failed"
	fi
	echo "$tps $lat"
}

# diagnose TARGET prints what the servers looked like when a run failed, so
# a hang or leak can be reported without rerunning: the target's log, the
# proxy's own pool view, and the primary's sessions of the app role.
diagnose() {
	set +e
	case $1 in
	pgbouncer | pgbouncer-new) tail -20 "$TMP/$1/pgbouncer.log" >&2 ;;
	shardproxy)
		tail -20 "$TMP"/proxy*.err >&2
		if command -v curl >/dev/null; then
			log "shardproxy /api/v1/status:"
			curl -s -m 5 "http://127.0.0.1:$ADMIN_PORT/api/v1/status" >&2
			echo >&2
		fi
		;;
	esac
	log "primary sessions of role app (state, wait_event, count, oldest state change):"
	timeout 10 psql -XAtq -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d app -c \
		"select state, wait_event, count(*), max(now() - state_change) from pg_stat_activity where usename = 'app' group by 1, 2" >&2
	set -e
}

# measure_cell MODE CLIENTS: warm each target up, then ROUNDS rounds, each
# running every target once; round r starts at target r mod n so no target
# is always first or last. Appends raw rows to $RAW.
measure_cell() {
	local mode=$1 clients=$2 round i n t res
	local -a targets order
	read -ra targets <<<"$(targets_for "$mode")"
	n=${#targets[@]}
	if ((WARMUP > 0)); then
		for t in "${targets[@]}"; do
			log "warm-up $mode c=$clients $t ${WARMUP}s"
			run_pgbench "$t" "$mode" "$clients" "$WARMUP" warmup >/dev/null
		done
	fi
	for ((round = 1; round <= ROUNDS; round++)); do
		order=()
		for ((i = 0; i < n; i++)); do order+=("${targets[(round - 1 + i) % n]}"); done
		for t in "${order[@]}"; do
			res=$(run_pgbench "$t" "$mode" "$clients" "$RUN_SECONDS" "r$round")
			log "$mode c=$clients round $round/$ROUNDS $t: tps/lat_ms $res"
			printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$clients" "$round" "$t" "${res// /$'\t'}" >>"$RAW"
		done
	done
}

# summarize: medians per (mode, clients, target) and the median of the
# per-round ratios target/direct (pairs runs from the same round, so slow
# drift over the run cancels out), as a Markdown table.
summarize() {
	awk -F'\t' -v modes="$MODES" -v clients="$CLIENTS" -v oldv="$(bouncer_version "$PGBOUNCER_BIN")" -v newv="${NEW_BIN:+$(bouncer_version "$NEW_BIN")}" '
	function median(s,    a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	{ k = $1 SUBSEP $2 SUBSEP $4; tps[k] = tps[k] " " $5; lat[k] = lat[k] " " $6; v[$1, $2, $3, $4] = $5; if ($3 + 0 > rounds[$1, $2] + 0) rounds[$1, $2] = $3 + 0 }
	function ratios(m, c, t,    r, s) {
		s = ""
		for (r = 1; r <= rounds[m, c]; r++) if (((m, c, r, t) in v) && v[m, c, r, "direct"] > 0) s = s " " v[m, c, r, t] / v[m, c, r, "direct"]
		return s
	}
	function tpscell(m, c, t) {
		if (!((m, c, t) in tps)) return t == "pgbouncer" ? "n/a [1]" : "n/a"
		return sprintf("%.0f (%.2f)", median(tps[m, c, t]), median(ratios(m, c, t)))
	}
	function latcell(m, c, t) { return ((m, c, t) in lat) ? sprintf("%.3f", median(lat[m, c, t])) : (t == "pgbouncer" ? "n/a [1]" : "n/a") }
	END {
		hn = newv != "" ? sprintf(" pgbouncer %s tps (ratio) |", newv) : ""
		ln = newv != "" ? sprintf(" pgbouncer %s lat ms |", newv) : ""
		printf "| mode | clients | direct tps | shardproxy tps (ratio) | pgbouncer %s tps (ratio) |%s direct lat ms | shardproxy lat ms | pgbouncer %s lat ms |%s\n", oldv, hn, oldv, ln
		print "|---|---:|---:|---:|---:|" (newv != "" ? "---:|" : "") "---:|---:|---:|" (newv != "" ? "---:|" : "")
		nm = split(modes, M, " "); nc = split(clients, C, " ")
		for (i = 1; i <= nm; i++) for (j = 1; j <= nc; j++) {
			m = M[i]; c = C[j]
			if (!((m, c, "direct") in tps)) continue
			printf "| %s | %s | %.0f | %s | %s |", m, c, median(tps[m, c, "direct"]), tpscell(m, c, "shardproxy"), tpscell(m, c, "pgbouncer")
			if (newv != "") printf " %s |", tpscell(m, c, "pgbouncer-new")
			printf " %s | %s | %s |", latcell(m, c, "direct"), latcell(m, c, "shardproxy"), latcell(m, c, "pgbouncer")
			if (newv != "") printf " %s |", latcell(m, c, "pgbouncer-new")
			printf "\n"
		}
	}' "$RAW"
}

main() {
	validate_knobs
	need_tools
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	TMP=$(mktemp -d "${TMPDIR:-/tmp}/shardproxy-bench.XXXXXX")
	# Postgres and PgBouncer run as the postgres OS user when we are root and
	# must traverse this directory (not list it).
	chmod 711 "$TMP"
	mkdir -p "$RESULTS_DIR"
	RAW=$TMP/raw.tsv
	: >"$RAW"

	local load_before load_after started mode c
	load_before=$(uptime)
	started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	log "nproc $(nproc); uptime: $load_before"

	build_proxy
	start_targets
	init_data
	start_bouncers

	for mode in $MODES; do
		for c in $CLIENTS; do
			measure_cell "$mode" "$c"
		done
	done
	load_after=$(uptime)

	{
		echo "# shardproxy pgbench -S benchmark"
		echo
		echo "Started $started; pgbench -S -j $THREADS, scale $SCALE, $ROUNDS round(s) of ${RUN_SECONDS} s per target, targets rotated per round, ${WARMUP} s warm-up per target and cell."
		echo "All targets: one local PostgreSQL $(PGPASSWORD=app psql -XAtq -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -d app -c 'show server_version' | awk '{print $1}') primary, app/app over SCRAM, sslmode=disable, 127.0.0.1."
		((SHARDS > 1)) && echo "Except shardproxy: it fronts $SHARDS shard primaries on the same machine, pgbench's rows split among them by key (loaded through the proxy); direct and pgbouncer reach one PostgreSQL holding all rows."
		echo "shardproxy: transaction pooling, pool size 20 (default). pgbouncer $(bouncer_version "$PGBOUNCER_BIN") (Debian 12's package): pool_mode=transaction, default_pool_size=20."
		[[ -n $NEW_BIN ]] && echo "pgbouncer $(bouncer_version "$NEW_BIN") (Debian 13's source package, built here by bench/pgbouncer-build.sh): the same settings plus max_prepared_statements=200."
		echo "tps and latency are medians over rounds; (ratio) is the median of per-round tps ratios to direct."
		echo
		summarize
		echo
		echo "[1] PgBouncer 1.18 cannot run pgbench -M prepared in transaction pooling mode: protocol-level named prepared statements live on one server connection, and the next transaction may be given another (\"prepared statement ... does not exist\"); PgBouncer supports them only from 1.21 (max_prepared_statements). Prepared mode compares shardproxy against direct$([[ -n $NEW_BIN ]] && echo " and PgBouncer $(bouncer_version "$NEW_BIN")") only."
		echo
		echo "Machine: nproc $(nproc). Load before: \`${load_before#*load average: }\`; after: \`${load_after#*load average: }\`. pgbench, Postgres and the proxy share these cores, so absolute numbers are machine-bound; compare ratios."
	} >"$RESULTS_DIR/latest.md"
	cp "$RAW" "$RESULTS_DIR/latest-raw.tsv"
	cat "$RESULTS_DIR/latest.md"
}

main "$@"
