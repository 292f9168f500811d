package replica

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shardproxy/shardproxy/localcluster"
)

// One primary with two streaming replicas serves every test of the
// package. TestFailover kills the primary and promotes a replica, so it
// runs last (it is declared last in the last file).
var shared = localcluster.Shared{Name: "replica", Options: localcluster.Options{Shards: 1, Replicas: 2}}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := shared.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "replica: stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// Node indexes in the monitor: 0 the primary, 1 and 2 the replicas.
const (
	replicaA = 1
	replicaB = 2
)

// startMonitor monitors the shared cluster's shard0 and waits until every
// node has answered and every replica's lag is known.
func startMonitor(t *testing.T) (*Monitor, *localcluster.Cluster) {
	t.Helper()
	c := shared.Get(t)
	p, reps := c.Primary("shard0"), c.Replicas("shard0")
	sc := ShardConfig{Name: "shard0", Primary: NodeConfig{DSN: p.DSN(localcluster.AppDatabase)}}
	for _, r := range reps {
		sc.Replicas = append(sc.Replicas, NodeConfig{DSN: r.DSN(localcluster.AppDatabase)})
	}
	m, err := New(Config{Shards: []ShardConfig{sc}})
	if err != nil {
		t.Fatal(err)
	}
	m.Start()
	t.Cleanup(func() { m.Close() })
	waitFor(t, 5*time.Second, "every node healthy, lag known", func() bool {
		st := m.States()[0]
		if !st.PrimaryHealthy {
			return false
		}
		for _, n := range st.Nodes[1:] {
			if !n.Healthy || n.LagSeconds == nil {
				return false
			}
		}
		return true
	})
	return m, c
}

// waitFor polls cond every 2 ms and returns how long it took to hold.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// writer commits a small transaction on the primary every few ms until
// the returned stop is called.
func writer(t *testing.T, dsn string) (stop func()) {
	t.Helper()
	conn := connect(t, dsn)
	exec(t, conn, "CREATE TABLE IF NOT EXISTS churn (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := conn.Exec(context.Background(), "INSERT INTO churn DEFAULT VALUES"); err != nil {
				t.Errorf("writer: %v", err)
				return
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

func lagOf(m *Monitor, node int) (time.Duration, bool) {
	st := m.States()[0].Nodes[node]
	if st.LagSeconds == nil {
		return 0, false
	}
	return time.Duration(*st.LagSeconds * float64(time.Second)), true
}

func TestIdlePrimaryZeroLag(t *testing.T) {
	m, _ := startMonitor(t)
	// Several probe rounds on an idle primary: the replicas have replayed
	// everything, so their lag is zero however old the last commit is.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		for _, i := range []int{replicaA, replicaB} {
			st := m.States()[0].Nodes[i]
			if !st.Healthy || st.Role != RoleReplica {
				t.Fatalf("replica %d: %+v", i, st)
			}
			if lag, ok := lagOf(m, i); !ok || lag >= 50*ms {
				t.Fatalf("idle replica %d lag %v (known %v), want < 50ms; %+v", i, lag, ok, st)
			}
		}
		if n, ok := m.Pick(0, 50*ms, 0); !ok || (n != replicaA && n != replicaB) {
			t.Fatalf("Pick on idle shard = %d, %v", n, ok)
		}
		time.Sleep(20 * ms)
	}
	if n, ok := m.Primary(0); n != 0 || !ok {
		t.Fatalf("Primary = %d, %v", n, ok)
	}
}

func TestPausedReplicaExcludedThenBack(t *testing.T) {
	m, c := startMonitor(t)
	stop := writer(t, c.Primary("shard0").DSN(localcluster.AppDatabase))
	a := connect(t, c.Replicas("shard0")[0].DSN(localcluster.AppDatabase))
	const bound = 100 * ms

	exec(t, a, "SELECT pg_wal_replay_pause()")
	paused := time.Now()
	t.Cleanup(func() { a.Exec(context.Background(), "SELECT pg_wal_replay_resume()") })

	// Exclusion: at most one probe interval after the lag passes the bound.
	took := waitFor(t, 2*time.Second, "paused replica excluded", func() bool {
		lag, ok := lagOf(m, replicaA)
		return ok && lag > bound
	})
	t.Logf("paused replica's lag passed %v %v after the pause", bound, took)
	if took > bound+time.Second {
		t.Errorf("exclusion took %v after the pause", took)
	}
	if st := m.States()[0].Nodes[replicaA]; st.LagBytes == 0 {
		t.Errorf("lagging replica reports 0 lag bytes: %+v", st)
	}
	// Over the next second (several probe rounds) no pick returns it.
	picks, end := 0, time.Now().Add(time.Second)
	for picks < 10000 || time.Now().Before(end) {
		n, ok := m.Pick(0, bound, 0)
		if !ok || n != replicaB {
			t.Fatalf("pick %d after exclusion = %d, %v; want replica B (%d)", picks, n, ok, replicaB)
		}
		picks++
		if picks%1000 == 0 {
			time.Sleep(ms)
		}
	}
	t.Logf("%d picks while paused, none on the paused replica; lag now %v", picks, func() time.Duration { l, _ := lagOf(m, replicaA); return l }())
	if since := time.Since(paused); since < bound {
		t.Fatalf("test too fast: %v", since)
	}

	// Resume: back in rotation within 1 s of catching up (catching up is
	// milliseconds here).
	exec(t, a, "SELECT pg_wal_replay_resume()")
	took = waitFor(t, 2*time.Second, "resumed replica back", func() bool {
		for range 100 {
			if n, _ := m.Pick(0, bound, 0); n == replicaA {
				return true
			}
		}
		return false
	})
	t.Logf("resumed replica back in rotation %v after resume", took)
	if took > time.Second {
		t.Errorf("resumed replica took %v to come back", took)
	}
	stop()
}

