package router

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// pgbench's statements, as the built-in tpcb-like script sends them in
// extended/prepared mode and in simple mode.
var pgbenchStatements = []string{
	"BEGIN;",
	"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
	"SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
	"UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
	"UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;",
	"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
	"END;",
}

var pgbenchSimple = []string{
	"UPDATE pgbench_accounts SET abalance = abalance + -2816 WHERE aid = 51488;",
	"SELECT abalance FROM pgbench_accounts WHERE aid = 51488;",
	"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 46366, 2610, CURRENT_TIMESTAMP);",
}

// BenchmarkAnalyzeHit: every text is cached (the prepared-statement and
// repeated simple-query case).
func BenchmarkAnalyzeHit(b *testing.B) {
	r := New(testSchema(), 1000)
	for _, s := range pgbenchStatements {
		r.Analyze(s)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.Analyze(pgbenchStatements[i%len(pgbenchStatements)])
	}
}

func BenchmarkAnalyzeHitParallel(b *testing.B) {
	r := New(testSchema(), 1000)
	for _, s := range pgbenchStatements {
		r.Analyze(s)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Analyze(pgbenchStatements[i%len(pgbenchStatements)])
			i++
		}
	})
}

// BenchmarkAnalyzeMiss: parse and plan every time (cache disabled).
func BenchmarkAnalyzeMiss(b *testing.B) {
	for _, set := range []struct {
		name  string
		stmts []string
	}{{"extended", pgbenchStatements}, {"simple", pgbenchSimple}} {
		b.Run(set.name, func(b *testing.B) {
			r := New(testSchema(), 0)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				r.Analyze(set.stmts[i%len(set.stmts)])
			}
		})
	}
}

// BenchmarkAnalyzeMissEvicting: pgbench's simple mode with fresh literals
// in every statement, through a full cache (parse, plan, insert, evict).
func BenchmarkAnalyzeMissEvicting(b *testing.B) {
	r := New(testSchema(), 1000)
	var n atomic.Int64
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.Analyze(fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", n.Add(1)))
	}
}

// BenchmarkAnalyzeFanOut: planning a merged read (rewrite and deparse).
func BenchmarkAnalyzeFanOut(b *testing.B) {
	r := New(testSchema(), 0)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.Analyze("SELECT status, avg(total) FROM orders GROUP BY status ORDER BY 2 DESC LIMIT $1 OFFSET $2")
	}
}
