package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/config"
)

// TestCancel: a context cancelled while a statement runs makes pgx send a
// CancelRequest to the proxy, which must forward it to the server running
// that statement; the statement fails with 57014 promptly and the same
// client connection stays usable.
func TestCancel(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })

	t.Run("context", func(t *testing.T) {
		c := connect(t, srv)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Exec(ctx, "SELECT pg_sleep(30)")
		took := time.Since(start)
		wantCode(t, err, "57014", "pg_sleep with cancelled context")
		if took > 300*time.Millisecond+1500*time.Millisecond {
			t.Errorf("cancelled statement returned after %v, want within 1.5s of the cancel at 300ms", took)
		}
		if got := queryString(t, c, "SELECT 'after cancel'"); got != "after cancel" {
			t.Fatalf("same connection after cancel: %q", got)
		}
		waitForActivity(t, "SELECT pg_sleep(30)", false)
	})

	t.Run("explicit-cancel-request", func(t *testing.T) {
		c := connect(t, srv)
		done := make(chan error, 1)
		go func() {
			_, err := c.PgConn().Exec(context.Background(), "SELECT pg_sleep(30)").ReadAll()
			done <- err
		}()
		waitForActivity(t, "SELECT pg_sleep(30)", true)
		sent := time.Now()
		if err := c.PgConn().CancelRequest(ctxT(t, 5*time.Second)); err != nil {
			t.Fatalf("CancelRequest: %v", err)
		}
		select {
		case err := <-done:
			wantCode(t, err, "57014", "pg_sleep after CancelRequest")
			if took := time.Since(sent); took > 1500*time.Millisecond {
				t.Errorf("statement ended %v after the CancelRequest, want < 1.5s", took)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("statement still running 10s after CancelRequest")
		}
		if got := queryString(t, c, "SELECT 'after cancel'"); got != "after cancel" {
			t.Fatalf("same connection after cancel: %q", got)
		}
	})

	// A CancelRequest from a client that is not running anything must not
	// hit whatever another client runs on the server connection it used
	// before (pool size 1: both share the one server connection).
	t.Run("idle-cancel-hits-nobody", func(t *testing.T) {
		one := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
		a, b := connect(t, one), connect(t, one)
		mustExec(t, a, "SELECT 1")
		done := make(chan error, 1)
		go func() {
			_, err := b.Exec(context.Background(), "SELECT pg_sleep(1)")
			done <- err
		}()
		waitForActivity(t, "SELECT pg_sleep(1)", true)
		if err := a.PgConn().CancelRequest(ctxT(t, 5*time.Second)); err != nil {
			t.Fatalf("CancelRequest: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("client B's statement was hit by client A's cancel: %v", err)
		}
	})
}

// readUntilClosed reads what the proxy sends on raw until it closes the
// socket; closed is false if it is still open after d.
func readUntilClosed(raw net.Conn, d time.Duration) (data []byte, closed bool) {
	_ = raw.SetReadDeadline(time.Now().Add(d))
	data, err := io.ReadAll(raw)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return data, false
	}
	return data, true
}

// errorResponses decodes the ErrorResponse messages in data.
func errorResponses(data []byte) []*pgproto3.ErrorResponse {
	var out []*pgproto3.ErrorResponse
	for len(data) >= 5 {
		n := int(binary.BigEndian.Uint32(data[1:5]))
		if n < 4 || 1+n > len(data) {
			break
		}
		if data[0] == 'E' {
			var er pgproto3.ErrorResponse
			if er.Decode(data[5:1+n]) == nil {
				out = append(out, &er)
			}
		}
		data = data[1+n:]
	}
	return out
}

