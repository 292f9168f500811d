package sharded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
)

// Knobs of TestCrash2PC.
const (
	crashAccounts     = 300
	crashBalance      = 1000
	crashWorkers      = 16
	crashRounds       = 5
	crashMinUptime    = 500 * time.Millisecond // random uptime before each kill -9 ...
	crashMaxUptime    = 2 * time.Second        // ... between these two
	crashRecoverBound = 10 * time.Second       // the product's promise after a restart
	crashTransferTO   = 8 * time.Second        // one transfer, BEGIN to COMMIT's answer
	crashGIDPrefix    = "shardproxy:"          // every GID any shardproxy coordinator makes
)

// TestCrash2PC kills the real `shardproxy serve` binary with SIGKILL again
// and again while many clients commit transfers that each write on two
// shards, restarts it each time, and then checks on the shards themselves:
//
//   - within 10 s of the last restart no shard holds a prepared
//     transaction of a shardproxy coordinator (recovery finished them all);
//   - every transfer landed on both of its shards or on neither;
//   - every transfer whose COMMIT was acknowledged landed, and every one
//     that was never committed or whose COMMIT was answered with a
//     rollback did not;
//   - each balance is 1000 plus the deltas of its account's legs, and the
//     total is unchanged;
//   - every transaction a killed proxy left prepared (listed right after
//     each kill) ended the same way on all its shards according to
//     PostgreSQL's commit log (pg_xact_status), and committed if its
//     commit decision was already in shardproxy.twophase_decisions.
//
// Each transfer writes, on each of its two shards, the balance change and a
// leg row (transfer id, account, delta) in crash_legs, sharded by account,
// so the legs of one transfer live on two different shards.
func TestCrash2PC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the shardproxy binary and kills it repeatedly against real PostgreSQL; skipped with -short")
	}
	testStart := time.Now()
	bin := buildShardproxy(t)
	t.Logf("built shardproxy in %s", time.Since(testStart).Round(time.Millisecond))
	names := shardNames()
	if len(names) < 2 {
		t.Fatalf("need at least 2 shards, cluster has %d", len(names))
	}

	// Direct superuser connections to every shard primary, for set-up
	// checks, watching pg_prepared_xacts and the final verification.
	direct := map[string]*pgx.Conn{}
	for _, n := range names {
		direct[n] = connectShard(t, n)
	}
	for _, n := range names {
		if gids := preparedGIDs(t, direct[n]); len(gids) > 0 {
			t.Fatalf("shard %s already holds prepared transactions before the test: %q", n, gids)
		}
	}

	listen := crashFreeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "shardproxy.yaml")
	writeCrashConfig(t, cfgPath, listen, names)
	dsn := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable&connect_timeout=3",
		localcluster.AppUser, localcluster.AppPassword, listen, localcluster.AppDatabase)

	procs := &crashProcs{t: t, bin: bin, config: cfgPath}
	t.Cleanup(procs.cleanup)
	procs.start()

	// Schema and accounts, through the proxy.
	setup := connectDSN(t, dsn)
	mustExec(t, setup, "DROP TABLE IF EXISTS crash_accounts")
	mustExec(t, setup, "DROP TABLE IF EXISTS crash_legs")
	mustExec(t, setup, "CREATE TABLE crash_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)")
	mustExec(t, setup, "CREATE TABLE crash_legs (transfer_id bigint NOT NULL, account_id bigint NOT NULL, delta bigint NOT NULL, PRIMARY KEY (account_id, transfer_id))")
	var values []string
	for id := 1; id <= crashAccounts; id++ {
		values = append(values, fmt.Sprintf("(%d, %d)", id, crashBalance))
	}
	mustExec(t, setup, "INSERT INTO crash_accounts (id, balance) VALUES "+strings.Join(values, ", "))
	_ = setup.Close(context.Background())

	// Where each account lives, read from the shards themselves.
	byShard := make([][]int64, len(names))
	seen := map[int64]string{}
	for i, n := range names {
		rows, err := direct[n].Query(ctxT(t, 10*time.Second), "SELECT id FROM crash_accounts ORDER BY id")
		if err != nil {
			t.Fatalf("shard %s: %v", n, err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatalf("shard %s: %v", n, err)
		}
		for _, id := range ids {
			if prev, dup := seen[id]; dup {
				t.Fatalf("account %d is on both %s and %s", id, prev, n)
			}
			seen[id] = n
		}
		if len(ids) == 0 {
			t.Fatalf("no account landed on shard %s", n)
		}
		byShard[i] = ids
	}
	if len(seen) != crashAccounts {
		t.Fatalf("%d accounts on the shards, want %d", len(seen), crashAccounts)
	}
	t.Logf("accounts per shard: %v", func() []int {
		var c []int
		for _, ids := range byShard {
			c = append(c, len(ids))
		}
		return c
	}())

	// The load: transfers between accounts on two different shards.
	w := &crashWorkload{dsn: dsn, byShard: byShard, stop: make(chan struct{})}
	var wg sync.WaitGroup
	for i := range crashWorkers {
		wg.Go(func() { w.run(i) })
	}
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()
	stopWorkers := sync.OnceFunc(func() {
		close(w.stop)
		select {
		case <-workersDone:
		case <-time.After(2 * crashTransferTO):
			t.Errorf("workers did not stop within %s", 2*crashTransferTO)
		}
	})
	t.Cleanup(stopWorkers) // runs before procs.cleanup

	// Let the load get going on the first proxy before the first kill.
	waitCommits(t, w, 20, 15*time.Second, "on the first proxy")

	var leftAtKill []int
	inDoubt := map[string]crashInDoubt{} // by shard + gid
	for round := 1; round <= crashRounds; round++ {
		uptime := crashMinUptime + rand.N(crashMaxUptime-crashMinUptime)
		before := w.acked.Load()
		time.Sleep(uptime)
		procs.kill()
		left := snapshotInDoubt(t, names, direct)
		decided := 0
		for _, x := range left {
			inDoubt[x.shard+" "+x.gid] = x
			if x.decided {
				decided++
			}
		}
		leftAtKill = append(leftAtKill, len(left))
		t.Logf("round %d: SIGKILL after %s up, %d commits acknowledged by that proxy; left prepared: %d transaction parts (%d with a commit decision logged)",
			round, uptime.Round(time.Millisecond), w.acked.Load()-before, len(left), decided)
		procs.start()
	}
	restarted := procs.current().started

	// The last proxy must serve the load as well, in-doubt locks and all.
	waitCommits(t, w, 20, crashRecoverBound, "after the last restart")
	stopWorkers()
	t.Logf("workers stopped %s after the last restart", time.Since(restarted).Round(time.Millisecond))

	// Nothing of ours stays prepared, within the promised bound.
	deadline := restarted.Add(crashRecoverBound)
	var left map[string][]string
	for {
		left = map[string][]string{}
		for _, sh := range names {
			if gids := preparedGIDs(t, direct[sh]); len(gids) > 0 {
				left[sh] = gids
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("%s after the last restart, prepared transactions remain: %v", crashRecoverBound, left)
	} else {
		t.Logf("no prepared transaction left %s after the last restart", time.Since(restarted).Round(time.Millisecond))
	}

	// Verify, shard by shard.
	verifyInDoubtOutcomes(t, direct, inDoubt)
	verifyCrashInvariants(t, names, direct, w)

	committed, rolled := procs.resolved()
	t.Logf("recovery logs: %d COMMIT PREPARED and %d ROLLBACK PREPARED of in-doubt transaction parts; parts left prepared at each kill: %v",
		committed, rolled, leftAtKill)
	if sum(intsTo64(leftAtKill)) == 0 {
		// Not a failure of the proxy, but this run did not exercise recovery.
		t.Logf("warning: no kill caught a transaction between PREPARE and COMMIT PREPARED")
	}
	t.Logf("total %s", time.Since(testStart).Round(time.Millisecond))
}

// crashOutcome is what the client learned about one transfer.
type crashOutcome int

const (
	// neverCommitted: a statement before COMMIT failed, so COMMIT was never sent.
	neverCommitted crashOutcome = iota
	// acked: COMMIT succeeded; both legs must be there.
	acked
	// rolledBack: COMMIT was answered with an error that means rollback.
	rolledBack
	// unknown: the connection or the metadata database failed during
	// COMMIT; either outcome is allowed, but all or nothing.
	unknown
)

func (o crashOutcome) String() string {
	return [...]string{"never committed", "acknowledged", "rolled back", "unknown"}[o]
}

type crashTransfer struct {
	id, from, to, amount int64
	out                  crashOutcome
	err                  string
}

type crashWorkload struct {
	dsn     string
	byShard [][]int64
	stop    chan struct{}

	acked      atomic.Int64
	anomalies  atomic.Int64 // an UPDATE that did not hit exactly one row
	mu         sync.Mutex
	transfers  []crashTransfer
	firstAnoms []string
}

func (w *crashWorkload) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// run is one client: connect, transfer, reconnect when the proxy dies.
func (w *crashWorkload) run(worker int) {
	rng := rand.New(rand.NewPCG(uint64(worker), uint64(time.Now().UnixNano())))
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(ctx)
			cancel()
		}
	}()
	var local []crashTransfer
	defer func() {
		w.mu.Lock()
		w.transfers = append(w.transfers, local...)
		w.mu.Unlock()
	}()
	seq := int64(0)
	for !w.stopped() {
		if conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			c, err := pgx.Connect(ctx, w.dsn)
			cancel()
			if err != nil {
				time.Sleep(20 * time.Millisecond) // the proxy is down; it comes back
				continue
			}
			conn = c
		}
		s1 := rng.IntN(len(w.byShard))
		s2 := (s1 + 1 + rng.IntN(len(w.byShard)-1)) % len(w.byShard)
		seq++
		tr := crashTransfer{
			id:     int64(worker+1)<<32 | seq,
			from:   w.byShard[s1][rng.IntN(len(w.byShard[s1]))],
			to:     w.byShard[s2][rng.IntN(len(w.byShard[s2]))],
			amount: 1 + rng.Int64N(100),
		}
		ctx, cancel := context.WithTimeout(context.Background(), crashTransferTO)
		tr.out, tr.err = w.transfer(ctx, conn, tr)
		cancel()
		local = append(local, tr)
		if tr.out == acked {
			w.acked.Add(1)
		}
		if conn.IsClosed() || tr.out == unknown {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(ctx)
			cancel()
			conn = nil
		}
	}
}

