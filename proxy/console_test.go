package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/config"
)

func TestSlotRanges(t *testing.T) {
	for _, c := range []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{5}, "5"},
		{[]int{0, 1, 2, 3}, "0-3"},
		{[]int{0, 1, 3, 5, 6, 7, 255}, "0-1,3,5-7,255"},
	} {
		if got := admin.SlotRanges(c.in); got != c.want {
			t.Errorf("SlotRanges(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestLookupConsole(t *testing.T) {
	for q, want := range map[string]string{
		"SHOW SHARDS":                "SHOW SHARDS",
		"  show   shards ;  ":        "SHOW SHARDS",
		"Show Slots Summary;;":       "SHOW SLOTS SUMMARY",
		"reload":                     "RELOAD",
		"SELECT 1":                   "SELECT 1",
		"show\trebalance\n":          "SHOW REBALANCE",
		"SHOW VERSION;":              "SHOW VERSION",
		"show help":                  "SHOW HELP",
		"show clients":               "SHOW CLIENTS",
		"SHOW SERVERS":               "SHOW SERVERS",
		"SHOW POOLS":                 "SHOW POOLS",
		"SHOW STATS":                 "SHOW STATS",
		"SHOW REPLICAS":              "SHOW REPLICAS",
		"SHOW SLOTS":                 "SHOW SLOTS",
		"   ;  ":                     "",
		"":                           "",
		"/* not a comment parser */": "!",
		"SHOW DATABASES":             "!",
		"SELECT * FROM t":            "!",
	} {
		cmd, e := lookupConsole(q)
		switch {
		case want == "!":
			if e == nil || e.Code != "42601" || !strings.Contains(e.Hint, "SHOW SHARDS") || !strings.Contains(e.Hint, "RELOAD") {
				t.Errorf("%q: got %v, want 42601 listing the commands", q, e)
			}
		case want == "":
			if cmd != nil || e != nil {
				t.Errorf("%q: got %v %v, want the empty statement", q, cmd, e)
			}
		case e != nil || cmd == nil || cmd.name != want:
			t.Errorf("%q: got %v %v, want %s", q, cmd, e, want)
		}
	}
}

func TestEncodeCell(t *testing.T) {
	ts := time.Date(2000, 1, 1, 0, 0, 1, 500000000, time.UTC)
	for _, c := range []struct {
		v      any
		oid    uint32
		format int16
		want   string
	}{
		{int64(42), oidInt8, 0, "42"},
		{int64(42), oidInt8, 1, "\x00\x00\x00\x00\x00\x00\x00\x2a"},
		{int64(1), oidInt4, 1, "\x00\x00\x00\x01"},
		{true, oidBool, 0, "t"},
		{false, oidBool, 1, "\x00"},
		{0.25, oidFloat8, 0, "0.25"},
		{"x", oidText, 1, "x"},
		{ts, oidTimestamptz, 0, "2000-01-01 00:00:01.5+00"},
		{ts, oidTimestamptz, 1, "\x00\x00\x00\x00\x00\x16\xe3\x60"},
	} {
		if got := string(encodeCell(c.v, c.oid, c.format)); got != c.want {
			t.Errorf("encodeCell(%v, %d, %d) = %q, want %q", c.v, c.oid, c.format, got, c.want)
		}
	}
	if encodeCell(nil, oidText, 0) != nil {
		t.Error("nil must encode as NULL")
	}
}

// consoleServer starts a proxy whose backend does not exist: the console
// must answer everything without it.
func consoleServer(t *testing.T, console Console) *Server {
	t.Helper()
	// A port nothing listens on: any backend connect would fail.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	cfg := &config.Config{
		Listen: "127.0.0.1:0",
		Users: []config.User{
			{Name: "admin", Password: "secret", Admin: true},
			{Name: "app", Password: "app"},
		},
		Pool: config.Pool{Size: 2},
		Shards: []config.Shard{
			{Name: "s0", Primary: "postgres://postgres@" + dead + "/app", Replicas: []string{"postgres://postgres@" + dead + "/app"}},
			{Name: "s1", Primary: "postgres://postgres@" + dead + "/app"},
		},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, Options{Console: console})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-done
	})
	return srv
}

func consoleConnect(t *testing.T, srv *Server, user, password string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s/shardproxy?sslmode=disable", user, password, srv.Addr()))
	if err == nil {
		t.Cleanup(func() { _ = c.Close(context.Background()) })
	}
	return c, err
}

