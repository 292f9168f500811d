package e2e

import (
	"crypto/tls"
	"database/sql"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lib/pq"

	"github.com/shardproxy/shardproxy/config"
)

// prepCase is one parameterized statement and how to check its answer.
type prepCase struct {
	sql   string
	args  func(i int) []any
	check func(i int, got []any) error
}

// prepCases are several distinct statements, so every client connection
// holds several named statements and the proxy must keep them apart.
// They read from e2e_prep, whose row i has name 'name-i'.
var prepCases = []prepCase{
	{
		sql:  "SELECT $1::int + $2::int",
		args: func(i int) []any { return []any{i, 2 * i} },
		check: func(i int, got []any) error {
			return wantVals(got, int64(3*i))
		},
	},
	{
		sql:  "SELECT upper($1::text), length($1::text)",
		args: func(i int) []any { return []any{fmt.Sprintf("abc-%d", i)} },
		check: func(i int, got []any) error {
			s := fmt.Sprintf("ABC-%d", i)
			return wantVals(got, s, int64(len(s)))
		},
	},
	{
		sql:  "SELECT id, name FROM e2e_prep WHERE id = $1",
		args: func(i int) []any { return []any{i%100 + 1} },
		check: func(i int, got []any) error {
			return wantVals(got, int64(i%100+1), fmt.Sprintf("name-%d", i%100+1))
		},
	},
	{
		sql:  "SELECT count(*) FROM generate_series(1, $1::int)",
		args: func(i int) []any { return []any{i % 50} },
		check: func(i int, got []any) error {
			return wantVals(got, int64(i%50))
		},
	},
	{
		sql:  "SELECT $1::text || '/' || $2::bigint::text",
		args: func(i int) []any { return []any{"k", int64(i) * 1000003} },
		check: func(i int, got []any) error {
			return wantVals(got, fmt.Sprintf("k/%d", int64(i)*1000003))
		},
	},
}

// wantVals compares scanned values, normalizing integer widths.
func wantVals(got []any, want ...any) error {
	if len(got) != len(want) {
		return fmt.Errorf("got %d columns %v, want %v", len(got), got, want)
	}
	for i := range want {
		g := got[i]
		switch v := g.(type) {
		case int32:
			g = int64(v)
		case int:
			g = int64(v)
		case []byte:
			g = string(v)
		}
		if g != want[i] {
			return fmt.Errorf("column %d: got %#v, want %#v (row %v)", i, got[i], want[i], got)
		}
	}
	return nil
}

// setupPrepTable creates e2e_prep on the primary.
func setupPrepTable(t *testing.T) {
	su := connectPrimary(t)
	mustExec(t, su, "DROP TABLE IF EXISTS e2e_prep")
	mustExec(t, su, "CREATE TABLE e2e_prep (id int PRIMARY KEY, name text NOT NULL)")
	mustExec(t, su, "INSERT INTO e2e_prep SELECT g, 'name-' || g FROM generate_series(1, 100) g")
	mustExec(t, su, "ALTER TABLE e2e_prep OWNER TO app")
}

// errCollector counts errors from many goroutines and keeps the first few.
type errCollector struct {
	mu     sync.Mutex
	n      int
	first  []string
	codes  map[string]int
	checks atomic.Int64
	maxLat atomic.Int64 // nanoseconds, slowest single call
}

