// Command golibpq runs the compat scenario (compat/README.md) with lib/pq
// through database/sql against the proxy: SCRAM with and without TLS,
// server-side prepared statements, a transaction across two shards, COPY
// FROM STDIN (pq.CopyIn), errors then recovery, and cancel. Parameters
// come from the COMPAT_* environment variables set by compat/run.sh. It
// prints one "ok" line per passed step and exits 1 with a "FAIL" line at
// the first failed check.
package main

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"

	"github.com/shardproxy/shardproxy/compat/scenario"
)

// env is the run's settings (scenario.Env) with this client's helpers.
type env struct{ scenario.Env }

var (
	failf = scenario.Failf
	ok    = scenario.OK
	check = scenario.Check
)

// tlsSpy is a pq.Dialer that watches the start of each connection it
// dials: lib/pq has no API telling whether a connection uses TLS, so it
// records whether the client sent an SSLRequest and then a TLS handshake
// record (0x16) instead of a StartupMessage.
type tlsSpy struct {
	mu     sync.Mutex
	writes map[net.Conn][][]byte
	tls    bool
}

type spyConn struct {
	net.Conn
	spy *tlsSpy
}

func (c spyConn) Write(p []byte) (int, error) {
	c.spy.mu.Lock()
	if w := c.spy.writes[c.Conn]; len(w) < 2 {
		c.spy.writes[c.Conn] = append(w, append([]byte(nil), p...))
		if w := c.spy.writes[c.Conn]; len(w) == 2 && len(w[0]) == 8 &&
			binary.BigEndian.Uint32(w[0][4:]) == 80877103 && len(w[1]) > 0 && w[1][0] == 0x16 {
			c.spy.tls = true
		}
	}
	c.spy.mu.Unlock()
	return c.Conn.Write(p)
}

func (s *tlsSpy) Dial(network, address string) (net.Conn, error) {
	return s.DialTimeout(network, address, 10*time.Second)
}

func (s *tlsSpy) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return nil, err
	}
	return spyConn{Conn: c, spy: s}, nil
}

// open returns one connection of a fresh pool and whether it uses TLS.
func (e env) open(ctx context.Context, sslmode string, extra ...string) (*sql.DB, *sql.Conn, bool) {
	connector, err := pq.NewConnector(e.DSN(sslmode, extra...))
	check(err, "connector")
	spy := &tlsSpy{writes: map[net.Conn][][]byte{}}
	connector.Dialer(spy)
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	check(err, "connect sslmode="+sslmode)
	check(conn.PingContext(ctx), "ping sslmode="+sslmode)
	spy.mu.Lock()
	defer spy.mu.Unlock()
	return db, conn, spy.tls
}

func sqlstate(err error) string {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return string(pe.Code)
	}
	return ""
}

func expectState(err error, want, what string) {
	if got := sqlstate(err); got != want {
		failf("%s: want SQLSTATE %s, got %v", what, want, err)
	}
}

