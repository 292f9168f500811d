package e2e

import (
	"context"
	"testing"
	"time"

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
	mon, err := replica.New(replica.Config{Shards: []replica.ShardConfig{{
		Name:     "shard0",
		Primary:  replica.NodeConfig{DSN: pri.DSN(localcluster.AppDatabase)},
		Replicas: []replica.NodeConfig{{DSN: rep.DSN(localcluster.AppDatabase)}},
	}}, Logger: proxyLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mon.Start()
	t.Cleanup(func() { _ = mon.Close() })
	cfg := &config.Config{
		Listen: "127.0.0.1:0",
		Users:  []config.User{{Name: localcluster.AppUser, Password: localcluster.AppPassword}},
		Pool:   config.Pool{Size: 4},
		Shards: []config.Shard{{Name: "shard0", Primary: pri.DSN(localcluster.AppDatabase), Replicas: []string{rep.DSN(localcluster.AppDatabase)}}},
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
	_, err = c.Exec(ctxT(t, 10*time.Second), "UPDATE failover SET v = v + 1 WHERE id = 1")
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