// TestErrors: errors a client can cause end only what they must: a SQL
// error only the statement, a protocol violation only that connection.
func TestErrors(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })

	t.Run("syntax-error-keeps-session", func(t *testing.T) {
		c := connect(t, srv)
		ctx := ctxT(t, 10*time.Second)
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
			_, err := c.Exec(ctx, "SELEC $1::int", mode, 1)
			wantCode(t, err, "42601", fmt.Sprintf("syntax error (%v)", mode))
			var got int
			if err := c.QueryRow(ctx, "SELECT $1::int + 1", mode, 41).Scan(&got); err != nil || got != 42 {
				t.Fatalf("next query after syntax error (%v): %d, %v", mode, got, err)
			}
		}
		if s := c.PgConn().TxStatus(); s != 'I' {
			t.Fatalf("TxStatus after errors outside a transaction = %q, want 'I'", s)
		}
	})

	t.Run("too-many-clients", func(t *testing.T) {
		lim := startProxy(t, func(c *config.Config) { c.MaxClientConn = 2 })
		a, b := connect(t, lim), connect(t, lim)
		_, err := pgx.ConnectConfig(ctxT(t, 10*time.Second), connCfg(t, appDSN(lim)))
		wantCode(t, err, "53300", "third connection with max_client_conn 2")
		for _, c := range []*pgx.Conn{a, b} {
			mustExec(t, c, "SELECT 1")
		}
		// The slot frees when a client leaves.
		if err := a.Close(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			c, err := pgx.ConnectConfig(ctxT(t, 10*time.Second), connCfg(t, appDSN(lim)))
			if err == nil {
				mustExec(t, c, "SELECT 1")
				_ = c.Close(context.Background())
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("connection after a client left: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	// A well-behaved client runs queries all along; garbage on other
	// sockets must never disturb it.
	good := connect(t, srv)
	var goodErrs atomic.Int64
	var goodN atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if err := good.QueryRow(context.Background(), "SELECT 7").Scan(&n); err != nil || n != 7 {
				goodErrs.Add(1)
				t.Errorf("concurrent good client: %d, %v", n, err)
				return
			}
			goodN.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	stopGood := func() {
		close(stop)
		wg.Wait()
		if goodErrs.Load() != 0 || goodN.Load() == 0 {
			t.Errorf("concurrent good client: %d errors, %d queries", goodErrs.Load(), goodN.Load())
		}
	}

	rnd := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 16<<10)
	for i := range random {
		random[i] = byte(rnd.UintN(256))
	}
	for _, g := range []struct {
		name string
		data []byte
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")},
		{"random", random},
		{"short-length", []byte{0, 0, 0, 2, 0, 0}},
		{"bad-protocol-version", []byte{0, 0, 0, 8, 0, 9, 0, 9}},
	} {
		t.Run("garbage-before-login-"+g.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if _, err := raw.Write(g.data); err != nil {
				t.Fatal(err)
			}
			data, closed := readUntilClosed(raw, 5*time.Second)
			if !closed {
				t.Fatalf("proxy kept the socket open 5s after %d garbage bytes (got %q)", len(g.data), data)
			}
			for _, er := range errorResponses(data) {
				if er.Code != "08P01" {
					t.Errorf("error for garbage: %s %s, want SQLSTATE 08P01", er.Code, er.Message)
				}
			}
		})
	}

	for _, g := range []struct {
		name      string
		data      []byte
		wantError bool // PostgreSQL itself answers this one with a FATAL 08P01
	}{
		{"type-0xff", []byte{0xFF, 0, 0, 0, 4}, true},
		{"absurd-length", []byte{'Q', 0x7F, 0xFF, 0xFF, 0xF0, 'S', 'E', 'L'}, false},
		{"length-below-4", []byte{'Q', 0, 0, 0, 2}, false},
	} {
		t.Run("garbage-after-login-"+g.name, func(t *testing.T) {
			c := connect(t, srv)
			mustExec(t, c, "SELECT 1")
			raw := c.PgConn().Conn()
			if _, err := raw.Write(g.data); err != nil {
				t.Fatal(err)
			}
			data, closed := readUntilClosed(raw, 5*time.Second)
			if !closed {
				t.Fatalf("proxy kept the connection open 5s after %q (got %q)", g.data, data)
			}
			ers := errorResponses(data)
			if g.wantError && len(ers) == 0 {
				t.Errorf("no ErrorResponse before close (got %q), want FATAL 08P01", data)
			}
			for _, er := range ers {
				if er.Code != "08P01" || er.Severity != "FATAL" {
					t.Errorf("error for garbage: %s %s %s, want FATAL 08P01", er.Severity, er.Code, er.Message)
				}
			}
		})
	}

	// Garbage in the middle of a transaction: the connection dies, its
	// transaction is rolled back, and the one server connection (pool
	// size 1) goes back to serving others, not stuck in that transaction.
	t.Run("garbage-inside-transaction", func(t *testing.T) {
		su := connectPrimary(t)
		mustExec(t, su, "DROP TABLE IF EXISTS e2e_garbage")
		mustExec(t, su, "CREATE TABLE e2e_garbage (id int)")
		mustExec(t, su, "ALTER TABLE e2e_garbage OWNER TO app")
		c := connect(t, srv)
		mustExec(t, c, "BEGIN")
		mustExec(t, c, "INSERT INTO e2e_garbage VALUES (1)")
		raw := c.PgConn().Conn()
		if _, err := raw.Write([]byte{0xFF, 0, 0, 0, 4}); err != nil {
			t.Fatal(err)
		}
		if data, closed := readUntilClosed(raw, 5*time.Second); !closed {
			t.Fatalf("proxy kept the connection open (got %q)", data)
		}
		other := connect(t, srv)
		ctx := ctxT(t, 10*time.Second)
		var n int
		if err := other.QueryRow(ctx, "SELECT count(*) FROM e2e_garbage").Scan(&n); err != nil {
			t.Fatalf("next client after garbage inside a transaction: %v", err)
		}
		if n != 0 {
			t.Errorf("the dead client's uncommitted insert is visible: %d rows", n)
		}
		if s := other.PgConn().TxStatus(); s != 'I' {
			t.Errorf("next client's TxStatus = %q, want 'I' (inherited the dead client's transaction?)", s)
		}
	})

	stopGood()
}

// TestPipelining: many queries in one round trip (pgx Batch, pgconn
// pipeline, multi-statement simple query), with errors in the middle.
func TestPipelining(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	c := connect(t, srv)
	ctx := ctxT(t, time.Minute)

	t.Run("batch-500", func(t *testing.T) {
		if _, err := c.Prepare(ctx, "bp", "SELECT $1::int * 3"); err != nil {
			t.Fatal(err)
		}
		b := &pgx.Batch{}
		for i := 0; i < 500; i++ {
			switch i % 4 {
			case 0:
				b.Queue("bp", i)
			case 1:
				b.Queue("SELECT $1::text || '-x'", strconv.Itoa(i))
			case 2:
				b.Queue("SELECT $1::int + $2::int, 'lit'", i, 1)
			case 3:
				b.Queue("SELECT count(*) FROM generate_series(1, $1::int)", i)
			}
		}
		br := c.SendBatch(ctx, b)
		for i := 0; i < 500; i++ {
			var err error
			switch i % 4 {
			case 0:
				var n int
				if err = br.QueryRow().Scan(&n); err == nil && n != 3*i {
					err = fmt.Errorf("got %d, want %d", n, 3*i)
				}
			case 1:
				var s string
				if err = br.QueryRow().Scan(&s); err == nil && s != strconv.Itoa(i)+"-x" {
					err = fmt.Errorf("got %q", s)
				}
			case 2:
				var n int
				var s string
				if err = br.QueryRow().Scan(&n, &s); err == nil && (n != i+1 || s != "lit") {
					err = fmt.Errorf("got %d %q", n, s)
				}
			case 3:
				var n int64
				if err = br.QueryRow().Scan(&n); err == nil && n != int64(i) {
					err = fmt.Errorf("got %d, want %d", n, i)
				}
			}
			if err != nil {
				t.Fatalf("batch query %d: %v", i, err)
			}
		}
		if err := br.Close(); err != nil {
			t.Fatalf("batch close: %v", err)
		}
	})

	// The same failing batch against the proxy and straight against the
	// primary must behave the same: queries before the error succeed, the
	// failing one reports 22012, the rest fail, and since one Sync ends
	// the batch, it is one implicit transaction that is rolled back.
	t.Run("batch-error-in-middle", func(t *testing.T) {
		su := connectPrimary(t)
		mustExec(t, su, "DROP TABLE IF EXISTS e2e_batch")
		mustExec(t, su, "CREATE TABLE e2e_batch (id int)")
		mustExec(t, su, "ALTER TABLE e2e_batch OWNER TO app")
		run := func(conn *pgx.Conn) (errs []string, rows int) {
			b := &pgx.Batch{}
			for i := 0; i < 10; i++ {
				if i == 5 {
					b.Queue("SELECT 1/$1::int", 0)
				} else {
					b.Queue("INSERT INTO e2e_batch VALUES ($1)", i)
				}
			}
			br := conn.SendBatch(ctx, b)
			for i := 0; i < 10; i++ {
				_, err := br.Exec()
				errs = append(errs, pgCode(err)+fmt.Sprint(err != nil))
				if i < 5 && err != nil {
					t.Errorf("batch query %d before the error failed: %v", i, err)
				}
				if i == 5 {
					wantCode(t, err, "22012", "batch query 5")
				}
				if i > 5 && err == nil {
					t.Errorf("batch query %d after the error succeeded", i)
				}
			}
			_ = br.Close()
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM e2e_batch").Scan(&rows); err != nil {
				t.Fatalf("query after failed batch: %v", err)
			}
			if s := conn.PgConn().TxStatus(); s != 'I' {
				t.Errorf("TxStatus after failed batch = %q, want 'I'", s)
			}
			return errs, rows
		}
		directErrs, directRows := run(su)
		proxyErrs, proxyRows := run(c)
		if fmt.Sprint(directErrs) != fmt.Sprint(proxyErrs) || directRows != proxyRows {
			t.Errorf("failed batch through proxy: errors %v, %d rows; straight to Postgres: %v, %d rows",
				proxyErrs, proxyRows, directErrs, directRows)
		}
	})

	t.Run("pgconn-pipeline", func(t *testing.T) {
		pc := c.PgConn()
		p := pc.StartPipeline(ctx)
		p.SendPrepare("pp", "SELECT $1::int * 2", nil)
		for i := 0; i < 50; i++ {
			p.SendQueryPrepared("pp", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil)
			p.SendQueryParams("SELECT $1::text, $2::text", [][]byte{[]byte("a"), []byte(strconv.Itoa(i))}, nil, nil, nil)
		}
		p.SendPipelineSync()
		// A second segment with an error, and a third that must run anyway:
		// an error skips only to the next Sync.
		p.SendQueryParams("SELECT 1/0", nil, nil, nil, nil)
		p.SendPipelineSync()
		p.SendQueryParams("SELECT 'third'", nil, nil, nil, nil)
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			res, err := p.GetResults()
			if err != nil {
				got = append(got, "err:"+pgCode(err))
				continue
			}
			if res == nil {
				break
			}
			switch r := res.(type) {
			case *pgconn.StatementDescription:
				got = append(got, "prepared")
			case *pgconn.ResultReader:
				rr := r.Read()
				if rr.Err != nil {
					got = append(got, "err:"+pgCode(rr.Err))
					continue
				}
				row := ""
				for _, v := range rr.Rows[0] {
					row += string(v) + ","
				}
				got = append(got, row)
			case *pgconn.PipelineSync:
				got = append(got, "sync")
			}
			if len(got) > 500 {
				t.Fatal("too many pipeline results")
			}
		}
		if err := p.Close(); err != nil {
			t.Fatalf("pipeline close: %v", err)
		}
		want := []string{"prepared"}
		for i := 0; i < 50; i++ {
			want = append(want, strconv.Itoa(2*i)+",", "a,"+strconv.Itoa(i)+",")
		}
		want = append(want, "sync", "err:22012", "sync", "third,", "sync")
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("pipeline results:\n got %v\nwant %v", got, want)
		}
	})

	t.Run("multi-statement-simple-query", func(t *testing.T) {
		res, err := c.PgConn().Exec(ctx, "SELECT 1 AS a; SELECT 'two', 3; VALUES (4), (5)").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range res {
			got = append(got, fmt.Sprintf("%s:%d", r.CommandTag, len(r.Rows)))
		}
		if fmt.Sprint(got) != "[SELECT 1:1 SELECT 1:1 SELECT 2:2]" || string(res[1].Rows[0][0]) != "two" || string(res[2].Rows[1][0]) != "5" {
			t.Fatalf("multi-statement results: %v", got)
		}
		// An error stops the rest of the string, and the session goes on;
		// the results before the error are the same as straight from
		// Postgres.
		const failing = "SELECT 1; SELECT 1/0; SELECT 3"
		res, err = c.PgConn().Exec(ctx, failing).ReadAll()
		wantCode(t, err, "22012", "multi-statement with error")
		direct, derr := connectPrimary(t).PgConn().Exec(ctx, failing).ReadAll()
		wantCode(t, derr, "22012", "multi-statement with error, straight to Postgres")
		if len(res) != len(direct) || len(res) == 0 || string(res[0].Rows[0][0]) != "1" {
			t.Errorf("multi-statement with error: %d results through the proxy, %d straight to Postgres", len(res), len(direct))
		}
		if got := queryString(t, c, "SELECT 'next'"); got != "next" {
			t.Fatalf("after multi-statement error: %q", got)
		}
	})
}

