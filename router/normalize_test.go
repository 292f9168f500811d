package router

import (
	"strings"
	"testing"
)

func TestNormalizeLiterals(t *testing.T) {
	cases := []struct {
		in, norm string
		lits     []string // nil: not normalized
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 81723;", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", []string{"81723"}},
		{"UPDATE t SET v = v + -5 WHERE k = 'it''s' AND x IN (1, 2.5, 3e2)", "UPDATE t SET v = v + -$1 WHERE k = $2 AND x IN ($3, $4, $5)", []string{"5", "it's", "1", "2.5", "3e2"}},
		{`SELECT "col1", t2.c3 FROM t2 /* 42 */ -- 7` + "\n WHERE x = 1", `SELECT "col1", t2.c3 FROM t2 /* 42 */ -- 7` + "\n WHERE x = $1", []string{"1"}},
		{"SELECT 'a' WHERE 'b' LIKE 'c'", "SELECT $1 WHERE $2 LIKE $3", []string{"a", "b", "c"}},
		{"SELECT * FROM t WHERE d = DATE '2024-01-01'", "", nil},
		{"SELECT E'a\\nb'", "", nil},
		{"SELECT U&'d\\0061t'", "", nil},
		{"SELECT $1", "", nil},
		{"SELECT $$x$$", "", nil},
		{"SELECT 0x1F", "", nil},
		{"SELECT now()", "", nil},
		{"SELECT 'unterminated", "", nil},
	}
	for _, c := range cases {
		norm, lits, ok := NormalizeLiterals(nil, nil, []byte(c.in))
		if c.lits == nil {
			if ok {
				t.Errorf("%q: normalized to %q, want left alone", c.in, norm)
			}
			continue
		}
		if !ok || string(norm) != c.norm {
			t.Errorf("%q: got %q (ok %v), want %q", c.in, norm, ok, c.norm)
			continue
		}
		var got []string
		for _, l := range lits {
			got = append(got, string(l))
		}
		if strings.Join(got, "|") != strings.Join(c.lits, "|") {
			t.Errorf("%q: literals %q, want %q", c.in, got, c.lits)
		}
	}
}

func BenchmarkNormalizeLiterals(b *testing.B) {
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 81723;")
	var dst []byte
	var lits [][]byte
	b.ReportAllocs()
	for b.Loop() {
		dst, lits, _ = NormalizeLiterals(dst[:0], lits[:0], q)
	}
}
