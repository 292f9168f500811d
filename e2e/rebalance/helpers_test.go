// Package rebalance is the end-to-end suite for online rebalancing: it runs
// the real `shardproxy dev` and `shardctl` binaries as an operator would,
// drives pgbench through the proxy while slots move, and then reads every
// PostgreSQL node directly (as superuser) to check where the rows really
// are and that no replication object is left behind.
package rebalance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/localcluster"
	"github.com/shardproxy/shardproxy/shard"
)

// pgbenchPath is PostgreSQL 15's pgbench (the one whose output and log
// formats the parsers below expect).
const pgbenchPath = "/usr/lib/postgresql/15/bin/pgbench"

// The sharded tables of the dev config and their keys (all int4 in pgbench).
var shardedTables = []struct{ name, key string }{
	{"pgbench_accounts", "aid"},
	{"pgbench_history", "aid"},
	{"pgbench_tellers", "tid"},
	{"pgbench_branches", "bid"},
}

var pgbenchKeyType = shard.KeyType{Kind: shard.Int4}

var (
	buildOnce          sync.Once
	buildDir           string
	proxyBin, ctlBin   string
	buildErr           error
	buildTook          time.Duration
	terminalStates     = []string{"done", "cancelled", "failed"}
	phaseOrder         = []string{"prepare", "copy", "catchup", "verify", "cutover", "cleanup"}
	reProcessed        = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed           = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reTPS              = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reAborted          = regexp.MustCompile(`(?mi)aborted`)
	leftoverSlotFilter = `slot_name LIKE 'shardproxy%' OR slot_name LIKE 'pg\_%\_sync\_%'`
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// needBinaries skips without PostgreSQL or pgbench and builds shardproxy
// and shardctl once per test binary.
func needBinaries(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs shardproxy dev with real PostgreSQL servers; skipped with -short")
	}
	if _, err := localcluster.FindBinDir(""); err != nil {
		t.Skipf("no PostgreSQL server binaries: %v", err)
	}
	if st, err := os.Stat(pgbenchPath); err != nil || st.Mode()&0o111 == 0 {
		t.Skipf("pgbench not found at %s", pgbenchPath)
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not in PATH: cannot build shardproxy and shardctl")
	}
	buildOnce.Do(func() {
		start := time.Now()
		buildDir, buildErr = os.MkdirTemp("", "shardproxy-rebalance-bin-")
		if buildErr != nil {
			return
		}
		proxyBin, ctlBin = filepath.Join(buildDir, "shardproxy"), filepath.Join(buildDir, "shardctl")
		for bin, pkg := range map[string]string{proxyBin: "../../cmd/shardproxy", ctlBin: "../../cmd/shardctl"} {
			out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
		buildTook = time.Since(start)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
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

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// devNode is one `node <shard> <role> <dsn>` line of shardproxy dev.
type devNode struct {
	Shard, Role, DSN string
}

func (n devNode) String() string { return n.Shard + "/" + n.Role + "@" + dsnHost(n.DSN) }

func dsnHost(dsn string) string {
	if u, err := url.Parse(dsn); err == nil {
		return u.Host
	}
	return dsn
}

// dev is one `shardproxy dev` cluster directory, run (and rerun, on the
// same directory and ports) by a test.
type dev struct {
	t                        *testing.T
	dir, listen, admin       string
	shards, replicas, spares int
	logDir                   string
	runs                     int
	cmd                      *exec.Cmd
	exited                   chan struct{}
	stderrPath               string
	nodes                    []devNode
	ready, config            string
	pids                     []int // postmaster PIDs of the current run
}

// newDev picks a directory and free ports; start runs it.
func newDev(t *testing.T, shards, replicas, spares int) *dev {
	t.Helper()
	dir, err := os.MkdirTemp("", "shardproxy-rebalance-")
	if err != nil {
		t.Fatal(err)
	}
	// The servers run as the postgres OS user when we are root.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dir, "proxy-logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &dev{t: t, dir: dir, listen: freeAddr(t), admin: freeAddr(t),
		shards: shards, replicas: replicas, spares: spares, logDir: logDir}
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			d.logTail(60)
		}
		if os.Getenv("E2E_KEEP") != "" {
			t.Logf("kept %s (E2E_KEEP set)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return d
}

// logTail shows the end of the last run's stderr (the proxy's log).
func (d *dev) logTail(lines int) {
	if d.stderrPath == "" {
		return
	}
	b, _ := os.ReadFile(d.stderrPath)
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	d.t.Logf("last %d lines of shardproxy dev stderr (%s):\n%s", len(l), d.stderrPath, strings.Join(l, "\n"))
}

// start runs shardproxy dev and waits for its ready line.
func (d *dev) start() {
	t := d.t
	t.Helper()
	d.runs++
	d.stderrPath = filepath.Join(d.logDir, fmt.Sprintf("dev-run%d.stderr", d.runs))
	errf, err := os.Create(d.stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(proxyBin, "dev", "--dir", d.dir,
		"--shards", strconv.Itoa(d.shards), "--replicas", strconv.Itoa(d.replicas), "--spares", strconv.Itoa(d.spares),
		"--listen", d.listen, "--admin", d.admin)
	cmd.Stderr = errf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	errf.Close()
	d.cmd, d.exited = cmd, make(chan struct{})
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_ = cmd.Wait()
		close(d.exited)
	}()
	d.nodes, d.ready, d.config = nil, "", ""
	var seen []string
	deadline := time.After(120 * time.Second)
	for d.ready == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				d.logTail(40)
				t.Fatalf("shardproxy dev (run %d) exited before ready; stdout: %q", d.runs, seen)
			}
			seen = append(seen, l)
			f := strings.Fields(l)
			switch {
			case len(f) == 4 && f[0] == "node":
				d.nodes = append(d.nodes, devNode{Shard: f[1], Role: f[2], DSN: f[3]})
			case len(f) == 2 && f[0] == "config":
				d.config = f[1]
			case len(f) == 2 && f[0] == "ready":
				d.ready = f[1]
			}
		case <-deadline:
			d.logTail(40)
			t.Fatalf("shardproxy dev (run %d): no ready line within 120 s; stdout: %q", d.runs, seen)
		}
	}
	go func() {
		for range lines { // keep the pipe drained
		}
	}()
	d.pids = d.postmasterPIDs()
	t.Logf("shardproxy dev run %d ready in %s: %v", d.runs, time.Since(begin).Round(time.Millisecond), d.nodes)
}

// postmasterPIDs reads the PIDs of the servers running under the directory.
func (d *dev) postmasterPIDs() []int {
	files, _ := filepath.Glob(filepath.Join(d.dir, "*", "postmaster.pid"))
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// kill9 kills the shardproxy dev process with SIGKILL (its servers get
// their parent-death signal, SIGINT: a fast shutdown) and waits until
// every postmaster of that run has exited, so the rerun finds the data
// directories free: localcluster does not wait for a postmaster.pid whose
// server is still shutting down, and a rerun within those ~100-400 ms
// fails with "lock file postmaster.pid already exists".
func (d *dev) kill9() time.Duration {
	t := d.t
	t.Helper()
	if d.cmd == nil {
		return 0
	}
	begin := time.Now()
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("shardproxy dev pid %d still running 10 s after SIGKILL", d.cmd.Process.Pid)
	}
	d.cmd = nil
	deadline := time.Now().Add(60 * time.Second)
	for _, pid := range d.pids {
		for pidAlive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("postgres %d still running 60 s after shardproxy dev was killed", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return time.Since(begin)
}

// stop ends the current run with SIGTERM (SIGKILL after 60 s).
func (d *dev) stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		d.t.Errorf("shardproxy dev did not stop within 60 s of SIGTERM; killing it")
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.exited
	}
	d.cmd = nil
}

// node returns the node line of shard and role.
func (d *dev) node(shardName, role string) devNode {
	d.t.Helper()
	for _, n := range d.nodes {
		if n.Shard == shardName && n.Role == role {
			return n
		}
	}
	d.t.Fatalf("no node %s %s in %v", shardName, role, d.nodes)
	return devNode{}
}

// writable are the primaries and spares: every node that can hold rows of
// its own.
func (d *dev) writable() []devNode {
	var out []devNode
	for _, n := range d.nodes {
		if n.Role == "primary" || n.Role == "spare" {
			out = append(out, n)
		}
	}
	return out
}

func (d *dev) metadataDSN() string { return d.node("shard0", "primary").DSN }

func (d *dev) appDSN() string {
	if strings.Contains(d.ready, "?") {
		return d.ready + "&sslmode=disable"
	}
	return d.ready + "?sslmode=disable"
}

// ctl runs shardctl against this proxy's admin API.
func (d *dev) ctl(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ctlBin, append([]string{"--admin", d.admin}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// mustCtl runs shardctl and fails the test unless it exits 0.
func (d *dev) mustCtl(timeout time.Duration, args ...string) string {
	d.t.Helper()
	out, err := d.ctl(timeout, args...)
	if err != nil {
		d.t.Fatalf("shardctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// status reads the rebalance status through the admin API (the same JSON
// `shardctl rebalance status --json` prints), cheap enough to poll every
// 20 ms.
func (d *dev) status(ctx context.Context) (admin.RebalanceStatus, error) {
	var st admin.RebalanceStatus
	body, err := (&admin.Client{Addr: d.admin}).Get(ctx, admin.RebalancePath)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("decode %s: %w: %s", admin.RebalancePath, err, body)
	}
	return st, nil
}

// ctlStatus is `shardctl rebalance status --json`.
func (d *dev) ctlStatus() admin.RebalanceStatus {
	d.t.Helper()
	out := d.mustCtl(30*time.Second, "rebalance", "status", "--json")
	var st admin.RebalanceStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		d.t.Fatalf("shardctl rebalance status --json: %v\n%s", err, out)
	}
	return st
}

// shards is `shardctl shards --json`.
func (d *dev) shardsInfo() []admin.ShardInfo {
	d.t.Helper()
	out := d.mustCtl(30*time.Second, "shards", "--json")
	var list []admin.ShardInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		var wrapped struct {
			Shards []admin.ShardInfo `json:"shards"`
		}
		if err2 := json.Unmarshal([]byte(out), &wrapped); err2 != nil || wrapped.Shards == nil {
			d.t.Fatalf("shardctl shards --json: %v\n%s", err, out)
		}
		list = wrapped.Shards
	}
	return list
}

func isTerminal(state string) bool { return slices.Contains(terminalStates, state) }

func phaseIndex(p string) int { return slices.Index(phaseOrder, p) }

// waitEnd polls the rebalance status until it reaches a terminal state.
func (d *dev) waitEnd(timeout time.Duration) admin.RebalanceStatus {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	var last admin.RebalanceStatus
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := d.status(ctx)
		cancel()
		if err == nil {
			last = st
			if isTerminal(st.State) {
				return st
			}
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	d.t.Fatalf("rebalance did not end within %s; last status %s (last error %v)", timeout, brief(last), lastErr)
	return last
}

// brief is a one-line summary of a status for logs.
func brief(st admin.RebalanceStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "id=%d state=%s phase=%s", st.ID, st.State, st.Phase)
	if st.Error != "" {
		fmt.Fprintf(&b, " error=%q", st.Error)
	}
	for i, m := range st.Moves {
		fmt.Fprintf(&b, " | move%d %s->%s slots=%d phase=%s rows=%d/%d cleaned=%d lag=%d pause_ms=%.1f verified=%v",
			i, m.From, m.To, len(m.Slots), m.Phase, m.RowsCopied, m.RowsTotal, m.RowsCleaned, m.LagBytes, m.PauseMillis, m.Verified)
		if m.VerifyError != "" {
			fmt.Fprintf(&b, " verify_error=%q", m.VerifyError)
		}
	}
	return b.String()
}

func logJournal(t *testing.T, st admin.RebalanceStatus) {
	t.Helper()
	for _, n := range st.Log {
		t.Logf("  journal %s move=%d %s: %s", n.At.Format("15:04:05.000"), n.Move, n.Phase, n.Message)
	}
}

// ---- SQL on the nodes ----

func withConn(t *testing.T, dsn string, fn func(ctx context.Context, c *pgx.Conn) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsnHost(dsn), err)
	}
	defer c.Close(context.Background())
	if err := fn(ctx, c); err != nil {
		t.Fatalf("on %s: %v", dsnHost(dsn), err)
	}
}

func queryInt(t *testing.T, dsn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	withConn(t, dsn, func(ctx context.Context, c *pgx.Conn) error {
		if err := c.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		return nil
	})
	return n
}

func queryStrings(t *testing.T, dsn, sql string, args ...any) []string {
	t.Helper()
	var out []string
	withConn(t, dsn, func(ctx context.Context, c *pgx.Conn) error {
		rows, err := c.Query(ctx, sql, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		return nil
	})
	return out
}

// assignment is the current slot -> shard map: the latest version in the
// metadata table on the shard0 primary.
func (d *dev) assignment() (int64, []string) {
	d.t.Helper()
	var v int64
	var slots []string
	withConn(d.t, d.metadataDSN(), func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT version, slots FROM shardproxy.shard_map_versions ORDER BY version DESC LIMIT 1").Scan(&v, &slots)
	})
	return v, slots
}

func slotCounts(slots []string) map[string]int {
	m := map[string]int{}
	for _, s := range slots {
		m[s]++
	}
	return m
}

// tableCounts counts each sharded table's rows on one node directly
// (-1: the table does not exist there).
func tableCounts(t *testing.T, dsn string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	withConn(t, dsn, func(ctx context.Context, c *pgx.Conn) error {
		for _, tb := range shardedTables {
			var exists bool
			if err := c.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", "public."+tb.name).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				out[tb.name] = -1
				continue
			}
			var n int64
			if err := c.QueryRow(ctx, "SELECT count(*) FROM public."+tb.name).Scan(&n); err != nil {
				return err
			}
			out[tb.name] = n
		}
		return nil
	})
	return out
}

