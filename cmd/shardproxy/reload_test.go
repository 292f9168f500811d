package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/config"
)

// syncBuffer collects the proxy's log while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	os.Stderr.Write(p)
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDevLogged runs `shardproxy dev` with two shards and no replicas,
// keeping its log, and returns the process, the config path and the app URL.
func startDevLogged(t *testing.T, bin, dir, listen, adminAddr string) (cmd *exec.Cmd, cfgPath string, log *syncBuffer) {
	t.Helper()
	cmd = exec.Command(bin, "dev", "--dir", dir, "--shards", "2", "--replicas", "0", "--listen", listen, "--admin", adminAddr)
	log = &syncBuffer{}
	cmd.Stderr = log
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		path := ""
		for sc.Scan() {
			switch l := sc.Text(); {
			case strings.HasPrefix(l, "config "):
				path = strings.TrimPrefix(l, "config ")
			case strings.HasPrefix(l, "ready "):
				found <- path
			}
		}
		close(found)
	}()
	select {
	case cfgPath = <-found:
	case <-time.After(60 * time.Second):
		t.Fatal("no ready line within 60 s")
	}
	if cfgPath == "" {
		t.Fatal("shardproxy dev exited or printed no config line before ready")
	}
	return cmd, cfgPath, log
}

// TestReload changes the config file of a running `shardproxy dev` and
// reloads it with shardctl reload and SIGHUP: a connected session stays
// connected and usable throughout, a user added to the file logs in, the
// new pool size is in force, and a broken file or one that changes the
// listen address is refused with the field named and changes nothing.
func TestReload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers; skipped with -short")
	}
	proxyBin, ctlBin := buildBinaries(t)
	dir, err := os.MkdirTemp("", "shardproxy-reload-test-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755) // the postgres OS user must reach the data dirs
	t.Cleanup(func() { os.RemoveAll(dir) })
	listen, adminAddr := freeAddr(t), freeAddr(t)
	proc, cfgPath, log := startDevLogged(t, proxyBin, dir, listen, adminAddr)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := func(user, pass string) string {
		return "postgres://" + user + ":" + pass + "@" + listen + "/app?sslmode=disable"
	}
	login := func(user, pass string) error {
		c, err := pgx.Connect(ctx, url(user, pass))
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		var who string
		if err := c.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil {
			return err
		}
		if who != "app" {
			t.Errorf("%s logged in to the servers as %q, want app (server_user)", user, who)
		}
		return nil
	}
	// The session that must survive every reload, with a transaction
	// open across the first one.
	held, err := pgx.Connect(ctx, url("app", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)
	usable := func(when string) {
		t.Helper()
		var n int
		if err := held.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
			t.Fatalf("connected session %s: %d, %v", when, n, err)
		}
	}
	usable("before the reload")
	tx, err := held.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "CREATE TEMP TABLE IF NOT EXISTS reload_t (x int)"); err != nil {
		t.Fatal(err)
	}

	ctl := func(args ...string) (int, string) {
		out, err := exec.Command(ctlBin, append([]string{"--admin", adminAddr}, args...)...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, string(out)
	}
	poolMax := func() int {
		st, err := (&admin.Client{Addr: adminAddr}).Status(ctx)
		if err != nil || len(st.Pools) == 0 {
			t.Fatalf("status: %+v, %v", st, err)
		}
		return st.Pools[0].MaxSize
	}
	orig, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	write := func(c *config.Config) []byte {
		t.Helper()
		raw, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		return raw
	}
	if max := poolMax(); max != cfg.Pool.Size {
		t.Fatalf("pool max %d before the reload, config says %d", max, cfg.Pool.Size)
	}

	// 1. shardctl reload: a new user and a smaller pool.
	if err := login("bob", "bob"); err == nil {
		t.Fatal("bob logs in before being added")
	}
	cfg.Users = append(cfg.Users, config.User{Name: "bob", Password: "bob", Auth: "scram-sha-256", ServerUser: "app", ServerPassword: "app"})
	cfg.Pool.Size = 7
	good := write(cfg)
	code, out := ctl("reload")
	if code != 0 || !strings.Contains(out, "users: added bob") || !strings.Contains(out, "pool.size: 20 -> 7") {
		t.Fatalf("shardctl reload: exit %d\n%s", code, out)
	}
	if err := login("bob", "bob"); err != nil {
		t.Fatalf("bob after the reload: %v", err)
	}
	if max := poolMax(); max != 7 {
		t.Errorf("pool max %d after the reload, want 7", max)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO reload_t VALUES (1)"); err != nil {
		t.Fatalf("transaction open across the reload: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit across the reload: %v", err)
	}
	usable("after the reload")

	// 2. Broken files are refused with the field named; nothing changes.
	bad := cfg.Clone()
	bad.Pool.Size = -3
	bad.Users = bad.Users[:1] // would remove bob, were it applied
	write(bad)
	code, out = ctl("reload")
	if code != 1 || !strings.Contains(out, "pool.size: must be at least 1, got -3") || !strings.Contains(out, "unchanged") {
		t.Errorf("reload of an invalid pool size: exit %d\n%s", code, out)
	}
	if err := os.WriteFile(cfgPath, append(append([]byte(nil), good...), "bogus_key: 1\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = ctl("reload")
	if code != 1 || !strings.Contains(out, "field bogus_key not found") {
		t.Errorf("reload with an unknown key: exit %d\n%s", code, out)
	}
	moved := cfg.Clone()
	moved.Listen = freeAddr(t)
	moved.Pool.Size = 3
	write(moved)
	code, out = ctl("reload")
	if code != 1 || !strings.Contains(out, "restart the proxy to change listen") {
		t.Errorf("reload of a new listen address: exit %d\n%s", code, out)
	}
	if max := poolMax(); max != 7 {
		t.Errorf("pool max %d after refused reloads, want 7 still", max)
	}
	if err := login("bob", "bob"); err != nil {
		t.Errorf("bob after refused reloads: %v", err)
	}
	if err := login("app", "app"); err != nil {
		t.Errorf("app after refused reloads: %v", err)
	}
	if !strings.Contains(log.String(), "config reload refused; the running config stays") {
		t.Error("no log line for the refused reloads")
	}
	usable("after the refused reloads")

	// 3. SIGHUP reloads the same way.
	cfg.Users = append(cfg.Users, config.User{Name: "carol", Password: "carol", Auth: "md5", ServerUser: "app", ServerPassword: "app"})
	write(cfg)
	if err := proc.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), "source=SIGHUP") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged after SIGHUP:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(log.String(), `config reloaded" source=SIGHUP`) {
		t.Errorf("SIGHUP reload not applied:\n%s", log.String())
	}
	if err := login("carol", "carol"); err != nil {
		t.Errorf("carol after SIGHUP: %v", err)
	}
	usable("after SIGHUP")
	if proc.ProcessState != nil {
		t.Fatal("the proxy exited")
	}

	// Reloading the original file puts everything back.
	if err := os.WriteFile(cfgPath, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := ctl("reload"); code != 0 || !strings.Contains(out, "users: removed bob, carol") {
		t.Errorf("reload of the original file: exit %d\n%s", code, out)
	}
	if err := login("bob", "bob"); err == nil {
		t.Error("bob still logs in after being removed")
	}
	usable("at the end")
}