func TestReadYourWrites(t *testing.T) {
	m, c := startMonitor(t)
	p := connect(t, c.Primary("shard0").DSN(localcluster.AppDatabase))
	exec(t, p, "CREATE TABLE IF NOT EXISTS ryw (id int PRIMARY KEY, v bigint)")
	exec(t, p, "INSERT INTO ryw VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET v = 0")
	reps := c.Replicas("shard0")
	a := connect(t, reps[0].DSN(localcluster.AppDatabase))
	readers := map[int]*pgx.Conn{replicaA: a, replicaB: connect(t, reps[1].DSN(localcluster.AppDatabase))}
	// Let both replicas replay the setup, then freeze A.
	defer func() {
		if t.Failed() {
			t.Logf("states: %+v", m.States())
		}
	}()
	setupDone := time.Now()
	waitFor(t, 2*time.Second, "setup replayed", func() bool {
		lsn, ok := m.LSNAfter(0, setupDone)
		_, okA := m.Pick(0, 0, lsn)
		return ok && okA && m.States()[0].Nodes[replicaA].LagBytes == 0 && m.States()[0].Nodes[replicaB].LagBytes == 0
	})
	exec(t, a, "SELECT pg_wal_replay_pause()")
	t.Cleanup(func() { a.Exec(context.Background(), "SELECT pg_wal_replay_resume()") })

	ctx := context.Background()
	servedB, sawA := 0, false
	for iter := range 8 {
		var v int64
		var commitLSN string
		if err := p.QueryRow(ctx, "UPDATE ryw SET v = v + 1 WHERE id = 1 RETURNING v").Scan(&v); err != nil {
			t.Fatal(err)
		}
		if err := p.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&commitLSN); err != nil {
			t.Fatal(err)
		}
		committed := time.Now()
		want, _ := ParseLSN(commitLSN)

		var lsn uint64
		waitFor(t, time.Second, "LSNAfter", func() bool {
			var ok bool
			lsn, ok = m.LSNAfter(0, committed)
			return ok
		})
		if lsn < want {
			t.Fatalf("LSNAfter = %s, before the write's position %s", FormatLSN(lsn), commitLSN)
		}
		// Until B is seen past the write, picks must fail (read from the
		// primary); never may one return the paused A.
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			n, ok := m.Pick(0, 0, lsn)
			if ok && n != replicaB {
				t.Fatalf("iteration %d: Pick(minLSN %s) = %d, a replica that has not replayed the write", iter, FormatLSN(lsn), n)
			}
			if ok {
				var got int64
				if err := readers[n].QueryRow(ctx, "SELECT v FROM ryw WHERE id = 1").Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != v {
					t.Fatalf("iteration %d: replica %d read v=%d after writing %d", iter, n, got, v)
				}
				servedB++
				break
			}
			time.Sleep(ms)
		}
		// Without the read-your-writes bound the paused replica is still
		// in rotation, so the check above can fail.
		for range 200 {
			if n, _ := m.Pick(0, 0, 0); n == replicaA {
				sawA = true
			}
		}
	}
	if servedB == 0 {
		t.Error("no read-your-writes read was ever served by the up-to-date replica")
	}
	if !sawA {
		t.Error("paused replica never picked without minLSN: the test cannot tell")
	}
}

