// Package faults is the fault-injection suite: a real two-shard
// PostgreSQL 15 cluster with one streaming replica per shard, the real
// `shardproxy serve` binary in front of it (a separate process, so it can
// be killed with SIGKILL), and real clients (pgbench, pgx) under load while
// nodes are killed (kill -9), stalled (SIGSTOP) or cut off, and the proxy
// itself is killed. Every test checks that the proxy recovers without a
// restart (except the one that kills it) and that its log and metrics say
// what happened.
//
// The "network cut" is a black hole made with SIGSTOP of the postmaster
// and all of its children: the kernel keeps the sockets open (connections
// are accepted into the backlog and data is ACKed) but nothing answers,
// which is what a client sees when packets to a node are dropped. iptables
// would change the firewall of the whole machine (other test runs share
// 127.0.0.1), and a network namespace would need every server and client
// inside it, so neither is used.
package faults

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
)

// shared is the cluster of the package: two shards, one replica each.
// Tests leave every node running and answering when they end.
var shared = &localcluster.Shared{Name: "faults", Options: localcluster.Options{Shards: 2, Replicas: 1}}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error

	initOnce sync.Once
	initErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := shared.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// getCluster returns the shared cluster with every node running and not
// stopped (a test that failed half-way may have left one down); it skips
// under -short.
func getCluster(t *testing.T) *localcluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("fault injection against real PostgreSQL and the shardproxy binary; skipped with -short")
	}
	cl := shared.Get(t)
	for _, n := range cl.Nodes {
		if n.PID() != 0 {
			n.Resume() // a test that failed while it was paused
			continue
		}
		if err := n.Start(ctxT(t, 60*time.Second)); err != nil {
			t.Fatalf("restart %s: %v", n.Name, err)
		}
	}
	return cl
}

// buildShardproxy builds the binary once per package run.
func buildShardproxy(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "shardproxy-faults-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "shardproxy")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", binPath, "github.com/shardproxy/shardproxy/cmd/shardproxy").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build shardproxy: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
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

// writeConfig writes the config a user would for cl: both shards with
// their replica, pgbench's tables sharded as in `shardproxy dev`.
func writeConfig(t *testing.T, cl *localcluster.Cluster, listen, admin, extra string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %q\n", listen)
	fmt.Fprintf(&b, "admin:\n  listen: %q\n", admin)
	fmt.Fprintf(&b, "users:\n  - name: %q\n    password: %q\n    auth: scram-sha-256\n", localcluster.AppUser, localcluster.AppPassword)
	b.WriteString("pool:\n  size: 40\n")
	b.WriteString("shards:\n")
	for _, n := range cl.ShardNames() {
		fmt.Fprintf(&b, "  - name: %q\n    primary: %q\n", n, cl.Primary(n).DSN(localcluster.AppDatabase))
		b.WriteString("    replicas:\n")
		for _, r := range cl.Replicas(n) {
			fmt.Fprintf(&b, "      - %q\n", r.DSN(localcluster.AppDatabase))
		}
	}
	b.WriteString("sharding:\n  tables:\n")
	for _, tb := range [][2]string{{"pgbench_accounts", "aid"}, {"pgbench_history", "aid"}, {"pgbench_tellers", "tid"}, {"pgbench_branches", "bid"}} {
		fmt.Fprintf(&b, "    - name: %s\n      key: %s\n", tb[0], tb[1])
	}
	b.WriteString(extra)
	path := filepath.Join(t.TempDir(), "shardproxy.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(path); err != nil {
		t.Fatalf("config:\n%s\n%v", b.String(), err)
	}
	return path
}

// proxyProc is one `shardproxy serve` process.
type proxyProc struct {
	t           *testing.T
	bin, config string
	addr, admin string
	cmd         *exec.Cmd
	log         *procLog
	started     time.Time
	exited      chan struct{}
}

// procLog keeps a process's output with the time each line arrived.
type procLog struct {
	mu      sync.Mutex
	lines   []logLine
	partial []byte
}

type logLine struct {
	at   time.Time
	text string
}

func (l *procLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, logLine{at: time.Now(), text: string(l.partial[:i])})
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// find returns the first line after since containing every part.
func (l *procLog) find(since time.Time, parts ...string) (logLine, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, ln := range l.lines {
		if ln.at.Before(since) {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(ln.text, p) {
				continue next
			}
		}
		return ln, true
	}
	return logLine{}, false
}

func (l *procLog) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, ln := range l.lines {
		for _, p := range parts {
			if !strings.Contains(ln.text, p) {
				continue next
			}
		}
		n++
	}
	return n
}

func (l *procLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, ln := range l.lines {
		b.WriteString(ln.text)
		b.WriteByte('\n')
	}
	return b.String()
}

