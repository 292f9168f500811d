package sharded

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/proxy"
)

// proxyBackends selects the proxy's server connections on a shard, seen
// from a direct (superuser) connection there: the app user's client
// backends other than the 2PC coordinator's and the looking connection.
const proxyBackends = `FROM pg_stat_activity
	WHERE usename = 'app' AND datname = current_database() AND backend_type = 'client backend'
	  AND pid <> pg_backend_pid() AND application_name <> 'shardproxy-twophase'`

// openTxQuery counts the proxy's server connections with a transaction
// open: idle in one, or holding a transaction id.
const openTxQuery = `SELECT count(*) ` + proxyBackends + `
	  AND (state LIKE 'idle in transaction%' OR backend_xid IS NOT NULL OR xact_start IS NOT NULL)`

// killConn closes the client's socket under pgx: no Terminate, no
// rollback, the process just went away.
func killConn(t *testing.T, c *pgx.Conn) {
	t.Helper()
	if err := c.PgConn().Conn().Close(); err != nil {
		t.Fatalf("close client socket: %v", err)
	}
}

// keysOn returns, for each of the first n shards, count keys of items
// owned by it, searching ids from start up.
func keysOn(t *testing.T, srv *proxy.Server, n, count int, start int64) [][]int64 {
	t.Helper()
	out := make([][]int64, n)
	m := srv.ShardMap()
	for id := start; id < start+100000; id++ {
		s, err := m.ShardOfText("items", strconv.FormatInt(id, 10))
		if err != nil {
			t.Fatalf("ShardOfText(items, %d): %v", id, err)
		}
		if s < n && len(out[s]) < count {
			out[s] = append(out[s], id)
		}
		done := true
		for _, ks := range out {
			done = done && len(ks) == count
		}
		if done {
			return out
		}
	}
	t.Fatalf("no %d keys on each of %d shards", count, n)
	return nil
}

// sessionView is what a client sees of its session on one shard.
func sessionView(t *testing.T, c *pgx.Conn, shard string) string {
	t.Helper()
	var iso, sp, app, dti, st, x, y string
	var xid *int64
	q := fmt.Sprintf(`/* shardproxy: shard=%s */ SELECT current_setting('transaction_isolation'),
		current_setting('search_path'), current_setting('application_name'),
		current_setting('default_transaction_isolation'), current_setting('statement_timeout'),
		coalesce(current_setting('app.x', true), ''), coalesce(current_setting('app.y', true), ''),
		txid_current_if_assigned()`, shard)
	if err := c.QueryRow(ctxT(t, 10*time.Second), q).Scan(&iso, &sp, &app, &dti, &st, &x, &y, &xid); err != nil {
		t.Fatalf("session view on %s: %v", shard, err)
	}
	xs := "NULL"
	if xid != nil {
		xs = strconv.FormatInt(*xid, 10)
	}
	return fmt.Sprintf("transaction_isolation=%s search_path=%s application_name=%s default_transaction_isolation=%s statement_timeout=%s app.x=%q app.y=%q txid_current_if_assigned=%s",
		iso, sp, app, dti, st, x, y, xs)
}

func sessionViews(t *testing.T, c *pgx.Conn) []string {
	t.Helper()
	var out []string
	for _, name := range shardNames() {
		out = append(out, sessionView(t, c, name))
	}
	return out
}

func wantViews(t *testing.T, what string, got, want []string) {
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s on %s:\n got  %s\n want %s", what, shardNames()[i], got[i], want[i])
		}
	}
}

// dirtySession makes session-level settings on every shard's server
// connection (the hint forces the statement that follows the SETs there).
func dirtySession(t *testing.T, c *pgx.Conn, tag string) {
	t.Helper()
	for _, s := range []string{
		"SET search_path = " + tag + ", public",
		"SET app.x = '" + tag + "'",
		"SET default_transaction_isolation = 'serializable'",
		"SET statement_timeout = '4242s'",
		"SET application_name = '" + tag + "-app'",
	} {
		mustExec(t, c, s)
	}
	for _, name := range shardNames() {
		queryInt(t, c, fmt.Sprintf("/* shardproxy: shard=%s */ SELECT 1", name))
	}
}

