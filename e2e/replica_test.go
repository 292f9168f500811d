package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
	"github.com/shardproxy/shardproxy/proxy"
	"github.com/shardproxy/shardproxy/replica"
)

// startProxyWithReplicas starts a proxy whose reads outside transactions
// may go to the shard's streaming replica, picked by a replica monitor.
func startProxyWithReplicas(t *testing.T) (*proxy.Server, *replica.Monitor) {
	t.Helper()
	mon := startMonitor(t, cluster)
	srv := startProxyOpts(t, proxyOpts{replicas: mon.ReplicaView()}, func(c *config.Config) { c.Pool.Size = 4 })
	return srv, mon
}

// TestReplicaReads: reads outside a transaction go to the replica (its
// port, from inet_server_port()), reads in a transaction and with
// shardproxy.target = primary go to the primary, and a session reads its
// own writes.
func TestReplicaReads(t *testing.T) {
	srv, _ := startProxyWithReplicas(t)
	c := connect(t, srv)
	ctx := ctxT(t, 60*time.Second)
	repPort := int32(cluster.Replicas("shard0")[0].Port)
	priPort := int32(primary().Port)
	port := func(q pgx.Tx) int32 {
		t.Helper()
		var p int32
		var err error
		if q != nil {
			err = q.QueryRow(ctx, "SELECT inet_server_port()").Scan(&p)
		} else {
			err = c.QueryRow(ctx, "SELECT inet_server_port()").Scan(&p)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	onReplica := 0
	for i := 0; i < 200; i++ {
		if port(nil) == repPort {
			onReplica++
		}
	}
	if onReplica < 190 {
		t.Fatalf("%d of 200 reads outside a transaction went to the replica", onReplica)
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := port(tx); p != priPort {
		t.Fatalf("read in a transaction served by port %d, want the primary %d", p, priPort)
	}
	_ = tx.Rollback(ctx)
	mustExec(t, c, "SET shardproxy.target = 'primary'")
	if p := port(nil); p != priPort {
		t.Fatalf("read with shardproxy.target = primary served by port %d", p)
	}
	mustExec(t, c, "RESET shardproxy.target")

	// Read-your-writes, with the replica's replay paused and a lag bound
	// it stays within for the whole test: every read after a write sees
	// it. With read-your-writes off the same loop reads stale values
	// from the replica, so the check can fail.
	mustExec(t, c, "DROP TABLE IF EXISTS ryw")
	mustExec(t, c, "CREATE TABLE ryw (id int PRIMARY KEY, v int)")
	mustExec(t, c, "INSERT INTO ryw VALUES (1, 0)")
	time.Sleep(500 * time.Millisecond) // the replica has the row
	rc := connectCfg(t, connCfg(t, cluster.Replicas("shard0")[0].DSN(localcluster.AppDatabase)))
	mustExec(t, rc, "SELECT pg_wal_replay_pause()")
	t.Cleanup(func() { _, _ = rc.Exec(context.Background(), "SELECT pg_wal_replay_resume()") })
	mustExec(t, c, "SET shardproxy.max_replica_lag = '1h'")
	loop := func(n int) (stale int) {
		for i := 1; i <= n; i++ {
			var w, r int
			if err := c.QueryRow(ctx, "UPDATE ryw SET v = v + 1 WHERE id = 1 RETURNING v").Scan(&w); err != nil {
				t.Fatal(err)
			}
			if err := c.QueryRow(ctx, "SELECT v FROM ryw WHERE id = 1").Scan(&r); err != nil {
				t.Fatal(err)
			}
			if r != w {
				stale++
			}
		}
		return stale
	}
	if stale := loop(300); stale != 0 {
		t.Fatalf("read-your-writes on: %d of 300 reads were stale", stale)
	}
	mustExec(t, c, "SET shardproxy.read_your_writes = off")
	if stale := loop(50); stale == 0 {
		t.Fatal("read-your-writes off with the replica paused: no stale read, so the check above proves nothing")
	}

	// Replicas only: a read no replica can serve (the only one has not
	// replayed this session's write) is refused rather than sent to the
	// primary, and the session goes on.
	mustExec(t, c, "SET shardproxy.read_your_writes = on")
	mustExec(t, c, "SET shardproxy.target = 'replica'")
	mustExec(t, c, "UPDATE ryw SET v = v + 1 WHERE id = 1")
	_, err = c.Exec(ctx, "SELECT v FROM ryw WHERE id = 1")
	wantCode(t, err, "57P03", "read with target=replica and no replica qualifying")
	mustExec(t, c, "RESET shardproxy.target")
	if p := port(nil); p != priPort {
		t.Fatalf("read after RESET shardproxy.target served by port %d, want the primary (replica paused, write pending)", p)
	}
}