// startProxy builds the binary if needed, writes a config for cl (plus
// extra YAML, top-level sections) and runs the proxy until the test ends;
// it waits until every node is healthy.
func startProxy(t *testing.T, cl *localcluster.Cluster, extra ...string) *proxyProc {
	t.Helper()
	p := &proxyProc{t: t, bin: buildShardproxy(t), addr: freeAddr(t), admin: freeAddr(t)}
	p.config = writeConfig(t, cl, p.addr, p.admin, strings.Join(extra, ""))
	p.start()
	t.Cleanup(p.stop)
	p.waitAllUp(cl, 30*time.Second)
	return p
}

// start runs a new process with the same config and waits until it listens.
func (p *proxyProc) start() {
	t := p.t
	t.Helper()
	p.log = &procLog{}
	p.exited = make(chan struct{})
	p.cmd = exec.Command(p.bin, "serve", "--config", p.config, "--log-level", "info")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start shardproxy: %v", err)
	}
	cmd, exited := p.cmd, p.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := p.log.find(p.started, `msg="shardproxy listening"`); ok {
			return
		}
		select {
		case <-exited:
			t.Fatalf("shardproxy exited before listening (%v):\n%s", cmd.ProcessState, p.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("shardproxy not listening within 20 s:\n%s", p.log)
		}
	}
}

// kill sends SIGKILL to the proxy, by PID, and reaps it.
func (p *proxyProc) kill() {
	t := p.t
	t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", p.cmd.Process.Pid, err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("shardproxy (pid %d) still running 10 s after SIGKILL", p.cmd.Process.Pid)
	}
}

// stop ends the running process with SIGTERM (SIGKILL after 15 s).
func (p *proxyProc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.t.Errorf("shardproxy (pid %d) did not stop within 15 s of SIGTERM; killing it", p.cmd.Process.Pid)
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
	if p.t.Failed() {
		p.t.Logf("proxy log:\n%s", p.log)
	} else {
		p.t.Logf("proxy log, WARN/ERROR messages: %s", p.log.summary())
	}
}

var reMsg = regexp.MustCompile(`level=(WARN|ERROR) msg="([^"]*)"`)

// summary counts the log's WARN and ERROR lines by message.
func (l *procLog) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := map[string]int{}
	var order []string
	for _, ln := range l.lines {
		if m := reMsg.FindStringSubmatch(ln.text); m != nil {
			k := m[1] + " " + m[2]
			if counts[k] == 0 {
				order = append(order, k)
			}
			counts[k]++
		}
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%dx %q", counts[k], k))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func (p *proxyProc) dsn() string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable&connect_timeout=3",
		localcluster.AppUser, localcluster.AppPassword, p.addr, localcluster.AppDatabase)
}

// scrape returns the /metrics text.
func (p *proxyProc) scrape() (string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), nil
}

// metric sums the samples of name whose labels contain every label
// (`key="value"`), and reports whether there was any.
func (p *proxyProc) metric(name string, labels ...string) (float64, bool) {
	text, err := p.scrape()
	if err != nil {
		p.t.Logf("scrape: %v", err)
		return 0, false
	}
	return metricIn(text, name, labels...)
}

func metricIn(text, name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				continue next
			}
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

func nodeLabel(n *localcluster.Node) string { return `node="` + n.Addr() + `"` }

// waitMetric waits until cond holds for the metric and returns how long it took.
func (p *proxyProc) waitMetric(within time.Duration, what string, name string, cond func(float64) bool, labels ...string) time.Duration {
	p.t.Helper()
	start := time.Now()
	for deadline := start.Add(within); ; time.Sleep(50 * time.Millisecond) {
		if v, ok := p.metric(name, labels...); ok && cond(v) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			v, ok := p.metric(name, labels...)
			p.t.Fatalf("%s: %s%v is %v (present %v) after %s", what, name, labels, v, ok, within)
		}
	}
}

// waitAllUp waits until the proxy reports every node healthy.
func (p *proxyProc) waitAllUp(cl *localcluster.Cluster, within time.Duration) {
	p.t.Helper()
	for _, n := range cl.Nodes {
		p.waitMetric(within, "node "+n.Name+" up", "shardproxy_node_up", func(v float64) bool { return v == 1 }, nodeLabel(n))
	}
}

// pgbenchInit loads pgbench's tables (scale 1) through the proxy, once per
// package run, and waits for the replicas to replay them.
func pgbenchInit(t *testing.T, cl *localcluster.Cluster, p *proxyProc) {
	t.Helper()
	initOnce.Do(func() {
		out, err := runPgbench(p, 2*time.Minute, "-i", "-q", "-s", "1")
		if err != nil {
			initErr = fmt.Errorf("pgbench -i through the proxy: %v\n%s", err, out)
			return
		}
		for _, r := range cl.Nodes {
			if r.Role == localcluster.RoleReplica {
				if err := r.WaitStreaming(ctxT(t, 30*time.Second)); err != nil {
					initErr = err
					return
				}
			}
		}
		time.Sleep(time.Second)
	})
	if initErr != nil {
		t.Fatal(initErr)
	}
}

func pgEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, "PGPASSWORD="+localcluster.AppPassword, "PGCONNECT_TIMEOUT=5", "PGSSLMODE=disable")
}

// pgbenchCmd is pgbench against the proxy with args; the caller runs it.
func pgbenchCmd(p *proxyProc, ctx context.Context, args ...string) (*exec.Cmd, *bytes.Buffer) {
	host, port, _ := net.SplitHostPort(p.addr)
	full := append([]string{"-h", host, "-p", port, "-U", localcluster.AppUser}, args...)
	full = append(full, localcluster.AppDatabase)
	cmd := exec.CommandContext(ctx, "/usr/bin/pgbench", full...)
	cmd.Env = pgEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	return cmd, &out
}

func runPgbench(p *proxyProc, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd, out := pgbenchCmd(p, ctx, args...)
	err := cmd.Run()
	return out.String(), err
}

var (
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reAborted   = regexp.MustCompile(`client \d+ (script \d+ )?aborted`)
	reLate      = regexp.MustCompile(`(?m)^number of transactions above the [0-9.]+ ms latency limit: (\d+)`)
	reProgress  = regexp.MustCompile(`(?m)^progress: ([0-9.]+) s, ([0-9.]+) tps`)
)

// benchResult is what a pgbench run reports.
type benchResult struct {
	processed, failed, aborted, late int
	tps                              float64
	progress                         []progressPoint
}

type progressPoint struct{ at, tps float64 }

func parseBench(out string) benchResult {
	var r benchResult
	if m := reProcessed.FindStringSubmatch(out); m != nil {
		r.processed, _ = strconv.Atoi(m[1])
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.Atoi(m[1])
	}
	if m := reTPS.FindStringSubmatch(out); m != nil {
		r.tps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reLate.FindStringSubmatch(out); m != nil {
		r.late, _ = strconv.Atoi(m[1])
	}
	r.aborted = len(reAborted.FindAllString(out, -1))
	for _, m := range reProgress.FindAllStringSubmatch(out, -1) {
		at, _ := strconv.ParseFloat(m[1], 64)
		tps, _ := strconv.ParseFloat(m[2], 64)
		r.progress = append(r.progress, progressPoint{at, tps})
	}
	return r
}

// abortLines are pgbench's "client N aborted" lines, for the report.
func abortLines(out string) []string {
	var l []string
	for _, line := range strings.Split(out, "\n") {
		if reAborted.MatchString(line) {
			l = append(l, strings.TrimSpace(line))
		}
	}
	return l
}

// freeze black-holes node n (SIGSTOP of the postmaster and every child)
// and returns the function that thaws it; the test's cleanup thaws it too.
func freeze(t *testing.T, n *localcluster.Node) (thaw func()) {
	t.Helper()
	if n.PID() == 0 {
		t.Fatalf("%s is not running", n.Name)
	}
	n.Pause()
	var once sync.Once
	thaw = func() { once.Do(n.Resume) }
	t.Cleanup(thaw)
	return thaw
}

// superConn is a superuser connection straight to node n.
func superConn(t *testing.T, n *localcluster.Node) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctxT(t, 15*time.Second), n.DSN(localcluster.AppDatabase)+"&connect_timeout=5")
	if err != nil {
		t.Fatalf("connect %s: %v", n.Name, err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func queryInt(t *testing.T, n *localcluster.Node, sql string) int64 {
	t.Helper()
	var v int64
	if err := superConn(t, n).QueryRow(ctxT(t, 15*time.Second), sql).Scan(&v); err != nil {
		t.Fatalf("%s on %s: %v", sql, n.Name, err)
	}
	return v
}

// waitNoLeftovers waits until no primary holds a prepared transaction and
// no app session is idle in transaction, and returns how long that took.
func waitNoLeftovers(t *testing.T, cl *localcluster.Cluster, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		var left []string
		for _, sh := range cl.ShardNames() {
			pri := cl.Primary(sh)
			if n := queryInt(t, pri, "SELECT count(*) FROM pg_prepared_xacts"); n > 0 {
				left = append(left, fmt.Sprintf("%s: %d prepared transactions", sh, n))
			}
			if n := queryInt(t, pri, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'"); n > 0 {
				left = append(left, fmt.Sprintf("%s: %d app sessions idle in transaction", sh, n))
			}
		}
		if len(left) == 0 {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Errorf("%s after the fault, still: %s", within, strings.Join(left, "; "))
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// aidsOn lists up to n pgbench_accounts keys that live on shard's primary.
func aidsOn(t *testing.T, cl *localcluster.Cluster, shard string, n int) []int64 {
	t.Helper()
	rows, err := superConn(t, cl.Primary(shard)).Query(ctxT(t, 15*time.Second),
		"SELECT aid FROM pgbench_accounts ORDER BY random() LIMIT $1", n)
	if err != nil {
		t.Fatal(err)
	}
	aids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(aids) == 0 {
		t.Fatalf("aids on %s: %v (%d)", shard, err, len(aids))
	}
	return aids
}
