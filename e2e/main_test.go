// Package e2e is the end-to-end suite: real PostgreSQL 15 servers, an
// in-process shardproxy in front of them, and real clients (psql, pgbench,
// pgx, lib/pq) talking to the proxy exactly as an application would.
//
// One cluster (one shard: a primary and a streaming replica) is started in
// TestMain for the whole package, because starting Postgres costs seconds;
// every test starts its own proxy with the config it needs, and uses its
// own tables, so tests do not depend on each other's order.
package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/lib/pq"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/devcert"
	"github.com/shardproxy/shardproxy/localcluster"
	"github.com/shardproxy/shardproxy/proxy"
)

// cluster is shared by every test in the package.
var cluster *localcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "shardproxy-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The servers run as the postgres OS user when we are root: it must be
	// able to enter the directory MkdirTemp created with mode 0700.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	cluster, err = localcluster.Start(context.Background(), localcluster.Options{Dir: dir, Shards: 1, Replicas: 1})
	if err != nil {
		// Loud failure, not a skip: CI without PostgreSQL must notice.
		fmt.Fprintln(os.Stderr, "e2e: start cluster:", err)
		return 1
	}
	code := m.Run()
	if err := cluster.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// primary is the shard's primary; tests read it directly (bypassing the
// proxy) to check what the proxy really did.
func primary() *localcluster.Node { return cluster.Primary("shard0") }

// proxyLogger keeps the proxy quiet unless E2E_PROXY_LOG=debug.
func proxyLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("E2E_PROXY_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// proxyOpts are extra knobs for startProxy beyond the config file.
type proxyOpts struct {
	tls      *tls.Config
	replicas proxy.ReplicaPicker
}

// startProxy starts an in-process proxy in front of the shared cluster.
// tweak may change the config (pool size, mode, limits) before it is
// defaulted and validated. The proxy is shut down when the test ends.
func startProxy(t testing.TB, tweak func(*config.Config)) *proxy.Server {
	return startProxyOpts(t, proxyOpts{}, tweak)
}

func startProxyOpts(t testing.TB, po proxyOpts, tweak func(*config.Config)) *proxy.Server {
	t.Helper()
	var replicas []string
	for _, r := range cluster.Replicas("shard0") {
		replicas = append(replicas, r.DSN(localcluster.AppDatabase))
	}
	cfg := &config.Config{
		Listen: "127.0.0.1:0",
		Admin:  config.Admin{Listen: "127.0.0.1:0"},
		Users:  []config.User{{Name: localcluster.AppUser, Password: localcluster.AppPassword}},
		Pool:   config.Pool{Size: 4},
		Shards: []config.Shard{{
			Name:     "shard0",
			Primary:  primary().DSN(localcluster.AppDatabase),
			Replicas: replicas,
		}},
	}
	if tweak != nil {
		tweak(cfg)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("proxy config: %v", err)
	}
	srv, err := proxy.New(cfg, proxy.Options{TLS: po.tls, Logger: proxyLogger(), Replicas: po.replicas})
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("proxy serve: %v", err)
		}
	})
	return srv
}

// dsn is a client DSN for the proxy at addr. The connect timeout is above
// the proxy's own bound on a login (pool wait_timeout + connect_timeout,
// 10s by default), so a slow but correct login under load is not failed
// by the client first.
func dsn(addr, user, password, db, sslmode string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=%s&connect_timeout=15", user, password, addr, db, sslmode)
}

func appDSN(srv *proxy.Server) string {
	return dsn(srv.Addr(), "app", "app", "app", "disable")
}

// connCfg parses a pgx config for the proxy. Context cancellation sends a
// CancelRequest (rather than pgx's default of breaking the socket), which
// is what most applications configure and what the cancel test needs.
func connCfg(t testing.TB, connString string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		t.Fatalf("parse %q: %v", connString, err)
	}
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
	}
	return cfg
}

// connectCfg opens a pgx connection and closes it when the test ends.
func connectCfg(t testing.TB, cfg *pgx.ConnConfig) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect %s: %v", cfg.Host, err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// connect opens a pgx connection to the proxy as app/app.
func connect(t testing.TB, srv *proxy.Server) *pgx.Conn {
	t.Helper()
	return connectCfg(t, connCfg(t, appDSN(srv)))
}

// connectPrimary opens a superuser connection straight to the primary,
// to set up fixtures and check results without the proxy in the way.
func connectPrimary(t testing.TB) *pgx.Conn {
	t.Helper()
	return connectCfg(t, connCfg(t, primary().DSN(localcluster.AppDatabase)))
}

// ctxT is a context bounded by d, cancelled when the test ends.
func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustExec runs sql and fails the test on error.
func mustExec(t testing.TB, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(ctxT(t, 30*time.Second), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// queryString runs a one-row, one-column query and returns the value as text.
func queryString(t testing.TB, c *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := c.QueryRow(ctxT(t, 30*time.Second), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// pgCode returns the SQLSTATE of a pgx or lib/pq error, or "" if err is
// not a server error.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	var qe *pq.Error
	if errors.As(err, &qe) {
		return string(qe.Code)
	}
	return ""
}

// wantCode fails the test unless err carries SQLSTATE code.
func wantCode(t testing.TB, err error, code, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want SQLSTATE %s", what, code)
	}
	if got := pgCode(err); got != code {
		t.Fatalf("%s: got error %v (SQLSTATE %q), want SQLSTATE %s", what, err, got, code)
	}
}

// selfSignedTLS returns a server TLS config with a fresh self-signed
// certificate for 127.0.0.1 / localhost.
func selfSignedTLS(t testing.TB) *tls.Config {
	t.Helper()
	certPEM, keyPEM, err := devcert.New("shardproxy-e2e", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// envInt reads a positive integer from the environment, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
