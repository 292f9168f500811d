package router

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// goldenDDL creates the golden files' tables, with every column they
// use, in a scratch schema.
const goldenDDL = `
DROP SCHEMA IF EXISTS router_golden CASCADE;
CREATE SCHEMA router_golden;
SET search_path TO router_golden;
CREATE TABLE users (id bigint PRIMARY KEY, name text, email text, created_at timestamptz, active bool,
  verified bool, country text, referrer_id bigint, last_login timestamptz, banned bool, spent numeric,
  country_name text, version int);
CREATE TABLE orders (user_id bigint, total numeric(10,2), status text, currency text, created_at timestamptz,
  shipped_at timestamptz, flagged bool, note text, country text);
CREATE TABLE events (tenant text, id bigint, kind text, body text, payload jsonb, created_at timestamptz);
CREATE TABLE sessions (id uuid, user_id bigint, data jsonb, expires_at timestamptz);
CREATE TABLE countries (code text PRIMARY KEY, name text, region text, currency text, weight float8, users int);
CREATE TABLE currencies (code text, id uuid);
CREATE TABLE settings (key text, value text, country text, flag_id int, note text);
CREATE TABLE flags (id int);
CREATE TABLE pgbench_accounts (aid int, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
CREATE TABLE pgbench_tellers (tid int, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_branches (bid int, bbalance int, filler char(88));
`

// TestShardSQLOnPostgres prepares every rewritten statement of the golden
// files next to the client's text on a real server and checks that the
// shards' statement takes the same parameter types and returns the
// columns the merge expects. Set ROUTER_TEST_DATABASE to a connection
// string to run it.
func TestShardSQLOnPostgres(t *testing.T) {
	dsn := os.Getenv("ROUTER_TEST_DATABASE")
	if dsn == "" {
		t.Skip("ROUTER_TEST_DATABASE not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, goldenDDL).ReadAll(); err != nil {
		t.Fatalf("creating the golden schema: %v", err)
	}
	defer func() {
		_, _ = conn.Exec(context.Background(), "DROP SCHEMA router_golden CASCADE").ReadAll()
	}()

	r := New(testSchema(), 0)
	checked := 0
	forEachGolden(t, func(file string, c goldenCase) {
		for i, p := range r.Analyze(c.sql) {
			st := p.Stmt
			if st.ShardSQL == "" || st.Merge == nil && st.Insert == nil {
				continue
			}
			name := fmt.Sprintf("%s: %s #%d", file, c.name, i)
			orig, err := conn.Prepare(ctx, "", p.SQL, nil)
			if err != nil {
				t.Logf("%s: %v", name, err)
				continue // the golden text itself is not valid here
			}
			shard, err := conn.Prepare(ctx, "", st.ShardSQL, nil)
			if err != nil {
				t.Errorf("%s: the client's text prepares, the shards' %q does not: %v", name, st.ShardSQL, err)
				continue
			}
			checked++
			if !slices.Equal(orig.ParamOIDs, shard.ParamOIDs) {
				t.Errorf("%s: parameter types %v, the client's text %v", name, shard.ParamOIDs, orig.ParamOIDs)
			}
			m := st.Merge.Resolve(len(shard.Fields))
			if m.Visible != len(orig.Fields) || len(shard.Fields) != m.Visible+st.Merge.Hidden {
				t.Errorf("%s: the shards return %d columns, the client %d; plan: %d visible + %d hidden",
					name, len(shard.Fields), len(orig.Fields), m.Visible, st.Merge.Hidden)
				continue
			}
			for j := 0; j < m.Visible; j++ {
				if shard.Fields[j].Name != orig.Fields[j].Name {
					t.Errorf("%s: column %d is named %q for the shards, %q for the client", name, j, shard.Fields[j].Name, orig.Fields[j].Name)
				}
			}
		}
	})
	t.Logf("%d rewritten statements prepared", checked)
}
