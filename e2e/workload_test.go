package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/proxy"
)

// The pgbench acceptance run lives in its own file, named to sort last:
// go test runs files in name order, and the load it leaves behind
// (autovacuum, checkpoints on a 2-core machine) would otherwise slow the
// latency-sensitive tests that follow it.

// pgbenchResult is what we read from pgbench's summary.
type pgbenchResult struct {
	processed int
	failed    int
	tps       float64
}

var (
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
)

func parsePgbench(t testing.TB, out string) pgbenchResult {
	t.Helper()
	var r pgbenchResult
	m := reProcessed.FindStringSubmatch(out)
	f := reFailed.FindStringSubmatch(out)
	s := reTPS.FindStringSubmatch(out)
	if m == nil || f == nil || s == nil {
		t.Fatalf("cannot parse pgbench output:\n%s", out)
	}
	r.processed, _ = strconv.Atoi(m[1])
	r.failed, _ = strconv.Atoi(f[1])
	r.tps, _ = strconv.ParseFloat(s[1], 64)
	return r
}

// TestPgbench is the acceptance run: pgbench -i -s 10, then every built-in
// script in every query mode, 16 clients, no failed transaction, and the
// tpcb-like balance invariant holds afterwards (every committed
// transaction applied all of its four writes exactly once).
// E2E_PGBENCH_SECONDS shortens each run (default 10).
func TestPgbench(t *testing.T) {
	secs := envInt("E2E_PGBENCH_SECONDS", 10)
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 0 }) // the default size, 20

	start := time.Now()
	runTool(t, 3*time.Minute, srv, "app", "pgbench", "-i", "-s", "10", "-q")
	t.Logf("pgbench -i -s 10: %v", time.Since(start).Round(time.Millisecond))

	modes := []string{"simple", "extended", "prepared"}
	runTimeout := time.Duration(secs)*time.Second + 90*time.Second
	bench := func(mode string, extra ...string) pgbenchResult {
		t.Helper()
		args := append([]string{"-M", mode, "-c", "16", "-j", "2", "-T", strconv.Itoa(secs)}, extra...)
		// If pgbench overruns -T by 30s, record what the primary and the
		// proxy's pools are doing while it hangs, for the bug report.
		watchdog := time.AfterFunc(time.Duration(secs+30)*time.Second, func() {
			t.Logf("pgbench %s still running %ds after -T %d; primary activity:\n%s\nproxy pools: %s",
				strings.Join(args, " "), 30, secs, activityDump(), poolDump(srv))
		})
		out, err := runToolErr(t, runTimeout, srv, "app", "pgbench", args...)
		watchdog.Stop()
		if err != nil {
			t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		r := parsePgbench(t, out)
		t.Logf("pgbench %s: processed=%d failed=%d tps=%.1f", strings.Join(args, " "), r.processed, r.failed, r.tps)
		if r.failed != 0 || r.tps <= 0 || r.processed <= 0 {
			t.Errorf("pgbench %s: %d failed transactions, tps %.1f, processed %d; output:\n%s",
				strings.Join(args, " "), r.failed, r.tps, r.processed, out)
		}
		return r
	}

	// tpcb-like first and with -n: without -n pgbench truncates
	// pgbench_history before each run, and -N leaves tellers and branches
	// alone, either of which would break the invariant below.
	tpcb := 0
	for _, mode := range modes {
		tpcb += bench(mode, "-n").processed
	}

	// Checked on the primary itself, not through the proxy under test.
	su := connectPrimary(t)
	var acc, tel, br, delta, hist int64
	if err := su.QueryRow(ctxT(t, 30*time.Second), `SELECT
		(SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
		(SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
		(SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),
		(SELECT coalesce(sum(delta), 0) FROM pgbench_history),
		(SELECT count(*) FROM pgbench_history)`).Scan(&acc, &tel, &br, &delta, &hist); err != nil {
		t.Fatal(err)
	}
	t.Logf("balances: accounts=%d tellers=%d branches=%d history=%d (rows %d, pgbench counted %d)", acc, tel, br, delta, hist, tpcb)
	if acc != tel || tel != br || br != delta {
		t.Errorf("balance invariant broken: sum(abalance)=%d sum(tbalance)=%d sum(bbalance)=%d sum(delta)=%d", acc, tel, br, delta)
	}
	if hist == 0 {
		t.Errorf("pgbench_history is empty after %d tpcb-like transactions", tpcb)
	}

	// Read-only, then simple-update. The first -S run goes without -n, so
	// pgbench's own VACUUM and TRUNCATE also pass through the proxy.
	for i, mode := range modes {
		if i == 0 {
			bench(mode, "-S")
		} else {
			bench(mode, "-S", "-n")
		}
	}
	for _, mode := range modes {
		bench(mode, "-N", "-n")
	}
	t.Logf("pgbench total: %v", time.Since(start).Round(time.Second))
}

// activityDump lists the primary's client backends, to diagnose a hang.
func activityDump() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, primary().DSN("app"))
	if err != nil {
		return err.Error()
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, `SELECT pid, coalesce(state, ''), coalesce(wait_event_type || ':' || wait_event, ''),
		coalesce(now() - xact_start, '0')::text, coalesce(pg_blocking_pids(pid)::text, ''), left(query, 80)
		FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid() ORDER BY xact_start NULLS LAST`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var pid int32
		var state, wait, age, blockers, query string
		if err := rows.Scan(&pid, &state, &wait, &age, &blockers, &query); err != nil {
			return err.Error()
		}
		fmt.Fprintf(&b, "  pid=%d state=%q wait=%q xact_age=%s blocked_by=%s query=%q\n", pid, state, wait, age, blockers, query)
	}
	return b.String()
}

// poolDump renders the proxy's pool counters.
func poolDump(srv *proxy.Server) string {
	var parts []string
	for _, p := range srv.Pools().All() {
		st := p.Stats()
		parts = append(parts, fmt.Sprintf("%s/%s@%s idle=%d active=%d waiting=%d max=%d",
			p.Key.User, p.Key.Database, p.Key.Node, st.Idle, st.Active, st.Waiting, st.MaxSize))
	}
	return strings.Join(parts, "; ")
}
