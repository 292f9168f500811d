package e2e

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
	"github.com/shardproxy/shardproxy/proxy"
	"github.com/shardproxy/shardproxy/replica"
)

// TestPrimaryFailover: on its own cluster (it kills the primary), a dead
// primary makes writes fail within a second with a clear error while
// reads keep working from the replica; once the replica is promoted,
// writes succeed again without restarting the proxy.
func TestPrimaryFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own PostgreSQL cluster")
	}
	cl := localcluster.StartForTest(t, localcluster.Options{Shards: 1, Replicas: 1})
	pri, rep := cl.Primary("shard0"), cl.Replicas("shard0")[0]
	srv := startProxyOn(t, cl, startMonitor(t, cl))
	c := connect(t, srv)
	mustExec(t, c, "CREATE TABLE failover (id int PRIMARY KEY, v int)")
	mustExec(t, c, "INSERT INTO failover VALUES (1, 1)")
	if err := rep.WaitStreaming(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the replica has replayed the row

	if err := pri.Kill(); err != nil {
		t.Fatal(err)
	}
	// Within a second of the kill the proxy knows: writes fail at once
	// with a clear error, and the session stays usable. (A statement
	// sent on a pooled connection in the moment the primary died ends
	// that session with 08006, as with a direct connection.)
	time.Sleep(time.Second)
	c = connect(t, srv)
	start := time.Now()
	_, err := c.Exec(ctxT(t, 10*time.Second), "UPDATE failover SET v = v + 1 WHERE id = 1")
	if pgCode(err) != "08006" || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("write with the primary down: %v after %v, want 08006 at once", err, time.Since(start))
	}
	// Reads outside a transaction keep working from the replica.
	var v int
	if err := c.QueryRow(ctxT(t, 10*time.Second), "SELECT v FROM failover WHERE id = 1").Scan(&v); err != nil || v != 1 {
		t.Fatalf("read with the primary down: %d, %v", v, err)
	}
	if err := rep.Promote(ctxT(t, 60*time.Second)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Exec(ctxT(t, 10*time.Second), "UPDATE failover SET v = 2 WHERE id = 1")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes still fail 10 s after promoting the replica: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := c.QueryRow(ctxT(t, 10*time.Second), "SELECT v FROM failover WHERE id = 1").Scan(&v); err != nil || v != 2 {
		t.Fatalf("read after failover: %d, %v", v, err)
	}
}