func main() {
	e := env{scenario.Load("libpq")}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// 1. SCRAM with TLS and without.
	db, conn, isTLS := e.open(ctx, "require")
	defer db.Close()
	if !isTLS {
		failf("sslmode=require: no TLS handshake seen on the connection")
	}
	ok("connect tls: sslmode=require, SCRAM, SSLRequest then a TLS handshake")
	if e.RootCert != "" {
		vdb, _, vTLS := e.open(ctx, "verify-full", "sslrootcert="+e.RootCert)
		if !vTLS {
			failf("sslmode=verify-full: no TLS handshake seen")
		}
		vdb.Close()
		ok("connect tls verify-full: the proxy presented the dev certificate")
	}
	pdb, _, pTLS := e.open(ctx, "disable")
	if pTLS {
		failf("sslmode=disable: the connection used TLS")
	}
	pdb.Close()
	ok("connect plain: sslmode=disable, SCRAM, no TLS")
	bad, err := sql.Open("postgres", strings.Replace(e.DSN("disable"), "password="+e.Password, "password=wrong", 1))
	check(err, "open")
	err = bad.PingContext(ctx)
	bad.Close()
	expectState(err, "28P01", "wrong password")
	ok("auth: a wrong password is refused (28P01)")

	// 2. Server-side prepared statements: Prepare gives a named statement;
	// a Query with arguments uses the unnamed one (Parse/Bind/Execute).
	const byAid = "SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = $1"
	stmt, err := conn.PrepareContext(ctx, byAid)
	check(err, "prepare")
	for round := 0; round < 3; round++ {
		for _, aid := range []int{e.A, e.B} {
			for named := range 2 {
				// One at a time: a Row holds the connection until Scan.
				var row *sql.Row
				if named == 0 {
					row = stmt.QueryRowContext(ctx, aid)
				} else {
					row = conn.QueryRowContext(ctx, byAid, aid)
				}
				var gotAid, bid, bal int
				check(row.Scan(&gotAid, &bid, &bal), "prepared read aid "+strconv.Itoa(aid))
				if gotAid != aid || bid != 1 || bal != 3*aid {
					failf("prepared read aid %d: got (%d, %d, %d), want (%d, 1, %d)", aid, gotAid, bid, bal, aid, 3*aid)
				}
			}
		}
	}
	check(stmt.Close(), "close statement")
	var n, sum int
	check(conn.QueryRowContext(ctx, "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid = ANY($1)",
		pq.Array([]int{e.A, e.B})).Scan(&n, &sum), "prepared read = ANY")
	if n != 2 || sum != 3*e.A+3*e.B {
		failf("prepared read = ANY: got (%d, %d), want (2, %d)", n, sum, 3*e.A+3*e.B)
	}
	ok("prepared: named statement and unnamed Parse/Bind read aids %d and %d on both shards, = ANY($1) fan-out", e.A, e.B)

	// 3. A transaction across two shards: commit, then rollback.
	balances := func(what string) (int, int) {
		var x, y int
		check(conn.QueryRowContext(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", e.A).Scan(&x), what)
		check(conn.QueryRowContext(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", e.B).Scan(&y), what)
		return x, y
	}
	tx, err := conn.BeginTx(ctx, nil)
	check(err, "begin")
	_, err = tx.ExecContext(ctx, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", 11, e.A)
	check(err, "update aid A")
	_, err = tx.ExecContext(ctx, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", 22, e.B)
	check(err, "update aid B")
	check(tx.Commit(), "commit across shards")
	wantA, wantB := 3*e.A+11, 3*e.B+22
	if x, y := balances("read after commit"); x != wantA || y != wantB {
		failf("after commit: balances (%d, %d), want (%d, %d)", x, y, wantA, wantB)
	}
	ok("transaction: BEGIN; UPDATE aid %d; UPDATE aid %d; COMMIT -> both visible", e.A, e.B)
	tx, err = conn.BeginTx(ctx, nil)
	check(err, "begin")
	for _, aid := range []int{e.A, e.B} {
		_, err = tx.ExecContext(ctx, "UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid = $1", aid)
		check(err, "update in rolled back transaction")
	}
	check(tx.Rollback(), "rollback")
	if x, y := balances("read after rollback"); x != wantA || y != wantB {
		failf("after rollback: balances (%d, %d), want (%d, %d)", x, y, wantA, wantB)
	}
	ok("transaction: BEGIN; UPDATE both; ROLLBACK -> both unchanged")

	// 4. COPY FROM STDIN through lib/pq's prepared COPY statement (in a
	// transaction, as lib/pq requires); lib/pq has no COPY TO STDOUT, so
	// the rows are counted.
	marker := "compat " + e.Client
	tx, err = conn.BeginTx(ctx, nil)
	check(err, "begin copy")
	cp, err := tx.PrepareContext(ctx, "COPY pgbench_history (tid, bid, aid, delta, mtime, filler) FROM STDIN")
	check(err, "CopyIn")
	for i := 1; i <= 20; i++ {
		_, err = cp.ExecContext(ctx, e.TID, 1, i, i, time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), marker)
		check(err, "CopyIn row")
	}
	res, err := cp.ExecContext(ctx)
	check(err, "CopyIn end")
	check(cp.Close(), "CopyIn close")
	check(tx.Commit(), "commit copy")
	if copied, _ := res.RowsAffected(); copied != 20 {
		failf("CopyIn: %d rows, want 20", copied)
	}
	check(conn.QueryRowContext(ctx, "SELECT count(*), sum(delta) FROM pgbench_history WHERE filler = $1", marker).Scan(&n, &sum), "count")
	if n != 20 || sum != 210 {
		failf("after COPY: count %d sum %d, want 20 and 210", n, sum)
	}
	ok("copy: pq.CopyIn 20 rows into pgbench_history, 20 counted back (lib/pq has no COPY TO STDOUT)")

	// 5. Errors, then the same connection works; in a transaction too.
	_, err = conn.ExecContext(ctx, "SELECT 1/0")
	expectState(err, "22012", "SELECT 1/0 (simple protocol)")
	var one int
	err = conn.QueryRowContext(ctx, "SELECT $1::int/0", 1).Scan(&one)
	expectState(err, "22012", "SELECT $1::int/0 (extended protocol)")
	_, err = conn.ExecContext(ctx, "selec 1")
	expectState(err, "42601", "syntax error")
	check(conn.QueryRowContext(ctx, "SELECT 1").Scan(&one), "SELECT 1 after errors")
	tx, err = conn.BeginTx(ctx, nil)
	check(err, "begin")
	_, err = tx.ExecContext(ctx, "UPDATE pgbench_accounts SET abalance = abalance + 5000 WHERE aid = $1", e.A)
	check(err, "update in failing transaction")
	_, err = tx.ExecContext(ctx, "SELECT 1/0")
	expectState(err, "22012", "SELECT 1/0 in transaction")
	_, err = tx.ExecContext(ctx, "SELECT 1")
	expectState(err, "25P02", "SELECT 1 in aborted transaction")
	check(tx.Rollback(), "rollback after error")
	if x, _ := balances("read after failed transaction"); x != wantA {
		failf("after failed transaction: aid %d balance %d, want %d", e.A, x, wantA)
	}
	ok("error: 22012 (simple and extended) and 42601 reported, SELECT works after; in a transaction 22012, then 25P02, ROLLBACK, the UPDATE is undone")

	// 6. Cancel through the context: lib/pq sends a CancelRequest.
	qctx, qcancel := context.WithTimeout(ctx, time.Second)
	start := time.Now()
	_, err = conn.ExecContext(qctx, "SELECT pg_sleep(30)")
	qcancel()
	took := time.Since(start)
	expectState(err, "57014", "cancelled SELECT pg_sleep(30)")
	if took > 6*time.Second {
		failf("cancel took %v", took)
	}
	// lib/pq marks a connection whose context was cancelled as bad, by
	// design (conn_go18.go, watchCancel), so database/sql drops it and
	// the pool's next query runs on a new connection.
	_ = conn.Close()
	check(db.QueryRowContext(ctx, "SELECT 1").Scan(&one), "SELECT 1 through the pool after cancel")
	ok("cancel: context deadline during SELECT pg_sleep(30) -> CancelRequest, 57014 after %v; the pool works after (lib/pq retires a cancelled connection by design)", took.Round(time.Millisecond))
	fmt.Println("PASS " + e.Client)
}
