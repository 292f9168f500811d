// Package sharded is the end-to-end suite for sharding: three real
// PostgreSQL 15 primaries, an in-process shardproxy in front of them with
// a two-phase commit coordinator, and real clients. Tests read the shards
// directly to check where rows really went.
package sharded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
	"github.com/shardproxy/shardproxy/proxy"
	"github.com/shardproxy/shardproxy/twophase"
)

var cluster *localcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "shardproxy-sharded-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "sharded:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "sharded:", err)
		return 1
	}
	cluster, err = localcluster.Start(context.Background(), localcluster.Options{Dir: dir, Shards: 3})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sharded: start cluster:", err)
		return 1
	}
	code := m.Run()
	if err := cluster.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "sharded: stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// shardNames are the cluster's shards in order.
func shardNames() []string { return cluster.ShardNames() }

// testTables is the sharding config every test proxy uses.
func testTables() config.Sharding {
	return config.Sharding{
		Tables: []config.ShardedTable{
			{Name: "pgbench_accounts", Key: "aid"},
			{Name: "pgbench_history", Key: "aid"},
			{Name: "pgbench_tellers", Key: "tid"},
			{Name: "pgbench_branches", Key: "bid"},
			{Name: "items", Key: "id"},
			{Name: "item_tags", Key: "item_id"},
			{Name: "accounts2pc", Key: "id"},
			{Name: "events", Key: "tenant", Type: "text"},
			{Name: "diff_t", Key: "id"},
			{Name: "diff_s", Key: "k", Type: "text"},
			{Name: "copy_t", Key: "id"},
		},
		ReferenceTables: []string{"countries"},
	}
}

func proxyLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("E2E_PROXY_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// startProxy starts a proxy over the first n shards with a 2PC coordinator.
func startProxy(t testing.TB, n int, tweak func(*config.Config)) *proxy.Server {
	t.Helper()
	return startProxyLog(t, n, tweak, proxyLogger())
}

// startProxyLog is startProxy logging to log.
func startProxyLog(t testing.TB, n int, tweak func(*config.Config), log *slog.Logger) *proxy.Server {
	t.Helper()
	cfg := &config.Config{
		Listen:   "127.0.0.1:0",
		Admin:    config.Admin{Listen: "127.0.0.1:0"},
		Users:    []config.User{{Name: localcluster.AppUser, Password: localcluster.AppPassword}},
		Pool:     config.Pool{Size: 20},
		Sharding: testTables(),
	}
	for _, name := range shardNames()[:n] {
		cfg.Shards = append(cfg.Shards, config.Shard{Name: name, Primary: cluster.Primary(name).DSN(localcluster.AppDatabase)})
	}
	if tweak != nil {
		tweak(cfg)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("proxy config: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	coord, err := twophase.Open(ctx, cfg.Shards[0].Primary, "e2e", proxyLogger())
	if err != nil {
		t.Fatalf("twophase: %v", err)
	}
	rctx, stop := context.WithCancel(context.Background())
	var shards []twophase.Shard
	for _, sh := range cfg.Shards {
		shards = append(shards, twophase.Shard{Name: sh.Name, DSN: sh.Primary})
	}
	go coord.Run(rctx, func() []twophase.Shard { return shards }, time.Second)
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, Coordinator: coord})
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
		stop()
		coord.Close()
	})
	return srv
}

func appDSN(srv *proxy.Server) string {
	return fmt.Sprintf("postgres://app:app@%s/app?sslmode=disable&connect_timeout=15", srv.Addr())
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func connectDSN(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctxT(t, 15*time.Second), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// connect opens a pgx connection to the proxy.
func connect(t testing.TB, srv *proxy.Server) *pgx.Conn { return connectDSN(t, appDSN(srv)) }

// connectShard opens a superuser connection straight to a shard primary.
func connectShard(t testing.TB, name string) *pgx.Conn {
	return connectDSN(t, cluster.Primary(name).DSN(localcluster.AppDatabase))
}

func mustExec(t testing.TB, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(ctxT(t, 60*time.Second), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t testing.TB, c *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := c.QueryRow(ctxT(t, 60*time.Second), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// onShards runs sql on every shard directly and returns the int results.
func onShards(t testing.TB, n int, sql string) []int64 {
	t.Helper()
	var out []int64
	for _, name := range shardNames()[:n] {
		out = append(out, queryInt(t, connectShard(t, name), sql))
	}
	return out
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func wantCode(t testing.TB, err error, code, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want SQLSTATE %s", what, code)
	}
	if got := pgCode(err); got != code {
		t.Fatalf("%s: got %v (SQLSTATE %q), want %s", what, err, got, code)
	}
}

func sum(xs []int64) int64 {
	var s int64
	for _, x := range xs {
		s += x
	}
	return s
}

func joinInts(xs []int64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}
