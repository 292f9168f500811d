package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardproxy/shardproxy/proxy"
)

// cliEnv is the environment for psql and pgbench: the app password, a
// connect timeout so a broken proxy fails fast, and no inherited PG*
// variables that could point the tools elsewhere.
func cliEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, "PGPASSWORD=app", "PGCONNECT_TIMEOUT=5", "PGSSLMODE=disable")
}

// hostPort splits the proxy address for -h/-p.
func hostPort(t testing.TB, srv *proxy.Server) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// runTool runs a PostgreSQL client tool against the proxy and returns its
// combined output; it fails the test if the tool exits non-zero.
func runTool(t testing.TB, timeout time.Duration, srv *proxy.Server, db, tool string, args ...string) string {
	t.Helper()
	out, err := runToolErr(t, timeout, srv, db, tool, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return out
}

func runToolErr(t testing.TB, timeout time.Duration, srv *proxy.Server, db, tool string, args ...string) (string, error) {
	t.Helper()
	h, p := hostPort(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"-h", h, "-p", p, "-U", "app"}, args...)
	full = append(full, db)
	cmd := exec.CommandContext(ctx, "/usr/bin/"+tool, full...)
	cmd.Env = cliEnv()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// TestPsqlMetaCommands checks that psql's catalog queries (\dt, \d, \l),
// which use many system functions, casts and regex operators, work
// through the proxy on a database other than the default one.
func TestPsqlMetaCommands(t *testing.T) {
	const db = "e2e_psql"
	su := connectPrimary(t)
	mustExec(t, su, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	mustExec(t, su, "CREATE DATABASE "+db+" OWNER app")
	// Registered before startProxy, so it runs after the proxy (and its
	// pooled connections to the database) is gone.
	t.Cleanup(func() {
		_, _ = su.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	})
	srv := startProxy(t, nil)

	runTool(t, 2*time.Minute, srv, db, "pgbench", "-i", "-s", "1", "-q")

	out := runTool(t, 30*time.Second, srv, db, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", `\dt`)
	for _, rel := range []string{"pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"} {
		if !regexp.MustCompile(`public\s*\|\s*` + rel + `\s*\|\s*table\s*\|\s*app`).MatchString(out) {
			t.Errorf(`psql \dt: no row for table %s owned by app in:\n%s`, rel, out)
		}
	}

	out = runTool(t, 30*time.Second, srv, db, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", `\d pgbench_accounts`)
	for _, want := range []string{`Table "public.pgbench_accounts"`, "aid", "bid", "abalance", "filler", `"pgbench_accounts_pkey" PRIMARY KEY, btree (aid)`} {
		if !strings.Contains(out, want) {
			t.Errorf(`psql \d pgbench_accounts: missing %q in:\n%s`, want, out)
		}
	}

	out = runTool(t, 30*time.Second, srv, db, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", `\l`)
	for _, name := range []string{"app", db, "postgres", "template1"} {
		if !regexp.MustCompile(`(?m)^\s*` + name + `\s*\|`).MatchString(out) {
			t.Errorf(`psql \l: database %s not listed in:\n%s`, name, out)
		}
	}

	// The data pgbench loaded through the proxy is all there.
	out = runTool(t, 30*time.Second, srv, db, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", "SELECT count(*) FROM pgbench_accounts")
	if strings.TrimSpace(out) != "100000" {
		t.Errorf("count(pgbench_accounts) = %q, want 100000", strings.TrimSpace(out))
	}

	// A failing statement makes psql exit non-zero with the server's message.
	out, err := runToolErr(t, 30*time.Second, srv, db, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM no_such_table")
	if err == nil || !strings.Contains(out, `relation "no_such_table" does not exist`) {
		t.Errorf("psql on a missing table: err=%v, output:\n%s", err, out)
	}
}

// TestPsqlCancel checks that Ctrl-C in psql (SIGINT: psql sends a
// CancelRequest on a new connection) cancels the running statement.
func TestPsqlCancel(t *testing.T) {
	srv := startProxy(t, nil)
	h, p := hostPort(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/psql", "-X", "-h", h, "-p", p, "-U", "app", "-c", "SELECT pg_sleep(30)", "app")
	cmd.Env = cliEnv()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the statement is really running on the server before
	// interrupting, else psql might still be connecting.
	waitForActivity(t, "SELECT pg_sleep(30)", true)
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	took := time.Since(sent)
	if took > 2*time.Second {
		t.Errorf("psql took %v after SIGINT to finish, want < 2s", took)
	}
	if err == nil || !strings.Contains(out.String(), "canceling statement due to user request") {
		t.Errorf("psql after SIGINT: err=%v, output:\n%s", err, out.String())
	}
	waitForActivity(t, "SELECT pg_sleep(30)", false)
}

// waitForActivity waits (up to 5 s) until a backend on the primary is, or
// is no longer, running query.
func waitForActivity(t testing.TB, query string, running bool) {
	t.Helper()
	su := connectPrimary(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int
		if err := su.QueryRow(ctxT(t, 5*time.Second),
			"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1", query).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if (n > 0) == running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s, %q running on the primary: %v, want %v", query, n > 0, running)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sanity check that the tool binaries exist; a missing psql would
// otherwise show up as confusing exec errors in several tests.
func init() {
	for _, tool := range []string{"/usr/bin/psql", "/usr/bin/pgbench"} {
		if _, err := os.Stat(tool); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s missing: %v\n", tool, err)
		}
	}
}
