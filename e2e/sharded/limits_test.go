package sharded

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
)

// TestLimits checks each configured limit gives the client a clear error
// with the right SQLSTATE, and that the proxy and other sessions go on.
func TestLimits(t *testing.T) {
	srv := startProxy(t, 2, func(c *config.Config) {
		c.Users = []config.User{
			{Name: localcluster.AppUser, Password: localcluster.AppPassword},
			{Name: "capped", Password: "capped", MaxConnections: 2, ServerUser: localcluster.AppUser, ServerPassword: localcluster.AppPassword},
		}
		c.Limits = config.Limits{
			MaxMessageSize:           64 << 10,
			StatementTimeout:         config.Duration(700 * time.Millisecond),
			IdleInTransactionTimeout: config.Duration(800 * time.Millisecond),
			QueryTimeout:             config.Duration(3 * time.Second),
		}
	})
	admin := connect(t, srv)
	mustExec(t, admin, "DROP TABLE IF EXISTS items")
	mustExec(t, admin, "CREATE TABLE items (id bigint PRIMARY KEY, grp int, name text, price numeric(10,2))")
	keys := keysOn(t, srv, 2, 1, 1)

	t.Run("max_message_size", func(t *testing.T) {
		c := connect(t, srv)
		// Just under the limit passes: the limit is the message, not more.
		if got := queryInt(t, c, "SELECT length('"+strings.Repeat("x", 60<<10)+"')"); got != 60<<10 {
			t.Fatalf("60kB query: length %d", got)
		}
		_, err := c.Exec(ctxT(t, 10*time.Second), "SELECT length('"+strings.Repeat("x", 100<<10)+"')")
		wantCode(t, err, "54000", "100kB query over a 64kB max_message_size")
		if !strings.Contains(err.Error(), "max_message_size") {
			t.Fatalf("error does not name the setting: %v", err)
		}
		if got := queryInt(t, connect(t, srv), "SELECT 1"); got != 1 {
			t.Fatal("a new client cannot work after another's oversized message")
		}
	})

	t.Run("max_connections per user", func(t *testing.T) {
		dsn := strings.Replace(appDSN(srv), localcluster.AppUser+":"+localcluster.AppPassword+"@", "capped:capped@", 1)
		if dsn == appDSN(srv) {
			t.Fatalf("cannot make the capped user's DSN from %s", dsn)
		}
		a, b := connectDSN(t, dsn), connectDSN(t, dsn)
		_, err := pgx.Connect(ctxT(t, 10*time.Second), dsn)
		wantCode(t, err, "53300", "third connection of a user capped at 2")
		if !strings.Contains(err.Error(), `too many connections for role "capped"`) {
			t.Fatalf("error does not name the role: %v", err)
		}
		// Other users are not affected, the capped ones still work, and a
		// slot freed is usable again.
		if queryInt(t, connect(t, srv), "SELECT 1") != 1 || queryInt(t, a, "SELECT 2") != 2 {
			t.Fatal("sessions broken by a refused connection")
		}
		_ = b.Close(context.Background())
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := pgx.Connect(ctxT(t, 10*time.Second), dsn)
			if err == nil {
				_ = c.Close(context.Background())
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("slot not freed after a client left: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("statement_timeout forwarded", func(t *testing.T) {
		c := connect(t, srv)
		for _, name := range shardNames()[:2] {
			_, err := c.Exec(ctxT(t, 10*time.Second), "/* shardproxy: shard="+name+" */ SELECT pg_sleep(2)")
			wantCode(t, err, "57014", fmt.Sprintf("a 2 s statement on %s under a 700ms statement_timeout", name))
		}
		// The client's own setting wins for its session, and RESET
		// returns to the configured default.
		mustExec(t, c, "SET statement_timeout = '5s'")
		mustExec(t, c, "SELECT pg_sleep(1)")
		mustExec(t, c, "RESET statement_timeout")
		_, err := c.Exec(ctxT(t, 10*time.Second), "SELECT pg_sleep(1)")
		wantCode(t, err, "57014", "after RESET statement_timeout")
	})

	t.Run("idle_in_transaction_timeout forwarded", func(t *testing.T) {
		c := connect(t, srv)
		tx, err := c.Begin(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []int64{keys[0][0], keys[1][0]} {
			if _, err := tx.Exec(ctxT(t, 10*time.Second), "INSERT INTO items (id, name) VALUES ($1, 'idle')", k); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2 * time.Second)
		_, err = tx.Exec(ctxT(t, 10*time.Second), "SELECT 1")
		if err == nil {
			t.Fatal("a transaction idle for 2 s went on under a 800ms idle_in_transaction_timeout")
		}
		if code := pgCode(err); code != "25P03" && code != "08006" {
			t.Fatalf("idle transaction: got %v (SQLSTATE %q), want 25P03", err, code)
		}
		t.Logf("client sees: %v", err)
		// Nothing of the transaction is left anywhere, and its rows are gone.
		shards := []*pgx.Conn{connectShard(t, shardNames()[0]), connectShard(t, shardNames()[1])}
		if d, open := waitNoOpenTx(t, shards, 2*time.Second); len(open) > 0 {
			t.Fatalf("open transactions %s after the idle timeout: %v", d, open)
		}
		if n := queryInt(t, connect(t, srv), "SELECT count(*) FROM items WHERE name = 'idle'"); n != 0 {
			t.Fatalf("%d rows of the timed-out transaction were committed", n)
		}
	})

	t.Run("query_timeout enforced by the proxy", func(t *testing.T) {
		c := connect(t, srv)
		// The server would run this for 10 s (the client lifted the
		// statement_timeout); the proxy gives up after 3 s.
		mustExec(t, c, "SET statement_timeout = 0")
		start := time.Now()
		_, err := c.Exec(ctxT(t, 20*time.Second), "SELECT pg_sleep(10)")
		took := time.Since(start)
		wantCode(t, err, "57014", "a 10 s statement under a 3 s query_timeout")
		if !strings.Contains(err.Error(), "query_timeout") || took > 6*time.Second {
			t.Fatalf("after %s: %v; want the query_timeout named within about 3 s", took, err)
		}
		if got := queryInt(t, connect(t, srv), "SELECT 1"); got != 1 {
			t.Fatal("proxy unusable after a query timeout")
		}
		// The proxy also cancelled the statement: the server does not
		// sleep on for the rest of its 10 s.
		deadline := time.Now().Add(3 * time.Second)
		for n := int64(1); n > 0; time.Sleep(50 * time.Millisecond) {
			n = sum(onShards(t, 2, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'"))
			if n > 0 && time.Now().After(deadline) {
				t.Fatalf("the timed-out statement still runs on the server %s later", time.Since(start).Round(time.Millisecond))
			}
		}
	})
}
