package sharded

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
)

// liveBytes is the process's heap and stack in use after a full GC.
func liveBytes() int64 {
	heap, stack := liveSplit()
	return heap + stack
}

func liveSplit() (heap, stack int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse), int64(ms.StackInuse)
}

// openClients opens n pgx connections to dsn, par at a time, each running
// query (if set) once; it returns them and the errors.
func openClients(dsn string, n, par int, query func(i int, c *pgx.Conn) error) ([]*pgx.Conn, []error) {
	conns := make([]*pgx.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs[i] = fmt.Errorf("client %d: connect: %w", i, err)
				return
			}
			conns[i] = c
			if query != nil {
				if err := query(i, c); err != nil {
					errs[i] = fmt.Errorf("client %d: %w", i, err)
				}
			}
		}(i)
	}
	wg.Wait()
	return conns, errs
}

func closeClients(conns []*pgx.Conn) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for _, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(c *pgx.Conn) {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = c.Close(ctx)
		}(c)
	}
	wg.Wait()
}

// serverConnCounts counts the app user's backends on each shard (the
// proxy's server connections: the test and the coordinator connect as the
// superuser).
func serverConnCounts(t *testing.T, shards []*pgx.Conn) []int64 {
	t.Helper()
	var out []int64
	for _, sc := range shards {
		out = append(out, queryInt(t, sc, "SELECT count(*) "+proxyBackends))
	}
	return out
}

// TestManyIdleClients: 2,000 clients held open at once over a pool of 20
// server connections per shard are all served; the proxy's memory per
// idle client is reported; closing them all brings the client count back
// to 0, and no shard ever saw more than 20 server connections.
func TestManyIdleClients(t *testing.T) {
	const clients, poolSize = 2000, 20
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if need := uint64(2*clients + 500); rl.Cur < need {
		if rl.Max < need {
			t.Skipf("RLIMIT_NOFILE hard limit %d < %d", rl.Max, need)
		}
		rl.Cur = need
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatalf("raise RLIMIT_NOFILE: %v", err)
		}
	}

	srv := startProxy(t, 3, func(c *config.Config) {
		c.Pool.Size = poolSize
		c.MaxClientConn = 3000
		c.Pool.WaitTimeout = config.Duration(20 * time.Second)
	})
	admin := connect(t, srv)
	setupItems(t, admin, 100)
	if err := admin.Close(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	var shards []*pgx.Conn
	for _, name := range shardNames() {
		shards = append(shards, connectShard(t, name))
	}

	// The client side's own footprint: pgx connections straight to a
	// shard (bounded by its max_connections), idle after one query.
	const direct = 100
	before := liveBytes()
	dconns, derrs := openClients(cluster.Primary("shard0").DSN(localcluster.AppDatabase), direct, 20, func(_ int, c *pgx.Conn) error {
		var one int
		return c.QueryRow(context.Background(), "SELECT 1").Scan(&one)
	})
	for _, err := range derrs {
		if err != nil {
			t.Fatal(err)
		}
	}
	pgxPer := (liveBytes() - before) / direct
	closeClients(dconns)

	// Establish the pools before measuring.
	warm, _ := openClients(appDSN(srv), 60, 60, func(i int, c *pgx.Conn) error {
		_, err := c.Exec(context.Background(), "SELECT pg_sleep(0.2) FROM items WHERE id = $1", i+1)
		return err
	})
	closeClients(warm)
	baseHeap, baseStack := liveSplit()
	base := baseHeap + baseStack
	baseGoroutines := runtime.NumGoroutine()

	// Sample the shards' server connections while the clients pour in.
	var samplers []*pgx.Conn
	for _, name := range shardNames() {
		samplers = append(samplers, connectShard(t, name))
	}
	peak := make([]int64, len(samplers))
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			for i, sc := range samplers {
				var n int64
				if err := sc.QueryRow(context.Background(), "SELECT count(*) "+proxyBackends).Scan(&n); err == nil && n > peak[i] {
					peak[i] = n
				}
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	start := time.Now()
	conns, errs := openClients(appDSN(srv), clients, 50, func(i int, c *pgx.Conn) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var one int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			return fmt.Errorf("SELECT 1 = %d, %v", one, err)
		}
		id := i%100 + 1
		var got int64
		if err := c.QueryRow(ctx, "SELECT id FROM items WHERE id = $1", id).Scan(&got); err != nil || got != int64(id) {
			return fmt.Errorf("keyed SELECT %d = %d, %v", id, got, err)
		}
		return nil
	})
	opened := time.Since(start)
	close(stopSampling)
	<-sampled
	t.Cleanup(func() { closeClients(conns) })
	failed := 0
	for _, err := range errs {
		if err != nil {
			if failed < 5 {
				t.Error(err)
			}
			failed++
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d clients failed", failed, clients)
	}
	if n := srv.ClientCount(); n < clients {
		t.Fatalf("proxy counts %d clients, want at least %d", n, clients)
	}
	heldHeap, heldStack := liveSplit()
	held := heldHeap + heldStack
	goroutines := runtime.NumGoroutine() - baseGoroutines
	perPair := (held - base) / clients
	t.Logf("%d clients connected and served in %v; %d more goroutines (%.1f per client)",
		clients, opened.Round(time.Millisecond), goroutines, float64(goroutines)/clients)
	t.Logf("memory per idle client: %d B for the pair (proxy session + pgx client; heap %d B, stacks %d B), pgx client alone ~%d B (from %d direct connections), so the proxy ~%d B",
		perPair, (heldHeap-baseHeap)/clients, (heldStack-baseStack)/clients, pgxPer, direct, perPair-pgxPer)

	during := serverConnCounts(t, shards)
	// All still alive and usable after sitting idle.
	for i := 0; i < clients; i += 97 {
		var one int
		if err := conns[i].QueryRow(ctxT(t, 10*time.Second), "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("client %d after idling: %v", i, err)
		}
	}

	closeClients(conns)
	deadline := time.Now().Add(10 * time.Second)
	for srv.ClientCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("proxy still counts %d clients 10 s after all closed", srv.ClientCount())
		}
		time.Sleep(20 * time.Millisecond)
	}
	after := serverConnCounts(t, shards)
	t.Logf("server connections per shard: peak %s while connecting, %s with %d clients open, %s after they closed",
		joinInts(peak), joinInts(during), clients, joinInts(after))
	for i := range during {
		if peak[i] > poolSize || during[i] > poolSize || after[i] > poolSize {
			t.Errorf("%s had %d/%d/%d server connections from the proxy, pool size %d", shardNames()[i], peak[i], during[i], after[i], poolSize)
		}
	}
}
