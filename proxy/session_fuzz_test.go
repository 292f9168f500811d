package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/localcluster"
)

// Fuzzed client streams start in one of these states.
const (
	fuzzRaw     = iota // the first byte on the socket: startup, SSL, cancel or junk
	fuzzApp            // after a trust login to the application database
	fuzzConsole        // after a trust login to the admin console
	fuzzStates
)

var (
	fuzzOnce sync.Once
	fuzzSrv  *Server
)

// fuzzServer is one proxy per fuzzing process over a real 2-shard
// cluster (no replicas), so fuzzed streams reach every state: startup and
// authentication, the extended protocol, routing of bound parameters,
// single- and multi-shard statements, COPY and the console. The servers
// end any statement within a second (the role's statement_timeout), so a
// session still running after the client closed means the proxy hung.
func fuzzServer(f *testing.F) *Server {
	if testing.Short() {
		f.Skip("fuzzes a proxy over real PostgreSQL servers; skipped with -short")
	}
	fuzzOnce.Do(func() {
		cl := localcluster.StartForTest(f, localcluster.Options{Shards: 2})
		cfg := &config.Config{
			Listen: "127.0.0.1:0",
			Users: []config.User{
				{Name: "fuzz", Auth: "trust", ServerUser: localcluster.AppUser, ServerPassword: localcluster.AppPassword},
				{Name: "fuzzadmin", Auth: "trust", Admin: true},
			},
			Pool:     config.Pool{Size: 4, WaitTimeout: config.Duration(2 * time.Second)},
			Sharding: config.Sharding{Tables: []config.ShardedTable{{Name: "t", Key: "id"}, {Name: "u", Key: "name"}}},
		}
		for _, name := range cl.ShardNames() {
			pri := cl.Primary(name)
			cfg.Shards = append(cfg.Shards, config.Shard{Name: name, Primary: pri.DSN(localcluster.AppDatabase)})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c, err := pgx.Connect(ctx, pri.DSN(localcluster.AppDatabase))
			if err == nil {
				_, err = c.Exec(ctx, `ALTER ROLE app SET statement_timeout = '1s';
					ALTER ROLE app SET lock_timeout = '1s';
					CREATE TABLE IF NOT EXISTS t (id bigint PRIMARY KEY, v text);
					CREATE TABLE IF NOT EXISTS u (name text PRIMARY KEY, v text);
					GRANT ALL ON t, u TO app`)
				_ = c.Close(ctx)
			}
			cancel()
			if err != nil {
				f.Fatalf("prepare %s: %v", name, err)
			}
		}
		cfg.SetDefaults()
		if err := cfg.Validate(); err != nil {
			f.Fatal(err)
		}
		srv, err := New(cfg, Options{})
		if err != nil {
			f.Fatal(err)
		}
		if err := srv.Listen(); err != nil {
			f.Fatal(err)
		}
		go func() { _ = srv.Serve() }()
		f.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		})
		fuzzSrv = srv
	})
	return fuzzSrv
}

func startupBytes(params map[string]string) []byte {
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params}).Encode(nil)
	if err != nil {
		panic(err)
	}
	return b
}

func encodeAll(msgs ...pgproto3.FrontendMessage) []byte {
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			panic(err)
		}
	}
	return out
}