func TestPickSpreadsQueries(t *testing.T) {
	m, c := startMonitor(t)
	reps := c.Replicas("shard0")
	ports := map[int]int{replicaA: reps[0].Port, replicaB: reps[1].Port}
	const clients, total = 16, 10000
	var mu sync.Mutex
	count := map[int]int{}
	var wg sync.WaitGroup
	for range clients {
		conns := map[int]*pgx.Conn{replicaA: connect(t, reps[0].DSN(localcluster.AppDatabase)), replicaB: connect(t, reps[1].DSN(localcluster.AppDatabase))}
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[int]int{}
			for range total / clients {
				n, ok := m.Pick(0, time.Second, 0)
				if !ok {
					t.Error("no replica picked")
					return
				}
				m.Acquire(0, n)
				var port int
				err := conns[n].QueryRow(context.Background(), "SELECT inet_server_port()").Scan(&port)
				m.Release(0, n)
				if err != nil {
					t.Error(err)
					return
				}
				if port != ports[n] {
					t.Errorf("node %d served from port %d, want %d", n, port, ports[n])
				}
				local[port]++
			}
			mu.Lock()
			for k, v := range local {
				count[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for n, port := range ports {
		f := float64(count[port]) / total
		t.Logf("replica %d (port %d): %d reads (%.1f%%), served total %d", n, port, count[port], 100*f, m.ServedTotal(0, n))
		if f < 0.35 || f > 0.65 {
			t.Errorf("replica %d served %.1f%% of reads, want 35-65%%", n, 100*f)
		}
		if m.Outstanding(0, n) != 0 {
			t.Errorf("replica %d outstanding %d after all released", n, m.Outstanding(0, n))
		}
	}
}

func TestKilledReplicaUnhealthyThenBack(t *testing.T) {
	m, c := startMonitor(t)
	b := c.Replicas("shard0")[1]
	if err := b.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	took := waitFor(t, 2*time.Second, "killed replica unhealthy", func() bool {
		return !m.States()[0].Nodes[replicaB].Healthy
	})
	t.Logf("killed replica unhealthy %v after kill", took)
	if took > time.Second {
		t.Errorf("killed replica marked unhealthy after %v, want within 1s", took)
	}
	for i := range 10000 {
		if n, ok := m.Pick(0, time.Second, 0); !ok || n != replicaA {
			t.Fatalf("pick %d = %d, %v; want the live replica %d", i, n, ok, replicaA)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, 2*time.Second, "restarted replica healthy", func() bool {
		for range 100 {
			if n, _ := m.Pick(0, time.Second, 0); n == replicaB {
				return true
			}
		}
		return false
	})
	t.Logf("restarted replica back in rotation %v after streaming (%v after the kill)", took, time.Since(killed))
}

// TestFailover must run last: it leaves the shared cluster with a new
// primary.
func TestFailover(t *testing.T) {
	m, c := startMonitor(t)
	p, a := c.Primary("shard0"), c.Replicas("shard0")[0]
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 2*time.Second, "dead primary reported", func() bool {
		_, ok := m.Primary(0)
		return !ok
	})
	t.Logf("dead primary reported unhealthy %v after kill", took)
	if took > time.Second {
		t.Errorf("dead primary noticed after %v, want within 1s", took)
	}
	if n, _ := m.Primary(0); n != 0 {
		t.Fatalf("Primary = %d before any promotion; only a node seen out of recovery may be reported", n)
	}
	// Reads go on from the replicas, which have replayed all the dead
	// primary had.
	if n, ok := m.Pick(0, time.Second, 0); !ok || (n != replicaA && n != replicaB) {
		t.Fatalf("Pick with dead primary = %d, %v", n, ok)
	}
	// Several probe rounds without a primary: nobody is promoted yet.
	time.Sleep(600 * ms)
	if n, ok := m.Primary(0); n != 0 || ok {
		t.Fatalf("Primary = %d, %v without any promotion", n, ok)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, 2*time.Second, "promoted replica reported primary", func() bool {
		n, ok := m.Primary(0)
		return n == replicaA && ok
	})
	t.Logf("promoted replica reported as primary %v after promotion", took)
	if took > time.Second {
		t.Errorf("promotion noticed after %v", took)
	}
	st := m.States()[0]
	// The dead old primary is no longer the primary; had it come back out
	// of recovery it would be flagged, never used (see TestElection).
	if st.Nodes[replicaA].Role != RolePrimary || st.Nodes[0].Role != RoleStalePrimary || st.Nodes[0].Healthy {
		t.Errorf("roles after failover: %+v", st.Nodes)
	}
	// The promoted node no longer serves reads as a replica.
	for range 1000 {
		if n, _ := m.Pick(0, 0, 0); n == replicaA {
			t.Fatal("new primary picked as a replica")
		}
	}
	// Writes work on the reported primary.
	w := connect(t, m.DSN(0, replicaA))
	exec(t, w, "CREATE TABLE IF NOT EXISTS after_failover (x int)")
	exec(t, w, "INSERT INTO after_failover VALUES (1)")
}
