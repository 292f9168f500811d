package sharded

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestCopyLineFormsLikePostgres sends COPY streams whose row boundaries
// are easy to get wrong (a backslash-newline inside a value, rows ended by
// a bare carriage return or by CRLF, CRLF inside CSV quotes, the \. end
// marker followed by more data, rows cut across CopyData messages) through
// the proxy into a sharded table, and the same bytes straight into one
// PostgreSQL table: the rows must be the same, and each must be found by
// its key through the proxy (it is on the shard that owns it).
func TestCopyLineFormsLikePostgres(t *testing.T) {
	srv := startProxy(t, 2, nil)
	c := connect(t, srv)
	direct := connectShard(t, shardNames()[0])
	mustExec(t, c, "DROP TABLE IF EXISTS copy_t")
	mustExec(t, c, "CREATE TABLE copy_t (id bigint PRIMARY KEY, note text)")
	mustExec(t, direct, "DROP TABLE IF EXISTS copy_ref")
	mustExec(t, direct, "CREATE TABLE copy_ref (id bigint PRIMARY KEY, note text)")
	cases := []struct{ name, opts, data string }{
		{"backslash-newline in text", "", "1\tone\\\nstill one\n2\ttwo\n3\tthree\n"},
		{"bare CR line ends", "", "11\ta\r12\tb\r13\tc\r"},
		{"CRLF line ends", "", "21\ta\r\n22\tb\r\n23\tc"},
		{"CSV CRLF, CRLF inside quotes", "(FORMAT csv)", "31,a\r\n32,\"b\r\nc\"\r\n33,\"d,\"\"e\"\"\"\r\n"},
		{"CSV end marker then more data", "(FORMAT csv)", "41,a\n42,b\n\\.\n43,after the end\n"},
		{"text end marker then more data", "", "51\ta\n\\.\n52\tafter the end\n"},
		{"CSV header", "(FORMAT csv, HEADER true)", "id,note\n61,x\n62,\"y\n\"\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mustExec(t, c, "TRUNCATE copy_t")
			mustExec(t, direct, "TRUNCATE copy_ref")
			// Through the proxy, cut into 3-byte CopyData messages so rows
			// and line endings straddle messages.
			pc := c.PgConn()
			if _, err := pc.CopyFrom(ctxT(t, 30*time.Second), &chunkReader{data: []byte(tc.data), n: 3}, "COPY copy_t FROM STDIN "+tc.opts); err != nil {
				t.Fatalf("through the proxy: %v", err)
			}
			if _, err := direct.PgConn().CopyFrom(ctxT(t, 30*time.Second), strings.NewReader(tc.data), "COPY copy_ref FROM STDIN "+tc.opts); err != nil {
				t.Fatalf("straight into PostgreSQL: %v", err)
			}
			got, want := copyRows(t, c, "copy_t"), copyRows(t, direct, "copy_ref")
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Fatalf("through the proxy %q, PostgreSQL %q", got, want)
			}
			for _, r := range got {
				id := strings.SplitN(r, "=", 2)[0]
				if n := queryInt(t, c, "SELECT count(*) FROM copy_t WHERE id = "+id); n != 1 {
					t.Fatalf("row %s not found by its key through the proxy (%d)", r, n)
				}
			}
		})
	}
}

func copyRows(t *testing.T, c *pgx.Conn, table string) []string {
	t.Helper()
	rows, err := c.Query(ctxT(t, 10*time.Second), "SELECT id, note FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id int64
		var note string
		if err := rows.Scan(&id, &note); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d=%q", id, note))
	}
	sort.Strings(out)
	return out
}

// chunkReader hands out its data n bytes per Read, so pgconn sends one
// CopyData message per n bytes.
type chunkReader struct {
	data []byte
	n    int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := min(r.n, len(p), len(r.data))
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}
