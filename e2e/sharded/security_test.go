package sharded

import (
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/devcert"
	"github.com/shardproxy/shardproxy/localcluster"
)

// TestPasswordsNeverLogged runs logins that succeed and fail (SCRAM and
// md5), statements, a dead node whose DSN carries a password and a reload
// that changes passwords, all with the debug log and the statement log on,
// and checks no configured password appears in the log.
func TestPasswordsNeverLogged(t *testing.T) {
	secrets := []string{"Client-Scram-pw-7f3a", "Client-Md5-pw-19cc", "Dsn-pw-55c1", "Reloaded-pw-e042"}
	dead := deadAddr(t)
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := startProxyLog(t, 2, func(c *config.Config) {
		c.Log.Statements = true
		c.Users = append(c.Users,
			config.User{Name: "sec", Password: secrets[0], ServerUser: localcluster.AppUser, ServerPassword: localcluster.AppPassword},
			config.User{Name: "secmd5", Password: secrets[1], Auth: "md5", ServerUser: localcluster.AppUser, ServerPassword: localcluster.AppPassword})
		c.Shards = append(c.Shards, config.Shard{Name: "deadshard", Primary: "postgres://postgres:" + secrets[2] + "@" + dead + "/app?sslmode=disable&connect_timeout=1"})
	}, log)
	dsn := func(user, pw string) string {
		return strings.Replace(appDSN(srv), localcluster.AppUser+":"+localcluster.AppPassword+"@", user+":"+pw+"@", 1)
	}
	for _, u := range []struct{ user, pw string }{{"sec", secrets[0]}, {"secmd5", secrets[1]}} {
		c := connectDSN(t, dsn(u.user, u.pw))
		mustExec(t, c, "SELECT 1")
		_, err := c.Exec(ctxT(t, 10*time.Second), "/* shardproxy: shard=deadshard */ SELECT 1")
		if err == nil {
			t.Fatal("a statement on a dead shard succeeded")
		}
		for _, wrong := range []string{u.pw + "x", secrets[3]} {
			if c, err := pgx.Connect(ctxT(t, 10*time.Second), dsn(u.user, wrong)); err == nil {
				_ = c.Close(ctxT(t, time.Second))
				t.Fatalf("%s logged in with a wrong password", u.user)
			} else if pgCode(err) != "28P01" {
				t.Fatalf("%s with a wrong password: %v, want 28P01", u.user, err)
			}
		}
	}
	next := srv.Config().Clone()
	for i := range next.Users {
		if next.Users[i].Name == "sec" {
			next.Users[i].Password = secrets[3]
		}
	}
	if _, err := srv.ApplyConfig(next); err != nil {
		t.Fatalf("reload: %v", err)
	}
	mustExec(t, connectDSN(t, dsn("sec", secrets[3])), "SELECT 1")
	out := buf.String()
	if !strings.Contains(out, "deadshard") || !strings.Contains(out, "msg=statement") {
		t.Fatalf("the log does not show the test's events (dead shard, statements), so it proves nothing:\n%s", out)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("password %q appears in the log", s)
		}
	}
}

// TestHintsNeverSpliced: routing hints and shardproxy.shard name a shard;
// text that tries to break out of them is refused as an unknown shard and
// nothing of it runs.
func TestHintsNeverSpliced(t *testing.T) {
	srv := startProxy(t, 2, nil)
	c := connect(t, srv)
	mustExec(t, c, "DROP TABLE IF EXISTS hint_victim")
	mustExec(t, c, "CREATE TABLE hint_victim (id int)") // an unsharded table: on the default shard
	const exists = "SELECT count(*) FROM pg_tables WHERE tablename = 'hint_victim'"
	before := joinInts(onShards(t, 2, exists))
	for _, q := range []string{
		"/* shardproxy: shard=shard0'; DROP TABLE hint_victim; -- */ SELECT 1",
		"/* shardproxy: shard=shard0; DROP TABLE hint_victim */ SELECT 1",
		"SET shardproxy.shard = 'shard0''; DROP TABLE hint_victim; --'",
	} {
		_, err := c.Exec(ctxT(t, 10*time.Second), q, pgx.QueryExecModeSimpleProtocol)
		wantCode(t, err, "22023", q)
		if !strings.Contains(err.Error(), "shard0'; DROP TABLE") && !strings.Contains(err.Error(), "no shard named") {
			t.Fatalf("%s: %v; want the whole text refused as a shard name", q, err)
		}
	}
	if after := joinInts(onShards(t, 2, exists)); after != before || before == "0,0" {
		t.Fatalf("hint_victim on each shard: %s before the hints, %s after", before, after)
	}
}