// transfer moves amount from one account to the other in one transaction
// that writes on two shards. Rows are locked in account order, so two
// transfers never wait for each other across shards (a distributed
// deadlock no single PostgreSQL server would detect).
func (w *crashWorkload) transfer(ctx context.Context, conn *pgx.Conn, tr crashTransfer) (crashOutcome, string) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return neverCommitted, err.Error()
	}
	legs := [][2]int64{{tr.from, -tr.amount}, {tr.to, tr.amount}}
	if tr.to < tr.from {
		legs[0], legs[1] = legs[1], legs[0]
	}
	for _, leg := range legs {
		tag, err := tx.Exec(ctx, "UPDATE crash_accounts SET balance = balance + $2 WHERE id = $1", leg[0], leg[1])
		if err == nil && tag.RowsAffected() != 1 {
			w.anomaly(fmt.Sprintf("transfer %d: UPDATE of account %d hit %d rows", tr.id, leg[0], tag.RowsAffected()))
		}
		if err == nil {
			_, err = tx.Exec(ctx, "INSERT INTO crash_legs (transfer_id, account_id, delta) VALUES ($1, $2, $3)", tr.id, leg[0], leg[1])
		}
		if err != nil {
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = tx.Rollback(rctx)
			cancel()
			return neverCommitted, err.Error()
		}
	}
	err = tx.Commit(ctx)
	switch {
	case err == nil:
		return acked, ""
	case errors.Is(err, pgx.ErrTxCommitRollback):
		return rolledBack, err.Error()
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "08007", // transaction_resolution_unknown
			strings.HasPrefix(pe.Code, "08"), strings.HasPrefix(pe.Code, "57"),
			strings.HasPrefix(pe.Code, "58"), strings.HasPrefix(pe.Code, "XX"):
			return unknown, err.Error()
		}
		// The proxy answered COMMIT with an error: it promises the
		// transaction was rolled back on every shard.
		return rolledBack, err.Error()
	}
	return unknown, err.Error() // connection lost or timed out mid-COMMIT
}