// FuzzSession sends arbitrary bytes to a live proxy, before startup or
// after a login: the session must answer or close, never panic (a panic
// in a session goroutine kills the fuzzing process) and never hang once
// the client has sent everything and closed its side.
func FuzzSession(f *testing.F) {
	srv := fuzzServer(f)
	i32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	seeds := []struct {
		state byte
		in    []byte
	}{
		{fuzzRaw, startupBytes(map[string]string{"user": "fuzz", "database": "app"})},
		{fuzzRaw, startupBytes(map[string]string{"user": "app", "database": "app"})},
		{fuzzRaw, startupBytes(map[string]string{"user": "nobody"})},
		{fuzzRaw, append(i32(8), i32(80877103)...)},                                  // SSLRequest
		{fuzzRaw, append(i32(8), i32(80877104)...)},                                  // GSSENCRequest
		{fuzzRaw, append(append(i32(16), i32(80877102)...), 0, 0, 0, 1, 0, 0, 0, 2)}, // CancelRequest
		{fuzzRaw, append(append(i32(9), i32(3<<16)...), 0)},                          // empty parameters
		{fuzzRaw, append(i32(2000), []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")...)}, // not PostgreSQL
		{fuzzApp, encodeAll(&pgproto3.Query{String: "SELECT 1"})},
		{fuzzApp, encodeAll(&pgproto3.Query{String: "BEGIN; SELECT * FROM t WHERE id = 1; COMMIT"})},
		{fuzzApp, encodeAll(&pgproto3.Query{String: "SET shardproxy.shard = 'shard1'; SHOW shardproxy.shard"})},
		{fuzzApp, encodeAll(&pgproto3.Query{String: "/* shardproxy.shard: shard0' ; DROP TABLE t; -- */ SELECT 1"})},
		{fuzzApp, encodeAll(&pgproto3.Query{String: "COPY t (id, v) FROM STDIN"}, &pgproto3.CopyData{Data: []byte("1\ta\n2\tb\n")}, &pgproto3.CopyDone{})},
		{fuzzApp, encodeAll(&pgproto3.Query{String: "COPY t FROM STDIN (FORMAT csv)"}, &pgproto3.CopyData{Data: []byte("1,\"a\n")}, &pgproto3.CopyFail{Message: "stop"})},
		{fuzzApp, encodeAll(
			&pgproto3.Parse{Name: "p", Query: "SELECT * FROM t WHERE id = $1", ParameterOIDs: []uint32{20}},
			&pgproto3.Bind{PreparedStatement: "p", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 0, 0, 0, 0, 7}}},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})},
		{fuzzApp, encodeAll(
			&pgproto3.Parse{Query: "INSERT INTO u (name, v) VALUES ($1, $2), ($3, $4)"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("ann"), nil, []byte("bob"), []byte("x")}},
			&pgproto3.Execute{MaxRows: 1}, &pgproto3.Flush{}, &pgproto3.Close{ObjectType: 'S', Name: ""}, &pgproto3.Sync{})},
		{fuzzApp, encodeAll(&pgproto3.Parse{Name: "a", Query: "BEGIN"}, &pgproto3.Parse{Name: "a", Query: "SELECT 2"}, &pgproto3.Sync{}, &pgproto3.Terminate{})},
		{fuzzApp, encodeAll(&pgproto3.FunctionCall{Function: 1}, &pgproto3.Query{String: ""})},
		{fuzzApp, encodeAll(&pgproto3.Query{String: "SELECT count(*), max(v) FROM t GROUP BY v ORDER BY 1 LIMIT 3"})},
		{fuzzConsole, encodeAll(&pgproto3.Query{String: "SHOW POOLS; SHOW CLIENTS; SHOW SHARDS; SHOW HELP"})},
		{fuzzConsole, encodeAll(&pgproto3.Parse{Query: "SHOW STATS"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})},
	}
	for _, s := range seeds {
		f.Add(s.state, s.in)
	}
	prefixes := [fuzzStates][]byte{
		fuzzApp:     startupBytes(map[string]string{"user": "fuzz", "database": "app", "application_name": "fuzz"}),
		fuzzConsole: startupBytes(map[string]string{"user": "fuzzadmin", "database": ConsoleDatabase}),
	}
	f.Fuzz(func(t *testing.T, state byte, in []byte) {
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Whatever the input, the proxy must be done with it well within
		// this: every server statement ends within a second.
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		// The first 9 bytes of the answer are kept: after a login prefix
		// they must be AuthenticationOk, or the fuzz is not reaching the
		// state it claims to.
		var head []byte
		drained := make(chan error, 1)
		go func() {
			buf := make([]byte, 9)
			n, err := io.ReadFull(c, buf)
			head = buf[:n]
			if err == nil {
				_, err = io.Copy(io.Discard, c)
			}
			drained <- err
		}()
		payload := append(append([]byte(nil), prefixes[state%fuzzStates]...), in...)
		if _, err := c.Write(payload); err != nil {
			return // the proxy closed first: it refused the input
		}
		_ = c.(*net.TCPConn).CloseWrite()
		// A reset is fine (the proxy closed with input unread: how a
		// refused client sees it); a timeout means the session hung.
		var ne net.Error
		if err := <-drained; errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("proxy did not finish the session within 10 s: %v", err)
		}
		if state%fuzzStates != fuzzRaw && string(head) != "R\x00\x00\x00\x08\x00\x00\x00\x00" {
			t.Fatalf("login prefix not accepted: %q", head)
		}
	})
}
