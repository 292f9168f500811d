// Command gopgx runs the compat scenario (compat/README.md) with pgx v5
// against the proxy: SCRAM with and without TLS, server-side prepared
// statements, a transaction across two shards, COPY, errors then
// recovery, and cancel. Parameters come from the COMPAT_* environment
// variables set by compat/run.sh. It prints one "ok" line per passed step
// and exits 1 with a "FAIL" line at the first failed check.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/shardproxy/shardproxy/compat/scenario"
)

// env is the run's settings (scenario.Env) with this client's helpers.
type env struct{ scenario.Env }

var (
	failf = scenario.Failf
	ok    = scenario.OK
	check = scenario.Check
)

// connect opens one connection whose context cancellation sends a
// CancelRequest (pgx's default closes the connection instead).
func (e env) connect(ctx context.Context, sslmode string, extra ...string) *pgx.Conn {
	cfg, err := pgx.ParseConfig(e.DSN(sslmode, extra...))
	check(err, "parse config")
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, CancelRequestDelay: 0, DeadlineDelay: 10 * time.Second}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	check(err, "connect sslmode="+sslmode)
	return conn
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func expectState(err error, want, what string) {
	if got := sqlstate(err); got != want {
		failf("%s: want SQLSTATE %s, got %v", what, want, err)
	}
}

