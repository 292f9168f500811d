package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/shardproxy/shardproxy/admin"
)

// buildBinaries builds shardproxy and shardctl as a user would run them.
func buildBinaries(t *testing.T) (proxyBin, ctlBin string) {
	t.Helper()
	dir := t.TempDir()
	proxyBin, ctlBin = filepath.Join(dir, "shardproxy"), filepath.Join(dir, "shardctl")
	for bin, pkg := range map[string]string{proxyBin: ".", ctlBin: "../shardctl"} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return proxyBin, ctlBin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type devRun struct {
	cmd    *exec.Cmd
	lines  []string
	ready  string
	config string
}

// startDev runs `shardproxy dev` and reads its output up to the ready line.
func startDev(t *testing.T, bin, dir, listen, adminAddr string) *devRun {
	t.Helper()
	cmd := exec.Command(bin, "dev", "--dir", dir, "--shards", "2", "--replicas", "1", "--spares", "1",
		"--listen", listen, "--admin", adminAddr)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &devRun{cmd: cmd}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(90 * time.Second)
	for r.ready == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("shardproxy dev exited before ready; output so far: %q", r.lines)
			}
			r.lines = append(r.lines, l)
			switch {
			case strings.HasPrefix(l, "ready "):
				r.ready = strings.TrimPrefix(l, "ready ")
			case strings.HasPrefix(l, "config "):
				r.config = strings.TrimPrefix(l, "config ")
			}
		case <-deadline:
			t.Fatalf("no ready line within 90 s; output so far: %q", r.lines)
		}
	}
	t.Logf("ready after %s", time.Since(start).Round(time.Millisecond))
	go func() {
		for range lines { // keep the pipe drained
		}
	}()
	return r
}

