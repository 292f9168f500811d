package sharded

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestSessionSettings checks shardproxy.shard (run on one shard only) and
// shardproxy.explain (a NOTICE with the route of each statement).
func TestSessionSettings(t *testing.T) {
	srv := startProxy(t, 3, nil)
	var mu sync.Mutex
	var notices []string
	cfg, err := pgx.ParseConfig(appDSN(srv))
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n.Message)
		mu.Unlock()
	}
	c, err := pgx.ConnectConfig(ctxT(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	setupItems(t, c, 90)
	direct := onShards(t, 3, "SELECT count(*) FROM items")

	mustExec(t, c, "SET shardproxy.shard = 'shard1'")
	var got string
	if err := c.QueryRow(ctxT(t, 10*time.Second), "SHOW shardproxy.shard").Scan(&got); err != nil || got != "shard1" {
		t.Fatalf("SHOW shardproxy.shard = %q, %v", got, err)
	}
	if n := queryInt(t, c, "SELECT count(*) FROM items"); n != direct[1] {
		t.Fatalf("count on forced shard1 = %d, shard1 holds %d", n, direct[1])
	}
	mustExec(t, c, "RESET shardproxy.shard")
	if n := queryInt(t, c, "SELECT count(*) FROM items"); n != 90 {
		t.Fatalf("count after RESET = %d, want 90", n)
	}
	// The comment form applies to one statement.
	if n := queryInt(t, c, "/* shardproxy: shard=shard2 */ SELECT count(*) FROM items"); n != direct[2] {
		t.Fatalf("count with shard=shard2 hint = %d, shard2 holds %d", n, direct[2])
	}
	_, err = c.Exec(ctxT(t, 10*time.Second), "SET shardproxy.shard = 'nope'")
	wantCode(t, err, "22023", "SET shardproxy.shard to an unknown shard")

	// RESET ALL resets the proxy's settings too.
	mustExec(t, c, "SET shardproxy.shard = 'shard1'")
	mustExec(t, c, "RESET ALL")
	if n := queryInt(t, c, "SELECT count(*) FROM items"); n != 90 {
		t.Fatalf("count after RESET ALL = %d, want 90 (shardproxy.shard still set?)", n)
	}
	mustExec(t, c, "SET shardproxy.explain = on")
	mu.Lock()
	notices = nil
	mu.Unlock()
	queryInt(t, c, "SELECT count(*) FROM items WHERE id = 7")
	queryInt(t, c, "SELECT count(*) FROM items")
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 2 || !strings.HasPrefix(notices[0], "route: shard") || !strings.Contains(notices[0], "keyed") ||
		!strings.HasPrefix(notices[1], "route: shard0,shard1,shard2 primary") || !strings.Contains(notices[1], "fan-out") {
		t.Fatalf("explain notices = %q", notices)
	}
}

// TestDDLAcrossShards: DDL on a sharded table reaches every shard, and a
// failure on one shard names it and changes no shard.
func TestDDLAcrossShards(t *testing.T) {
	srv := startProxy(t, 3, nil)
	c := connect(t, srv)
	mustExec(t, c, "DROP TABLE IF EXISTS item_tags")
	// Only shard1 already has the table: the CREATE fails there.
	s1 := connectShard(t, "shard1")
	mustExec(t, s1, "CREATE TABLE item_tags (item_id bigint, tag text)")
	_, err := c.Exec(ctxT(t, 10*time.Second), "CREATE TABLE item_tags (item_id bigint, tag text, extra int)")
	wantCode(t, err, "42P07", "CREATE TABLE existing on one shard")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || !strings.Contains(pe.Detail, "shard1") {
		t.Fatalf("error does not name the failing shard in its detail: %#v", err)
	}
	for _, name := range []string{"shard0", "shard2"} {
		if n := queryInt(t, connectShard(t, name), "SELECT count(*) FROM pg_class WHERE relname = 'item_tags'"); n != 0 {
			t.Fatalf("%s was changed by a CREATE TABLE that failed on shard1", name)
		}
	}
	mustExec(t, s1, "DROP TABLE item_tags")
	mustExec(t, c, "CREATE TABLE item_tags (item_id bigint, tag text)")
	mustExec(t, c, "CREATE INDEX item_tags_tag ON item_tags (tag)")
	mustExec(t, c, "ALTER TABLE item_tags ADD COLUMN weight int DEFAULT 1")
	for _, n := range onShards(t, 3, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'item_tags'::regclass AND attname = 'weight'") {
		if n != 1 {
			t.Fatal("ALTER TABLE did not reach every shard")
		}
	}
	// Outside a transaction block only: VACUUM runs on each shard alone.
	mustExec(t, c, "VACUUM ANALYZE item_tags")
	mustExec(t, c, "DROP TABLE item_tags")
	for _, n := range onShards(t, 3, "SELECT count(*) FROM pg_class WHERE relname = 'item_tags'") {
		if n != 0 {
			t.Fatal("DROP TABLE did not reach every shard")
		}
	}
}

// TestPsqlThroughShards: psql's catalog queries and a multi-statement
// query string (run piece by piece across shards, as one transaction).
func TestPsqlThroughShards(t *testing.T) {
	srv := startProxy(t, 3, nil)
	c := connect(t, srv)
	setupItems(t, c, 30)
	psql := func(args ...string) string {
		t.Helper()
		h, p, _ := net.SplitHostPort(srv.Addr())
		cmd := exec.Command("/usr/bin/psql", append([]string{"-X", "-v", "ON_ERROR_STOP=1", "-h", h, "-p", p, "-U", "app", "-d", "app"}, args...)...)
		cmd.Env = append(os.Environ(), "PGPASSWORD=app", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=5")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("psql %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := psql("-c", `\dt`); !strings.Contains(out, "items") {
		t.Fatalf(`\dt does not list items:\n%s`, out)
	}
	if out := psql("-c", `\d items`); !strings.Contains(out, "price") || !strings.Contains(out, "items_pkey") {
		t.Fatalf(`\d items:\n%s`, out)
	}
	psql("-c", "BEGIN; UPDATE items SET grp = 100 WHERE id = 1; UPDATE items SET grp = 100 WHERE id = 2; UPDATE items SET grp = 100 WHERE id = 3; COMMIT")
	if n := queryInt(t, c, "SELECT count(*) FROM items WHERE grp = 100"); n != 3 {
		t.Fatalf("multi-statement transaction updated %d rows, want 3", n)
	}
	// Without BEGIN the string is one implicit transaction too: the
	// failing last statement undoes the first ones on every shard.
	h, p, _ := net.SplitHostPort(srv.Addr())
	cmd := exec.Command("/usr/bin/psql", "-X", "-h", h, "-p", p, "-U", "app", "-d", "app", "-c",
		"UPDATE items SET grp = 200 WHERE id = 1; UPDATE items SET grp = 200 WHERE id = 2; SELECT 1/0")
	cmd.Env = append(os.Environ(), "PGPASSWORD=app", "PGSSLMODE=disable")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "division by zero") {
		t.Fatalf("failing multi-statement string: %v\n%s", err, out)
	}
	if n := queryInt(t, c, "SELECT count(*) FROM items WHERE grp = 200"); n != 0 {
		t.Fatalf("%d rows changed by a failed multi-statement string", n)
	}
	// Likewise when the proxy itself refuses the last statement.
	_, err := c.Exec(ctxT(t, 10*time.Second), "UPDATE items SET grp = 300 WHERE id = 1; UPDATE items SET grp = 300 WHERE id = 2; SELECT row_number() OVER () FROM items")
	wantCode(t, err, "0A000", "window function across shards in a multi-statement string")
	if n := queryInt(t, c, "SELECT count(*) FROM items WHERE grp = 300"); n != 0 {
		t.Fatalf("%d rows changed by a multi-statement string whose last statement was refused", n)
	}
}