// waitNoOpenTx polls every shard until no proxy server connection has a
// transaction open and no prepared transaction exists, up to within.
func waitNoOpenTx(t *testing.T, shards []*pgx.Conn, within time.Duration) (time.Duration, []string) {
	t.Helper()
	start := time.Now()
	for {
		var left []string
		for i, sc := range shards {
			open := queryInt(t, sc, openTxQuery)
			prep := queryInt(t, sc, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
			if open != 0 || prep != 0 {
				left = append(left, fmt.Sprintf("%s: %d open, %d prepared", shardNames()[i], open, prep))
			}
		}
		if len(left) == 0 || time.Since(start) > within {
			return time.Since(start), left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describeOpen(t *testing.T, shards []*pgx.Conn) string {
	t.Helper()
	var b strings.Builder
	for i, sc := range shards {
		rows, err := sc.Query(ctxT(t, 10*time.Second), `SELECT pid, coalesce(state, '') || ' app=' || application_name, coalesce(backend_xid::text, ''), left(query, 60) `+proxyBackends)
		if err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		for rows.Next() {
			var pid int64
			var state, xid, q string
			if err := rows.Scan(&pid, &state, &xid, &q); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "\n  %s pid=%d state=%q xid=%s query=%q", shardNames()[i], pid, state, xid, q)
		}
		rows.Close()
	}
	return b.String()
}

// TestClientKilledMidTransaction: a client whose socket dies inside a
// transaction that wrote on several shards leaves no transaction open on
// any shard after 1 s, its row locks are gone, its writes are rolled back,
// and no later client on the same (pool size 1) server connections sees
// anything of its session.
func TestClientKilledMidTransaction(t *testing.T) {
	srv := startProxy(t, 3, func(c *config.Config) { c.Pool.Size = 1 })
	admin := connect(t, srv)
	setupItems(t, admin, 60)
	var shards []*pgx.Conn
	for _, name := range shardNames() {
		shards = append(shards, connectShard(t, name))
	}

	// What a fresh client sees on each shard.
	base := sessionViews(t, connect(t, srv))

	// A live client's session settings do not leak to another client on
	// the same pooled server connection, and are replayed to it.
	t.Run("idle session settings", func(t *testing.T) {
		a := connect(t, srv)
		dirtySession(t, a, "dirtya")
		mine := sessionViews(t, a)
		if !strings.Contains(mine[0], "app.x=\"dirtya\"") || !strings.Contains(mine[0], "statement_timeout=4242s") {
			t.Fatalf("client's own settings not in effect: %s", mine[0])
		}
		wantViews(t, "second client while the first holds settings", sessionViews(t, connect(t, srv)), base)
		wantViews(t, "first client after a second used its server connection", sessionViews(t, a), mine)
	})

	// keys[s] are existing rows on shard s, fresh[s] ids free on shard s.
	keys := keysOn(t, srv, 3, 2, 1)
	fresh := keysOn(t, srv, 3, 1, 1000)
	for _, ks := range keys {
		if ks[1] > 60 {
			t.Fatalf("keys %v are not all among the 60 rows", keys)
		}
	}

	t.Run("idle in transaction", func(t *testing.T) {
		d := connect(t, srv)
		dirtySession(t, d, "deadclient")
		mustExec(t, d, "BEGIN")
		mustExec(t, d, "SET app.y = 'intx'")
		mustExec(t, d, "SET LOCAL lock_timeout = '7s'")
		mustExec(t, d, "UPDATE items SET name = 'dead' WHERE id = $1", keys[0][0])
		mustExec(t, d, "UPDATE items SET name = 'dead' WHERE id = $1", keys[1][0])
		mustExec(t, d, "INSERT INTO items (id, grp, name) VALUES ($1, 0, 'dead')", fresh[1][0])
		mustExec(t, d, "INSERT INTO items (id, grp, name) VALUES ($1, 0, 'dead')", fresh[2][0])
		// Precondition: the transaction really is open on three shards.
		for i, sc := range shards {
			if n := queryInt(t, sc, openTxQuery); n != 1 {
				t.Fatalf("before the kill, %s has %d open proxy transactions, want 1:%s", shardNames()[i], n, describeOpen(t, shards))
			}
		}
		killConn(t, d)
		took, left := waitNoOpenTx(t, shards, time.Second)
		if len(left) > 0 {
			t.Fatalf("1 s after the client died: %s%s", strings.Join(left, "; "), describeOpen(t, shards))
		}
		t.Logf("transactions gone from every shard %v after the kill", took)
		checkAfterDeath(t, srv, base, keys, fresh)
	})

	// The client dies while its statement runs on a shard inside a
	// multi-shard transaction: the proxy must not wait for the statement.
	t.Run("statement running", func(t *testing.T) {
		d := connect(t, srv)
		dirtySession(t, d, "deadbusy")
		mustExec(t, d, "BEGIN")
		mustExec(t, d, "UPDATE items SET name = 'dead' WHERE id = $1", keys[0][1])
		mustExec(t, d, "UPDATE items SET name = 'dead' WHERE id = $1", keys[1][1])
		mustExec(t, d, "INSERT INTO items (id, grp, name) VALUES ($1, 0, 'dead')", fresh[0][0])
		errc := make(chan error, 1)
		go func() {
			_, err := d.Exec(context.Background(), "/* shardproxy: shard=shard2 */ SELECT pg_sleep(8)")
			errc <- err
		}()
		// Wait until the sleep runs on shard2.
		deadline := time.Now().Add(5 * time.Second)
		for queryInt(t, shards[2], "SELECT count(*) "+proxyBackends+" AND state = 'active' AND query LIKE '%pg_sleep%'") == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("pg_sleep never started on shard2%s", describeOpen(t, shards))
			}
			time.Sleep(10 * time.Millisecond)
		}
		killConn(t, d)
		took, left := waitNoOpenTx(t, shards, time.Second)
		if err := <-errc; err == nil {
			t.Fatal("the killed client's statement succeeded")
		}
		if len(left) > 0 {
			desc := describeOpen(t, shards)
			more, left2 := waitNoOpenTx(t, shards, 10*time.Second)
			t.Fatalf("1 s after the client died mid-statement: %s%s\n(after %v more: %v)", strings.Join(left, "; "), desc, more, left2)
		}
		t.Logf("transactions gone from every shard %v after the kill", took)
		checkAfterDeath(t, srv, base, [][]int64{{keys[0][1]}, {keys[1][1]}}, [][]int64{fresh[0]})
	})
}

// checkAfterDeath: the dead client's locks are free at once, its writes
// are gone, and the next client sees a clean session on every shard.
func checkAfterDeath(t *testing.T, srv *proxy.Server, base []string, keys, fresh [][]int64) {
	t.Helper()
	c := connect(t, srv)
	for _, ks := range fresh {
		for _, id := range ks {
			if n := queryInt(t, c, "SELECT count(*) FROM items WHERE id = $1", id); n != 0 {
				t.Errorf("row %d inserted by the dead transaction is visible", id)
			}
		}
	}
	for _, ks := range keys {
		for _, id := range ks {
			var name string
			if err := c.QueryRow(ctxT(t, 10*time.Second), "SELECT name FROM items WHERE id = $1", id).Scan(&name); err != nil {
				t.Fatalf("row %d: %v", id, err)
			}
			if name == "dead" {
				t.Errorf("row %d keeps the dead transaction's update", id)
			}
		}
	}
	// A fresh client sees the defaults (pool size 1: the same server
	// connections, or new ones if the proxy closed the dirty ones).
	wantViews(t, "next client after the dead one", sessionViews(t, connect(t, srv)), base)

	mustExec(t, c, "SET lock_timeout = '1s'")
	for _, ks := range keys {
		for _, id := range ks {
			start := time.Now()
			_, err := c.Exec(ctxT(t, 10*time.Second), "UPDATE items SET name = 'after' WHERE id = $1", id)
			if err != nil {
				if pgCode(err) == "55P03" || errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("row %d is still locked by the dead client: %v", id, err)
				}
				t.Fatalf("update row %d: %v", id, err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("update of row %d waited %v", id, d)
			}
		}
	}
}
