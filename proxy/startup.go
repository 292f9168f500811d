package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/auth"
	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/rawsock"
	"github.com/shardproxy/shardproxy/router"
	"github.com/shardproxy/shardproxy/wire"
)

// Startup packet codes (the first 4 bytes after the length).
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protocol30        = 3 << 16
	maxStartupLen     = 10000 // MAX_STARTUP_PACKET_LENGTH in PostgreSQL
	startupTimeout    = 30 * time.Second
)

// startupParamsNotSettings are startup keys that are not session settings.
var startupParamsNotSettings = map[string]bool{
	"user": true, "database": true, "replication": true, "options": true,
}

// serveConn runs one client connection from its first byte to its close.
func (s *Server) serveConn(nc net.Conn) {
	defer nc.Close()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	nc = rawsock.Wrap(nc)
	// The write buffer comes from a shared pool while there is something
	// to send (session.run releases it before waiting on the client), so
	// an idle client costs no write buffer. The read buffer is 8 kB, twice
	// PgBouncer's pkt_buf: client messages are mostly small, and a larger
	// one is read straight into its own buffer, not copied twice.
	ss := &session{srv: s, conn: nc, r: wire.NewReader(nc, 8<<10), w: wire.NewWriter(nc, 0)}
	ss.r.SetMaxMessage(int(s.Config().Limits.MaxMessageSize))
	defer func() {
		// The last line of defence for the startup, login and console
		// paths (a session's own run has a finer one that also closes its
		// server connections): a bug costs this client, not the proxy.
		if r := recover(); r != nil {
			s.log.Error("BUG: client connection panicked", "remote", nc.RemoteAddr(), "panic", r, "stack", string(debug.Stack()))
			ss.fatal(wire.Fatalf(wire.CodeInternalError, "shardproxy internal error: %v", r).
				WithHint("This is a bug in shardproxy; the connection was closed."))
		}
	}()
	_ = nc.SetDeadline(time.Now().Add(startupTimeout))
	startup, err := ss.readStartup()
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, errHandled) {
			s.log.Debug("client startup failed", "remote", nc.RemoteAddr(), "err", err)
		}
		return
	}
	if startup == nil { // a CancelRequest: nothing more on this socket
		return
	}
	n := s.clients.Add(1)
	defer s.clients.Add(-1)
	if int(n) > s.Config().MaxClientConn {
		s.refuse("too_many_clients")
		ss.fatal(wire.Fatalf(wire.CodeTooManyConnections, "sorry, too many clients already").
			WithDetail(fmt.Sprintf("max_client_conn is %d", s.Config().MaxClientConn)))
		return
	}
	if s.shutting.Load() {
		ss.fatal(wire.Fatalf(wire.CodeCannotConnectNow, "the proxy is shutting down"))
		return
	}
	s.register(ss)
	defer s.unregister(ss)
	if err := ss.login(startup); err != nil {
		var pe *wire.Error
		if errors.As(err, &pe) {
			ss.fatal(pe)
		} else {
			s.log.Debug("client login failed", "remote", nc.RemoteAddr(), "err", err)
		}
		return
	}
	if s.hooks.ClientConnected != nil {
		s.hooks.ClientConnected()
	}
	if s.hooks.ClientDisconnected != nil {
		defer s.hooks.ClientDisconnected()
	}
	_ = nc.SetDeadline(time.Time{})
	defer s.trackClient(ss, startup)()
	if ss.database == ConsoleDatabase {
		ss.runConsole()
		return
	}
	ss.run()
}

func (s *Server) refuse(reason string) {
	if s.hooks.ClientRefused != nil {
		s.hooks.ClientRefused(reason)
	}
}

// errHandled means the failure was already reported to the client.
var errHandled = errors.New("reported to client")