func (w *crashWorkload) anomaly(s string) {
	w.anomalies.Add(1)
	w.mu.Lock()
	if len(w.firstAnoms) < 10 {
		w.firstAnoms = append(w.firstAnoms, s)
	}
	w.mu.Unlock()
}

// waitCommits waits until n more transfers are acknowledged.
func waitCommits(t *testing.T, w *crashWorkload, n int64, within time.Duration, what string) {
	t.Helper()
	target := w.acked.Load() + n
	deadline := time.Now().Add(within)
	for w.acked.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d transfers committed within %s %s", n, within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// verifyCrashInvariants reads both tables from every shard and checks that
// each transfer is all-or-nothing, agrees with what its client was told,
// and that the balances add up.
func verifyCrashInvariants(t *testing.T, names []string, direct map[string]*pgx.Conn, w *crashWorkload) {
	t.Helper()
	if n := w.anomalies.Load(); n > 0 {
		t.Errorf("%d UPDATEs did not hit exactly one row, e.g. %q", n, w.firstAnoms)
	}
	type leg struct {
		account, delta int64
		shard          string
	}
	balance := map[int64]int64{}
	home := map[int64]string{}
	legs := map[int64][]leg{}
	for _, sh := range names {
		ctx := ctxT(t, 20*time.Second)
		rows, err := direct[sh].Query(ctx, "SELECT id, balance FROM crash_accounts")
		if err != nil {
			t.Fatalf("shard %s: %v", sh, err)
		}
		var id, bal int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &bal}, func() error {
			balance[id], home[id] = bal, sh
			return nil
		}); err != nil {
			t.Fatalf("shard %s: %v", sh, err)
		}
		rows, err = direct[sh].Query(ctx, "SELECT transfer_id, account_id, delta FROM crash_legs")
		if err != nil {
			t.Fatalf("shard %s: %v", sh, err)
		}
		var tid, acc, delta int64
		if _, err := pgx.ForEachRow(rows, []any{&tid, &acc, &delta}, func() error {
			legs[tid] = append(legs[tid], leg{acc, delta, sh})
			return nil
		}); err != nil {
			t.Fatalf("shard %s: %v", sh, err)
		}
	}
	if len(balance) != crashAccounts {
		t.Errorf("%d accounts on the shards, want %d", len(balance), crashAccounts)
	}

	var bad []string
	report := func(format string, args ...any) {
		if len(bad) < 20 {
			bad = append(bad, fmt.Sprintf(format, args...))
		} else if len(bad) == 20 {
			bad = append(bad, "...")
		}
	}
	count := map[crashOutcome]int{}
	landed := map[crashOutcome]int{}
	recorded := map[int64]bool{}
	for _, tr := range w.transfers {
		recorded[tr.id] = true
		count[tr.out]++
		got := legs[tr.id]
		switch len(got) {
		case 0:
			if tr.out == acked {
				report("transfer %d (%d -> %d): COMMIT was acknowledged but no leg is on any shard", tr.id, tr.from, tr.to)
			}
		case 2:
			landed[tr.out]++
			want := map[int64]int64{tr.from: -tr.amount, tr.to: tr.amount}
			for _, l := range got {
				if want[l.account] != l.delta {
					report("transfer %d: leg %+v does not match %d -> %d amount %d", tr.id, l, tr.from, tr.to, tr.amount)
				}
				if home[l.account] != l.shard {
					report("transfer %d: leg for account %d is on %s, the account on %s", tr.id, l.account, l.shard, home[l.account])
				}
			}
			if got[0].account == got[1].account {
				report("transfer %d: both legs are for account %d", tr.id, got[0].account)
			}
			if tr.out == neverCommitted || tr.out == rolledBack {
				report("transfer %d (%d -> %d): client was told %s (%s) but it committed", tr.id, tr.from, tr.to, tr.out, tr.err)
			}
		default:
			report("transfer %d (%d -> %d, client was told %s %s): NOT ALL-OR-NOTHING, %d legs on the shards: %+v",
				tr.id, tr.from, tr.to, tr.out, tr.err, len(got), got)
		}
	}
	for tid, got := range legs {
		if !recorded[tid] {
			report("legs of transfer %d that no client ran: %+v", tid, got)
		}
	}

	// Balances follow the legs exactly, and money is neither made nor lost.
	sumLegs := map[int64]int64{}
	for _, got := range legs {
		for _, l := range got {
			sumLegs[l.account] += l.delta
		}
	}
	var total int64
	var ids []int64
	for id := range balance {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		total += balance[id]
		if want := crashBalance + sumLegs[id]; balance[id] != want {
			report("account %d on %s: balance %d, but 1000 plus its legs is %d", id, home[id], balance[id], want)
		}
	}
	if want := int64(crashAccounts * crashBalance); total != want {
		report("total balance %d, want %d", total, want)
	}

	t.Logf("transfers: %d acknowledged, %d never committed, %d rolled back at COMMIT, %d unknown (of which %d landed); %d with legs on the shards",
		count[acked], count[neverCommitted], count[rolledBack], count[unknown], landed[unknown], len(legs))
	if landed[acked] != count[acked] {
		report("%d acknowledged transfers landed, want %d", landed[acked], count[acked])
	}
	if len(bad) > 0 {
		t.Errorf("invariants broken:\n  %s", strings.Join(bad, "\n  "))
	}
	if count[acked] < 100 {
		t.Errorf("only %d transfers committed: too little load to mean anything", count[acked])
	}
}