// nodeCounts is tableCounts of every primary and spare, by shard name.
func (d *dev) nodeCounts() map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	for _, n := range d.writable() {
		out[n.Shard] = tableCounts(d.t, n.DSN)
	}
	return out
}

// appTotals are what the application sees through the proxy.
type appTotals struct {
	Counts                       map[string]int64
	Abalance, Bbalance, Tbalance int64
	Delta                        int64
}

func (d *dev) appTotals() appTotals {
	d.t.Helper()
	a := appTotals{Counts: map[string]int64{}}
	withConn(d.t, d.appDSN(), func(ctx context.Context, c *pgx.Conn) error {
		for _, tb := range shardedTables {
			var n int64
			if err := c.QueryRow(ctx, "SELECT count(*) FROM "+tb.name).Scan(&n); err != nil {
				return fmt.Errorf("count %s through the proxy: %w", tb.name, err)
			}
			a.Counts[tb.name] = n
		}
		for _, q := range []struct {
			sql string
			dst *int64
		}{
			{"SELECT sum(abalance) FROM pgbench_accounts", &a.Abalance},
			{"SELECT sum(bbalance) FROM pgbench_branches", &a.Bbalance},
			{"SELECT sum(tbalance) FROM pgbench_tellers", &a.Tbalance},
			{"SELECT sum(delta) FROM pgbench_history", &a.Delta},
		} {
			// No coalesce: the proxy merges a bare sum across shards only.
			var v *int64
			if err := c.QueryRow(ctx, q.sql).Scan(&v); err != nil {
				return fmt.Errorf("%s through the proxy: %w", q.sql, err)
			}
			if v != nil {
				*q.dst = *v
			}
		}
		return nil
	})
	return a
}