// TestReplicaSpread: with two healthy replicas, 16 clients of reads
// outside transactions are shared between them (each 35-65%) and the
// primary serves almost none (it is used only when no replica qualifies).
func TestReplicaSpread(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own PostgreSQL cluster")
	}
	cl := localcluster.StartForTest(t, localcluster.Options{Shards: 1, Replicas: 2})
	pri, reps := cl.Primary("shard0"), cl.Replicas("shard0")
	mon := startMonitor(t, cl)
	srv := startProxyOn(t, cl, mon)
	const clients, reads = 16, 250
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = connect(t, srv)
		mustExec(t, conns[i], "SET shardproxy.max_replica_lag = '200ms'")
	}
	// readAll runs n reads on each client and counts them by server port.
	readAll := func(n int) map[int32]int {
		counts := make(chan map[int32]int, clients)
		for _, c := range conns {
			go func() {
				m := map[int32]int{}
				for j := 0; j < n; j++ {
					var p int32
					if err := c.QueryRow(context.Background(), "SELECT inet_server_port()").Scan(&p); err != nil {
						t.Error(err)
						break
					}
					m[p]++
				}
				counts <- m
			}()
		}
		total := map[int32]int{}
		for range conns {
			for p, k := range <-counts {
				total[p] += k
			}
		}
		return total
	}
	total := readAll(reads)
	all := clients * reads
	share := func(port int) float64 { return float64(total[int32(port)]) / float64(all) }
	t.Logf("reads by node: primary %.1f%%, replica1 %.1f%%, replica2 %.1f%%", 100*share(pri.Port), 100*share(reps[0].Port), 100*share(reps[1].Port))
	if share(pri.Port) >= 0.05 {
		t.Errorf("the primary served %.1f%% of reads, want under 5%%", 100*share(pri.Port))
	}
	for _, r := range reps {
		if s := share(r.Port); s < 0.35 || s > 0.65 {
			t.Errorf("replica on port %d served %.1f%% of reads, want 35-65%%", r.Port, 100*s)
		}
	}

	// Pause replay on replica 1 while writes continue on the primary:
	// once its lag passes the bound (200 ms) it serves no reads; resumed,
	// it is back in rotation within a second of catching up.
	direct := connectCfg(t, connCfg(t, pri.DSN(localcluster.AppDatabase)))
	mustExec(t, direct, "CREATE TABLE spread_writes (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			_, _ = direct.Exec(context.Background(), "INSERT INTO spread_writes DEFAULT VALUES")
		}
	}()
	defer func() { close(stop); <-done }()
	paused := connectCfg(t, connCfg(t, reps[0].DSN(localcluster.AppDatabase)))
	mustExec(t, paused, "SELECT pg_wal_replay_pause()")
	lagOf := func() float64 {
		n := mon.States()[0].Nodes[1]
		if n.LagSeconds == nil {
			return 0
		}
		return *n.LagSeconds
	}
	deadline := time.Now().Add(10 * time.Second)
	for lagOf() <= 0.2 {
		if time.Now().After(deadline) {
			t.Fatalf("paused replica's lag never passed 200 ms: %+v", mon.States())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if n := readAll(10000 / clients)[int32(reps[0].Port)]; n != 0 {
		t.Errorf("%d of 10000 reads went to the replica whose replay is paused", n)
	}
	mustExec(t, paused, "SELECT pg_wal_replay_resume()")
	for deadline := time.Now().Add(10 * time.Second); lagOf() > 0.2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("resumed replica did not catch up: %+v", mon.States())
		}
	}
	time.Sleep(time.Second)
	if n := readAll(50)[int32(reps[0].Port)]; n == 0 {
		t.Error("the resumed replica is not back in rotation a second after catching up")
	}

	// Read-your-writes with one replica paused and the other applying
	// WAL 50 ms late: 10,000 write-then-read iterations in one
	// autocommit session read no stale value; with read-your-writes off
	// the same loop does (so the check can fail).
	c := conns[0]
	mustExec(t, c, "CREATE TABLE ryw2 (id int PRIMARY KEY, v int)")
	mustExec(t, c, "INSERT INTO ryw2 VALUES (1, 0)")
	delayed := connectCfg(t, connCfg(t, reps[1].DSN(localcluster.AppDatabase)))
	mustExec(t, delayed, "ALTER SYSTEM SET recovery_min_apply_delay = '50ms'")
	mustExec(t, delayed, "SELECT pg_reload_conf()")
	t.Cleanup(func() {
		_, _ = delayed.Exec(context.Background(), "ALTER SYSTEM RESET recovery_min_apply_delay")
		_, _ = delayed.Exec(context.Background(), "SELECT pg_reload_conf()")
	})
	time.Sleep(time.Second)
	mustExec(t, paused, "SELECT pg_wal_replay_pause()")
	t.Cleanup(func() { _, _ = paused.Exec(context.Background(), "SELECT pg_wal_replay_resume()") })
	mustExec(t, c, "SET shardproxy.max_replica_lag = '1h'")
	loop := func(n int) (stale int) {
		for i := 0; i < n; i++ {
			var w, r int
			if err := c.QueryRow(context.Background(), "UPDATE ryw2 SET v = v + 1 WHERE id = 1 RETURNING v").Scan(&w); err != nil {
				t.Fatal(err)
			}
			if err := c.QueryRow(context.Background(), "SELECT v FROM ryw2 WHERE id = 1").Scan(&r); err != nil {
				t.Fatal(err)
			}
			if r != w {
				stale++
			}
		}
		return stale
	}
	if stale := loop(10000); stale != 0 {
		t.Errorf("read-your-writes on: %d of 10000 reads were stale", stale)
	}
	mustExec(t, c, "SET shardproxy.read_your_writes = off")
	stale := loop(200)
	t.Logf("read-your-writes off: %d of 200 reads stale", stale)
	if stale == 0 {
		t.Error("read-your-writes off: no stale read in 200 iterations with a paused and a delayed replica; the check above proves nothing")
	}
}