// query runs sql in the given exec mode and returns the column names and
// the rows as text.
func consoleQuery(t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode, sql string) ([]string, [][]string) {
	t.Helper()
	rows, err := c.Query(context.Background(), sql, mode)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var names []string
	for _, f := range rows.FieldDescriptions() {
		names = append(names, f.Name)
	}
	var out [][]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		row := make([]string, len(vals))
		for i, v := range vals {
			if v == nil {
				row[i] = "NULL"
			} else {
				row[i] = fmt.Sprint(v)
			}
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return names, out
}

func TestConsoleCommands(t *testing.T) {
	reloads := 0
	reloadErr := error(nil)
	srv := consoleServer(t, Console{
		Version: "1.2.3",
		Reload:  func() error { reloads++; return reloadErr },
		Rebalance: func(context.Context) (admin.RebalanceStatus, error) {
			return admin.RebalanceStatus{ID: 3, State: "running", Phase: "copy", Moves: []admin.MoveStatus{{
				PlannedMove:  admin.PlannedMove{From: "s0", To: "s1", Slots: []int{3, 1, 2, 9}},
				Phase:        "copy",
				MoveProgress: admin.MoveProgress{RowsCopied: 10, RowsTotal: 20},
			}}}, nil
		},
	})
	c, err := consoleConnect(t, srv, "admin", "secret")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			names, rows := consoleQuery(t, c, mode, "show shards")
			if strings.Join(names, ",") != "name,state,slots,primary,replicas,primary_healthy" || len(rows) != 2 ||
				rows[0][0] != "s0" || rows[0][2] != "128" || rows[0][4] != "1" || rows[1][0] != "s1" || rows[1][4] != "0" {
				t.Errorf("SHOW SHARDS: %v %v", names, rows)
			}
			_, rows = consoleQuery(t, c, mode, "SHOW SLOTS")
			if len(rows) != 256 || rows[0][1] != "s0" || rows[255][1] != "s1" || rows[0][2] != "false" {
				t.Errorf("SHOW SLOTS: %d rows, first %v", len(rows), rows[0])
			}
			_, rows = consoleQuery(t, c, mode, "SHOW SLOTS SUMMARY;")
			if fmt.Sprint(rows) != "[[s0 128 0-127] [s1 128 128-255]]" {
				t.Errorf("SHOW SLOTS SUMMARY: %v", rows)
			}
			_, rows = consoleQuery(t, c, mode, "SHOW REPLICAS")
			if len(rows) != 1 || rows[0][0] != "s0" || rows[0][2] != "NULL" {
				t.Errorf("SHOW REPLICAS: %v", rows)
			}
			names, rows = consoleQuery(t, c, mode, "SHOW CLIENTS")
			if len(rows) != 1 || rows[0][1] != "admin" || rows[0][2] != "shardproxy" || rows[0][6] != "active" || names[9] != "connected_since" {
				t.Errorf("SHOW CLIENTS: %v %v", names, rows)
			}
			_, rows = consoleQuery(t, c, mode, "SHOW POOLS")
			if len(rows) != 0 {
				t.Errorf("SHOW POOLS: %v (no pool was used)", rows)
			}
			_, rows = consoleQuery(t, c, mode, "SHOW SERVERS")
			if len(rows) != 0 {
				t.Errorf("SHOW SERVERS: %v", rows)
			}
			names, rows = consoleQuery(t, c, mode, "SHOW STATS")
			if len(rows) != 1 || names[2] != "clients" || rows[0][2] != "1" || rows[0][9] != "transaction" {
				t.Errorf("SHOW STATS: %v %v", names, rows)
			}
			_, rows = consoleQuery(t, c, mode, "SHOW REBALANCE")
			if len(rows) != 1 || fmt.Sprint(rows[0][:11]) != "[3 running copy 1 s0 s1 4 1-3,9 copy 10 20]" {
				t.Errorf("SHOW REBALANCE: %v", rows)
			}
			_, rows = consoleQuery(t, c, mode, "SHOW VERSION")
			if fmt.Sprint(rows) != "[[shardproxy 1.2.3]]" {
				t.Errorf("SHOW VERSION: %v", rows)
			}
			_, rows = consoleQuery(t, c, mode, "SELECT 1")
			if fmt.Sprint(rows) != "[[1]]" {
				t.Errorf("SELECT 1: %v", rows)
			}
			var n int64
			var healthy *bool
			var since time.Time
			if err := c.QueryRow(context.Background(), "SHOW SHARDS", mode).Scan(new(string), new(string), &n, new(string), new(int64), &healthy); err != nil || n != 128 || healthy != nil {
				t.Errorf("scan SHOW SHARDS: %v %d %v", err, n, healthy)
			}
			if err := c.QueryRow(context.Background(), "SHOW STATS", mode).Scan(&since, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil); err != nil || time.Since(since) > time.Minute {
				t.Errorf("scan SHOW STATS: %v %v", err, since)
			}
			_, err := c.Exec(context.Background(), "SHOW DATABASES", mode)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42601" || !strings.Contains(pe.Hint, "SHOW REBALANCE") {
				t.Errorf("unknown command: %v", err)
			}
			before := reloads
			tag, err := c.Exec(context.Background(), "RELOAD", mode)
			if err != nil || tag.String() != "RELOAD" || reloads != before+1 {
				t.Errorf("RELOAD: %v %q (%d reloads)", err, tag, reloads-before)
			}
			reloadErr = errors.New("users[0].password: is required")
			_, err = c.Exec(context.Background(), "reload;", mode)
			reloadErr = nil
			if !errors.As(err, &pe) || pe.Code != "F0000" || !strings.Contains(pe.Message, "users[0].password") {
				t.Errorf("failed RELOAD: %v", err)
			}
			// The session is still usable after errors.
			if _, rows := consoleQuery(t, c, mode, "SHOW VERSION"); len(rows) != 1 {
				t.Errorf("after errors: %v", rows)
			}
		})
	}
	// Several statements in one simple query, and the empty query.
	res, err := c.PgConn().Exec(context.Background(), "SHOW VERSION; SELECT 1;").ReadAll()
	if err != nil || len(res) != 2 || string(res[1].Rows[0][0]) != "1" {
		t.Errorf("two statements: %v %v", res, err)
	}
	if _, err := c.PgConn().Exec(context.Background(), "  ").ReadAll(); err != nil {
		t.Errorf("empty query: %v", err)
	}
	// An error stops the rest of a multi-statement query.
	before := reloads
	if _, err := c.PgConn().Exec(context.Background(), "SHOW NOTHING; RELOAD").ReadAll(); err == nil || reloads != before {
		t.Errorf("error then RELOAD: %v, %d reloads", err, reloads-before)
	}
}