// checkInvariant: tpcb-like moves the same delta into one account, one
// teller, one branch and one history row per transaction.
func checkInvariant(t *testing.T, a appTotals) {
	t.Helper()
	t.Logf("through the proxy: rows %v; sum(abalance)=%d sum(bbalance)=%d sum(tbalance)=%d sum(delta)=%d",
		a.Counts, a.Abalance, a.Bbalance, a.Tbalance, a.Delta)
	if a.Abalance != a.Bbalance || a.Bbalance != a.Tbalance || a.Tbalance != a.Delta {
		t.Errorf("tpcb invariant broken: sum(abalance)=%d sum(bbalance)=%d sum(tbalance)=%d sum(history.delta)=%d",
			a.Abalance, a.Bbalance, a.Tbalance, a.Delta)
	}
}

// checkPlacement reads every row's slot on every primary and spare
// directly: each row must sit on the node of the shard that owns its slot
// in the current map, and the rows over all nodes must add up to what the
// proxy counts (nothing duplicated, nothing lost). It returns the
// per-table totals over the nodes.
func (d *dev) checkPlacement(proxyCounts map[string]int64) map[string]int64 {
	t := d.t
	t.Helper()
	version, slots := d.assignment()
	totals := map[string]int64{}
	perNode := map[string]map[string]int64{}
	for _, n := range d.writable() {
		perNode[n.Shard] = map[string]int64{}
		withConn(t, n.DSN, func(ctx context.Context, c *pgx.Conn) error {
			for _, tb := range shardedTables {
				var exists bool
				if err := c.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", "public."+tb.name).Scan(&exists); err != nil {
					return err
				}
				if !exists {
					continue
				}
				rows, err := c.Query(ctx, fmt.Sprintf("SELECT s::int, count(*) FROM (SELECT %s AS s FROM public.%s) x GROUP BY 1",
					shard.SlotExpr(tb.key, pgbenchKeyType, len(slots)), tb.name))
				if err != nil {
					return err
				}
				var misplaced []string
				var bad int64
				for rows.Next() {
					var slot int
					var cnt int64
					if err := rows.Scan(&slot, &cnt); err != nil {
						return err
					}
					totals[tb.name] += cnt
					perNode[n.Shard][tb.name] += cnt
					if slot < 0 || slot >= len(slots) || slots[slot] != n.Shard {
						bad += cnt
						if len(misplaced) < 8 {
							owner := "?"
							if slot >= 0 && slot < len(slots) {
								owner = slots[slot]
							}
							misplaced = append(misplaced, fmt.Sprintf("slot %d (owner %s): %d rows", slot, owner, cnt))
						}
					}
				}
				if err := rows.Err(); err != nil {
					return err
				}
				if bad > 0 {
					t.Errorf("%s holds %d rows of %s in slots it does not own (map version %d): %s",
						n.Shard, bad, tb.name, version, strings.Join(misplaced, "; "))
				}
			}
			return nil
		})
	}
	t.Logf("rows per node (map version %d, slots per shard %v): %v", version, slotCounts(slots), perNode)
	for _, tb := range shardedTables {
		if totals[tb.name] != proxyCounts[tb.name] {
			t.Errorf("%s: %d rows over all nodes, %d through the proxy (duplicated or lost rows)",
				tb.name, totals[tb.name], proxyCounts[tb.name])
		}
	}
	return totals
}