// crashInDoubt is one shard's part of a transaction a killed proxy left
// prepared.
type crashInDoubt struct {
	shard, gid string
	xid        uint64 // full 64-bit transaction id on that shard
	decided    bool   // a commit decision was in the log right after the kill
}

// snapshotInDoubt lists, right after a kill and before the restart, what
// the dead proxy left prepared, with each part's transaction id and
// whether its commit decision is logged. The log is read after the
// shards: a decision seen then was written before the kill (the dead
// process's last INSERT may still land later; such GIDs count as
// undecided here and may go either way).
func snapshotInDoubt(t *testing.T, names []string, direct map[string]*pgx.Conn) []crashInDoubt {
	t.Helper()
	var out []crashInDoubt
	var gids []string
	for _, sh := range names {
		rows, err := direct[sh].Query(ctxT(t, 5*time.Second), `SELECT gid, transaction::text::bigint,
			pg_snapshot_xmax(pg_current_snapshot())::text::numeric::bigint
			FROM pg_prepared_xacts WHERE starts_with(gid, $1)`, crashGIDPrefix)
		if err != nil {
			t.Fatalf("shard %s: pg_prepared_xacts: %v", sh, err)
		}
		var gid string
		var xid, next int64
		if _, err := pgx.ForEachRow(rows, []any{&gid, &xid, &next}, func() error {
			// pg_prepared_xacts shows a 32-bit xid; pg_xact_status wants
			// the 64-bit one: the xid within 2^31 of the snapshot's xmax
			// (a prepared transaction can be newer than xmax, which is
			// the oldest xid not yet completed plus one).
			full := uint64(next)&^0xffffffff | uint64(xid)
			if full > uint64(next)+1<<31 && full >= 1<<32 {
				full -= 1 << 32
			} else if full+1<<31 < uint64(next) {
				full += 1 << 32
			}
			out = append(out, crashInDoubt{shard: sh, gid: gid, xid: full})
			gids = append(gids, gid)
			return nil
		}); err != nil {
			t.Fatalf("shard %s: pg_prepared_xacts: %v", sh, err)
		}
	}
	if len(gids) == 0 {
		return nil
	}
	// The metadata database is the default shard's primary: the first.
	rows, err := direct[names[0]].Query(ctxT(t, 5*time.Second),
		"SELECT gid FROM shardproxy.twophase_decisions WHERE committed AND gid = ANY($1)", gids)
	if err != nil {
		t.Fatalf("read the decision log: %v", err)
	}
	decided, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read the decision log: %v", err)
	}
	for i := range out {
		out[i].decided = slices.Contains(decided, out[i].gid)
	}
	return out
}