// lat records how long one call took.
func (e *errCollector) lat(d time.Duration) {
	for {
		cur := e.maxLat.Load()
		if int64(d) <= cur || e.maxLat.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (e *errCollector) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if e.codes == nil {
		e.codes = map[string]int{}
	}
	e.codes[pgCode(err)]++
	if len(e.first) < 5 {
		e.first = append(e.first, err.Error())
	}
}

func (e *errCollector) report(t *testing.T, what string, want int64) {
	t.Helper()
	if e.n > 0 {
		t.Errorf("%s: %d errors (by SQLSTATE: %v; SQLSTATE 26000 is 'prepared statement does not exist'); first: %s",
			what, e.n, e.codes, strings.Join(e.first, " | "))
	}
	if got := e.checks.Load(); got != want {
		t.Errorf("%s: %d queries checked, want %d", what, got, want)
	}
	t.Logf("%s: slowest call %v", what, time.Duration(e.maxLat.Load()).Round(time.Millisecond))
}

const (
	prepTotal   = 10000
	prepWorkers = 20
)

// TestPreparedStatementsPgx: pgx's default exec mode prepares a named
// statement per (connection, SQL) and reuses it. 20 client connections
// share 4 server connections in transaction pooling, so the proxy must
// make every named statement exist on whichever server connection runs
// it; zero errors, in particular no 26000.
func TestPreparedStatementsPgx(t *testing.T) {
	setupPrepTable(t)
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 4 })
	pcfg, err := pgxpool.ParseConfig(appDSN(srv))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = prepWorkers
	pcfg.MinConns = prepWorkers
	ctx := ctxT(t, 2*time.Minute)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	var ec errCollector
	var wg sync.WaitGroup
	for w := 0; w < prepWorkers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for j := 0; j < prepTotal/prepWorkers; j++ {
				i := w*(prepTotal/prepWorkers) + j
				pc := prepCases[i%len(prepCases)]
				start := time.Now()
				rows, err := pool.Query(ctx, pc.sql, pc.args(i)...)
				ec.lat(time.Since(start))
				if err != nil {
					ec.add(fmt.Errorf("%s after %v: %w", pc.sql, time.Since(start).Round(time.Millisecond), err))
					continue
				}
				var got []any
				n := 0
				for rows.Next() {
					got, err = rows.Values()
					n++
				}
				rows.Close()
				if err == nil {
					err = rows.Err()
				}
				if err == nil && n != 1 {
					err = fmt.Errorf("%s: %d rows, want 1", pc.sql, n)
				}
				if err == nil {
					err = pc.check(i, got)
				}
				if err != nil {
					ec.add(fmt.Errorf("%s %v: %w", pc.sql, pc.args(i), err))
					continue
				}
				ec.checks.Add(1)
			}
		}(w)
	}
	wg.Wait()
	ec.report(t, "pgx prepared statements", prepTotal)
}

// TestPreparedStatementsLibPQ: database/sql with lib/pq prepares each
// *sql.Stmt as a named statement ("1", "2", ...) on every connection that
// uses it. All 20 client connections use the same names for different
// statements, through 4 server connections.
func TestPreparedStatementsLibPQ(t *testing.T) {
	setupPrepTable(t)
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 4 })
	db, err := sql.Open("postgres", appDSN(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(prepWorkers)
	db.SetMaxIdleConns(prepWorkers)

	stmts := make([]*sql.Stmt, len(prepCases))
	for k, pc := range prepCases {
		if stmts[k], err = db.Prepare(pc.sql); err != nil {
			t.Fatalf("prepare %s: %v", pc.sql, err)
		}
		defer stmts[k].Close()
	}

	ctx := ctxT(t, 2*time.Minute)
	var ec errCollector
	var wg sync.WaitGroup
	for w := 0; w < prepWorkers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for j := 0; j < prepTotal/prepWorkers; j++ {
				i := w*(prepTotal/prepWorkers) + j
				k := i % len(prepCases)
				pc := prepCases[k]
				start := time.Now()
				rows, err := stmts[k].QueryContext(ctx, pc.args(i)...)
				ec.lat(time.Since(start))
				if err != nil {
					// The timing tells a slow login (lib/pq gives up at connect_timeout,
					// see dsn) from a failed query.
					ec.add(fmt.Errorf("%s after %v: %w", pc.sql, time.Since(start).Round(time.Millisecond), err))
					continue
				}
				cols, _ := rows.Columns()
				var got []any
				n := 0
				for rows.Next() {
					got = make([]any, len(cols))
					ptrs := make([]any, len(cols))
					for c := range got {
						ptrs[c] = &got[c]
					}
					err = rows.Scan(ptrs...)
					n++
				}
				if cerr := rows.Close(); err == nil {
					err = cerr
				}
				if err == nil {
					err = rows.Err()
				}
				if err == nil && n != 1 {
					err = fmt.Errorf("%d rows, want 1", n)
				}
				if err == nil {
					err = pc.check(i, got)
				}
				if err != nil {
					ec.add(fmt.Errorf("%s %v: %w", pc.sql, pc.args(i), err))
					continue
				}
				ec.checks.Add(1)
			}
		}(w)
	}
	wg.Wait()
	ec.report(t, "lib/pq prepared statements", prepTotal)
}