// TestTransactionStatus: the client sees the transaction state of its
// server connection ('I', 'T', 'E') and transactions are atomic units on
// one server connection, while between transactions the client may move.
func TestTransactionStatus(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	su := connectPrimary(t)
	mustExec(t, su, "DROP TABLE IF EXISTS e2e_tx")
	mustExec(t, su, "CREATE TABLE e2e_tx (id int)")
	mustExec(t, su, "ALTER TABLE e2e_tx OWNER TO app")
	a, b := connect(t, srv), connect(t, srv)
	ctx := ctxT(t, 30*time.Second)
	status := func(c *pgx.Conn, want byte, when string) {
		t.Helper()
		if s := c.PgConn().TxStatus(); s != want {
			t.Fatalf("TxStatus %s = %q, want %q", when, s, want)
		}
	}

	status(a, 'I', "after connect")
	mustExec(t, a, "BEGIN")
	status(a, 'T', "after BEGIN")
	_, err := a.Exec(ctx, "SELECT 1/0")
	wantCode(t, err, "22012", "division by zero in a transaction")
	status(a, 'E', "after a failed statement")
	_, err = a.Exec(ctx, "SELECT 1")
	wantCode(t, err, "25P02", "statement in a failed transaction")
	mustExec(t, a, "ROLLBACK")
	status(a, 'I', "after ROLLBACK")
	mustExec(t, a, "SELECT 1")

	// Savepoints: ROLLBACK TO leaves the failed state, COMMIT keeps the rest.
	mustExec(t, a, "BEGIN")
	mustExec(t, a, "INSERT INTO e2e_tx VALUES (1)")
	mustExec(t, a, "SAVEPOINT s")
	_, err = a.Exec(ctx, "INSERT INTO e2e_tx VALUES (1/0)")
	wantCode(t, err, "22012", "failed insert after savepoint")
	status(a, 'E', "after a failed statement after SAVEPOINT")
	mustExec(t, a, "ROLLBACK TO SAVEPOINT s")
	status(a, 'T', "after ROLLBACK TO SAVEPOINT")
	mustExec(t, a, "INSERT INTO e2e_tx VALUES (2)")
	mustExec(t, a, "COMMIT")
	status(a, 'I', "after COMMIT")
	if got := queryString(t, su, "SELECT string_agg(id::text, ',' ORDER BY id) FROM e2e_tx"); got != "1,2" {
		t.Fatalf("rows after savepoint transaction = %q, want 1,2", got)
	}

	// Every statement of a transaction runs on one server connection,
	// even while another client keeps the other one busy in between.
	mustExec(t, a, "BEGIN")
	first := queryString(t, a, "SELECT pg_backend_pid()::text")
	for i := 0; i < 5; i++ {
		mustExec(t, b, "SELECT 1")
		if got := queryString(t, a, "SELECT pg_backend_pid()::text"); got != first {
			t.Fatalf("transaction moved from backend %s to %s", first, got)
		}
	}
	mustExec(t, a, "COMMIT")

	// After COMMIT the client is free to run on another server
	// connection: with B holding one of the two in a transaction, A's
	// next transaction runs at once on the other.
	mustExec(t, b, "BEGIN")
	bPID := queryString(t, b, "SELECT pg_backend_pid()::text")
	quick, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := a.Exec(quick, "BEGIN"); err != nil {
		t.Fatalf("BEGIN while B holds a server connection: %v", err)
	}
	var aPID string
	if err := a.QueryRow(quick, "SELECT pg_backend_pid()::text").Scan(&aPID); err != nil {
		t.Fatalf("A's transaction while B holds a server connection: %v", err)
	}
	if aPID == bPID {
		t.Fatalf("A and B both in a transaction on backend %s", aPID)
	}
	mustExec(t, a, "COMMIT")
	mustExec(t, b, "COMMIT")
}