// leftovers lists every rebalance object still present on any node:
// replication slots (replicas too), publications, subscriptions, marker
// tables, hidden slots, and on the sharded tables row-level security,
// shardproxy policies or a replica identity switched to FULL.
func (d *dev) leftovers() []string {
	t := d.t
	t.Helper()
	var out []string
	add := func(n devNode, what string, names []string) {
		if len(names) > 0 {
			out = append(out, fmt.Sprintf("%s: %s %v", n, what, names))
		}
	}
	var tableNames []string
	for _, tb := range shardedTables {
		tableNames = append(tableNames, tb.name)
	}
	for _, n := range d.nodes {
		add(n, "replication slots", queryStrings(t, n.DSN,
			"SELECT slot_name || ' (' || slot_type || coalesce(', db ' || database, '') || ')' FROM pg_replication_slots WHERE "+leftoverSlotFilter))
		if n.Role == "replica" {
			continue
		}
		add(n, "publications", queryStrings(t, n.DSN, "SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'shardproxy%'"))
		add(n, "subscriptions", queryStrings(t, n.DSN, "SELECT subname::text FROM pg_subscription WHERE subname LIKE 'shardproxy%'"))
		add(n, "marker tables", queryStrings(t, n.DSN,
			"SELECT tablename::text FROM pg_tables WHERE schemaname = 'shardproxy' AND tablename LIKE 'marker%'"))
		if queryInt(t, n.DSN, "SELECT (to_regclass('shardproxy.hidden_slots') IS NOT NULL)::int") == 1 {
			if c := queryInt(t, n.DSN, "SELECT count(*) FROM shardproxy.hidden_slots"); c > 0 {
				out = append(out, fmt.Sprintf("%s: %d rows in shardproxy.hidden_slots", n, c))
			}
		}
		add(n, "row-level security enabled on", queryStrings(t, n.DSN,
			"SELECT relname::text FROM pg_class WHERE relname = ANY($1) AND relnamespace = 'public'::regnamespace AND (relrowsecurity OR relforcerowsecurity)",
			tableNames))
		add(n, "policies", queryStrings(t, n.DSN,
			"SELECT tablename::text || '.' || policyname::text FROM pg_policies WHERE policyname LIKE 'shardproxy%'"))
		// pgbench's tables have the default replica identity; a rebalance
		// may switch it to FULL while it moves rows, and must switch it back.
		add(n, "replica identity FULL left on", queryStrings(t, n.DSN,
			"SELECT relname::text FROM pg_class WHERE relname = ANY($1) AND relnamespace = 'public'::regnamespace AND relreplident = 'f'",
			tableNames))
	}
	return out
}