// TestReplicaKilledUnderLoad: kill -9 one of two replicas while 16
// pgbench -S clients read through the proxy: reads in flight on it are
// run again on the primary, so pgbench sees no failed transaction and no
// client aborts.
func TestReplicaKilledUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own PostgreSQL cluster")
	}
	cl := localcluster.StartForTest(t, localcluster.Options{Shards: 1, Replicas: 2})
	pri, reps := cl.Primary("shard0"), cl.Replicas("shard0")
	init := exec.Command("/usr/bin/pgbench", "-i", "-q", "-s", "1", "-h", pri.Host, "-p", strconv.Itoa(pri.Port), "-U", "app", "app")
	init.Env = cliEnv()
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	srv := startProxyOn(t, cl, startMonitor(t, cl))
	for _, mode := range []string{"simple", "prepared"} {
		victim := reps[0]
		if mode == "prepared" {
			victim = reps[1]
		}
		timer := time.AfterFunc(2*time.Second, func() { _ = victim.Kill() })
		out, err := runToolErr(t, time.Minute, srv, "app", "pgbench", "-n", "-S", "-M", mode, "-c", "16", "-j", "2", "-T", "5")
		timer.Stop()
		if err != nil || strings.Contains(out, "aborted") {
			t.Fatalf("pgbench -M %s with a replica killed: %v\n%s", mode, err, out)
		}
		if m := reFailed.FindStringSubmatch(out); m == nil || m[1] != "0" {
			t.Fatalf("pgbench -M %s: failed transactions:\n%s", mode, out)
		}
		t.Logf("pgbench -S -M %s, replica killed after 2 s: %s", mode, strings.TrimSpace(reTPS.FindString(out)))
	}
}

// startMonitor probes shard0 of cl, its primary and every replica, and
// waits until each replica is healthy with a known lag.
func startMonitor(t *testing.T, cl *localcluster.Cluster) *replica.Monitor {
	t.Helper()
	sc := replica.ShardConfig{Name: "shard0", Primary: replica.NodeConfig{DSN: cl.Primary("shard0").DSN(localcluster.AppDatabase)}}
	for _, r := range cl.Replicas("shard0") {
		sc.Replicas = append(sc.Replicas, replica.NodeConfig{DSN: r.DSN(localcluster.AppDatabase)})
	}
	mon, err := replica.New(replica.Config{Shards: []replica.ShardConfig{sc}, Logger: proxyLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mon.Start()
	t.Cleanup(func() { _ = mon.Close() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ready := true
		for _, n := range mon.States()[0].Nodes[1:] {
			ready = ready && n.Healthy && n.LagSeconds != nil
		}
		if ready {
			return mon
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas not ready: %+v", mon.States())
		}
	}
}

// startProxyOn starts a proxy over shard0 of cl whose reads outside
// transactions go to the replicas mon picks.
func startProxyOn(t *testing.T, cl *localcluster.Cluster, mon *replica.Monitor) *proxy.Server {
	t.Helper()
	sh := config.Shard{Name: "shard0", Primary: cl.Primary("shard0").DSN(localcluster.AppDatabase)}
	for _, r := range cl.Replicas("shard0") {
		sh.Replicas = append(sh.Replicas, r.DSN(localcluster.AppDatabase))
	}
	cfg := &config.Config{
		Listen: "127.0.0.1:0",
		Users:  []config.User{{Name: localcluster.AppUser, Password: localcluster.AppPassword}},
		Shards: []config.Shard{sh},
	}
	cfg.SetDefaults()
	srv, err := proxy.New(cfg, proxy.Options{Logger: proxyLogger(), Replicas: mon.ReplicaView()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv
}