// TestErrorFields: the server's error fields reach the client intact; the
// same statements straight against Postgres give the same error.
func TestErrorFields(t *testing.T) {
	srv := startProxy(t, nil)
	c := connect(t, srv)
	su := connectPrimary(t)
	mustExec(t, su, "DROP TABLE IF EXISTS e2e_errf")
	mustExec(t, su, "CREATE TABLE e2e_errf (id int PRIMARY KEY, v text CHECK (v <> 'bad'))")
	mustExec(t, su, "ALTER TABLE e2e_errf OWNER TO app")
	mustExec(t, c, "INSERT INTO e2e_errf VALUES (1, 'a')")
	ctx := ctxT(t, 30*time.Second)

	pgErr := func(conn *pgx.Conn, sql string, args ...any) *pgconn.PgError {
		t.Helper()
		_, err := conn.Exec(ctx, sql, args...)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			t.Fatalf("%s: got %v, want a server error", sql, err)
		}
		return pe
	}

	pe := pgErr(c, "INSERT INTO e2e_errf VALUES ($1, 'b')", 1)
	if pe.Code != "23505" || pe.ConstraintName != "e2e_errf_pkey" || pe.TableName != "e2e_errf" ||
		pe.SchemaName != "public" || pe.Detail != "Key (id)=(1) already exists." || pe.Severity != "ERROR" ||
		pe.Message != `duplicate key value violates unique constraint "e2e_errf_pkey"` {
		t.Errorf("unique violation: %+v", *pe)
	}
	pe = pgErr(c, "INSERT INTO e2e_errf VALUES (2, 'bad')")
	if pe.Code != "23514" || pe.ConstraintName != "e2e_errf_v_check" || pe.TableName != "e2e_errf" {
		t.Errorf("check violation: %+v", *pe)
	}
	pe = pgErr(c, "SELECT 1/0")
	if pe.Code != "22012" || pe.Message != "division by zero" {
		t.Errorf("division by zero: %+v", *pe)
	}
	pe = pgErr(c, "SELECT idd FROM e2e_errf")
	if pe.Code != "42703" || pe.Position != 8 || pe.Hint == "" {
		t.Errorf("undefined column: %+v (want Position 8 and a hint)", *pe)
	}

	// Every field, from both protocols, compared with Postgres itself.
	stmts := []struct {
		sql  string
		args []any
	}{
		{"INSERT INTO e2e_errf VALUES ($1, 'b')", []any{1}},
		{"INSERT INTO e2e_errf VALUES (3, 'bad')", nil},
		{"SELECT 1/0", nil},
		{"SELECT idd FROM e2e_errf", nil},
		{"SELECT 'x'::int", nil},
		{`DO $$ BEGIN RAISE EXCEPTION 'custom %', 42 USING ERRCODE = 'P0042', DETAIL = 'the detail',
			HINT = 'the hint', COLUMN = 'col', CONSTRAINT = 'con', DATATYPE = 'typ', TABLE = 'tab', SCHEMA = 'sch'; END $$`, nil},
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		for _, s := range stmts {
			args := append([]any{mode}, s.args...)
			got, want := *pgErr(c, s.sql, args...), *pgErr(su, s.sql, args...)
			// Line numbers and routine are the server's; they match too
			// since both are the same server.
			if got != want {
				t.Errorf("%s (%v):\n proxy  %+v\n direct %+v", s.sql, mode, got, want)
			}
		}
	}
	// And the session is fine after all those errors.
	if got := queryString(t, c, "SELECT count(*)::text FROM e2e_errf"); got != "1" {
		t.Fatalf("rows = %q, want 1", got)
	}
}
