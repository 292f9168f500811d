package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, ctx context.Context, dsn, sql string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s on %s: %v", sql, dsn, err)
	}
	return s
}

// serverPIDs lists the postmaster and its live children (backends and
// auxiliary processes).
func serverPIDs(t *testing.T, postmaster int) []int {
	t.Helper()
	if postmaster == 0 {
		t.Fatal("PID() = 0 for a running node")
	}
	return append([]int{postmaster}, childPIDs(postmaster)...)
}

func assertGone(t *testing.T, what string, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("%s: pid %d still exists", what, pid)
		}
	}
}

func waitForRow(t *testing.T, ctx context.Context, dsn, sql, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var last string
	var lastErr error
	for time.Now().Before(deadline) {
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			lastErr = conn.QueryRow(ctx, sql).Scan(&last)
			conn.Close(ctx)
			if lastErr == nil && last == want {
				return
			}
		} else {
			lastErr = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s on %s: got %q (err %v), want %q within 5s", sql, dsn, last, lastErr, want)
}

func TestClusterLifecycle(t *testing.T) {
	if _, err := FindBinDir(""); err != nil {
		t.Fatal(err) // CI must have PostgreSQL; do not skip silently
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	opts := Options{Dir: dir, Replicas: 1, Spares: 1, Logger: testLogger(t)}

	began := time.Now()
	c := StartForTest(t, opts)
	t.Logf("first start (initdb + basebackup) took %s", time.Since(began))

	if got := c.ShardNames(); len(got) != 1 || got[0] != "shard0" {
		t.Fatalf("ShardNames = %v", got)
	}
	p := c.Primary("shard0")
	reps := c.Replicas("shard0")
	spare := c.Primary("spare0")
	if p == nil || len(reps) != 1 || spare == nil || len(c.Nodes) != 3 {
		t.Fatalf("unexpected layout: primary=%v replicas=%v spare=%v nodes=%d", p, reps, spare, len(c.Nodes))
	}
	r := reps[0]
	if p.DataDir != filepath.Join(dir, "shard0-primary") || r.DataDir != filepath.Join(dir, "shard0-replica1") ||
		spare.DataDir != filepath.Join(dir, "spare0") || spare.Role != RoleSpare || spare.Shard != "spare0" {
		t.Fatalf("unexpected names: %s %s %s/%s/%s", p.DataDir, r.DataDir, spare.DataDir, spare.Role, spare.Shard)
	}

	for _, n := range c.Nodes {
		if got := queryString(t, ctx, n.DSN("app"), "SHOW wal_level"); got != "logical" {
			t.Errorf("%s: wal_level = %s", n.Name, got)
		}
		if got := queryString(t, ctx, n.DSN("app"), "SHOW max_prepared_transactions"); got == "0" {
			t.Errorf("%s: max_prepared_transactions = 0", n.Name)
		}
		if got := queryString(t, ctx, n.DSN("app"), "SHOW lc_collate"); got != "C.UTF-8" {
			t.Errorf("%s: lc_collate = %s", n.Name, got)
		}
	}
	if got := queryString(t, ctx, r.DSN("postgres"), "SELECT pg_is_in_recovery()::text"); got != "true" {
		t.Fatalf("replica pg_is_in_recovery = %s", got)
	}
	if got := queryString(t, ctx, p.DSN("postgres"), "SELECT pg_is_in_recovery()::text"); got != "false" {
		t.Fatalf("primary pg_is_in_recovery = %s", got)
	}
	if got := queryString(t, ctx, r.DSN("postgres"), "SELECT status FROM pg_stat_wal_receiver"); got != "streaming" {
		t.Fatalf("replica wal receiver status = %s", got)
	}

	// app/app over SCRAM: the stored verifier must be SCRAM and a wrong
	// password must be refused, otherwise "login works" proves nothing.
	if got := queryString(t, ctx, p.DSN("postgres"),
		"SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app'"); got != "SCRAM-SHA-256$" {
		t.Fatalf("app password verifier starts with %q", got)
	}
	if conn, err := pgx.Connect(ctx, strings.Replace(p.AppDSN("app"), "app:app@", "app:wrong@", 1)); err == nil {
		conn.Close(ctx)
		t.Fatal("app with a wrong password could log in")
	}
	app := connect(t, ctx, p.AppDSN("app"))
	if _, err := app.Exec(ctx, "CREATE TABLE kv (k int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Exec(ctx, "INSERT INTO kv VALUES (1, 'one')"); err != nil {
		t.Fatal(err)
	}
	waitForRow(t, ctx, r.AppDSN("app"), "SELECT v FROM kv WHERE k = 1", "one")
	spareApp := connect(t, ctx, spare.AppDSN("app"))
	if _, err := spareApp.Exec(ctx, "CREATE TABLE spare_ok (id int)"); err != nil {
		t.Fatalf("app cannot create tables on the spare: %v", err)
	}

	// Stop must leave no process of ours: not the postmasters, not backends.
	var pids []int
	for _, n := range c.Nodes {
		pids = append(pids, serverPIDs(t, n.PID())...)
	}
	if len(pids) < 3*4 { // postmaster plus a handful of auxiliary processes each
		t.Fatalf("found only %d server processes: %v", len(pids), pids)
	}
	ports := map[string]int{}
	for _, n := range c.Nodes {
		ports[n.Name] = n.Port
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "after Stop", pids)
	for _, n := range c.Nodes {
		if n.PID() != 0 || n.Running() {
			t.Errorf("%s: still reported running after Stop", n.Name)
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	var st clusterState
	if b, err := os.ReadFile(filepath.Join(dir, stateFileName)); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Nodes["shard0-replica1"].Port != r.Port || st.Nodes["shard0-replica1"].Role != RoleReplica {
		t.Fatalf("state file does not record the replica: %+v", st)
	}

	// Reuse: same Dir, no initdb; the data written above is still there.
	// Hold spare0's old port so reuse has to fall back to a fresh one.
	hold, err := net.Listen("tcp", spare.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	began = time.Now()
	c2 := StartForTest(t, opts)
	t.Logf("restart on existing data took %s", time.Since(began))
	p2, r2 := c2.Primary("shard0"), c2.Replicas("shard0")[0]
	for _, n := range c2.Nodes {
		if n.Port != ports[n.Name] {
			t.Logf("%s: port changed %d -> %d", n.Name, ports[n.Name], n.Port)
		}
	}
	if c2.Primary("spare0").Port == ports["spare0"] {
		t.Fatal("spare0 reused a port that was taken")
	}
	hold.Close()
	if got := queryString(t, ctx, p2.AppDSN("app"), "SELECT v FROM kv WHERE k = 1"); got != "one" {
		t.Fatalf("primary lost data on reuse: %q", got)
	}
	app2 := connect(t, ctx, p2.AppDSN("app"))
	if _, err := app2.Exec(ctx, "INSERT INTO kv VALUES (2, 'two')"); err != nil {
		t.Fatal(err)
	}
	waitForRow(t, ctx, r2.AppDSN("app"), "SELECT v FROM kv WHERE k = 2", "two")

	// Failover primitives: crash the primary, promote the replica, restart
	// the old primary on its old port.
	oldPrimaryPID := p2.PID()
	oldGroup := serverPIDs(t, oldPrimaryPID)
	oldPort := p2.Port
	if err := p2.Kill(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "after Kill", oldGroup)
	if err := r2.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if c2.Primary("shard0") != r2 || r2.Role != RolePrimary || p2.Role != RoleFormerPrimary {
		t.Fatalf("roles after promote: %s=%s %s=%s", r2.Name, r2.Role, p2.Name, p2.Role)
	}
	promoted := connect(t, ctx, r2.AppDSN("app"))
	if _, err := promoted.Exec(ctx, "INSERT INTO kv VALUES (3, 'three')"); err != nil {
		t.Fatalf("write to promoted replica: %v", err)
	}
	if err := p2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if p2.Port != oldPort || p2.PID() == 0 || p2.PID() == oldPrimaryPID {
		t.Fatalf("restart: port %d (was %d), pid %d (was %d)", p2.Port, oldPort, p2.PID(), oldPrimaryPID)
	}
	if got := queryString(t, ctx, p2.DSN("app"), "SELECT count(*)::text FROM kv"); got != "2" {
		t.Fatalf("restarted old primary has %s rows, want 2", got)
	}

	pids = nil
	for _, n := range c2.Nodes {
		pids = append(pids, serverPIDs(t, n.PID())...)
	}
	if err := c2.Stop(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "after second Stop", pids)

	// The promotion is remembered: the next Start keeps replica1 as the
	// shard's primary instead of making it follow the old primary again.
	c3 := StartForTest(t, opts)
	p3 := c3.Primary("shard0")
	if p3 == nil || p3.Name != "shard0-replica1" || len(c3.Replicas("shard0")) != 0 {
		t.Fatalf("after restart, shard0 primary = %v, replicas = %v", p3, c3.Replicas("shard0"))
	}
	if got := queryString(t, ctx, p3.AppDSN("app"), "SELECT count(*)::text FROM kv"); got != "3" {
		t.Fatalf("promoted node has %s rows after restart, want 3", got)
	}

	// A node restarted on a port someone else holds reports it clearly.
	sp := c3.Primary("spare0")
	if err := sp.Stop(); err != nil {
		t.Fatal(err)
	}
	hold, err = net.Listen("tcp", sp.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.launch(ctx, sp.Port); !errors.Is(err, errPortInUse) {
		t.Fatalf("launch on a taken port: %v", err)
	}
	hold.Close()
	if err := sp.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFindBinDir(t *testing.T) {
	dir, err := FindBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	if !isExecutable(filepath.Join(dir, "postgres")) {
		t.Fatalf("FindBinDir returned %s without postgres", dir)
	}
	if got, err := FindBinDir(dir); err != nil || got != dir {
		t.Fatalf("FindBinDir(%q) = %q, %v", dir, got, err)
	}
	if _, err := FindBinDir(t.TempDir()); err == nil {
		t.Fatal("FindBinDir accepted a directory without postgres")
	}
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "12", "notaversion"} {
		bin := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bin, "postgres"), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got := newestDebianBinDir(root); got != filepath.Join(root, "15", "bin") {
		t.Fatalf("newestDebianBinDir = %s", got)
	}
}

func TestStartValidation(t *testing.T) {
	if _, err := Start(context.Background(), Options{}); err == nil {
		t.Fatal("Start without Dir succeeded")
	}
	if _, err := Start(context.Background(), Options{Dir: t.TempDir(), Replicas: -1}); err == nil {
		t.Fatal("Start with negative replicas succeeded")
	}
	if _, err := Start(context.Background(), Options{Dir: t.TempDir(), BinDir: t.TempDir()}); err == nil ||
		!strings.Contains(err.Error(), "no postgres executable") {
		t.Fatalf("Start with bogus BinDir: %v", err)
	}
}

func TestEnsureTraversable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only relevant when running as root")
	}
	su, err := lookupServerUser()
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir() // 0700, under os.TempDir(): ours to relax
	dir := filepath.Join(base, "a", "b")
	created, err := mkdirAllTracked(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(created) != 2 {
		t.Fatalf("created = %v", created)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := su.ensureTraversable(dir, created); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{base, dir} {
		st, _ := os.Stat(p)
		if st.Mode().Perm()&0o001 == 0 {
			t.Errorf("%s still not traversable: %v", p, st.Mode())
		}
	}
	if su.canSearch(0o700, &syscall.Stat_t{Uid: 0, Gid: 0}) {
		t.Error("canSearch: 0700 root dir reported searchable by postgres")
	}
}