// TestPreparedStatementsReprepare closes statements and prepares the same
// name again with different SQL, on several clients at once that all use
// the same statement name for different SQL. A proxy that keeps a stale
// statement on some server connection returns the old query's answer.
func TestPreparedStatementsReprepare(t *testing.T) {
	srv := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	const clients, rounds = 6, 60

	t.Run("pgx", func(t *testing.T) {
		conns := make([]*pgx.Conn, clients)
		for k := range conns {
			conns[k] = connect(t, srv)
		}
		ctx := ctxT(t, time.Minute)
		var ec errCollector
		var wg sync.WaitGroup
		for k, c := range conns {
			wg.Add(1)
			go func(k int, c *pgx.Conn) {
				defer wg.Done()
				for r := 0; r < rounds; r++ {
					q := fmt.Sprintf("SELECT $1::int * %d + %d", k+1, r)
					if _, err := c.Prepare(ctx, "reused", q); err != nil {
						ec.add(fmt.Errorf("client %d round %d prepare: %w", k, r, err))
						return
					}
					var got int
					if err := c.QueryRow(ctx, "reused", 7).Scan(&got); err != nil {
						ec.add(fmt.Errorf("client %d round %d: %w", k, r, err))
						return
					}
					if want := 7*(k+1) + r; got != want {
						ec.add(fmt.Errorf("client %d round %d: %q returned %d, want %d", k, r, q, got, want))
						return
					}
					if err := c.Deallocate(ctx, "reused"); err != nil {
						ec.add(fmt.Errorf("client %d round %d deallocate: %w", k, r, err))
						return
					}
					ec.checks.Add(1)
				}
				// After a deallocate the name is gone for this client:
				// executing it is 26000, as on a plain server.
				_, err := c.PgConn().ExecPrepared(ctx, "reused", [][]byte{[]byte("1")}, nil, nil).Close()
				if code := pgCode(err); code != "26000" {
					ec.add(fmt.Errorf("client %d: executing a deallocated statement: %v (SQLSTATE %q), want 26000", k, err, code))
				}
				// DeallocateAll resets pgx's cache; cached statements are
				// prepared again transparently.
				if err := c.DeallocateAll(ctx); err != nil {
					ec.add(fmt.Errorf("client %d: deallocate all: %w", k, err))
					return
				}
				var got int
				if err := c.QueryRow(ctx, "SELECT $1::int + 1", k).Scan(&got); err != nil || got != k+1 {
					ec.add(fmt.Errorf("client %d after DeallocateAll: got %d, %v", k, got, err))
				}
			}(k, c)
		}
		wg.Wait()
		ec.report(t, "pgx re-prepare", clients*rounds)
	})

	t.Run("libpq", func(t *testing.T) {
		db, err := sql.Open("postgres", appDSN(srv))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		db.SetMaxOpenConns(clients)
		db.SetMaxIdleConns(clients)
		ctx := ctxT(t, time.Minute)
		var ec errCollector
		var wg sync.WaitGroup
		for k := 0; k < clients; k++ {
			wg.Add(1)
			go func(k int) {
				defer wg.Done()
				for r := 0; r < rounds; r++ {
					q := fmt.Sprintf("SELECT $1::int * %d + %d", k+1, r)
					st, err := db.PrepareContext(ctx, q)
					if err != nil {
						ec.add(fmt.Errorf("client %d round %d prepare: %w", k, r, err))
						return
					}
					var got int
					err = st.QueryRowContext(ctx, 7).Scan(&got)
					if cerr := st.Close(); err == nil && cerr != nil {
						err = fmt.Errorf("close: %w", cerr)
					}
					if err != nil {
						ec.add(fmt.Errorf("client %d round %d: %w", k, r, err))
						return
					}
					if want := 7*(k+1) + r; got != want {
						ec.add(fmt.Errorf("client %d round %d: %q returned %d, want %d", k, r, q, got, want))
						return
					}
					ec.checks.Add(1)
				}
			}(k)
		}
		wg.Wait()
		ec.report(t, "lib/pq re-prepare", clients*rounds)
	})
}

// recordingConn remembers the first bytes the client read from the
// proxy, to tell a TLS session from plain text under lib/pq (which does
// not expose its connection).
type recordingConn struct {
	net.Conn
	mu   sync.Mutex
	head []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if len(c.head) < 16 {
		c.head = append(c.head, p[:min(n, 16-len(c.head))]...)
	}
	c.mu.Unlock()
	return n, err
}

type recordingDialer struct {
	mu    sync.Mutex
	conns []*recordingConn
}

func (d *recordingDialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialTimeout(network, addr, 5*time.Second)
}

func (d *recordingDialer) DialTimeout(network, addr string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	rc := &recordingConn{Conn: c}
	d.mu.Lock()
	d.conns = append(d.conns, rc)
	d.mu.Unlock()
	return rc, nil
}