// TestTLS: clients get TLS 1.2 or later only; each node's sslmode is the
// proxy's to honor: verify-full against a server whose certificate the
// configured root signed works and really is TLS, a wrong root is refused.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM, err := devcert.New("shardproxy-test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("clients TLS 1.2+", func(t *testing.T) {
		srv := startProxy(t, 1, func(c *config.Config) { c.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile} })
		for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
			if err := tlsHandshake(srv.Addr(), v); err == nil {
				t.Fatalf("a TLS %x client completed the handshake", v)
			}
		}
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			if err := tlsHandshake(srv.Addr(), v); err != nil {
				t.Fatalf("TLS %x: %v", v, err)
			}
		}
		c := connectDSN(t, strings.Replace(appDSN(srv), "sslmode=disable", "sslmode=require", 1))
		if _, ok := c.PgConn().Conn().(*tls.Conn); !ok {
			t.Fatal("sslmode=require connection is not TLS")
		}
	})

	t.Run("server sslmode per node", func(t *testing.T) {
		// The second shard's node gets TLS: the first stays plain, so the
		// proxy's own metadata connection is not what is being tested.
		name := shardNames()[1]
		pri := cluster.Primary(name)
		su := connectShard(t, name)
		var dataDir string
		if err := su.QueryRow(ctxT(t, 10*time.Second), "SHOW data_directory").Scan(&dataDir); err != nil {
			t.Fatal(err)
		}
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("no postgres OS user to own the server key: %v", err)
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		for f, b := range map[string][]byte{"test_server.crt": certPEM, "test_server.key": keyPEM} {
			p := filepath.Join(dataDir, f)
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if os.Getuid() == 0 {
				if err := os.Chown(p, uid, gid); err != nil {
					t.Fatal(err)
				}
			}
		}
		mustExec(t, su, "ALTER SYSTEM SET ssl_cert_file = 'test_server.crt'")
		mustExec(t, su, "ALTER SYSTEM SET ssl_key_file = 'test_server.key'")
		mustExec(t, su, "ALTER SYSTEM SET ssl = on")
		mustExec(t, su, "SELECT pg_reload_conf()")
		t.Cleanup(func() {
			c := connectShard(t, name)
			mustExec(t, c, "ALTER SYSTEM RESET ssl")
			mustExec(t, c, "ALTER SYSTEM RESET ssl_cert_file")
			mustExec(t, c, "ALTER SYSTEM RESET ssl_key_file")
			mustExec(t, c, "SELECT pg_reload_conf()")
		})
		time.Sleep(300 * time.Millisecond) // the postmaster rereads its config asynchronously
		base := "postgres://postgres@" + net.JoinHostPort("localhost", strconv.Itoa(pri.Port)) + "/app"
		good := startProxy(t, 2, func(c *config.Config) {
			c.Shards[1].Primary = base + "?sslmode=verify-full&sslrootcert=" + certFile
		})
		var ssl bool
		var version string
		if err := connect(t, good).QueryRow(ctxT(t, 10*time.Second), "/* shardproxy: shard="+name+" */ SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version); err != nil {
			t.Fatalf("through a verify-full node: %v", err)
		}
		if !ssl {
			t.Fatal("the proxy's server connection is not TLS under sslmode=verify-full")
		}
		t.Logf("proxy to server: TLS %s", version)

		otherPEM, _, err := devcert.New("someone-else", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		otherCA := filepath.Join(dir, "other.pem")
		if err := os.WriteFile(otherCA, otherPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		bad := startProxy(t, 2, func(c *config.Config) {
			c.Shards[1].Primary = base + "?sslmode=verify-full&sslrootcert=" + otherCA
		})
		_, err = connect(t, bad).Exec(ctxT(t, 10*time.Second), "/* shardproxy: shard="+name+" */ SELECT 1")
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("a server certificate from an unknown root: %v, want a certificate error", err)
		}
		t.Logf("wrong root: %v", err)
	})
}

// tlsHandshake asks the proxy for TLS (SSLRequest) and completes a
// handshake capped at version max.
func tlsHandshake(addr string, max uint16) error {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := nc.Read(b); err != nil || b[0] != 'S' {
		return err
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: max}) //nolint:gosec // the test offers old versions on purpose
	return tc.Handshake()
}

// deadAddr is a local port nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
