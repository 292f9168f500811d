package sharded

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestDescribePortalMessageOrder checks the exact answer to
// Parse/Bind/Describe(portal)/Execute/Sync for statements on one shard and
// across shards: libpq (pgbench -M extended) and JDBC describe every
// portal and reject a RowDescription out of place or twice.
func TestDescribePortalMessageOrder(t *testing.T) {
	srv := startProxy(t, 2, nil)
	c := connect(t, srv)
	setupItems(t, c, 20)
	pc, err := pgconn.Connect(ctxT(t, 10*time.Second), appDSN(srv))
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	fe := hc.Frontend
	_ = hc.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	run := func(msgs ...pgproto3.FrontendMessage) string {
		t.Helper()
		for _, m := range msgs {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m := m.(type) {
			case *pgproto3.ParseComplete:
				got = append(got, "ParseComplete")
			case *pgproto3.BindComplete:
				got = append(got, "BindComplete")
			case *pgproto3.RowDescription:
				got = append(got, "RowDescription")
			case *pgproto3.NoData:
				got = append(got, "NoData")
			case *pgproto3.DataRow:
				if len(got) == 0 || got[len(got)-1] != "DataRow" {
					got = append(got, "DataRow")
				}
			case *pgproto3.CommandComplete:
				got = append(got, "CommandComplete")
			case *pgproto3.ErrorResponse:
				got = append(got, "Error:"+m.Message)
			case *pgproto3.ReadyForQuery:
				return strings.Join(append(got, "ReadyForQuery"), " ")
			}
		}
	}
	const want = "ParseComplete BindComplete RowDescription DataRow CommandComplete ReadyForQuery"
	for _, q := range []string{
		"SELECT id, name FROM items WHERE id = $1",                        // one shard
		"SELECT count(*) FROM items WHERE id < $1",                        // every shard, merged
		"SELECT id FROM items WHERE id < $1 ORDER BY id LIMIT 3",          // every shard, sorted
		"SELECT id FROM items WHERE id < $1",                              // every shard, rows streamed as they come
		"SELECT id FROM items WHERE id = ANY(ARRAY[1, 2, 3, $1::bigint])", // some shards, by key
	} {
		got := run(&pgproto3.Parse{Query: q}, &pgproto3.Bind{Parameters: [][]byte{[]byte("5")}},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
		if got != want {
			t.Errorf("%s (unnamed):\n got %s\nwant %s", q, got, want)
		}
		// A named statement prepared in one round trip, run in the next.
		if got := run(&pgproto3.Parse{Name: "s", Query: q}, &pgproto3.Sync{}); got != "ParseComplete ReadyForQuery" {
			t.Errorf("%s: prepare: %s", q, got)
		}
		got = run(&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("5")}},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
		if want := strings.TrimPrefix(want, "ParseComplete "); got != want {
			t.Errorf("%s (named):\n got %s\nwant %s", q, got, want)
		}
		run(&pgproto3.Close{ObjectType: 'S', Name: "s"}, &pgproto3.Sync{})
	}
}
