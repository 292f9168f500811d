package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/proxy"
)

// settings is what a client expects current_setting to return.
type settings struct{ app, path, tz string }

const settingsQuery = "SELECT current_setting('application_name'), current_setting('search_path'), current_setting('TimeZone')"

func readSettings(ctx context.Context, c *pgx.Conn, mode pgx.QueryExecMode) (settings, error) {
	var s settings
	err := c.QueryRow(ctx, settingsQuery, mode).Scan(&s.app, &s.path, &s.tz)
	return s, err
}

// TestSessionSettings: in transaction pooling, three clients share one
// server connection; each SET must follow its client from transaction to
// transaction and never leak to the others. Values are checked against
// what Postgres itself reports for the same commands.
func TestSessionSettings(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.Mode = config.PoolTransaction
	})
	ctx := ctxT(t, 2*time.Minute)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec}

	sets := [][]string{
		{"SET application_name = 'e2e_one'", "SET search_path = one_schema, public", "SET TimeZone = 'UTC'"},
		{"SET application_name TO 'e2e_two'", `SET SESSION search_path TO "Two Schema", public`, "SET TIME ZONE 'Asia/Tokyo'"},
		{"set application_name = e2e_three", "set search_path = pg_catalog", "set timezone = 'America/New_York'"},
	}
	want := make([]settings, len(sets))
	clients := make([]*pgx.Conn, len(sets))
	// What Postgres says each client should see, from a direct connection.
	direct := connectPrimary(t)
	for i, ss := range sets {
		clients[i] = connect(t, srv)
		for j, s := range ss {
			// Alternate protocols: SET must be tracked however it arrives.
			if _, err := clients[i].Exec(ctx, s, modes[(i+j)%len(modes)]); err != nil {
				t.Fatalf("client %d: %s: %v", i, s, err)
			}
			mustExec(t, direct, s)
		}
		var err error
		if want[i], err = readSettings(ctx, direct, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(t, direct, "RESET ALL")

	check := func(round, i int, mode pgx.QueryExecMode) error {
		got, err := readSettings(ctx, clients[i], mode)
		if err != nil {
			return fmt.Errorf("round %d client %d: %w", round, i, err)
		}
		if got != want[i] {
			return fmt.Errorf("round %d client %d (%v): sees %+v, want its own %+v", round, i, mode, got, want[i])
		}
		return nil
	}
	// Interleaved one after another on the one server connection.
	for round := 0; round < 100; round++ {
		for i := range clients {
			if err := check(round, i, modes[(round+i)%len(modes)]); err != nil {
				t.Fatal(err)
			}
		}
	}
	// And concurrently.
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i := range clients {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for round := 0; round < 100; round++ {
				if err := check(round, i, modes[round%len(modes)]); err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Startup parameters are the client's session defaults: they apply
	// from the first query, survive other clients' SETs, and RESET goes
	// back to them, exactly as on a direct connection.
	t.Run("startup-params-and-reset", func(t *testing.T) {
		startupCfg := func(connString string) *pgx.ConnConfig {
			cfg := connCfg(t, connString)
			cfg.RuntimeParams["application_name"] = "e2e_startup"
			cfg.RuntimeParams["search_path"] = "startup_schema"
			return cfg
		}
		steps := []string{
			"",
			"SET application_name = 'changed'; RESET application_name",
			"SET search_path = other; RESET search_path",
			"SET search_path = other; SET TimeZone = 'Europe/Berlin'",
			"SET application_name = 'changed'; SET search_path = other; RESET ALL",
			"SET application_name = 'changed'; SET application_name TO DEFAULT",
		}
		for _, step := range steps {
			// Fresh connections per step, so one failure does not carry
			// over into the next step.
			sc := connectCfg(t, startupCfg(appDSN(srv)))
			dc := connectCfg(t, startupCfg(primary().DSN("app")))
			for _, c := range []*pgx.Conn{sc, dc} {
				if step != "" {
					if _, err := c.PgConn().Exec(ctx, step).ReadAll(); err != nil {
						t.Fatalf("%s: %v", step, err)
					}
				}
			}
			// Another client uses the one server connection in between.
			if _, err := readSettings(ctx, clients[1], pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
			got, err := readSettings(ctx, sc, pgx.QueryExecModeCacheStatement)
			if err != nil {
				t.Fatal(err)
			}
			exp, err := readSettings(ctx, dc, pgx.QueryExecModeCacheStatement)
			if err != nil {
				t.Fatal(err)
			}
			if got != exp {
				t.Errorf("after %q: proxy client sees %+v, direct connection %+v", step, got, exp)
			}
			if step == "" && got.app != "e2e_startup" {
				t.Errorf("startup application_name not applied: %+v", got)
			}
			_ = sc.Close(ctx)
			_ = dc.Close(ctx)
		}
	})

	// SET inside a transaction that rolls back reverts; SET LOCAL ends
	// with its transaction; SET in a committed transaction stays; a
	// savepoint rollback undoes the SETs after the savepoint.
	t.Run("transactional-set", func(t *testing.T) {
		c := connect(t, srv)
		dc := connectPrimary(t)
		scripts := [][]string{
			{"BEGIN", "SET application_name = 'rolled_back'", "ROLLBACK"},
			{"BEGIN", "SET application_name = 'in_failed_tx'", "SELECT 1/0", "ROLLBACK"},
			{"BEGIN", "SET LOCAL application_name = 'local'", "COMMIT"},
			{"BEGIN", "SET application_name = 'committed'", "COMMIT"},
			{"BEGIN", "SET application_name = 'kept'", "SAVEPOINT s", "SET application_name = 'undone'", "ROLLBACK TO SAVEPOINT s", "COMMIT"},
			{"BEGIN; SET application_name = 'one_string_rollback'; ROLLBACK"},
			{"SET application_name = 'implicit_tx'; SELECT 1/0"},
			{"RESET application_name"},
		}
		for _, script := range scripts {
			for _, conn := range []*pgx.Conn{c, dc} {
				// Each script starts from the same known value, so one
				// failure does not hide or fake the next.
				mustExec(t, conn, "SET application_name = 'before'")
				for _, s := range script {
					// Errors are part of some scripts; both sides get the same.
					_, _ = conn.PgConn().Exec(ctx, s).ReadAll()
				}
			}
			if _, err := readSettings(ctx, clients[2], pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
			got, err := readSettings(ctx, c, pgx.QueryExecModeCacheStatement)
			if err != nil {
				t.Fatalf("after %q: %v", script, err)
			}
			exp, err := readSettings(ctx, dc, pgx.QueryExecModeCacheStatement)
			if err != nil {
				t.Fatal(err)
			}
			if got.app != exp.app {
				t.Errorf("after %q: application_name through proxy %q, direct %q", script, got.app, exp.app)
			}
		}
	})
}

// TestNotices: NoticeResponse from the server reaches the client's notice
// handler, in order, with its fields.
func TestNotices(t *testing.T) {
	srv := startProxy(t, nil)
	var mu sync.Mutex
	var notices []*pgconn.Notice
	cfg := connCfg(t, appDSN(srv))
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n)
		mu.Unlock()
	}
	c := connectCfg(t, cfg)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		mu.Lock()
		notices = nil
		mu.Unlock()
		if _, err := c.Exec(ctxT(t, 10*time.Second), `DO $$ BEGIN
			RAISE NOTICE 'hello %', 42 USING DETAIL = 'some detail';
			RAISE WARNING 'careful';
		END $$`, mode); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := notices
		mu.Unlock()
		if len(got) != 2 ||
			got[0].Severity != "NOTICE" || got[0].Message != "hello 42" || got[0].Code != "00000" || got[0].Detail != "some detail" ||
			got[1].Severity != "WARNING" || got[1].Message != "careful" || got[1].Code != "01000" {
			var desc []string
			for _, n := range got {
				desc = append(desc, fmt.Sprintf("%s %s %q %q", n.Severity, n.Code, n.Message, n.Detail))
			}
			t.Errorf("%v: notices %v, want NOTICE 00000 \"hello 42\" \"some detail\", WARNING 01000 \"careful\"", mode, desc)
		}
	}
}

// TestNotifications: LISTEN/NOTIFY. In transaction pooling a notification
// raised for the client's own LISTEN arrives on the same server
// connection before ReadyForQuery, so the proxy must relay it. In session
// pooling the client owns its server connection, so notifications from
// other clients must reach it while it waits idle.
func TestNotifications(t *testing.T) {
	wait := func(t *testing.T, c *pgx.Conn, d time.Duration, channel, payload string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			t.Errorf("no notification on %s (payload %q) within %v: %v", channel, payload, d, err)
			return
		}
		if n.Channel != channel || n.Payload != payload {
			t.Errorf("notification %+v, want channel %s payload %q", n, channel, payload)
		}
	}
	// pgx's default context handling (close the socket on timeout), not
	// connCfg's CancelRequest: a timed-out wait should end at once.
	connect := func(t *testing.T, srv *proxy.Server) *pgx.Conn {
		t.Helper()
		cfg, err := pgx.ParseConfig(appDSN(srv))
		if err != nil {
			t.Fatal(err)
		}
		return connectCfg(t, cfg)
	}

	t.Run("transaction-mode-same-query", func(t *testing.T) {
		srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
		c := connect(t, srv)
		if _, err := c.PgConn().Exec(ctxT(t, 10*time.Second), "LISTEN e2e_ch; NOTIFY e2e_ch, 'x'").ReadAll(); err != nil {
			t.Fatal(err)
		}
		wait(t, c, time.Second, "e2e_ch", "x")
	})

	t.Run("session-mode-other-client", func(t *testing.T) {
		srv := startProxy(t, func(c *config.Config) {
			c.Pool.Size = 4
			c.Pool.Mode = config.PoolSession
		})
		a, b := connect(t, srv), connect(t, srv)
		mustExec(t, a, "LISTEN e2e_sess")
		mustExec(t, b, "NOTIFY e2e_sess, 'hello'")
		wait(t, a, 5*time.Second, "e2e_sess", "hello")
		// Also when the listener runs its own queries meanwhile: the
		// notification comes with the next query's answer at the latest.
		b2, a2 := connect(t, srv), connect(t, srv)
		mustExec(t, a2, "LISTEN e2e_sess2")
		mustExec(t, b2, "SELECT pg_notify('e2e_sess2', 'second')")
		mustExec(t, a2, "SELECT 1")
		wait(t, a2, 5*time.Second, "e2e_sess2", "second")
	})
}

// TestPoolWaitTimeout: with every server connection held by an open
// transaction, another client's query waits at most wait_timeout, fails
// with 53400, and its connection works again once a server is free.
func TestPoolWaitTimeout(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.WaitTimeout = config.Duration(300 * time.Millisecond)
	})
	// Both log in first: login itself needs a server connection.
	a, b := connect(t, srv), connect(t, srv)
	ctx := ctxT(t, 30*time.Second)
	mustExec(t, a, "BEGIN")
	mustExec(t, a, "SELECT 1")

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		start := time.Now()
		_, err := b.Exec(ctx, "SELECT $1::int", mode, 1)
		took := time.Since(start)
		wantCode(t, err, "53400", fmt.Sprintf("query while the only server connection is in A's transaction (%v)", mode))
		if took > time.Second {
			t.Errorf("%v: failed after %v, want within ~1s (wait_timeout 300ms)", mode, took)
		}
		if took < 250*time.Millisecond {
			t.Errorf("%v: failed after %v, before wait_timeout 300ms", mode, took)
		}
		msg := strings.ToLower(err.Error())
		if !strings.Contains(msg, "wait") && !strings.Contains(msg, "timeout") && !strings.Contains(msg, "timed out") {
			t.Errorf("53400 message %q does not mention the wait", err)
		}
		if s := b.PgConn().TxStatus(); s != 'I' {
			t.Errorf("B's TxStatus after the timeout = %q, want 'I'", s)
		}
	}

	mustExec(t, a, "COMMIT")
	var n int
	if err := b.QueryRow(ctx, "SELECT 42").Scan(&n); err != nil || n != 42 {
		t.Fatalf("B after A committed: %d, %v", n, err)
	}
	mustExec(t, a, "SELECT 1")
}

