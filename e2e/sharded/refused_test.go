package sharded

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/config"
)

// TestRefusedFormsThroughProxy sends every statement testdata/routing
// marks refused with 0A000 through a proxy with the golden files' schema,
// in both protocols, and checks the client gets SQLSTATE 0A000 with a
// message naming the construct, and that the session keeps working.
func TestRefusedFormsThroughProxy(t *testing.T) {
	srv := startProxy(t, 3, func(c *config.Config) {
		c.Sharding = config.Sharding{
			Tables: []config.ShardedTable{
				{Name: "pgbench_accounts", Key: "aid"}, {Name: "pgbench_history", Key: "aid"},
				{Name: "pgbench_tellers", Key: "tid"}, {Name: "pgbench_branches", Key: "bid"},
				{Name: "users", Key: "id"}, {Name: "orders", Key: "user_id"},
				{Name: "events", Key: "tenant", Type: "text"}, {Name: "sessions", Key: "id", Type: "uuid"},
			},
			ReferenceTables: []string{"countries", "currencies"},
		}
	})
	c := connect(t, srv)
	files, err := filepath.Glob("../../testdata/routing/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	n := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range strings.Split(string(data), "\n-- ")[1:] {
			lines := strings.Split(block, "\n")
			name := lines[0]
			var sql []string
			refused := false
			for _, l := range lines[1:] {
				if strings.HasPrefix(l, "=> ") {
					refused = refused || strings.Contains(l, "error=0A000")
					break
				}
				sql = append(sql, l)
			}
			i := strings.Index(name, "[expect: ")
			if !refused || i < 0 {
				continue
			}
			expect := strings.ToLower(strings.TrimSuffix(name[i+len("[expect: "):], "]"))
			q := strings.TrimSpace(strings.Join(sql, "\n"))
			if strings.Contains(q, "$1") {
				continue // needs parameters; covered in the simple form by the router tests
			}
			n++
			for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
				_, err := c.Exec(ctxT(t, 10*time.Second), q, mode)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(strings.ToLower(pe.Message), expect) {
					t.Errorf("%s: %s (mode %v): got %v, want 0A000 naming %q", filepath.Base(f), name, mode, err, expect)
				}
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d refused forms found in testdata", n)
	}
	t.Logf("%d refused forms, each refused with 0A000 in both protocols", n)
	if got := queryInt(t, c, "SELECT 1"); got != 1 {
		t.Fatal("session broken after refusals")
	}
}
