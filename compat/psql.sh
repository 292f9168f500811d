#!/usr/bin/env bash
# The compat scenario with psql (compat/README.md). Environment from run.sh:
# COMPAT_HOST, COMPAT_PORT, COMPAT_USER, COMPAT_PASSWORD, COMPAT_DB,
# COMPAT_AID_A / COMPAT_AID_B (accounts on different shards, abalance =
# 3*aid), COMPAT_TID, COMPAT_CLIENT, COMPAT_SSLROOTCERT.
set -uo pipefail
: "${COMPAT_HOST:?}" "${COMPAT_PORT:?}" "${COMPAT_USER:?}" "${COMPAT_PASSWORD:?}" "${COMPAT_DB:?}"
: "${COMPAT_AID_A:?}" "${COMPAT_AID_B:?}" "${COMPAT_TID:?}" "${COMPAT_CLIENT:=psql}"
export PGPASSWORD=$COMPAT_PASSWORD PGCONNECT_TIMEOUT=10
A=$COMPAT_AID_A B=$COMPAT_AID_B
MARK="compat $COMPAT_CLIENT"
conn() { echo "host=$COMPAT_HOST port=$COMPAT_PORT user=$COMPAT_USER dbname=$COMPAT_DB sslmode=$1${2:+ sslrootcert=$2}"; }
P() { psql -X -q -At -v ON_ERROR_STOP=1 "$(conn "${SSLMODE:-require}")" "$@"; }
# Balances of A and B as "a,b", from query output ordered by aid or from
# two values (for A and B).
bal() {
	if [ $# = 2 ]; then
		if [ "$A" -lt "$B" ]; then echo "$1,$2"; else echo "$2,$1"; fi
	else
		tr '\n' ',' <<<"$1" | sed 's/,$//'
	fi
}
fail() { echo "FAIL $*"; exit 1; }
ok() { echo "ok $*"; }
expect() { # step, got, want
	[ "$2" = "$3" ] || fail "$1: got [$2], want [$3]"
}

# 1. SCRAM with and without TLS; \conninfo says which.
out=$(psql -X "$(conn require)" -c '\conninfo' 2>&1) || fail "connect sslmode=require: $out"
grep -q '^SSL connection' <<<"$out" || fail "sslmode=require: \\conninfo shows no SSL connection: $out"
ok "connect tls: sslmode=require, SCRAM, \\conninfo: $(grep '^SSL' <<<"$out")"
if [ -n "${COMPAT_SSLROOTCERT:-}" ]; then
	out=$(psql -X "$(conn verify-full "$COMPAT_SSLROOTCERT")" -Atc 'SELECT 1' 2>&1) || fail "connect sslmode=verify-full: $out"
	ok "connect tls verify-full: the proxy presented the dev certificate"
fi
out=$(psql -X "$(conn disable)" -c '\conninfo' 2>&1) || fail "connect sslmode=disable: $out"
grep -q 'SSL connection' <<<"$out" && fail "sslmode=disable: \\conninfo shows SSL: $out"
ok "connect plain: sslmode=disable, SCRAM, no SSL in \\conninfo"
out=$(PGPASSWORD=wrong psql -X "$(conn disable)" -c 'SELECT 1' 2>&1) && fail "wrong password accepted"
grep -q 'password authentication failed' <<<"$out" || fail "wrong password: unexpected error: $out"
ok "auth: a wrong password is refused"

# 2. Reads by key from both shards. psql 15 has no \bind (psql 16), so it
# cannot use the extended protocol: these are simple-protocol queries
# with psql variables; prepared statements are covered by the drivers.
for aid in "$A" "$B"; do
	got=$(P -v aid="$aid" <<<"SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = :'aid'") || fail "read aid $aid"
	expect "read aid $aid" "$got" "$aid|1|$((3 * aid))"
done
got=$(P -c "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid IN ($A, $B)") || fail "read both"
expect "read aid IN ($A, $B)" "$got" "2|$((3 * A + 3 * B))"
ok "read: rows by key from both shards (simple protocol; psql 15 has no \\bind)"

# 3. A transaction across the two shards, committed, then one rolled back.
got=$(P <<EOSQL
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + 11 WHERE aid = $A;
UPDATE pgbench_accounts SET abalance = abalance + 22 WHERE aid = $B;
COMMIT;
SELECT abalance FROM pgbench_accounts WHERE aid IN ($A, $B) ORDER BY aid;
EOSQL
) || fail "commit across shards: $got"
expect "commit across shards" "$(bal "$got")" "$(bal "$((3 * A + 11))" "$((3 * B + 22))")"
ok "transaction: BEGIN; UPDATE aid $A; UPDATE aid $B; COMMIT -> both visible"
got=$(P <<EOSQL
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid = $A;
UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid = $B;
ROLLBACK;
SELECT abalance FROM pgbench_accounts WHERE aid IN ($A, $B) ORDER BY aid;
EOSQL
) || fail "rollback across shards: $got"
expect "rollback across shards" "$(bal "$got")" "$(bal "$((3 * A + 11))" "$((3 * B + 22))")"
ok "transaction: BEGIN; UPDATE both; ROLLBACK -> both unchanged"

# 4. COPY: \copy FROM STDIN into pgbench_history (split by aid), then
# COPY ... TO STDOUT and a count read back.
rows=$(for i in $(seq 1 20); do printf '%s\t1\t%s\t%s\t2020-01-01 00:00:00\t%s\n' "$COMPAT_TID" "$i" "$i" "$MARK"; done)
out=$(P -c "\\copy pgbench_history (tid, bid, aid, delta, mtime, filler) FROM STDIN" <<<"$rows" 2>&1) || fail "copy from stdin: $out"
n=$(P -c "COPY (SELECT aid, delta FROM pgbench_history WHERE filler = '$MARK') TO STDOUT" | wc -l) || fail "copy to stdout"
expect "copy to stdout rows" "$n" 20
got=$(P -c "SELECT count(*), sum(delta) FROM pgbench_history WHERE filler = '$MARK'") || fail "count after copy"
expect "count after copy" "$got" "20|210"
n=$(P -c "COPY pgbench_history TO STDOUT" | grep -c "$MARK") || fail "copy table to stdout"
expect "COPY pgbench_history TO STDOUT rows with marker" "$n" 20
ok "copy: \\copy 20 rows FROM STDIN into pgbench_history, COPY TO STDOUT reads them back"

# 5. Errors then recovery on the same connection (one psql session).
got=$(SSLMODE=disable P -v ON_ERROR_STOP=0 2>/dev/null <<EOSQL
SELECT 1/0;
\\echo e1 :LAST_ERROR_SQLSTATE
selec 1;
\\echo e2 :LAST_ERROR_SQLSTATE
SELECT 'alive1';
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + 5000 WHERE aid = $A;
SELECT 1/0;
\\echo e3 :LAST_ERROR_SQLSTATE
SELECT 1;
\\echo e4 :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT 'alive2', abalance FROM pgbench_accounts WHERE aid = $A;
EOSQL
)
want="e1 22012
e2 42601
alive1
e3 22012
e4 25P02
alive2|$((3 * A + 11))"
expect "errors then recovery" "$got" "$want"
ok "error: 22012 and 42601 reported, SELECT works after; in a transaction 22012, then 25P02, ROLLBACK, the UPDATE is undone"

# 6. Cancel: SIGINT makes psql send a CancelRequest for the running query.
# A non-interactive psql stops its script after a cancel (exit code 3),
# so "usable afterwards" is checked with a new session.
out_f=$(mktemp)
started=$(mktemp -u)
printf '\\set VERBOSITY verbose\n\\! touch %s\nSELECT pg_sleep(30);\n' "$started" | psql -X "$(conn require)" >"$out_f" 2>&1 &
pid=$!
# Connected, and the query is sent right after the marker file appears.
for _ in $(seq 1 200); do [ -e "$started" ] && break; sleep 0.1; done
[ -e "$started" ] || fail "cancel: psql did not start the query in 20 s"
rm -f "$started"
sleep 1
t0=$(date +%s%N)
kill -INT "$pid"
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fail "cancel: psql still running 5 s after SIGINT"; fi
wait "$pid"
ms=$((($(date +%s%N) - t0) / 1000000))
grep -q 'ERROR:  57014: canceling statement due to user request' "$out_f" || fail "cancel: $(cat "$out_f")"
rm -f "$out_f"
got=$(P -c 'SELECT 1') || fail "new session after cancel"
expect "after cancel" "$got" 1
ok "cancel: SIGINT during SELECT pg_sleep(30) -> 57014 after ${ms} ms; a new session works"
echo "PASS $COMPAT_CLIENT"
