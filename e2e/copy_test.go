package e2e

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
)

// copyEscape escapes a value for COPY text format exactly as PostgreSQL
// writes it (CopyAttributeOutText), so the bytes we send are the bytes a
// COPY TO must give back.
func copyEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\v':
			b.WriteString(`\v`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

var copyTexts = []string{
	"plain",
	"tab\there",
	`back\slash`,
	"new\nline",
	"cr\rlf\r\n",
	"unicode héllo wörld 日本語 🐘",
	`quotes ' and "`,
	"",
	`\N is not null here`,
	"vt\v ff\f bs\b",
	"trailing backslash \\",
	"comma, semicolon; pipe|",
}

// copyInput builds n rows in COPY text format for e2e_copy.
func copyInput(n int) []byte {
	var b bytes.Buffer
	base := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < n; i++ {
		id := i + 1
		name := copyEscape(fmt.Sprintf("%s #%d", copyTexts[i%len(copyTexts)], id))
		note := `\N`
		if i%7 != 0 {
			note = copyEscape(copyTexts[(i/3)%len(copyTexts)])
		}
		qty := (i*37)%10000 - 5000
		price := fmt.Sprintf("%d.%02d", (i*13)%100000, i%100)
		if i%11 == 0 && i > 0 { // not at i == 0: -0.00 reads back as 0.00
			price = "-" + price
		}
		flag := "f"
		if i%2 == 0 {
			flag = "t"
		}
		d := base.AddDate(0, 0, i%20000).Format("2006-01-02")
		raw := `\N`
		if i%5 != 0 {
			raw = `\\x` + hex.EncodeToString([]byte{byte(i), byte(i >> 8), 0, 0xff, '\\', '\t'})
		}
		fmt.Fprintf(&b, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", id, name, note, qty, price, flag, d, raw)
	}
	return b.Bytes()
}

// firstDiff describes where two COPY outputs first differ, by line.
func firstDiff(got, want []byte) string {
	gl, wl := bytes.Split(got, []byte("\n")), bytes.Split(want, []byte("\n"))
	for i := 0; i < len(gl) && i < len(wl); i++ {
		if !bytes.Equal(gl[i], wl[i]) {
			return fmt.Sprintf("line %d:\n got  %q\n want %q", i+1, gl[i], wl[i])
		}
	}
	return fmt.Sprintf("got %d lines, want %d", len(gl), len(wl))
}

// TestCopy: COPY FROM STDIN and COPY TO STDOUT relay every byte: 100,000
// rows in, the same bytes out. A bad row fails the COPY with the server's
// error and the session goes on.
func TestCopy(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	c := connect(t, srv)
	ctx := ctxT(t, 2*time.Minute)
	mustExec(t, c, "DROP TABLE IF EXISTS e2e_copy")
	mustExec(t, c, `CREATE TABLE e2e_copy (id bigint PRIMARY KEY, name text NOT NULL, note text,
		qty int NOT NULL, price numeric(12,2) NOT NULL, flag boolean NOT NULL, d date NOT NULL, raw bytea)`)
	// Make the output format independent of anything the server or a
	// previous test might have set.
	mustExec(t, c, "SET DateStyle = 'ISO, MDY'")
	mustExec(t, c, "SET bytea_output = 'hex'")

	const rows = 100000
	input := copyInput(rows)
	start := time.Now()
	tag, err := c.PgConn().CopyFrom(ctx, bytes.NewReader(input), "COPY e2e_copy FROM STDIN")
	if err != nil {
		t.Fatalf("COPY FROM (%d bytes): %v", len(input), err)
	}
	if tag.String() != fmt.Sprintf("COPY %d", rows) {
		t.Fatalf("COPY FROM tag %q, want COPY %d", tag, rows)
	}
	t.Logf("COPY FROM %d rows, %d bytes: %v", rows, len(input), time.Since(start).Round(time.Millisecond))

	var out bytes.Buffer
	tag, err = c.PgConn().CopyTo(ctx, &out, "COPY (SELECT * FROM e2e_copy ORDER BY id) TO STDOUT")
	if err != nil {
		t.Fatalf("COPY TO: %v", err)
	}
	if tag.String() != fmt.Sprintf("COPY %d", rows) {
		t.Errorf("COPY TO tag %q, want COPY %d", tag, rows)
	}
	if !bytes.Equal(out.Bytes(), input) {
		t.Fatalf("COPY TO output (%d bytes) differs from COPY FROM input (%d bytes): %s",
			out.Len(), len(input), firstDiff(out.Bytes(), input))
	}

	// Cross-check on the primary itself that the rows are really there
	// and a few values decoded as intended.
	su := connectPrimary(t)
	var n, nullNotes int64
	var name5 string
	if err := su.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE note IS NULL),
		(SELECT name FROM e2e_copy WHERE id = 6) FROM e2e_copy`).Scan(&n, &nullNotes, &name5); err != nil {
		t.Fatal(err)
	}
	if n != rows || nullNotes != (rows+6)/7 || name5 != "unicode héllo wörld 日本語 🐘 #6" {
		t.Errorf("on the primary: %d rows, %d NULL notes, row 6 name %q", n, nullNotes, name5)
	}

	t.Run("bad-row", func(t *testing.T) {
		bad := "100001\tok\t\\N\t1\t1.00\tt\t2020-01-01\t\\N\n" +
			"not-a-number\tbad\t\\N\t1\t1.00\tt\t2020-01-01\t\\N\n" +
			"100003\tok\t\\N\t1\t1.00\tt\t2020-01-01\t\\N\n"
		_, err := c.PgConn().CopyFrom(ctx, strings.NewReader(bad), "COPY e2e_copy FROM STDIN")
		wantCode(t, err, "22P02", "COPY FROM with a bad row")
		if got := queryString(t, c, "SELECT count(*)::text FROM e2e_copy"); got != fmt.Sprint(rows) {
			t.Fatalf("after failed COPY: %s rows, want %d (the good rows of a failed COPY must not stay)", got, rows)
		}
	})

	t.Run("client-abort", func(t *testing.T) {
		// The reader fails halfway: pgconn sends CopyFail, the server
		// answers 57014, and the session goes on.
		r := &failingReader{data: []byte("200001\tx\t\\N\t1\t1.00\tt\t2020-01-01\t\\N\n")}
		_, err := c.PgConn().CopyFrom(ctx, r, "COPY e2e_copy FROM STDIN")
		wantCode(t, err, "57014", "COPY FROM aborted by the client")
		if got := queryString(t, c, "SELECT count(*)::text FROM e2e_copy WHERE id > $1", rows); got != "0" {
			t.Fatalf("after aborted COPY: %s extra rows", got)
		}
	})

	t.Run("binary-copy-in-transaction", func(t *testing.T) {
		// pgx.CopyFrom uses the binary COPY format.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var src [][]any
		for i := 0; i < 5000; i++ {
			src = append(src, []any{int64(300000 + i), fmt.Sprintf("bin\t%d", i), nil, int32(i), 1.5, i%2 == 0, time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC), []byte{0, 1, 2}})
		}
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"e2e_copy"},
			[]string{"id", "name", "note", "qty", "price", "flag", "d", "raw"}, pgx.CopyFromRows(src))
		if err != nil || n != 5000 {
			t.Fatalf("binary COPY: %d rows, %v", n, err)
		}
		var cnt int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM e2e_copy WHERE id >= 300000 AND name LIKE 'bin\t%'").Scan(&cnt); err != nil || cnt != 5000 {
			t.Fatalf("inside the transaction: %d rows, %v", cnt, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if got := queryString(t, c, "SELECT count(*)::text FROM e2e_copy WHERE id >= 300000"); got != "0" {
			t.Fatalf("after ROLLBACK: %s binary-copied rows remain", got)
		}
	})
}

// failingReader returns its data, then an error.
type failingReader struct {
	data []byte
	done bool
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.done {
		return 0, errors.New("e2e: source failed")
	}
	r.done = true
	return copy(p, r.data), nil
}
