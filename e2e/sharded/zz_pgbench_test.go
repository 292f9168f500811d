package sharded

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardproxy/shardproxy/proxy"
)

// Named to sort last: the load it leaves behind would slow other tests.

var (
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func runPgbench(t *testing.T, srv *proxy.Server, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	h, p, _ := net.SplitHostPort(srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"-h", h, "-p", p, "-U", "app"}, args...)
	full = append(full, "app")
	cmd := exec.CommandContext(ctx, "/usr/bin/pgbench", full...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PGPASSWORD=app", "PGCONNECT_TIMEOUT=5", "PGSSLMODE=disable")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestPgbenchTwoShards is the sharding acceptance run: through a proxy
// over two shards, pgbench -i -s 10 splits pgbench_accounts by aid
// (each shard 40-60%), then tpcb-like, -S and -N in every query mode
// with 16 clients run without a failed transaction; afterwards the
// tpcb-like balance invariant holds summed over both shards, and no
// prepared transaction is left behind. E2E_PGBENCH_SECONDS sets the
// length of each run (default 5; the acceptance figure is 20).
func TestPgbenchTwoShards(t *testing.T) {
	secs := envInt("E2E_PGBENCH_SECONDS", 5)
	srv := startProxy(t, 2, nil)
	start := time.Now()
	if out, err := runPgbench(t, srv, 5*time.Minute, "-i", "-s", "10", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	t.Logf("pgbench -i -s 10 through 2 shards: %v", time.Since(start).Round(time.Millisecond))
	counts := onShards(t, 2, "SELECT count(*) FROM pgbench_accounts")
	if sum(counts) != 1000000 {
		t.Fatalf("pgbench_accounts rows per shard %s, want 1000000 in total", joinInts(counts))
	}
	for _, n := range counts {
		if n < 400000 || n > 600000 {
			t.Fatalf("pgbench_accounts split %s: each shard should hold 40-60%%", joinInts(counts))
		}
	}
	t.Logf("pgbench_accounts per shard: %s", joinInts(counts))

	bench := func(mode string, extra ...string) int {
		t.Helper()
		args := append([]string{"-M", mode, "-c", "16", "-j", "2", "-T", strconv.Itoa(secs)}, extra...)
		out, err := runPgbench(t, srv, time.Duration(secs)*time.Second+2*time.Minute, args...)
		if err != nil {
			t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		m, f, s := reProcessed.FindStringSubmatch(out), reFailed.FindStringSubmatch(out), reTPS.FindStringSubmatch(out)
		if m == nil || f == nil || s == nil {
			t.Fatalf("cannot parse pgbench output:\n%s", out)
		}
		processed, _ := strconv.Atoi(m[1])
		failed, _ := strconv.Atoi(f[1])
		t.Logf("pgbench %s: processed=%d failed=%d tps=%s", strings.Join(args, " "), processed, failed, s[1])
		if failed != 0 || processed == 0 {
			t.Errorf("pgbench %s: %d failed, %d processed:\n%s", strings.Join(args, " "), failed, processed, out)
		}
		return processed
	}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		bench(mode, "-n")
	}
	var acc, tel, br, delta int64
	for _, name := range shardNames()[:2] {
		c := connectShard(t, name)
		acc += queryInt(t, c, "SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts")
		tel += queryInt(t, c, "SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers")
		br += queryInt(t, c, "SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches")
		delta += queryInt(t, c, "SELECT coalesce(sum(delta), 0) FROM pgbench_history")
	}
	t.Logf("balances over both shards: accounts=%d tellers=%d branches=%d history=%d", acc, tel, br, delta)
	if acc != tel || tel != br || br != delta {
		t.Errorf("balance invariant broken across shards: accounts=%d tellers=%d branches=%d history=%d", acc, tel, br, delta)
	}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		bench(mode, "-S", "-n")
		bench(mode, "-N", "-n")
	}
	if n := sum(onShards(t, 2, "SELECT count(*) FROM pg_prepared_xacts")); n != 0 {
		t.Errorf("%d prepared transactions left behind", n)
	}
}