func main() {
	e := env{scenario.Load("pgx")}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// 1. SCRAM with TLS and without; the connection says which.
	conn := e.connect(ctx, "require")
	tc, isTLS := conn.PgConn().Conn().(*tls.Conn)
	if !isTLS {
		failf("sslmode=require: connection is %T, not TLS", conn.PgConn().Conn())
	}
	ok("connect tls: sslmode=require, SCRAM, %s", tls.VersionName(tc.ConnectionState().Version))
	if e.RootCert != "" {
		c := e.connect(ctx, "verify-full", "sslrootcert="+e.RootCert)
		ok("connect tls verify-full: the proxy presented the dev certificate")
		c.Close(ctx)
	}
	plain := e.connect(ctx, "disable")
	if _, isTLS := plain.PgConn().Conn().(*tls.Conn); isTLS {
		failf("sslmode=disable: connection is TLS")
	}
	ok("connect plain: sslmode=disable, SCRAM, not TLS")
	bad, err := pgx.Connect(ctx, strings.Replace(e.DSN("disable"), "password="+e.Password, "password=wrong", 1))
	if err == nil {
		bad.Close(ctx)
		failf("wrong password accepted")
	}
	expectState(err, "28P01", "wrong password")
	ok("auth: a wrong password is refused (28P01)")
	plain.Close(ctx)
	defer conn.Close(ctx)

	// 2. Server-side prepared statements: an explicit Prepare, and pgx's
	// default statement cache (Parse/Describe once, then Bind/Execute).
	const byAid = "SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = $1"
	if _, err := conn.Prepare(ctx, "by_aid", byAid); err != nil {
		failf("prepare: %v", err)
	}
	for round := 0; round < 3; round++ {
		for _, aid := range []int{e.A, e.B} {
			for _, sql := range []string{"by_aid", byAid} {
				var gotAid, bid, bal int
				check(conn.QueryRow(ctx, sql, aid).Scan(&gotAid, &bid, &bal), "prepared read aid "+strconv.Itoa(aid))
				if gotAid != aid || bid != 1 || bal != 3*aid {
					failf("prepared read aid %d: got (%d, %d, %d), want (%d, 1, %d)", aid, gotAid, bid, bal, aid, 3*aid)
				}
			}
		}
	}
	var n, sum int
	check(conn.QueryRow(ctx, "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid = ANY($1)",
		[]int32{int32(e.A), int32(e.B)}).Scan(&n, &sum), "prepared read = ANY")
	if n != 2 || sum != 3*e.A+3*e.B {
		failf("prepared read = ANY: got (%d, %d), want (2, %d)", n, sum, 3*e.A+3*e.B)
	}
	ok("prepared: named statement and statement cache read aids %d and %d on both shards, = ANY($1) fan-out", e.A, e.B)

	// 3. A transaction across two shards: commit, then rollback.
	balances := func(what string) (int, int) {
		var x, y int
		check(conn.QueryRow(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", e.A).Scan(&x), what)
		check(conn.QueryRow(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", e.B).Scan(&y), what)
		return x, y
	}
	tx, err := conn.Begin(ctx)
	check(err, "begin")
	_, err = tx.Exec(ctx, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", 11, e.A)
	check(err, "update aid A")
	_, err = tx.Exec(ctx, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", 22, e.B)
	check(err, "update aid B")
	check(tx.Commit(ctx), "commit across shards")
	wantA, wantB := 3*e.A+11, 3*e.B+22
	if x, y := balances("read after commit"); x != wantA || y != wantB {
		failf("after commit: balances (%d, %d), want (%d, %d)", x, y, wantA, wantB)
	}
	ok("transaction: BEGIN; UPDATE aid %d; UPDATE aid %d; COMMIT -> both visible", e.A, e.B)
	tx, err = conn.Begin(ctx)
	check(err, "begin")
	for _, aid := range []int{e.A, e.B} {
		_, err = tx.Exec(ctx, "UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid = $1", aid)
		check(err, "update in rolled back transaction")
	}
	check(tx.Rollback(ctx), "rollback")
	if x, y := balances("read after rollback"); x != wantA || y != wantB {
		failf("after rollback: balances (%d, %d), want (%d, %d)", x, y, wantA, wantB)
	}
	ok("transaction: BEGIN; UPDATE both; ROLLBACK -> both unchanged")

	// 4. COPY FROM STDIN (pgx CopyFrom: binary format) into pgbench_history,
	// split by aid, then COPY TO STDOUT.
	marker := "compat " + e.Client
	var rows [][]any
	for i := 1; i <= 20; i++ {
		rows = append(rows, []any{int32(e.TID), int32(1), int32(i), int32(i), time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), marker})
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{"pgbench_history"},
		[]string{"tid", "bid", "aid", "delta", "mtime", "filler"}, pgx.CopyFromRows(rows))
	check(err, "CopyFrom")
	if copied != 20 {
		failf("CopyFrom: %d rows, want 20", copied)
	}
	var out bytes.Buffer
	tag, err := conn.PgConn().CopyTo(ctx, &out,
		"COPY (SELECT aid, delta FROM pgbench_history WHERE filler = '"+marker+"') TO STDOUT")
	check(err, "COPY TO STDOUT")
	if lines := strings.Count(out.String(), "\n"); lines != 20 || tag.RowsAffected() != 20 {
		failf("COPY TO STDOUT: %d lines, tag %q, want 20", lines, tag)
	}
	check(conn.QueryRow(ctx, "SELECT count(*), sum(delta) FROM pgbench_history WHERE filler = $1", marker).Scan(&n, &sum), "count")
	if n != 20 || sum != 210 {
		failf("after COPY: count %d sum %d, want 20 and 210", n, sum)
	}
	ok("copy: CopyFrom 20 rows (binary) into pgbench_history, COPY TO STDOUT reads 20 back")

	// 5. Errors, then the same connection works; in a transaction too.
	_, err = conn.Exec(ctx, "SELECT 1/0")
	expectState(err, "22012", "SELECT 1/0")
	_, err = conn.Exec(ctx, "selec 1")
	expectState(err, "42601", "syntax error")
	var one int
	check(conn.QueryRow(ctx, "SELECT 1").Scan(&one), "SELECT 1 after errors")
	tx, err = conn.Begin(ctx)
	check(err, "begin")
	_, err = tx.Exec(ctx, "UPDATE pgbench_accounts SET abalance = abalance + 5000 WHERE aid = $1", e.A)
	check(err, "update in failing transaction")
	_, err = tx.Exec(ctx, "SELECT 1/0")
	expectState(err, "22012", "SELECT 1/0 in transaction")
	_, err = tx.Exec(ctx, "SELECT 1")
	expectState(err, "25P02", "SELECT 1 in aborted transaction")
	check(tx.Rollback(ctx), "rollback after error")
	if x, _ := balances("read after failed transaction"); x != wantA {
		failf("after failed transaction: aid %d balance %d, want %d", e.A, x, wantA)
	}
	ok("error: 22012 and 42601 reported, SELECT works after; in a transaction 22012, then 25P02, ROLLBACK, the UPDATE is undone")

	// 6. Cancel through the context: pgx sends a CancelRequest.
	qctx, qcancel := context.WithTimeout(ctx, time.Second)
	start := time.Now()
	_, err = conn.Exec(qctx, "SELECT pg_sleep(30)")
	qcancel()
	took := time.Since(start)
	expectState(err, "57014", "cancelled SELECT pg_sleep(30)")
	if took > 6*time.Second {
		failf("cancel took %v", took)
	}
	if conn.IsClosed() {
		failf("connection closed after cancel")
	}
	check(conn.QueryRow(ctx, "SELECT 1").Scan(&one), "SELECT 1 after cancel")
	ok("cancel: context deadline during SELECT pg_sleep(30) -> CancelRequest, 57014 after %v; the connection works", took.Round(time.Millisecond))
	fmt.Println("PASS " + e.Client)
}
