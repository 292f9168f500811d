#!/usr/bin/env bash
# The compat scenario with pgbench (compat/README.md): a custom script
# with a transaction across two shards, in the simple, extended and
# prepared query modes, over SCRAM with TLS and without. COPY, errors and
# cancel are not part of what pgbench does, so they are not run here.
set -uo pipefail
: "${COMPAT_HOST:?}" "${COMPAT_PORT:?}" "${COMPAT_USER:?}" "${COMPAT_PASSWORD:?}" "${COMPAT_DB:?}"
: "${COMPAT_AID_A:?}" "${COMPAT_AID_B:?}" "${COMPAT_CLIENT:=pgbench}"
export PGPASSWORD=$COMPAT_PASSWORD PGCONNECT_TIMEOUT=10
A=$COMPAT_AID_A B=$COMPAT_AID_B
CLIENTS=2 TXNS=25
fail() { echo "FAIL $*"; exit 1; }
ok() { echo "ok $*"; }
P() { PGSSLMODE=disable psql -X -q -At -v ON_ERROR_STOP=1 -h "$COMPAT_HOST" -p "$COMPAT_PORT" -U "$COMPAT_USER" "$COMPAT_DB" "$@"; }
# A new session: read the primaries (read-your-writes is per session).
balances() { P -c "SET shardproxy.target = 'primary'" -c "SELECT abalance FROM pgbench_accounts WHERE aid = $A" -c "SELECT abalance FROM pgbench_accounts WHERE aid = $B" | tr '\n' ' '; }

script=$(mktemp)
# Moves 1 from B to A across the two shards (two-phase commit at the
# proxy), reads both back, and reads a random account on either shard.
cat >"$script" <<'EOSQL'
\set r random(1, 100000 * :scale)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aida;
UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid = :aidb;
SELECT abalance FROM pgbench_accounts WHERE aid = :aida;
SELECT abalance FROM pgbench_accounts WHERE aid = :aidb;
END;
SELECT abalance FROM pgbench_accounts WHERE aid = :r;
EOSQL

# One statement reading the two accounts on both shards.
fanout=$(mktemp)
trap 'rm -f "$script" "$fanout"' EXIT
echo 'SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid IN (:aida, :aidb);' >"$fanout"
failures=0

read -r a0 b0 <<<"$(balances)" || fail "read balances"
[ -n "$b0" ] || fail "no balances for aids $A, $B"
runs=0
for ssl in require disable; do
	for mode in simple extended prepared; do
		out=$(PGSSLMODE=$ssl pgbench -n -M "$mode" -c "$CLIENTS" -j 1 -t "$TXNS" -f "$script" \
			-D aida="$A" -D aidb="$B" -h "$COMPAT_HOST" -p "$COMPAT_PORT" -U "$COMPAT_USER" "$COMPAT_DB" 2>&1) ||
			{ echo "$out"; fail "pgbench -M $mode sslmode=$ssl exited non-zero"; }
		processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
		failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
		[ "$processed" = $((CLIENTS * TXNS)) ] || { echo "$out"; fail "-M $mode sslmode=$ssl: processed '$processed', want $((CLIENTS * TXNS))"; }
		[ "${failed:-0}" = 0 ] || { echo "$out"; fail "-M $mode sslmode=$ssl: $failed failed transactions"; }
		runs=$((runs + 1))
		ok "pgbench -M $mode, PGSSLMODE=$ssl, SCRAM: $processed transactions across shards, 0 failed ($(grep -o '^tps = [0-9.]*' <<<"$out"))"
		# A failure here is reported and the run goes on (exit 1 at the end).
		out=$(PGSSLMODE=$ssl pgbench -n -M "$mode" -c 1 -t 5 -f "$fanout" \
			-D aida="$A" -D aidb="$B" -h "$COMPAT_HOST" -p "$COMPAT_PORT" -U "$COMPAT_USER" "$COMPAT_DB" 2>&1)
		if [ $? = 0 ] && grep -q '^number of transactions actually processed: 5/5' <<<"$out"; then
			ok "pgbench -M $mode, PGSSLMODE=$ssl: a read over both shards (aid IN (a, b)), 5 transactions"
		else
			echo "FAIL pgbench -M $mode, PGSSLMODE=$ssl: a read over both shards (aid IN (a, b)): $(grep -m1 'error' <<<"$out")"
			failures=$((failures + 1))
		fi
	done
done
read -r a1 b1 <<<"$(balances)" || fail "read balances"
n=$((runs * CLIENTS * TXNS))
[ "$a1" = $((a0 + n)) ] && [ "$b1" = $((b0 - n)) ] ||
	fail "balances after $n transfers: aid $A $a0 -> $a1 (want $((a0 + n))), aid $B $b0 -> $b1 (want $((b0 - n)))"
ok "balances: aid $A +$n, aid $B -$n: every cross-shard transaction committed on both shards"
((failures == 0)) || fail "$failures pgbench runs of a read over both shards failed"
echo "n/a copy, error, cancel: pgbench scripts have no COPY, no expected errors and no cancel"
echo "PASS $COMPAT_CLIENT"
