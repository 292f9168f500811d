package proxy

import (
	"testing"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// FuzzRoute plans arbitrary SQL and locates its keys with arbitrary bound
// parameter values, in text and in binary, for every kind of shard key
// (integer, text, uuid, numeric; hash, range, list): the router and the
// key location must answer or refuse with a PostgreSQL error, never panic
// and never fail internally; every owner must be a real shard; a split
// INSERT must render a statement for any subset of its rows.
func FuzzRoute(f *testing.F) {
	cfg := &config.Config{
		Users: []config.User{{Name: "u", Password: "p"}},
		Shards: []config.Shard{
			{Name: "s0", Primary: "postgres://x@127.0.0.1:1/app"},
			{Name: "s1", Primary: "postgres://x@127.0.0.1:1/app"},
			{Name: "s2", Primary: "postgres://x@127.0.0.1:1/app"},
		},
		Sharding: config.Sharding{
			Tables: []config.ShardedTable{
				{Name: "t", Key: "id"},
				{Name: "s", Key: "k", Type: "text"},
				{Name: "u", Key: "id", Type: "uuid"},
				{Name: "n", Key: "v", Type: "numeric(12,2)"},
				{Name: "r", Key: "day", Type: "integer", Method: "range", Ranges: []config.KeyRange{{To: "100", Shard: "s0"}, {From: "100", Shard: "s1"}}},
				{Name: "l", Key: "code", Type: "text", Method: "list", Lists: []config.KeyList{{Values: []string{"eu"}, Shard: "s0"}, {Values: []string{"us"}, Shard: "s2"}}},
			},
			ReferenceTables: []string{"ref"},
		},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	srv, err := New(cfg, Options{})
	if err != nil {
		f.Fatal(err)
	}
	for _, sql := range []string{
		"SELECT * FROM t WHERE id = $1", "SELECT * FROM s WHERE k = $1 OR k = $2", "SELECT * FROM u WHERE id = ANY($1)",
		"UPDATE n SET x = 1 WHERE v = $1", "DELETE FROM r WHERE day IN ($1, $2)", "SELECT * FROM l WHERE code = $1",
		"INSERT INTO t (id, v) VALUES ($1, 'a'), ($2, 'b'), (7, $1)", "INSERT INTO s (k) VALUES ($1), ($2)",
		"SELECT * FROM t JOIN ref ON ref.id = t.id WHERE t.id = $2", "/* shardproxy: shard=s1 */ SELECT $1::int",
	} {
		f.Add(sql, []byte("42"), []byte{0, 0, 0, 0, 0, 0, 0, 42}, uint8(0))
		f.Add(sql, []byte("-9223372036854775808"), []byte("{1,2}"), uint8(1))
		f.Add(sql, []byte("1e400"), []byte(nil), uint8(2))
	}
	m := srv.ShardMap()
	shards := len(cfg.Shards)
	f.Fuzz(func(t *testing.T, sql string, p1, p2 []byte, formats uint8) {
		params := &plan.Params{Values: [][]byte{p1, p2, p1}}
		switch formats % 4 {
		case 1:
			params.Formats = []int16{1}
		case 2:
			params.Formats = []int16{0, 1, 1}
		case 3:
			params.Formats = []int16{1, 0}
		}
		if formats&4 != 0 {
			params.Values[1] = nil // NULL
		}
		for _, part := range srv.router.Analyze(sql) {
			st := part.Stmt
			if st.Kind == plan.Refused && st.Err != nil && st.Err.Code == wire.CodeInternalError {
				t.Fatalf("%q: %s", sql, st.Err.Message)
			}
			keys := st.Keys
			if st.Insert != nil {
				keys = append(keys, st.Insert.Rows...)
			}
			for _, k := range keys {
				owners, err := locateKey(m, k, params)
				if err != nil {
					if _, ok := err.(*wire.Error); !ok {
						t.Fatalf("%q key %+v: error without a SQLSTATE: %v", sql, k, err)
					}
					continue
				}
				for _, o := range owners {
					if o < 0 || o >= shards {
						t.Fatalf("%q key %+v: owner %d of %d shards", sql, k, o, shards)
					}
				}
			}
			if st.Insert != nil && st.Insert.Render != nil && len(st.Insert.Rows) > 0 {
				all := make([]int, len(st.Insert.Rows))
				for i := range all {
					all[i] = i
				}
				_, _ = st.Insert.Render(all)
				_, _ = st.Insert.Render(all[len(all)-1:])
			}
		}
	})
}
