package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/localcluster"
)

const (
	readClients = 16
	// detectBound: the replica monitor probes every 250 ms with a 600 ms
	// timeout, so a dead or stalled node is reported within about a
	// second; this leaves room for a loaded 2-core machine.
	detectBound = 3 * time.Second
)

// watchUnhealthy polls the node's shardproxy_node_up until it reads 0 and
// reports when that happened (zero time if never before done closes).
func watchUnhealthy(p *proxyProc, n *localcluster.Node, done <-chan struct{}) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		defer close(ch)
		for {
			if v, ok := p.metric("shardproxy_node_up", nodeLabel(n)); ok && v == 0 {
				ch <- time.Now()
				return
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return ch
}

// checkUnhealthyReported: the log says the node went unhealthy (within
// detectBound of the fault) and the metric showed it.
func checkUnhealthyReported(t *testing.T, p *proxyProc, n *localcluster.Node, fault time.Time, metricAt time.Time) {
	t.Helper()
	line, ok := p.log.find(fault, `msg="replica: node unhealthy"`, "node="+n.Addr())
	switch {
	case !ok:
		t.Errorf("the proxy log has no %q line for %s after the fault", "replica: node unhealthy", n.Addr())
	case line.at.Sub(fault) > detectBound:
		t.Errorf("unhealthy logged %s after the fault, want within %s", line.at.Sub(fault).Round(time.Millisecond), detectBound)
	default:
		t.Logf("log, %s after the fault: %s", line.at.Sub(fault).Round(time.Millisecond), line.text)
	}
	if metricAt.IsZero() {
		t.Errorf("shardproxy_node_up{%s} never read 0 during the fault", nodeLabel(n))
	} else {
		t.Logf("shardproxy_node_up{%s} = 0 %s after the fault", nodeLabel(n), metricAt.Sub(fault).Round(time.Millisecond))
	}
	// A counter too: an outage shorter than a scrape still shows.
	if v, ok := p.metric("shardproxy_node_down_total", nodeLabel(n)); !ok || v < 1 {
		t.Errorf("shardproxy_node_down_total{%s} = %v, want at least 1", nodeLabel(n), v)
	}
}

// checkReadsReturn: once n is back the proxy reports it healthy and sends
// it reads again, without a restart.
func checkReadsReturn(t *testing.T, p *proxyProc, n *localcluster.Node, back time.Time) {
	t.Helper()
	up := p.waitMetric(15*time.Second, n.Name+" healthy again", "shardproxy_node_up", func(v float64) bool { return v == 1 }, nodeLabel(n))
	if line, ok := p.log.find(back, `msg="replica: node healthy"`, "node="+n.Addr()); ok {
		t.Logf("log: %s", line.text)
	} else {
		t.Errorf("no %q log line for %s after it came back", "replica: node healthy", n.Addr())
	}
	before, _ := p.metric("shardproxy_replica_reads_total", nodeLabel(n))
	out, err := runPgbench(p, time.Minute, "-n", "-S", "-c", "4", "-j", "2", "-T", "2")
	if r := parseBench(out); err != nil || r.failed+r.aborted > 0 {
		t.Fatalf("pgbench -S after %s came back: %v\n%s", n.Name, err, out)
	}
	after, _ := p.metric("shardproxy_replica_reads_total", nodeLabel(n))
	if after <= before {
		t.Errorf("%s serves no reads after it came back: shardproxy_replica_reads_total %v -> %v", n.Name, before, after)
	} else {
		t.Logf("%s healthy %s after it came back; it served %v reads in a 2 s pgbench -S", n.Name, up.Round(time.Millisecond), after-before)
	}
}

// TestReplicaKill9UnderReads: kill -9 of a replica under 16 pgbench -S
// clients through both shards. Failed transactions (and aborted clients)
// are at most the 16 in flight; the proxy logs "replica: node unhealthy"
// and shardproxy_node_up drops to 0 for it; once the replica is started
// again it gets reads again (shardproxy_replica_reads_total grows), with
// the same proxy process.
func TestReplicaKill9UnderReads(t *testing.T) {
	cl := getCluster(t)
	p := startProxy(t, cl)
	pgbenchInit(t, cl, p)
	victim := cl.Replicas("shard0")[0]
	served, _ := p.metric("shardproxy_replica_reads_total", nodeLabel(victim))

	cmd, out := pgbenchCmd(p, ctxT(t, 2*time.Minute), "-n", "-S", "-c", "16", "-j", "2", "-T", "6", "-P", "1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	done := make(chan struct{})
	killed := time.Now()
	downAt := watchUnhealthy(p, victim, done)
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	close(done)
	r := parseBench(out.String())
	t.Logf("pgbench -S, 16 clients, replica %s killed after 2 s: tps %.0f, %d processed, %d failed, %d clients aborted",
		victim.Name, r.tps, r.processed, r.failed, r.aborted)
	if r.processed == 0 {
		t.Fatalf("pgbench processed nothing (%v):\n%s", err, out)
	}
	if r.failed+r.aborted > readClients {
		t.Errorf("%d failed transactions + %d aborted clients, want at most the %d in flight:\n%s", r.failed, r.aborted, readClients, out)
	}
	if after, _ := p.metric("shardproxy_replica_reads_total", nodeLabel(victim)); after <= served {
		t.Errorf("the victim served no reads before it was killed (%v -> %v): the test proves nothing", served, after)
	}
	checkUnhealthyReported(t, p, victim, killed, <-downAt)
	retried := p.log.count("replica failed during a read")
	t.Logf("log lines %q: %d", "replica failed during a read; running it on the primary", retried)
	if v, _ := p.metric("shardproxy_replica_read_retries_total", nodeLabel(victim)); int(v) != retried {
		t.Errorf("shardproxy_replica_read_retries_total{%s} = %v, the log says %d", nodeLabel(victim), v, retried)
	}

	back := time.Now()
	if err := victim.Start(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := victim.WaitStreaming(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	checkReadsReturn(t, p, victim, back)
}

// TestPrimaryKill9UnderWrites: kill -9 of shard1's primary (not shard0's,
// which holds the proxy's metadata database) under a write load of pgbench
// -N transactions from pgx clients keyed to each shard, plus pgbench
// tpcb-like itself. Transactions on shard1 fail with a clear error
// (SQLSTATE class 08/57) and never hang; shard0's go on without an error;
// after the primary is started again shard1 commits within seconds, with
// the same proxy process; no prepared transaction and no app session idle
// in transaction is left on any primary.
func TestPrimaryKill9UnderWrites(t *testing.T) {
	cl := getCluster(t)
	p := startProxy(t, cl)
	pgbenchInit(t, cl, p)
	victim := cl.Primary("shard1")
	aids := map[string][]int64{"shard0": aidsOn(t, cl, "shard0", 500), "shard1": aidsOn(t, cl, "shard1", 500)}
	w := startWriters(p.dsn(), true, 4, aids)
	defer func() {
		if !w.stopped() {
			w.halt()
		}
	}()
	// pgbench's own tpcb-like clients, which touch both shards: they may
	// abort on the first error (pgbench does that), but must not hang.
	bench, benchOut := pgbenchCmd(p, ctxT(t, 2*time.Minute), "-n", "-c", "4", "-j", "1", "-T", "6")
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	benchStarted := time.Now()

	time.Sleep(2 * time.Second)
	done := make(chan struct{})
	downAt := watchUnhealthy(p, victim, done)
	killed := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	restarted := time.Now()
	if err := victim.Start(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s restarted in %s", victim.Name, time.Since(restarted).Round(time.Millisecond))
	time.Sleep(4 * time.Second)
	w.halt()
	close(done)
	benchErr := bench.Wait()
	benchTook := time.Since(benchStarted)

	before0, before1 := w.window("shard0", time.Time{}, killed), w.window("shard1", time.Time{}, killed)
	down0, down1 := w.window("shard0", killed, restarted), w.window("shard1", killed, restarted)
	t.Logf("before the kill: shard0 %s | shard1 %s", before0, before1)
	t.Logf("primary down %s: shard0 %s | shard1 %s", restarted.Sub(killed).Round(time.Millisecond), down0, down1)
	t.Logf("after restart: shard0 %s | shard1 %s", w.window("shard0", restarted, time.Now()), w.window("shard1", restarted, time.Now()))
	if before1.ok == 0 || before0.ok == 0 {
		t.Fatalf("no commits before the kill: the load did not run")
	}
	if down0.ok == 0 || down0.failed > 0 {
		t.Errorf("shard0 while shard1's primary was down: %s; want commits and no error", down0)
	}
	if down1.failed == 0 {
		t.Errorf("shard1 while its primary was down: %s; want errors", down1)
	}
	for _, o := range w.inFlightAt("shard1", killed.Add(100*time.Millisecond)) {
		if o.err == nil && o.end.After(killed.Add(100*time.Millisecond)) && o.start.Before(killed) {
			// committed although the primary died under it: only possible
			// if it committed right at the kill instant.
			t.Logf("a shard1 transaction in flight at the kill committed: %s", o.took())
		}
	}
	if down1.maxTook > 5*time.Second {
		t.Errorf("a shard1 transaction took %s while its primary was down: want a clear error, not a hang", down1.maxTook)
	}
	w.mu.Lock()
	for _, o := range w.ops {
		if o.shard == "shard1" && o.err != nil && !o.start.Before(killed) && o.start.Before(restarted) {
			if c := sqlState(o.err); c != "" && !strings.HasPrefix(c, "08") && !strings.HasPrefix(c, "57") {
				t.Errorf("shard1 error while its primary was down is not a connection error: %s", errText(o.err))
			}
		}
	}
	w.mu.Unlock()
	if first, ok := w.firstOK("shard1", restarted); !ok {
		t.Errorf("no shard1 commit after its primary was restarted")
	} else {
		t.Logf("first shard1 commit %s after the restart began", first.Sub(restarted).Round(time.Millisecond))
		if first.Sub(restarted) > 10*time.Second {
			t.Errorf("shard1 commits again only %s after the restart", first.Sub(restarted))
		}
	}
	checkUnhealthyReported(t, p, victim, killed, <-downAt)
	p.waitAllUp(cl, 15*time.Second)

	br := parseBench(benchOut.String())
	t.Logf("pgbench tpcb-like (4 clients, -T 6) through the kill: ended after %s (%v), tps %.0f, %d processed, %d failed, %d clients aborted",
		benchTook.Round(time.Millisecond), benchErr, br.tps, br.processed, br.failed, br.aborted)
	for _, l := range abortLines(benchOut.String()) {
		t.Logf("  pgbench: %s", l)
	}
	if benchTook > 20*time.Second {
		t.Errorf("pgbench -T 6 took %s: something hung", benchTook)
	}
	if br.processed == 0 && br.aborted == 0 {
		t.Errorf("pgbench tpcb-like output unexpected:\n%s", benchOut)
	}
	errs0, _ := p.metric("shardproxy_errors_total", `class="08"`)
	t.Logf("shardproxy_errors_total{class=\"08\"} = %v, shardproxy_server_connect_errors_total = %v", errs0, func() float64 {
		v, _ := p.metric("shardproxy_server_connect_errors_total")
		return v
	}())
	took := waitNoLeftovers(t, cl, 10*time.Second)
	t.Logf("no prepared transaction and no app session idle in transaction on any primary %s after the load stopped", took.Round(time.Millisecond))

	// And a clean pgbench run through the same proxy process.
	out, err := runPgbench(p, time.Minute, "-n", "-c", "4", "-j", "2", "-T", "2")
	if r := parseBench(out); err != nil || r.failed+r.aborted > 0 || r.processed == 0 {
		t.Fatalf("pgbench tpcb-like after recovery: %v\n%s", err, out)
	} else {
		t.Logf("pgbench tpcb-like after recovery: tps %.0f, 0 failed", r.tps)
	}
}

// TestProxyKill9UnderLoad: kill -9 of the proxy under pgbench tpcb-like
// (two-phase commits across the shards) and -S load. The clients end
// (they do not hang), the servers drop the proxy's sessions (no app
// session idle in transaction within a few seconds), the proxy restarted
// with the same config serves pgbench again with no failure, and no
// prepared transaction is left once it has recovered. (TestCrash2PC in
// e2e/sharded checks the 2PC outcomes in depth.)
func TestProxyKill9UnderLoad(t *testing.T) {
	cl := getCluster(t)
	p := startProxy(t, cl)
	pgbenchInit(t, cl, p)
	writes, writesOut := pgbenchCmd(p, ctxT(t, 2*time.Minute), "-n", "-c", "8", "-j", "1", "-T", "60")
	reads, readsOut := pgbenchCmd(p, ctxT(t, 2*time.Minute), "-n", "-S", "-c", "8", "-j", "1", "-T", "60")
	for _, c := range []interface{ Start() error }{writes, reads} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second)
	inTx := 0
	for _, sh := range cl.ShardNames() {
		inTx += int(queryInt(t, cl.Primary(sh), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state <> 'idle'"))
	}
	pid := p.cmd.Process.Pid
	killed := time.Now()
	p.kill()
	t.Logf("killed the proxy (pid %d) with %d app sessions busy on the primaries", pid, inTx)
	ended := make(chan error, 2)
	go func() { ended <- writes.Wait() }()
	go func() { ended <- reads.Wait() }()
	for range 2 {
		select {
		case <-ended:
		case <-time.After(15 * time.Second):
			t.Fatalf("pgbench still running 15 s after the proxy was killed")
		}
	}
	t.Logf("both pgbench runs ended %s after the kill", time.Since(killed).Round(time.Millisecond))
	wr, rr := parseBench(writesOut.String()), parseBench(readsOut.String())
	t.Logf("before the kill: tpcb-like %d transactions, -S %d; clients aborted: %d and %d", wr.processed, rr.processed, wr.aborted, rr.aborted)

	// The servers notice the closed sockets.
	start := time.Now()
	for {
		n := 0
		for _, sh := range cl.ShardNames() {
			n += int(queryInt(t, cl.Primary(sh), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'"))
		}
		if n == 0 {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("%d app sessions still idle in transaction 5 s after the proxy died", n)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	prepared := 0
	for _, sh := range cl.ShardNames() {
		prepared += int(queryInt(t, cl.Primary(sh), "SELECT count(*) FROM pg_prepared_xacts"))
	}
	t.Logf("after the kill: no app session idle in transaction within %s; %d prepared transactions left for recovery", time.Since(start).Round(time.Millisecond), prepared)

	restart := time.Now()
	p.start()
	t.Logf("proxy restarted (pid %d), listening after %s", p.cmd.Process.Pid, time.Since(restart).Round(time.Millisecond))
	out, err := runPgbench(p, time.Minute, "-n", "-c", "8", "-j", "2", "-T", "3")
	if r := parseBench(out); err != nil || r.failed+r.aborted > 0 || r.processed == 0 {
		t.Fatalf("pgbench tpcb-like after the restart: %v\n%s", err, out)
	} else {
		t.Logf("pgbench tpcb-like after the restart: tps %.0f, %d processed, 0 failed", r.tps, r.processed)
	}
	took := waitNoLeftovers(t, cl, 10*time.Second)
	t.Logf("no leftovers %s after the restart's pgbench (%s after restart); recovery log lines: %d",
		took.Round(time.Millisecond), time.Since(restart).Round(time.Millisecond), p.log.count("twophase: resolved in-doubt transaction"))
}

// TestReplicaStalled: SIGSTOP of a replica (postmaster and every backend)
// for 5 s, well past the health check's 600 ms timeout, under 16 pgbench
// -S clients. Right behavior: the proxy reports the node unhealthy, new
// reads go to the primary, and reads that were in flight on the stalled
// node are given up and run elsewhere (or fail: at most the 16 in
// flight), so no transaction waits for the stall to end (pgbench -L 3000
// counts none above 3 s) and throughput never drops to zero for a whole
// second after detection. After SIGCONT the node serves reads again.
func TestReplicaStalled(t *testing.T) {
	cl := getCluster(t)
	p := startProxy(t, cl)
	pgbenchInit(t, cl, p)
	victim := cl.Replicas("shard0")[0]
	const stall = 5 * time.Second
	cmd, out := pgbenchCmd(p, ctxT(t, 2*time.Minute), "-n", "-S", "-c", "16", "-j", "2", "-T", "10", "-P", "1", "-L", "3000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	benchStart := time.Now()
	time.Sleep(2 * time.Second)
	done := make(chan struct{})
	downAt := watchUnhealthy(p, victim, done)
	stopped := time.Now()
	thaw := freeze(t, victim)
	time.Sleep(stall)
	thawed := time.Now()
	thaw()
	err := cmd.Wait()
	close(done)
	r := parseBench(out.String())
	t.Logf("pgbench -S, 16 clients, %s stopped for %s from t=%.1fs: tps %.0f, %d processed, %d failed, %d aborted, %d above 3 s (%v)",
		victim.Name, stall, stopped.Sub(benchStart).Seconds(), r.tps, r.processed, r.failed, r.aborted, r.late, err)
	var prog []string
	for _, pp := range r.progress {
		prog = append(prog, fmt.Sprintf("%.0fs:%.0f", pp.at, pp.tps))
	}
	t.Logf("tps per second: %s", strings.Join(prog, " "))
	checkUnhealthyReported(t, p, victim, stopped, <-downAt)
	if r.failed+r.aborted > readClients {
		t.Errorf("%d failed + %d aborted clients, want at most the %d in flight", r.failed, r.aborted, readClients)
	}
	// Seconds fully inside [stall detected, SIGCONT).
	detected := stopped.Add(detectBound).Sub(benchStart).Seconds()
	resumed := thawed.Sub(benchStart).Seconds()
	for _, pp := range r.progress {
		if pp.at-1 >= detected && pp.at <= resumed && pp.tps == 0 {
			t.Errorf("no read completed in the second ending at %.0f s, while %s was stalled and already reported unhealthy: reads in flight on the stalled node are not given up", pp.at, victim.Name)
			break
		}
	}
	if r.late > 0 {
		t.Errorf("%d reads took over 3 s: reads sent to the stalled replica wait until it resumes (%s) instead of running elsewhere", r.late, stall)
	}
	checkReadsReturn(t, p, victim, thawed)
}

// TestNetworkCutToPrimary: shard1's primary is cut off for 5 s (a black
// hole: SIGSTOP of the postmaster and every backend, so connections stay
// open and nothing answers) under autocommit UPDATEs from pgx clients on
// both shards. shard0's writes go on; once the proxy reports the primary
// unhealthy, a write to shard1 fails at once with SQLSTATE 08006 instead
// of waiting; writes that were in flight at the cut end with 57014 once
// limits.query_timeout passes, rather than waiting for the network;
// after the cut shard1 takes writes again without restarting the proxy and
// nothing is left idle in transaction.
func TestNetworkCutToPrimary(t *testing.T) {
	cl := getCluster(t)
	// Statements already running on a primary are not cut when its health
	// probe fails (a slow probe must not leave a write's outcome unknown);
	// limits.query_timeout is the operator's bound on them.
	const queryTimeout = 2 * time.Second
	p := startProxy(t, cl, "limits:\n  query_timeout: 2s\n")
	pgbenchInit(t, cl, p)
	victim := cl.Primary("shard1")
	const cut = 5 * time.Second
	aids := map[string][]int64{"shard0": aidsOn(t, cl, "shard0", 500), "shard1": aidsOn(t, cl, "shard1", 500)}
	w := startWriters(p.dsn(), false, 4, aids)
	defer func() {
		if !w.stopped() {
			w.halt()
		}
	}()
	time.Sleep(2 * time.Second)
	done := make(chan struct{})
	downAt := watchUnhealthy(p, victim, done)
	cutAt := time.Now()
	thaw := freeze(t, victim)
	// A fresh client writing to shard1 once the proxy knows: it must
	// fail at once, not wait for the node.
	time.Sleep(2 * time.Second)
	probe := func() (time.Duration, error) {
		start := time.Now()
		c, err := pgx.Connect(ctxT(t, 10*time.Second), p.dsn())
		if err != nil {
			return time.Since(start), err
		}
		defer c.Close(context.Background())
		start = time.Now()
		_, err = c.Exec(ctxT(t, 10*time.Second), "UPDATE pgbench_accounts SET abalance = abalance WHERE aid = $1", aids["shard1"][0])
		return time.Since(start), err
	}
	probeTook, probeErr := probe()
	time.Sleep(time.Until(cutAt.Add(cut)))
	healed := time.Now()
	thaw()
	time.Sleep(3 * time.Second)
	w.halt()
	close(done)
	down := <-downAt

	during0 := w.window("shard0", cutAt, healed)
	t.Logf("before the cut: shard0 %s | shard1 %s", w.window("shard0", time.Time{}, cutAt), w.window("shard1", time.Time{}, cutAt))
	t.Logf("during the %s cut: shard0 %s | shard1 %s", cut, during0, w.window("shard1", cutAt, healed))
	t.Logf("after: shard0 %s | shard1 %s", w.window("shard0", healed, time.Now()), w.window("shard1", healed, time.Now()))
	checkUnhealthyReported(t, p, victim, cutAt, down)
	if during0.ok == 0 || during0.failed > 0 {
		t.Errorf("shard0 during the cut to shard1's primary: %s; want commits and no error", during0)
	}
	// Writes to shard1 sent after the proxy knew: fail at once, clearly.
	if !down.IsZero() {
		after := w.window("shard1", down.Add(100*time.Millisecond), healed)
		t.Logf("shard1 writes started after the proxy reported the primary down: %s", after)
		w.mu.Lock()
		for _, o := range w.ops {
			if o.shard != "shard1" || o.start.Before(down.Add(100*time.Millisecond)) || !o.start.Before(healed) {
				continue
			}
			if o.err == nil && o.took() < cut {
				t.Errorf("a shard1 write committed during the cut?")
			}
			if o.err != nil && o.took() > time.Second {
				t.Errorf("a shard1 write sent after the proxy reported the primary down failed only after %s: %s", o.took().Round(time.Millisecond), errText(o.err))
				break
			}
		}
		w.mu.Unlock()
	}
	if probeErr == nil || sqlState(probeErr) != "08006" || probeTook > time.Second {
		t.Errorf("a new client's write to shard1 2 s into the cut: %v after %s; want SQLSTATE 08006 within 1 s", probeErr, probeTook.Round(time.Millisecond))
	} else {
		t.Logf("a new client's write to shard1 2 s into the cut failed after %s: %s", probeTook.Round(time.Millisecond), errText(probeErr))
	}
	// Writes in flight at the cut.
	inflight := w.inFlightAt("shard1", cutAt.Add(50*time.Millisecond))
	var longest time.Duration
	for _, o := range inflight {
		longest = max(longest, o.end.Sub(cutAt))
	}
	t.Logf("%d shard1 writes in flight at the cut; the last ended %s after the cut", len(inflight), longest.Round(time.Millisecond))
	if longest > queryTimeout+time.Second {
		t.Errorf("shard1 writes in flight at the cut ended only %s after it (the cut lasted %s, query_timeout %s): the proxy waits on a server that does not answer", longest.Round(time.Millisecond), cut, queryTimeout)
	}
	for _, o := range inflight {
		if o.err == nil || sqlState(o.err) != "57014" || !strings.Contains(o.err.Error(), "query_timeout") {
			t.Errorf("a write in flight at the cut ended with %v; want SQLSTATE 57014 naming query_timeout", o.err)
			break
		}
	}
	if first, ok := w.firstOK("shard1", healed); !ok {
		t.Errorf("no shard1 write committed after the cut healed")
	} else {
		t.Logf("first shard1 commit %s after the cut healed", first.Sub(healed).Round(time.Millisecond))
	}
	p.waitAllUp(cl, 15*time.Second)
	waitNoLeftovers(t, cl, 10*time.Second)
}