func (d *dev) checkNoLeftovers() {
	d.t.Helper()
	if l := d.leftovers(); len(l) > 0 {
		d.t.Errorf("rebalance objects left behind:\n  %s", strings.Join(l, "\n  "))
	}
}

// waitNoPrepared waits until no shard holds a prepared transaction (2PC
// recovery after a proxy restart), so sums read through the proxy are final.
func (d *dev) waitNoPrepared(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for _, n := range d.writable() {
			left = append(left, queryStrings(d.t, n.DSN, "SELECT gid FROM pg_prepared_xacts")...)
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			d.t.Errorf("prepared transactions still present %s after the restart: %v", timeout, left)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ---- pgbench ----

type pgbenchResult struct {
	args      []string
	out       string
	err       error
	processed int64
	failed    int64
	tps       string
	aborted   bool
	start     time.Time
	end       time.Time
}

func (r pgbenchResult) ok() bool {
	return r.err == nil && !r.aborted && r.failed == 0 && r.processed > 0
}

func (r pgbenchResult) String() string {
	return fmt.Sprintf("pgbench %s: exit=%v processed=%d failed=%d tps=%s aborted=%v",
		strings.Join(r.args, " "), r.err, r.processed, r.failed, r.tps, r.aborted)
}

// pgbench runs pgbench against the proxy as the app user.
func (d *dev) pgbench(ctx context.Context, args ...string) pgbenchResult {
	h, p, _ := net.SplitHostPort(d.listen)
	full := append([]string{"-h", h, "-p", p, "-U", "app"}, args...)
	full = append(full, "app")
	cmd := exec.CommandContext(ctx, pgbenchPath, full...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PGPASSWORD=app", "PGCONNECT_TIMEOUT=5", "PGSSLMODE=disable")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	r := pgbenchResult{args: args, start: time.Now()}
	r.err = cmd.Run()
	r.end = time.Now()
	r.out = out.String()
	r.processed, r.failed = -1, -1
	if m := reProcessed.FindStringSubmatch(r.out); m != nil {
		r.processed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reFailed.FindStringSubmatch(r.out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	} else if r.err == nil {
		r.failed = 0 // older output without the line
	}
	if m := reTPS.FindStringSubmatch(r.out); m != nil {
		r.tps = m[1]
	}
	r.aborted = reAborted.MatchString(r.out)
	return r
}

func (d *dev) pgbenchInit(scale int) {
	d.t.Helper()
	begin := time.Now()
	r := d.pgbench(ctxT(d.t, 5*time.Minute), "-i", "-s", strconv.Itoa(scale), "-q")
	if r.err != nil {
		d.t.Fatalf("pgbench -i -s %d through the proxy: %v\n%s", scale, r.err, r.out)
	}
	d.t.Logf("pgbench -i -s %d through the proxy: %s", scale, time.Since(begin).Round(time.Millisecond))
}

// txLatency is one line of a pgbench -l log.
type txLatency struct {
	client  int
	latency time.Duration
	end     time.Time
}

// readTxLogs parses pgbench's per-transaction logs (prefix.PID and
// prefix.PID.N): client_id transaction_no time script_no time_epoch
// time_us [schedule_lag]; time is the latency in microseconds, or
// "failed"/"skipped".
func readTxLogs(prefix string) (lat []txLatency, failed int, err error) {
	files, _ := filepath.Glob(prefix + ".*")
	if len(files) == 0 {
		return nil, 0, fmt.Errorf("no pgbench log files %s.*", prefix)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			fl := strings.Fields(line)
			if len(fl) < 6 {
				continue
			}
			us, err := strconv.ParseInt(fl[2], 10, 64)
			if err != nil {
				failed++
				continue
			}
			client, _ := strconv.Atoi(fl[0])
			sec, _ := strconv.ParseInt(fl[4], 10, 64)
			usec, _ := strconv.ParseInt(fl[5], 10, 64)
			lat = append(lat, txLatency{client: client, latency: time.Duration(us) * time.Microsecond,
				end: time.Unix(sec, usec*1000)})
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i].latency < lat[j].latency })
	return lat, failed, nil
}

func percentile(sorted []txLatency, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i].latency
}

// backgroundLoad runs short tpcb-like pgbench runs back to back until
// stopped, so a test can stop the load at a transaction boundary (pgbench
// has no graceful stop) and tolerate the runs cut by a proxy kill.
type backgroundLoad struct {
	d        *dev
	args     []string
	mu       sync.Mutex
	segments []pgbenchResult
	stopc    chan struct{}
	done     chan struct{}
}

func (d *dev) startLoad(args ...string) *backgroundLoad {
	l := &backgroundLoad{d: d, args: args, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stopc:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			r := d.pgbench(ctx, l.args...)
			cancel()
			l.mu.Lock()
			l.segments = append(l.segments, r)
			l.mu.Unlock()
			if !r.ok() {
				select {
				case <-l.stopc:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}()
	return l
}

// stop waits for the running segment to end and returns every segment.
func (l *backgroundLoad) stop() []pgbenchResult {
	close(l.stopc)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.segments
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