// TestAuthTLS: SCRAM-SHA-256 login with and without TLS, from pgx and
// lib/pq, and the login failures a user can cause.
func TestAuthTLS(t *testing.T) {
	srv := startProxyOpts(t, proxyOpts{tls: selfSignedTLS(t)}, nil)
	addr := srv.Addr()

	for _, mode := range []string{"require", "disable"} {
		t.Run("pgx-"+mode, func(t *testing.T) {
			c := connectCfg(t, connCfg(t, dsn(addr, "app", "app", "app", mode)))
			if got := queryString(t, c, "SELECT 1::text"); got != "1" {
				t.Fatalf("SELECT 1 = %q", got)
			}
			_, isTLS := c.PgConn().Conn().(*tls.Conn)
			if isTLS != (mode == "require") {
				t.Fatalf("sslmode=%s: connection is TLS: %v", mode, isTLS)
			}
			// The session runs as the role the client logged in as.
			if got := queryString(t, c, "SELECT current_user::text"); got != "app" {
				t.Fatalf("current_user = %q, want app", got)
			}
		})
		t.Run("libpq-"+mode, func(t *testing.T) {
			conn, err := pq.NewConnector(dsn(addr, "app", "app", "app", mode))
			if err != nil {
				t.Fatal(err)
			}
			d := &recordingDialer{}
			conn.Dialer(d)
			db := sql.OpenDB(conn)
			defer db.Close()
			var one int
			if err := db.QueryRowContext(ctxT(t, 10*time.Second), "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("SELECT 1: %d, %v", one, err)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.conns) == 0 {
				t.Fatal("lib/pq did not use the dialer")
			}
			head := d.conns[0].head
			// With TLS the proxy answers the SSLRequest with 'S' and then a
			// TLS handshake record (0x16); without, the first message is
			// an authentication request ('R').
			if mode == "require" && (len(head) < 2 || head[0] != 'S' || head[1] != 0x16) {
				t.Fatalf("sslmode=require: first bytes from proxy %q, want 'S' then a TLS handshake record", head)
			}
			// Without TLS the first message is visible: AuthenticationSASL
			// (code 10) offering SCRAM-SHA-256, not a weaker method.
			if mode == "disable" && (len(head) < 16 || head[0] != 'R' || string(head[5:9]) != "\x00\x00\x00\x0a" || string(head[9:16]) != "SCRAM-S") {
				t.Fatalf("sslmode=disable: first bytes from proxy %q, want AuthenticationSASL with SCRAM-SHA-256", head)
			}
		})
	}

	// Login failures, for both drivers and with and without TLS.
	failures := []struct {
		name, user, pass, db, code string
	}{
		{"wrong-password", "app", "wrong", "app", "28P01"},
		{"unknown-user", "nosuchuser", "app", "app", "28P01"},
		{"unknown-database", "app", "app", "nosuchdb", "3D000"},
	}
	for _, f := range failures {
		for _, mode := range []string{"require", "disable"} {
			t.Run(f.name+"-pgx-"+mode, func(t *testing.T) {
				_, err := pgx.ConnectConfig(ctxT(t, 10*time.Second), connCfg(t, dsn(addr, f.user, f.pass, f.db, mode)))
				wantCode(t, err, f.code, "pgx connect")
			})
			t.Run(f.name+"-libpq-"+mode, func(t *testing.T) {
				db, err := sql.Open("postgres", dsn(addr, f.user, f.pass, f.db, mode))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				wantCode(t, db.PingContext(ctxT(t, 10*time.Second)), f.code, "lib/pq ping")
			})
		}
	}

	// A proxy without TLS refuses sslmode=require instead of silently
	// speaking plain text.
	t.Run("no-tls-proxy-require", func(t *testing.T) {
		plain := startProxy(t, nil)
		_, err := pgx.ConnectConfig(ctxT(t, 10*time.Second), connCfg(t, dsn(plain.Addr(), "app", "app", "app", "require")))
		if err == nil || !strings.Contains(err.Error(), "refused TLS") {
			t.Fatalf("sslmode=require against a proxy without TLS: %v, want 'server refused TLS connection'", err)
		}
	})

	// After all that, the proxy still serves good logins.
	c := connect(t, srv)
	if got := queryString(t, c, "SELECT 'ok'"); got != "ok" {
		t.Fatalf("after failures: %q", got)
	}
}
