package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
	"github.com/shardproxy/shardproxy/proxy"
	"github.com/shardproxy/shardproxy/replica"
)

// startConsoleProxy starts a proxy with an admin user and the console fed
// by a real replica monitor and stub rebalance and reload functions.
func startConsoleProxy(t *testing.T, reload func() error) *proxy.Server {
	t.Helper()
	mon := startMonitor(t, cluster)
	var replicas []string
	for _, r := range cluster.Replicas("shard0") {
		replicas = append(replicas, r.DSN(localcluster.AppDatabase))
	}
	cfg := &config.Config{
		Listen: "127.0.0.1:0",
		Admin:  config.Admin{Listen: "127.0.0.1:0"},
		Users: []config.User{
			{Name: localcluster.AppUser, Password: localcluster.AppPassword},
			{Name: "admin", Password: "adminpw", Admin: true, ServerUser: localcluster.AppUser, ServerPassword: localcluster.AppPassword},
		},
		Pool:   config.Pool{Size: 4},
		Shards: []config.Shard{{Name: "shard0", Primary: primary().DSN(localcluster.AppDatabase), Replicas: replicas}},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{
		Logger:   proxyLogger(),
		Replicas: mon.ReplicaView(),
		Console: proxy.Console{
			Version: "e2e",
			Nodes:   func() []admin.ShardStatus { return monitorStatuses(mon) },
			Rebalance: func(context.Context) (admin.RebalanceStatus, error) {
				return admin.RebalanceStatus{ID: 7, State: "done", Moves: []admin.MoveStatus{{
					PlannedMove:  admin.PlannedMove{From: "shard0", To: "shard1", Slots: []int{0, 1, 2, 7}},
					Phase:        "done",
					MoveProgress: admin.MoveProgress{RowsCopied: 100, RowsTotal: 100},
					PauseMillis:  12.5, Verified: true,
				}}}, nil
			},
			Reload: reload,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
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

// monitorStatuses is what cmd/shardproxy feeds the console: the replica
// monitor's view shaped like /api/v1/status.
func monitorStatuses(mon *replica.Monitor) []admin.ShardStatus {
	var out []admin.ShardStatus
	for _, sh := range mon.States() {
		ss := admin.ShardStatus{Name: sh.Name}
		for i, n := range sh.Nodes {
			ns := admin.NodeStatus{Addr: n.Addr, Role: n.Role, Healthy: n.Healthy, Outstanding: n.Outstanding, Served: n.Served, LastError: n.LastError}
			if i == 0 {
				ss.Primary = ns
				continue
			}
			lag := n.LagBytes
			ns.LagBytes, ns.LagSeconds = &lag, n.LagSeconds
			ss.Replicas = append(ss.Replicas, ns)
		}
		out = append(out, ss)
	}
	return out
}

// consolePsql runs one command with psql on the console as user and
// returns its unaligned output split into the header's columns and the
// rows, or the error and the raw output.
func consolePsql(t *testing.T, srv *proxy.Server, user, password, sql string) (cols []string, rows [][]string, out string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	uri := fmt.Sprintf("postgres://%s:%s@%s/shardproxy?sslmode=disable", user, password, srv.Addr())
	cmd := exec.CommandContext(ctx, "/usr/bin/psql", "-X", "-A", "-F", "|", "-P", "footer=off", "-v", "ON_ERROR_STOP=1", uri, "-c", sql)
	cmd.Env = cliEnv()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	out = buf.String()
	if err != nil {
		return nil, nil, out, err
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) > 0 && lines[0] != "" {
		cols = strings.Split(lines[0], "|")
	}
	for _, l := range lines[1:] {
		rows = append(rows, strings.Split(l, "|"))
	}
	return cols, rows, out, nil
}

// TestConsole drives every console command through psql against a proxy
// in front of the real cluster, with a client of the app database in an
// open transaction meanwhile; that client keeps working throughout.
func TestConsole(t *testing.T) {
	var reloads atomic.Int32
	var reloadErr atomic.Pointer[error]
	srv := startConsoleProxy(t, func() error {
		reloads.Add(1)
		if p := reloadErr.Load(); p != nil {
			return *p
		}
		return nil
	})
	ctx := ctxT(t, 60*time.Second)

	// An application client, in a transaction while the console looks.
	app := connect(t, srv)
	mustExec(t, app, "SELECT 1")
	tx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, app, "SELECT count(*) FROM pg_class")
	appPID := int64(app.PgConn().PID())

	run := func(sql string, wantCols string) [][]string {
		t.Helper()
		cols, rows, out, err := consolePsql(t, srv, "admin", "adminpw", sql)
		if err != nil {
			t.Fatalf("psql -c %q: %v\n%s", sql, err, out)
		}
		if got := strings.Join(cols, ","); got != wantCols {
			t.Fatalf("%s: columns %s, want %s\n%s", sql, got, wantCols, out)
		}
		for _, r := range rows {
			if len(r) != len(cols) {
				t.Fatalf("%s: row %v has %d fields for %d columns\n%s", sql, r, len(r), len(cols), out)
			}
		}
		return rows
	}
	col := func(rows [][]string, cols string, name string) []string {
		i := strings.Index(","+cols+",", ","+name+",")
		idx := strings.Count(cols[:max(i, 0)], ",")
		var out []string
		for _, r := range rows {
			out = append(out, r[idx])
		}
		return out
	}
	priAddr := primary().Addr()
	repAddr := cluster.Replicas("shard0")[0].Addr()

	const shardsCols = "name,state,slots,primary,replicas,primary_healthy"
	rows := run("SHOW SHARDS", shardsCols)
	if fmt.Sprint(rows) != fmt.Sprint([][]string{{"shard0", "active", "256", priAddr, "1", "t"}}) {
		t.Errorf("SHOW SHARDS: %v", rows)
	}

	const replicasCols = "shard,addr,healthy,lag_bytes,lag_seconds,outstanding,reads_served,last_error"
	rows = run("show replicas;", replicasCols)
	if len(rows) != 1 || rows[0][0] != "shard0" || rows[0][1] != repAddr || rows[0][2] != "t" {
		t.Errorf("SHOW REPLICAS: %v", rows)
	} else if _, err := strconv.ParseUint(rows[0][3], 10, 64); err != nil {
		t.Errorf("SHOW REPLICAS: lag_bytes %q", rows[0][3])
	} else if _, err := strconv.ParseFloat(rows[0][4], 64); err != nil {
		t.Errorf("SHOW REPLICAS: lag_seconds %q", rows[0][4])
	}

	const poolsCols = "shard,node,role,user,database,active,idle,waiting,max_size"
	rows = run("SHOW POOLS", poolsCols)
	found := false
	for _, r := range rows {
		if r[4] == ConsoleDB {
			t.Errorf("SHOW POOLS: a pool for the console database: %v", r)
		}
		if r[0] == "shard0" && r[1] == priAddr && r[2] == "primary" && r[3] == "app" && r[4] == "app" {
			found = true
			if n, _ := strconv.Atoi(r[5]); n < 1 {
				t.Errorf("SHOW POOLS: primary pool %v: want a connection active (open transaction)", r)
			}
			if r[8] != "4" {
				t.Errorf("SHOW POOLS: max_size %s, want 4", r[8])
			}
		}
	}
	if !found {
		t.Errorf("SHOW POOLS: no row for shard0 primary app/app in %v", rows)
	}

	const clientsCols = "pid,user,database,addr,application_name,tls,state,tx_open,server_pid,connected_since"
	rows = run("SHOW CLIENTS", clientsCols)
	var appRow, adminRow []string
	for _, r := range rows {
		switch {
		case r[0] == strconv.FormatInt(appPID, 10):
			appRow = r
		case r[1] == "admin":
			adminRow = r
		}
	}
	if appRow == nil || appRow[1] != "app" || appRow[2] != "app" || appRow[6] != "idle in transaction" || appRow[7] != "t" || appRow[8] == "" {
		t.Errorf("SHOW CLIENTS: app client (pid %d): %v in %v", appPID, appRow, rows)
	}
	if adminRow == nil || adminRow[2] != ConsoleDB || adminRow[6] != "active" || adminRow[4] != "psql" {
		t.Errorf("SHOW CLIENTS: console client: %v in %v", adminRow, rows)
	}
	if len(appRow) > 9 {
		if ts, err := time.Parse("2006-01-02 15:04:05.999999-07", appRow[9]); err != nil || time.Since(ts) > time.Minute {
			t.Errorf("SHOW CLIENTS: connected_since %q: %v", appRow[9], err)
		}
		if _, _, err := net.SplitHostPort(appRow[3]); err != nil {
			t.Errorf("SHOW CLIENTS: addr %q: %v", appRow[3], err)
		}
	}

	const serversCols = "shard,node,role,user,database,state,server_pid,client_pid,connections"
	rows = run("SHOW SERVERS", serversCols)
	linked := false
	for _, r := range rows {
		if r[7] == strconv.FormatInt(appPID, 10) {
			linked = r[5] == "active" && r[6] == appRow[8] && r[1] == priAddr && r[8] == "1"
		}
	}
	if !linked {
		t.Errorf("SHOW SERVERS: no active server connection linked to client %d: %v", appPID, rows)
	}

	rows = run("SHOW SLOTS", "slot,shard,frozen")
	if len(rows) != 256 || fmt.Sprint(rows[0]) != "[0 shard0 f]" || fmt.Sprint(rows[255]) != "[255 shard0 f]" {
		t.Errorf("SHOW SLOTS: %d rows, first %v", len(rows), rows[:min(len(rows), 1)])
	}
	rows = run("SHOW SLOTS SUMMARY", "shard,slots,ranges")
	if fmt.Sprint(rows) != "[[shard0 256 0-255]]" {
		t.Errorf("SHOW SLOTS SUMMARY: %v", rows)
	}

	const statsCols = "started_at,uptime_seconds,clients,clients_total,clients_refused,queries_total,transactions_total,errors_total,cancels_total,pool_mode,shard_map_version"
	rows = run("SHOW STATS", statsCols)
	if len(rows) != 1 {
		t.Fatalf("SHOW STATS: %v", rows)
	}
	atLeast := func(name string, min int64) {
		t.Helper()
		v, err := strconv.ParseInt(col(rows, statsCols, name)[0], 10, 64)
		if err != nil || v < min {
			t.Errorf("SHOW STATS: %s = %v (%v), want >= %d", name, v, err, min)
		}
	}
	atLeast("clients", 2)
	atLeast("clients_total", 2)
	atLeast("queries_total", 3)
	atLeast("transactions_total", 1)
	if rows[0][9] != "transaction" {
		t.Errorf("SHOW STATS: pool_mode %q", rows[0][9])
	}

	const rebalanceCols = "id,state,phase,move,from,to,slots,slot_ranges,move_phase,rows_copied,rows_total,pause_ms,verified,error"
	rows = run("SHOW REBALANCE", rebalanceCols)
	if fmt.Sprint(rows) != "[[7 done  1 shard0 shard1 4 0-2,7 done 100 100 12.5 t ]]" {
		t.Errorf("SHOW REBALANCE: %v", rows)
	}
	rows = run("SHOW VERSION", "version")
	if fmt.Sprint(rows) != "[[shardproxy e2e]]" {
		t.Errorf("SHOW VERSION: %v", rows)
	}
	rows = run("SHOW HELP", "command,description")
	if len(rows) < 12 {
		t.Errorf("SHOW HELP: %v", rows)
	}
	rows = run("SELECT 1", "?column?")
	if fmt.Sprint(rows) != "[[1]]" {
		t.Errorf("SELECT 1: %v", rows)
	}

	// RELOAD calls the reload function; a failure is an error naming it.
	_, _, out, err := consolePsql(t, srv, "admin", "adminpw", "RELOAD")
	if err != nil || strings.TrimSpace(out) != "RELOAD" || reloads.Load() != 1 {
		t.Errorf("RELOAD: %v, %d reloads, output:\n%s", err, reloads.Load(), out)
	}
	bad := errors.New("config: pool.size: must be at least 1, got 0")
	reloadErr.Store(&bad)
	_, _, out, err = consolePsql(t, srv, "admin", "adminpw", "reload")
	if err == nil || !strings.Contains(out, "reload failed: config: pool.size: must be at least 1") {
		t.Errorf("failed RELOAD: %v, output:\n%s", err, out)
	}

	// Unknown commands name the valid ones.
	_, _, out, err = consolePsql(t, srv, "admin", "adminpw", "SELECT * FROM accounts")
	if err == nil || !strings.Contains(out, "unrecognized shardproxy console command") || !strings.Contains(out, "SHOW SHARDS") {
		t.Errorf("unknown command: %v, output:\n%s", err, out)
	}

	// A non-admin user is refused with 42501, through psql and pgx.
	_, _, out, err = consolePsql(t, srv, "app", "app", "SHOW SHARDS")
	if err == nil || !strings.Contains(out, "user app is not an admin: the shardproxy console needs admin: true in the config") {
		t.Errorf("non-admin psql: %v, output:\n%s", err, out)
	}
	_, err = pgx.Connect(ctx, dsn(srv.Addr(), "app", "app", ConsoleDB, "disable"))
	wantCode(t, err, "42501", "non-admin console login")

	// The console over the extended protocol (pgx prepares statements).
	adm := connectCfg(t, connCfg(t, dsn(srv.Addr(), "admin", "adminpw", ConsoleDB, "disable")))
	var slots int64
	var healthy bool
	if err := adm.QueryRow(ctx, "SHOW SHARDS").Scan(nil, nil, &slots, nil, nil, &healthy); err != nil || slots != 256 || !healthy {
		t.Errorf("pgx SHOW SHARDS: %v, slots %d, healthy %v", err, slots, healthy)
	}

	// The application client was never disturbed.
	mustExec(t, app, "SELECT 1")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, app, "SELECT current_database()"); got != "app" {
		t.Errorf("app client: current_database() = %q", got)
	}
	fresh := connect(t, srv)
	if got := queryString(t, fresh, "SELECT current_user"); got != "app" {
		t.Errorf("new app client: current_user = %q", got)
	}
}

// ConsoleDB is the console's database name.
const ConsoleDB = proxy.ConsoleDatabase