// verifyInDoubtOutcomes checks, from PostgreSQL's own commit log, how
// recovery finished what the killed proxies left prepared: every part of a
// GID the same way, and committed wherever the decision was logged.
func verifyInDoubtOutcomes(t *testing.T, direct map[string]*pgx.Conn, inDoubt map[string]crashInDoubt) {
	t.Helper()
	status := map[string]map[string]string{} // gid -> shard -> status
	decided := map[string]bool{}
	for _, x := range inDoubt {
		var st *string
		if err := direct[x.shard].QueryRow(ctxT(t, 5*time.Second), "SELECT pg_xact_status($1::text::xid8)", fmt.Sprint(x.xid)).Scan(&st); err != nil {
			t.Fatalf("shard %s: pg_xact_status(%d) of %s: %v", x.shard, x.xid, x.gid, err)
		}
		s := "unknown"
		if st != nil {
			s = *st
		}
		if status[x.gid] == nil {
			status[x.gid] = map[string]string{}
		}
		status[x.gid][x.shard] = s
		decided[x.gid] = decided[x.gid] || x.decided
	}
	counts := map[string]int{}
	var bad []string
	for gid, parts := range status {
		var first string
		mixed := false
		for _, s := range parts {
			if first == "" {
				first = s
			} else if s != first {
				mixed = true
			}
		}
		switch {
		case mixed:
			bad = append(bad, fmt.Sprintf("%s finished differently on its shards: %v", gid, parts))
		case first != "committed" && first != "aborted":
			bad = append(bad, fmt.Sprintf("%s is %q on %v", gid, first, parts))
		case decided[gid] && first != "committed":
			bad = append(bad, fmt.Sprintf("%s had its commit decision logged but was %s on %v", gid, first, parts))
		}
		if decided[gid] {
			first += " (decided)"
		}
		counts[first]++
	}
	t.Logf("in-doubt transactions left by the kills, by outcome: %v", counts)
	if len(bad) > 0 {
		slices.Sort(bad)
		t.Errorf("recovery finished in-doubt transactions wrongly:\n  %s", strings.Join(bad, "\n  "))
	}
}

