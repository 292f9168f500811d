package rebalance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/admin"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestRebalanceUnderPgbench is the acceptance run of online rebalancing:
// pgbench tpcb-like with 8 clients writes through the proxy while the
// spare is added and the slots are spread evenly over three shards. No
// transaction may fail, no client may abort, and afterwards:
//
//   - the tpcb-like invariant holds through the proxy and the history has
//     one row per processed transaction;
//   - on every primary, read directly, every row of every sharded table
//     sits on the shard that owns its slot in the final map, and the rows
//     over the three primaries add up to what the proxy counts;
//   - no publication, subscription or replication slot of the rebalance
//     is left on any node (replicas included);
//   - the status says done and every move verified;
//   - no transaction took 1 s or more (pgbench's per-transaction log).
//
// E2E_REBALANCE_PGBENCH_SECONDS sets pgbench's -T (default 40); the
// rebalance must end at least 2 s before pgbench does.
func TestRebalanceUnderPgbench(t *testing.T) {
	needBinaries(t)
	secs := envInt("E2E_REBALANCE_PGBENCH_SECONDS", 40)
	d := newDev(t, 2, 1, 1)
	d.start()
	spare := d.node("spare0", "spare")

	d.pgbenchInit(2)
	before := d.appTotals()
	checkInvariant(t, before)
	if before.Counts["pgbench_accounts"] != 200000 || before.Counts["pgbench_history"] != 0 {
		t.Fatalf("after pgbench -i -s 2: %v", before.Counts)
	}
	_, slots0 := d.assignment()
	t.Logf("slots per shard before: %v", slotCounts(slots0))

	// The load.
	logPrefix := filepath.Join(t.TempDir(), "tx")
	benchArgs := []string{"-n", "-c", "8", "-j", "2", "-M", "prepared", "-T", strconv.Itoa(secs),
		"-l", "--log-prefix", logPrefix}
	benchDone := make(chan pgbenchResult, 1)
	benchStart := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+3*time.Minute)
		defer cancel()
		benchDone <- d.pgbench(ctx, benchArgs...)
	}()
	time.Sleep(2 * time.Second)

	out := d.mustCtl(30*time.Second, "shard", "add", "--name", "spare0", "--primary", spare.DSN)
	t.Logf("shardctl shard add: %s", strings.TrimSpace(out))
	if out, err := d.ctl(30*time.Second, "rebalance", "plan", "--even", "--json"); err != nil {
		t.Errorf("shardctl rebalance plan --even --json: %v\n%s", err, out)
	} else {
		var p admin.Plan
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Errorf("rebalance plan --json: %v\n%s", err, out)
		}
		for _, m := range p.Moves {
			t.Logf("plan: %s -> %s: %d slots, ~%d rows, ~%d bytes", m.From, m.To, len(m.Slots), m.Rows, m.Bytes)
		}
		t.Logf("plan: before %v after %v", p.Before, p.After)
	}

	// Fan-out reads through the proxy during the whole rebalance: the
	// number of accounts never changes, so every count must be exactly
	// 200000: a row seen twice (on its old and new shard) or missed (on
	// neither) would show.
	readStop := make(chan struct{})
	readDone := make(chan []string, 1)
	go func() {
		var bad []string
		reads := 0
		conn, err := pgx.Connect(context.Background(), d.appDSN())
		if err != nil {
			readDone <- []string{"connect: " + err.Error()}
			return
		}
		defer conn.Close(context.Background())
		for {
			select {
			case <-readStop:
				readDone <- append(bad, fmt.Sprintf("(%d fan-out reads)", reads))
				return
			default:
			}
			var n int64
			err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pgbench_accounts").Scan(&n)
			reads++
			switch {
			case err != nil:
				bad = append(bad, "read: "+err.Error())
			case n != 200000:
				bad = append(bad, fmt.Sprintf("count(*) of pgbench_accounts = %d at %s", n, time.Now().Format("15:04:05.000")))
			}
			if len(bad) > 20 {
				readDone <- bad
				<-readStop
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	rbStart := time.Now()
	out, err := d.ctl(time.Duration(secs)*time.Second+3*time.Minute, "rebalance", "start", "--even", "--wait")
	rbEnd := time.Now()
	close(readStop)
	if res := <-readDone; len(res) > 1 {
		t.Errorf("fan-out reads during the rebalance saw rows twice or not at all: %v", res)
	} else {
		t.Logf("fan-out reads during the rebalance: all exact %v", res)
	}
	t.Logf("shardctl rebalance start --even --wait: %s after pgbench started, took %s, exit %v; output:\n%s",
		rbStart.Sub(benchStart).Round(time.Millisecond), rbEnd.Sub(rbStart).Round(time.Millisecond), err, lastLines(out, 15))
	if err != nil {
		st, serr := d.status(ctxT(t, 10*time.Second))
		t.Errorf("shardctl rebalance start --even --wait failed: %v (status: %s, %v)", err, brief(st), serr)
	}

	var r pgbenchResult
	select {
	case r = <-benchDone:
		t.Errorf("pgbench (-T %d) ended before the rebalance finished: raise E2E_REBALANCE_PGBENCH_SECONDS", secs)
	default:
		r = <-benchDone
		if r.end.Sub(rbEnd) < 2*time.Second {
			t.Logf("note: pgbench ran only %s after the rebalance ended", r.end.Sub(rbEnd).Round(time.Millisecond))
		}
	}
	t.Logf("%s", r)
	if !r.ok() {
		t.Errorf("pgbench during the rebalance: exit %v, processed %d, failed %d, aborted %v; output:\n%s",
			r.err, r.processed, r.failed, r.aborted, r.out)
	}

	// The data.
	after := d.appTotals()
	checkInvariant(t, after)
	if r.processed > 0 && after.Counts["pgbench_history"] != r.processed {
		t.Errorf("pgbench_history has %d rows through the proxy, pgbench processed %d transactions",
			after.Counts["pgbench_history"], r.processed)
	}
	for _, tb := range []string{"pgbench_accounts", "pgbench_tellers", "pgbench_branches"} {
		if after.Counts[tb] != before.Counts[tb] {
			t.Errorf("%s: %d rows before, %d after", tb, before.Counts[tb], after.Counts[tb])
		}
	}
	d.checkPlacement(after.Counts)
	_, slots1 := d.assignment()
	per := slotCounts(slots1)
	t.Logf("slots per shard after: %v", per)
	for _, name := range []string{"shard0", "shard1", "spare0"} {
		if even := len(slots1) / 3; per[name] < even || per[name] > even+1 {
			t.Errorf("after rebalance --even: %s owns %d slots, want %d or %d (map %v)", name, per[name], even, even+1, per)
		}
	}
	d.checkNoLeftovers()

	st := d.ctlStatus()
	t.Logf("final status: %s", brief(st))
	logJournal(t, st)
	if st.State != "done" {
		t.Errorf("rebalance status: state %q, want done (error %q)", st.State, st.Error)
	}
	if len(st.Moves) == 0 {
		t.Errorf("rebalance status lists no moves")
	}
	for i, m := range st.Moves {
		t.Logf("move %d %s -> %s: %d slots, %d rows copied of %d, %d cleaned, write pause %.1f ms, verified %v",
			i, m.From, m.To, len(m.Slots), m.RowsCopied, m.RowsTotal, m.RowsCleaned, m.PauseMillis, m.Verified)
		if !m.Verified || m.VerifyError != "" {
			t.Errorf("move %d %s -> %s not verified (phase %s, verify_error %q)", i, m.From, m.To, m.Phase, m.VerifyError)
		}
	}

	// Latency from pgbench's per-transaction log.
	lat, failedLines, err := readTxLogs(logPrefix)
	if err != nil {
		t.Fatalf("pgbench log: %v", err)
	}
	if failedLines > 0 {
		t.Errorf("pgbench log has %d failed/skipped transactions", failedLines)
	}
	if int64(len(lat)) != r.processed {
		t.Logf("note: %d transactions in the log, %d processed per pgbench's summary", len(lat), r.processed)
	}
	if len(lat) == 0 {
		t.Fatal("no transactions in pgbench's log")
	}
	maxLat := lat[len(lat)-1]
	t.Logf("transaction latency over %d transactions: p50 %s, p99 %s, p99.9 %s, max %s (client %d, ended %s, %s after the rebalance started)",
		len(lat), percentile(lat, 50), percentile(lat, 99), percentile(lat, 99.9), maxLat.latency, maxLat.client,
		maxLat.end.Format("15:04:05.000"), maxLat.end.Sub(rbStart).Round(time.Millisecond))
	var during []txLatency
	for _, l := range lat {
		if !l.end.Before(rbStart) && !l.end.After(rbEnd) {
			during = append(during, l)
		}
	}
	if len(during) > 0 {
		t.Logf("while the rebalance ran (%d transactions): p99 %s, max %s", len(during), percentile(during, 99), during[len(during)-1].latency)
	}
	var baseline []txLatency
	for _, l := range lat {
		if l.end.Before(rbStart) {
			baseline = append(baseline, l)
		}
	}
	if len(baseline) > 0 {
		t.Logf("before the rebalance (%d transactions, includes the shard add): p99 %s, max %s", len(baseline), percentile(baseline, 99), baseline[len(baseline)-1].latency)
	}
	// Transactions overlapping each cutover (journal: cutover entry to the
	// move's next entry).
	for i, n := range st.Log {
		if n.Phase != "cutover" {
			continue
		}
		until := n.At.Add(time.Second)
		for _, m := range st.Log[i+1:] {
			if m.Move == n.Move {
				until = m.At
				break
			}
		}
		var worst time.Duration
		var count int
		for _, l := range lat {
			if l.end.After(n.At) && l.end.Add(-l.latency).Before(until) {
				count++
				worst = max(worst, l.latency)
			}
		}
		t.Logf("cutover of move %d (%s, %s): %d transactions overlapped it, the longest took %s",
			n.Move, n.At.Format("15:04:05.000"), until.Sub(n.At).Round(time.Millisecond), count, worst)
	}
	var top []string
	for i := len(lat) - 1; i >= 0 && i >= len(lat)-5; i-- {
		top = append(top, fmt.Sprintf("%s@%s", lat[i].latency, lat[i].end.Format("15:04:05.000")))
	}
	t.Logf("slowest 5 transactions (latency@end): %s", strings.Join(top, ", "))
	if maxLat.latency >= time.Second {
		t.Errorf("longest transaction took %s: the bound is 1 s", maxLat.latency)
	}
	t.Logf("longest transaction under 100 ms: %v", maxLat.latency < 100*time.Millisecond)
}