// TestSessionPooling: in session mode a client keeps its server
// connection, so session state (TEMP tables, backend PID) persists; when
// it leaves, the connection is reset before the next client gets it.
func TestSessionPooling(t *testing.T) {
	t.Run("temp-table-persists", func(t *testing.T) {
		srv := startProxy(t, func(c *config.Config) {
			c.Pool.Size = 2
			c.Pool.Mode = config.PoolSession
		})
		a, b := connect(t, srv), connect(t, srv)
		pid := queryString(t, a, "SELECT pg_backend_pid()::text")
		mustExec(t, a, "CREATE TEMP TABLE e2e_tmp (x int)")
		mustExec(t, a, "INSERT INTO e2e_tmp VALUES (1), (2)")
		for i := 0; i < 20; i++ {
			mustExec(t, b, "SELECT 1")
			if got := queryString(t, a, "SELECT count(*)::text FROM e2e_tmp"); got != "2" {
				t.Fatalf("round %d: temp table count %q", i, got)
			}
			if got := queryString(t, a, "SELECT pg_backend_pid()::text"); got != pid {
				t.Fatalf("round %d: backend changed from %s to %s in session mode", i, pid, got)
			}
		}
		// B has its own session: the temp table is not there.
		_, err := b.Exec(ctxT(t, 5*time.Second), "SELECT * FROM e2e_tmp")
		wantCode(t, err, "42P01", "other client's temp table")
	})

	t.Run("reset-between-clients", func(t *testing.T) {
		srv := startProxy(t, func(c *config.Config) {
			c.Pool.Size = 1
			c.Pool.Mode = config.PoolSession
		})
		a := connect(t, srv)
		pidA := queryString(t, a, "SELECT pg_backend_pid()::text")
		mustExec(t, a, "CREATE TEMP TABLE e2e_tmp2 (x int)")
		mustExec(t, a, "SET application_name = 'leaky'")
		mustExec(t, a, "PREPARE leaky_stmt AS SELECT 1")
		mustExec(t, a, "LISTEN leaky_channel")
		if err := a.Close(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
		b := connect(t, srv)
		pidB := queryString(t, b, "SELECT pg_backend_pid()::text")
		t.Logf("backend for A %s, for B %s", pidA, pidB)
		got := queryString(t, b, `SELECT current_setting('application_name') || '|' ||
			(SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaky_stmt') || '|' ||
			(SELECT count(*) FROM pg_listening_channels()) || '|' ||
			(to_regclass('pg_temp.e2e_tmp2') IS NOT NULL)::int`)
		if got != "|0|0|0" {
			t.Fatalf("next client inherits session state (application_name|prepared|listening|temp tables) = %q, want \"|0|0|0\"", got)
		}
	})
}

// TestGracefulShutdown: on shutdown an open transaction may finish and
// commit, an idle client is told 57P01, new clients are refused, and the
// shutdown completes as soon as no transaction is left.
func TestGracefulShutdown(t *testing.T) {
	srv := startProxy(t, nil)
	ctx := context.Background()
	inTx := connect(t, srv)
	idle := connect(t, srv)
	mustExec(t, inTx, "BEGIN")
	mustExec(t, inTx, "SELECT 1")

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 8*time.Second)
		defer cancel()
		done <- srv.Shutdown(sctx)
	}()
	time.Sleep(300 * time.Millisecond)

	_, err := idle.Exec(ctx, "SELECT 1")
	var pe *pgconn.PgError
	if err == nil {
		t.Error("idle client still served after shutdown began")
	} else if errors.As(err, &pe) && pe.Code != "57P01" {
		t.Errorf("idle client got %s, want 57P01", pe.Code)
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if c, err := pgx.Connect(cctx, appDSN(srv)); err == nil {
		c.Close(ctx)
		t.Error("new client accepted during shutdown")
	}

	// The open transaction keeps working until it ends.
	mustExec(t, inTx, "SELECT pg_sleep(0.2)")
	mustExec(t, inTx, "COMMIT")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("shutdown took %s after the last transaction ended; want prompt", d)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("shutdown did not complete after the last transaction committed")
	}
}

// TestServerRestart: pooled server connections die when the server
// restarts; the proxy notices before reusing them, so a client that was
// between transactions carries on without an error.
func TestServerRestart(t *testing.T) {
	srv := startProxy(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connect(t, srv)
	mustExec(t, c, "SELECT 1")
	if err := primary().Stop(); err != nil {
		t.Fatalf("stop primary: %v", err)
	}
	if err := primary().Start(ctx); err != nil {
		t.Fatalf("start primary: %v", err)
	}
	// Connections idle for over a second are checked before reuse.
	time.Sleep(1100 * time.Millisecond)
	var n int
	if err := c.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("first statement after the server restart: %d, %v", n, err)
	}
	// The replica must be streaming again for the tests that follow.
	for _, r := range cluster.Replicas("shard0") {
		if err := r.WaitStreaming(ctx); err != nil {
			t.Fatalf("replica after primary restart: %v", err)
		}
	}
}