// preparedGIDs lists the prepared transactions of any shardproxy
// coordinator on one shard.
func preparedGIDs(t *testing.T, c *pgx.Conn) []string {
	t.Helper()
	rows, err := c.Query(ctxT(t, 5*time.Second), "SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, $1) ORDER BY gid", crashGIDPrefix)
	if err != nil {
		t.Fatalf("pg_prepared_xacts: %v", err)
	}
	gids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("pg_prepared_xacts: %v", err)
	}
	return gids
}

func intsTo64(xs []int) []int64 {
	out := make([]int64, len(xs))
	for i, x := range xs {
		out[i] = int64(x)
	}
	return out
}

// buildShardproxy builds the shardproxy binary as a user would run it.
func buildShardproxy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shardproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/shardproxy/shardproxy/cmd/shardproxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go build shardproxy: %v\n%s", err, out)
	}
	return bin
}

func crashFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// writeCrashConfig writes the YAML a user would: the app user, the
// cluster's primaries, crash_accounts and crash_legs sharded by account.
func writeCrashConfig(t *testing.T, path, listen string, names []string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %q\n", listen)
	fmt.Fprintf(&b, "admin:\n  listen: %q\n", "127.0.0.1:0")
	fmt.Fprintf(&b, "users:\n  - name: %q\n    password: %q\n    auth: scram-sha-256\n", localcluster.AppUser, localcluster.AppPassword)
	fmt.Fprintf(&b, "pool:\n  size: %d\n", crashWorkers+4)
	b.WriteString("shards:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  - name: %q\n    primary: %q\n", n, cluster.Primary(n).DSN(localcluster.AppDatabase))
	}
	b.WriteString("sharding:\n  tables:\n")
	b.WriteString("    - name: crash_accounts\n      key: id\n")
	b.WriteString("    - name: crash_legs\n      key: account_id\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(path); err != nil {
		t.Fatalf("config:\n%s\n%v", b.String(), err)
	}
}