func psql(t *testing.T, url string, args ...string) string {
	t.Helper()
	cmd := exec.Command("psql", append([]string{"-X", "-v", "ON_ERROR_STOP=1", url}, args...)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// postmasterPIDs reads the PIDs of the running servers under dir.
func postmasterPIDs(t *testing.T, dir string) []int {
	files, _ := filepath.Glob(filepath.Join(dir, "*", "postmaster.pid"))
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0]); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// TestDev is `make demo` as a user runs it: the node lines, the config and
// ready lines, psql's catalog commands, shardctl status, a clean stop on
// SIGTERM that takes every PostgreSQL server with it, and data kept on rerun.
func TestDev(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers; skipped with -short")
	}
	proxyBin, ctlBin := buildBinaries(t)
	dir, err := os.MkdirTemp("", "shardproxy-dev-test-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755) // the postgres OS user must reach the data dirs
	t.Cleanup(func() { os.RemoveAll(dir) })
	listen, adminAddr := freeAddr(t), freeAddr(t)

	run := startDev(t, proxyBin, dir, listen, adminAddr)
	want := map[string]int{"shard0 primary": 1, "shard0 replica": 1, "shard1 primary": 1, "shard1 replica": 1, "spare0 spare": 1}
	for _, l := range run.lines {
		f := strings.Fields(l)
		if f[0] == "node" {
			if len(f) != 4 || !strings.HasPrefix(f[3], "postgres://") {
				t.Errorf("bad node line %q", l)
				continue
			}
			want[f[1]+" "+f[2]]--
		}
	}
	for k, v := range want {
		if v != 0 {
			t.Errorf("node lines for %q: off by %d in %q", k, -v, run.lines)
		}
	}
	if run.ready != "postgres://app:app@"+listen+"/app" {
		t.Errorf("ready line %q, want the app URL on %s", run.ready, listen)
	}
	if _, err := os.Stat(run.config); err != nil {
		t.Errorf("config line names %q: %v", run.config, err)
	}

	psql(t, run.ready, "-c", "CREATE TABLE IF NOT EXISTS dev_kept (id int primary key, note text)",
		"-c", "INSERT INTO dev_kept VALUES (1, 'survives restart') ON CONFLICT DO NOTHING")
	if out := psql(t, run.ready, "-c", `\dt`); !strings.Contains(out, "dev_kept") {
		t.Errorf(`\dt does not list dev_kept:\n%s`, out)
	}
	if out := psql(t, run.ready, "-c", `\d dev_kept`); !strings.Contains(out, "note") {
		t.Errorf(`\d dev_kept does not show its columns:\n%s`, out)
	}
	if out := psql(t, run.ready, "-c", `\l`); !strings.Contains(out, "app") {
		t.Errorf(`\l does not list database app:\n%s`, out)
	}
	if out := psql(t, run.ready+"?sslmode=require", "-Atc",
		"SELECT 'tls works'"); !strings.Contains(out, "tls works") {
		t.Errorf("sslmode=require: %s", out)
	}

	// pgbench through the proxy, so /metrics below reflects real traffic.
	for _, args := range [][]string{{"-i", "-s", "1", "-q"}, {"-n", "-c", "4", "-j", "2", "-T", "2", "-M", "prepared"}} {
		cmd := exec.Command(pgbenchPath(), append(args, run.ready)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := (&admin.Client{Addr: adminAddr}).Status(ctx)
	if err != nil {
		t.Fatalf("admin status: %v", err)
	}
	if len(st.Shards) != 2 || st.Listen != listen {
		t.Errorf("status: %+v", st)
	}
	// The replica monitor reports every node healthy with its lag.
	for _, sh := range st.Shards {
		if !sh.Primary.Healthy || sh.Primary.Role != "primary" || len(sh.Replicas) != 1 ||
			!sh.Replicas[0].Healthy || sh.Replicas[0].Role != "replica" || sh.Replicas[0].LagBytes == nil {
			t.Errorf("status of shard %s: primary %+v replicas %+v", sh.Name, sh.Primary, sh.Replicas)
		}
	}
	metrics, err := (&admin.Client{Addr: adminAddr}).Get(ctx, "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	for _, series := range []string{"shardproxy_queries_total", "shardproxy_client_connections_total", "shardproxy_pool_server_connections{", "shardproxy_node_up{",
		`shardproxy_statements_total{role="primary",route="single_shard"}`, "shardproxy_batch_duration_seconds_count{"} {
		if !metricPositive(string(metrics), series) {
			t.Errorf("/metrics: %s missing or zero after psql sessions", series)
		}
	}
	checkExposition(t, metrics)
	// The dev config's admin user opens the console.
	if out := psql(t, "postgres://admin:admin@"+listen+"/shardproxy", "-Atc", "SHOW SHARDS"); !strings.Contains(out, "shard0") || !strings.Contains(out, "shard1") {
		t.Errorf("console SHOW SHARDS as admin:\n%s", out)
	}
	out, err := exec.Command(ctlBin, "status", "--admin", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "shard1") {
		t.Errorf("shardctl status: %v\n%s", err, out)
	}

	pids := postmasterPIDs(t, dir)
	if len(pids) != 5 {
		t.Fatalf("want 5 running servers, found postmaster.pid for %v", pids)
	}
	stop := time.Now()
	if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := run.cmd.Wait(); err != nil {
		t.Errorf("shardproxy dev exit after SIGTERM: %v", err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("postgres %d still running after shardproxy dev stopped", pid)
		}
	}
	t.Logf("stopped in %s", time.Since(stop).Round(time.Millisecond))

	// Same directory again: same data.
	run = startDev(t, proxyBin, dir, listen, adminAddr)
	if out := psql(t, run.ready, "-Atc", "SELECT note FROM dev_kept WHERE id = 1"); strings.TrimSpace(out) != "survives restart" {
		t.Errorf("after restart on the same --dir: %q", out)
	}
}

// metricPositive reports whether some sample of the named series (a name,
// or a name with "{" to require labels) has a value above zero.
func metricPositive(text, series string) bool {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, series) {
			continue
		}
		rest := strings.TrimPrefix(line, series)
		if rest != "" && rest[0] != ' ' && rest[0] != '{' && !strings.HasSuffix(series, "{") {
			continue // a longer name with the same prefix
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v > 0 {
			return true
		}
	}
	return false
}

// checkExposition parses /metrics as Prometheus does: at least 20
// shardproxy_ samples, replica lag among them, every family prefixed
// and documented; promtool's linter too when it is installed.
func checkExposition(t *testing.T, body []byte) {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	samples := 0
	for name, f := range families {
		if !strings.HasPrefix(name, "shardproxy_") {
			continue
		}
		if f.GetHelp() == "" {
			t.Errorf("metric %s has no HELP", name)
		}
		samples += len(f.GetMetric())
	}
	if samples < 20 {
		t.Errorf("/metrics: %d shardproxy_ samples, want at least 20", samples)
	}
	for _, name := range []string{"shardproxy_replica_lag_bytes", "shardproxy_replica_lag_seconds", "shardproxy_client_connections_by_state"} {
		if len(families[name].GetMetric()) == 0 {
			t.Errorf("/metrics: no %s samples", name)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Logf("promtool not installed (Debian package prometheus): parsed with the client library only")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// pgbenchPath is pgbench from PATH, else PostgreSQL 15's bin directory.
func pgbenchPath() string {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	return "/usr/lib/postgresql/15/bin/pgbench"
}