// readStartup handles SSLRequest, GSSENCRequest and CancelRequest and
// returns the StartupMessage, or nil after a cancel.
func (ss *session) readStartup() (*pgproto3.StartupMessage, error) {
	tlsDone := false
	for {
		body, err := ss.r.ReadStartup(maxStartupLen)
		if err != nil {
			return nil, err
		}
		code := binary.BigEndian.Uint32(body[:4])
		switch {
		case code == codeSSLRequest:
			if ss.srv.tls == nil || tlsDone {
				if _, err := ss.conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			// Bytes already buffered after an SSLRequest would be read as if
			// they came over TLS (CVE-2021-23214): refuse.
			if ss.r.Buffered() > 0 {
				return nil, fmt.Errorf("unencrypted data after SSLRequest")
			}
			if _, err := ss.conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(ss.conn, ss.srv.tls)
			if err := tc.Handshake(); err != nil {
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			ss.conn = tc
			ss.r.Reset(tc)
			ss.w.Reset(tc)
			tlsDone = true
		case code == codeGSSENCRequest:
			if _, err := ss.conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case code == codeCancelRequest:
			var cr pgproto3.CancelRequest
			if err := cr.Decode(body); err != nil {
				return nil, fmt.Errorf("bad cancel request: %w", err)
			}
			ss.srv.cancel(cr.ProcessID, cr.SecretKey)
			return nil, nil
		case code>>16 == 3:
			minor := code & 0xffff
			if minor != 0 {
				// Speak 3.0: tell a newer client which minor version we do.
				binary.BigEndian.PutUint32(body[:4], protocol30)
			}
			var sm pgproto3.StartupMessage
			if err := sm.Decode(body); err != nil {
				ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid startup packet: %v", err))
				return nil, errHandled
			}
			if minor != 0 {
				npv := &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0}
				for k := range sm.Parameters {
					if len(k) > 4 && k[:4] == "_pq_" {
						npv.UnrecognizedOptions = append(npv.UnrecognizedOptions, k)
						delete(sm.Parameters, k)
					}
				}
				_ = ss.w.Send(npv)
			}
			return &sm, nil
		default:
			ss.fatal(wire.Fatalf(wire.CodeProtocolViolation,
				"unsupported frontend protocol %d.%d: server supports 3.0", code>>16, code&0xffff))
			return nil, errHandled
		}
	}
}

// login authenticates the client, checks out a server connection to
// prove the database exists and learn its parameters, and sends the
// client AuthenticationOk, ParameterStatus, BackendKeyData and
// ReadyForQuery.
func (ss *session) login(sm *pgproto3.StartupMessage) error {
	s := ss.srv
	user := sm.Parameters["user"]
	if user == "" {
		s.refuse("bad_startup")
		return wire.Fatalf(wire.CodeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet")
	}
	if sm.Parameters["replication"] != "" && sm.Parameters["replication"] != "false" && sm.Parameters["replication"] != "0" {
		s.refuse("bad_startup")
		return wire.Fatalf(wire.CodeFeatureNotSupported, "replication connections are not supported through shardproxy").
			WithHint("Connect to the shard's primary directly for replication.")
	}
	db := sm.Parameters["database"]
	if db == "" {
		db = user
	}
	u, known := s.Config().User(user)
	if err := ss.authenticate(user, u, known); err != nil {
		s.refuse("auth_failed")
		return err
	}
	// Counted after authentication, as PostgreSQL does: a stranger cannot
	// learn a role's limit or use it up.
	if !s.admitUser(ss, user, u.MaxConnections) {
		s.refuse("too_many_user_connections")
		return wire.Fatalf(wire.CodeTooManyConnections, "too many connections for role %q", user).
			WithDetail(fmt.Sprintf("users[].max_connections is %d for this user", u.MaxConnections))
	}
	if db == ConsoleDatabase {
		return ss.consoleLogin(u, db)
	}
	ss.user = u
	ss.database = db
	ss.params = map[string]string{}
	for k, v := range sm.Parameters {
		if !startupParamsNotSettings[k] {
			ss.params[lowerASCII(k)] = quoteLiteral(v)
		}
	}
	ss.startupParams = cloneMap(ss.params)

	serverUser, serverPass := u.Name, u.Password
	if u.ServerUser != "" {
		serverUser, serverPass = u.ServerUser, u.ServerPassword
	}
	ss.serverUser, ss.serverPass = serverUser, serverPass
	ss.adoptTopology()
	ss.pool = ss.pools[s.defShard]
	ss.cur, ss.forceShardIdx = -1, -1
	ss.unnamedInfos = map[string]*stmtInfo{}
	ss.queries = map[string][]router.Part{}
	ss.normalized = map[string]*plan.Statement{}
	ss.stmts = map[string]*sharedStmt{}
	ss.paramsTag = paramsTagOf(ss.params)

	// Logins with settings seen recently are answered from the cache: the
	// database is known to exist and the server's ParameterStatus answers
	// are known. Besides saving a round trip, this keeps a login from
	// waiting on the pool, which clients that connect synchronously while
	// their other connections hold transactions open (pgbench -C) need.
	key := loginKey(ss.pool.String(), ss.params)
	reported, ok := s.logins.get(key)
	if !ok || s.cfg.Pool.Mode == config.PoolSession {
		var err error
		if reported, err = ss.loginOnServer(); err != nil {
			return err
		}
		s.logins.put(key, reported)
	}
	for k, v := range reported {
		_ = ss.w.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	_ = ss.w.Send(&pgproto3.BackendKeyData{ProcessID: ss.pid, SecretKey: ss.secret})
	_ = ss.w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	ss.txStatus = 'I'
	return ss.w.Flush()
}

// loginOnServer checks out a server connection, applies the client's
// startup settings and returns the server's ParameterStatus values. In
// session pooling the connection stays with the client.
func (ss *session) loginOnServer() (map[string]string, error) {
	s := ss.srv
	ctx, cancel := context.WithTimeout(context.Background(), s.Config().Pool.WaitTimeout.D()+s.Config().Pool.ConnectTimeout.D())
	defer cancel()
	sc, err := ss.pool.Acquire(ctx)
	if err != nil {
		e := wire.FromServer(err, fmt.Sprintf("connect to %s primary %s", s.primary.Shard, s.primary.Addr()))
		e.Severity = "FATAL"
		if e.Code == wire.CodeInvalidCatalogName {
			s.refuse("unknown_database")
		}
		return nil, e
	}
	ss.conns[s.defShard] = sc
	ss.held++
	ss.useConn(s.defShard)
	// A server that stops answering must not hang the login forever.
	_ = sc.SetDeadline(time.Now().Add(s.Config().Pool.ConnectTimeout.D()))
	failed := func(err error) error {
		ss.detach(true)
		return wire.Fatalf(wire.CodeConnectionFailure, "server %s (%s) failed during login: %v", s.primary.Shard, sc.Addr(), err)
	}
	ss.syncParams()
	if err := sc.W.Flush(); err != nil {
		return nil, failed(err)
	}
	if err := ss.pump(); err != nil {
		return nil, failed(err)
	}
	_ = sc.SetDeadline(time.Time{})
	if ss.loginErr != nil {
		ss.detach(false)
		return nil, ss.loginErr
	}
	reported := cloneMap(sc.Reported)
	if s.cfg.Pool.Mode == config.PoolTransaction {
		ss.detach(false)
	}
	return reported, nil
}

// authenticate runs the user's auth method. Unknown users go through the
// same exchange and fail like a wrong password.
func (ss *session) authenticate(name string, u config.User, known bool) error {
	method := u.Auth
	if !known {
		method = "scram-sha-256"
	}
	fail := func() error {
		return wire.Fatalf(wire.CodeInvalidPassword, "password authentication failed for user %q", name)
	}
	switch method {
	case "trust":
	case "md5":
		salt := auth.MD5Salt()
		_ = ss.w.Send(&pgproto3.AuthenticationMD5Password{Salt: salt})
		if err := ss.w.Flush(); err != nil {
			return err
		}
		body, err := ss.readAuthMessage()
		if err != nil {
			return err
		}
		var pm pgproto3.PasswordMessage
		if err := pm.Decode(body); err != nil {
			return wire.Fatalf(wire.CodeProtocolViolation, "invalid password message: %v", err)
		}
		if !known || !auth.MD5Verify(name, u.Password, salt, pm.Password) {
			return fail()
		}
	default:
		sc, err := ss.srv.verifiers.NewSCRAM(name, u.Password, known)
		if err != nil {
			return wire.Fatalf(wire.CodeInternalError, "%v", err)
		}
		_ = ss.w.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{auth.Mechanism}})
		if err := ss.w.Flush(); err != nil {
			return err
		}
		body, err := ss.readAuthMessage()
		if err != nil {
			return err
		}
		var first pgproto3.SASLInitialResponse
		if err := first.Decode(body); err != nil {
			return wire.Fatalf(wire.CodeProtocolViolation, "invalid SASL initial response: %v", err)
		}
		if first.AuthMechanism != auth.Mechanism {
			return wire.Fatalf(wire.CodeProtocolViolation, "client selected an invalid SASL authentication mechanism %q", first.AuthMechanism)
		}
		out, err := sc.Step(first.Data)
		if err != nil {
			return fail()
		}
		_ = ss.w.Send(&pgproto3.AuthenticationSASLContinue{Data: out})
		if err := ss.w.Flush(); err != nil {
			return err
		}
		body, err = ss.readAuthMessage()
		if err != nil {
			return err
		}
		var resp pgproto3.SASLResponse
		if err := resp.Decode(body); err != nil {
			return wire.Fatalf(wire.CodeProtocolViolation, "invalid SASL response: %v", err)
		}
		out, err = sc.Step(resp.Data)
		if err != nil || !sc.Valid() {
			return fail()
		}
		_ = ss.w.Send(&pgproto3.AuthenticationSASLFinal{Data: out})
	}
	return ss.w.Send(&pgproto3.AuthenticationOk{})
}

// readAuthMessage reads a 'p' message (password, SASL) and returns its body.
func (ss *session) readAuthMessage() ([]byte, error) {
	typ, msg, err := ss.r.Next()
	if err != nil {
		return nil, err
	}
	if typ != 'p' {
		return nil, wire.Fatalf(wire.CodeProtocolViolation, "expected password response, got message type %q", typ)
	}
	return append([]byte(nil), wire.Body(msg)...), nil
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= 'A' && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