// crashProcs runs successive `shardproxy serve` processes, one at a time.
type crashProcs struct {
	t      *testing.T
	bin    string
	config string

	mu    sync.Mutex
	procs []*crashProc
}

type crashProc struct {
	n       int
	cmd     *exec.Cmd
	started time.Time
	ready   chan struct{}
	exited  chan struct{}
	log     *crashLog
}

// crashLog keeps a process's stderr and notices the line saying it listens.
type crashLog struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	ready   chan struct{}
	once    sync.Once
}

func (l *crashLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		if bytes.Contains(l.partial[:i], []byte(`msg="shardproxy listening"`)) {
			l.once.Do(func() { close(l.ready) })
		}
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *crashLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// start runs a new proxy and waits until it listens.
func (ps *crashProcs) start() {
	t := ps.t
	t.Helper()
	ps.mu.Lock()
	p := &crashProc{n: len(ps.procs) + 1, ready: make(chan struct{}), exited: make(chan struct{})}
	p.log = &crashLog{ready: p.ready}
	p.cmd = exec.Command(ps.bin, "serve", "--config", ps.config, "--log-level", "info")
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		ps.mu.Unlock()
		t.Fatalf("start shardproxy: %v", err)
	}
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case <-p.ready:
		t.Logf("proxy #%d (pid %d) listening after %s", p.n, p.cmd.Process.Pid, time.Since(p.started).Round(time.Millisecond))
	case <-p.exited:
		t.Fatalf("proxy #%d exited before listening (%v):\n%s", p.n, p.cmd.ProcessState, p.log)
	case <-time.After(20 * time.Second):
		t.Fatalf("proxy #%d not listening within 20 s:\n%s", p.n, p.log)
	}
}

func (ps *crashProcs) current() *crashProc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.procs[len(ps.procs)-1]
}

// kill sends SIGKILL to the running proxy, by its PID, and reaps it.
func (ps *crashProcs) kill() {
	t := ps.t
	t.Helper()
	p := ps.current()
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", p.cmd.Process.Pid, err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("proxy #%d (pid %d) still running 10 s after SIGKILL", p.n, p.cmd.Process.Pid)
	}
}

// resolved counts the in-doubt transactions recovery reports it finished,
// over every process's log.
func (ps *crashProcs) resolved() (committed, rolledBack int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.procs {
		for _, line := range strings.Split(p.log.String(), "\n") {
			if !strings.Contains(line, `msg="twophase: resolved in-doubt transaction"`) {
				continue
			}
			if strings.Contains(line, "committed=true") {
				committed++
			} else {
				rolledBack++
			}
		}
	}
	return committed, rolledBack
}

// cleanup stops the last proxy (SIGTERM, then SIGKILL), and on failure
// shows every proxy's log and what is still prepared.
func (ps *crashProcs) cleanup() {
	t := ps.t
	ps.mu.Lock()
	procs := slices.Clone(ps.procs)
	ps.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.exited:
			continue
		default:
		}
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			t.Errorf("proxy #%d (pid %d) ignored SIGTERM for 15 s; killing it", p.n, p.cmd.Process.Pid)
			_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	if !t.Failed() && os.Getenv("E2E_PROXY_LOG") == "" {
		return
	}
	for _, p := range procs {
		t.Logf("---- proxy #%d (pid %d) log ----\n%s", p.n, p.cmd.Process.Pid, p.log)
	}
	for _, n := range shardNames() {
		c, err := pgx.Connect(context.Background(), cluster.Primary(n).DSN(localcluster.AppDatabase))
		if err != nil {
			continue
		}
		rows, err := c.Query(context.Background(), "SELECT gid, prepared::text FROM pg_prepared_xacts ORDER BY prepared")
		if err == nil {
			var gid, at string
			_, _ = pgx.ForEachRow(rows, []any{&gid, &at}, func() error {
				t.Logf("still prepared on %s: %s (since %s)", n, gid, at)
				return nil
			})
		}
		_ = c.Close(context.Background())
	}
}