func TestConsoleWithoutSources(t *testing.T) {
	srv := consoleServer(t, Console{})
	c, err := consoleConnect(t, srv, "admin", "secret")
	if err != nil {
		t.Fatal(err)
	}
	var pe *pgconn.PgError
	_, err = c.Exec(context.Background(), "RELOAD")
	if !errors.As(err, &pe) || pe.Code != "0A000" || pe.Message != "reload is not available" {
		t.Errorf("RELOAD without Reload: %v", err)
	}
	_, err = c.Exec(context.Background(), "SHOW REBALANCE")
	if !errors.As(err, &pe) || pe.Code != "0A000" {
		t.Errorf("SHOW REBALANCE without Rebalance: %v", err)
	}
	if _, rows := consoleQuery(t, c, pgx.QueryExecModeSimpleProtocol, "SHOW VERSION"); fmt.Sprint(rows) != "[[shardproxy (devel)]]" {
		t.Errorf("SHOW VERSION: %v", rows)
	}
}

func TestConsoleShardsFromSources(t *testing.T) {
	lag := uint64(4096)
	secs := 1.5
	srv := consoleServer(t, Console{
		Shards: func(context.Context) ([]admin.ShardInfo, error) {
			return []admin.ShardInfo{{Name: "s0", State: "draining", Slots: 100, Primary: "10.0.0.1:5432", Replicas: []string{"10.0.0.2:5432"}}}, nil
		},
		Nodes: func() []admin.ShardStatus {
			return []admin.ShardStatus{{Name: "s0", Primary: admin.NodeStatus{Addr: "10.0.0.1:5432", Healthy: true},
				Replicas: []admin.NodeStatus{{Addr: "10.0.0.2:5432", Healthy: false, LagBytes: &lag, LagSeconds: &secs, Outstanding: 2, Served: 7, LastError: "timeout"}}}}
		},
	})
	c, err := consoleConnect(t, srv, "admin", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if _, rows := consoleQuery(t, c, pgx.QueryExecModeSimpleProtocol, "SHOW SHARDS"); fmt.Sprint(rows) != "[[s0 draining 100 10.0.0.1:5432 1 true]]" {
		t.Errorf("SHOW SHARDS: %v", rows)
	}
	if _, rows := consoleQuery(t, c, pgx.QueryExecModeSimpleProtocol, "SHOW REPLICAS"); fmt.Sprint(rows) != "[[s0 10.0.0.2:5432 false 4096 1.5 2 7 timeout]]" {
		t.Errorf("SHOW REPLICAS: %v", rows)
	}
	// ErrConsoleUnavailable falls back to the proxy's own view.
	srv2 := consoleServer(t, Console{Shards: func(context.Context) ([]admin.ShardInfo, error) {
		return nil, fmt.Errorf("orchestrator: %w", ErrConsoleUnavailable)
	}})
	c2, err := consoleConnect(t, srv2, "admin", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if _, rows := consoleQuery(t, c2, pgx.QueryExecModeSimpleProtocol, "SHOW SHARDS"); len(rows) != 2 || rows[0][1] != "active" {
		t.Errorf("SHOW SHARDS fallback: %v", rows)
	}
}

func TestConsoleRefusesNonAdmin(t *testing.T) {
	srv := consoleServer(t, Console{})
	_, err := consoleConnect(t, srv, "app", "app")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != CodeInsufficientPrivilege || pe.Severity != "FATAL" ||
		pe.Message != "user app is not an admin: the shardproxy console needs admin: true in the config" {
		t.Fatalf("non-admin: %v", err)
	}
	// A wrong password is a wrong password, admin or not.
	_, err = consoleConnect(t, srv, "admin", "wrong")
	if !errors.As(err, &pe) || pe.Code != "28P01" {
		t.Fatalf("wrong password: %v", err)
	}
}

// TestConsoleShutdown: an idle console client is told the proxy shuts down.
func TestConsoleShutdown(t *testing.T) {
	srv := consoleServer(t, Console{})
	c, err := consoleConnect(t, srv, "admin", "secret")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v with an idle console client", d)
	}
	if _, err := c.Exec(context.Background(), "SHOW VERSION"); err == nil {
		t.Error("console still answering after shutdown")
	}
}
