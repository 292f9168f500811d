package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/pool"
	"github.com/shardproxy/shardproxy/wire"
)

// maxBatch bounds how many bytes of pipelined client messages are held
// before they are sent on, when the client has more already buffered.
const maxBatch = 64 << 10

// op is one client message waiting in the batch.
type op struct {
	typ        byte
	start, end int         // the raw message in session.batch
	stmt       *sharedStmt // the named statement a P/B/D/C refers to
	sets       []setOp     // settings an E or Q changes
	closeLocal bool        // Close of a client statement: answered by the proxy
}

// Pending response kinds: what the server (or the proxy) owes the client
// for each message sent, in order.
const (
	pParse         = 'P'
	pBind          = 'B'
	pDescribeStmt  = 'D'
	pDescribePortl = 'd'
	pClose         = 'C'
	pExecute       = 'E'
	pSync          = 'S'
	pQuery         = 'Q'
)

// Modes of a pending entry.
const (
	mForward = iota // relay the server's answer
	mSwallow        // the proxy's own message: drop the answer
	mSynth          // answered by the proxy, no server message
)

type pend struct {
	kind   byte
	mode   uint8
	forget string  // server statement to forget if this entry fails
	sets   []setOp // settings applied if the entry completes
	login  bool    // the login-time settings query: its error is fatal
}

// session is one client connection.
type session struct {
	srv    *Server
	conn   net.Conn
	r      *wire.Reader
	w      *wire.Writer
	pid    uint32
	secret []byte

	user     config.User
	database string
	pool     *pool.Pool

	// sc is the attached server connection (nil between transactions in
	// transaction pooling); running mirrors it for the cancel path.
	sc      *pool.Conn
	running atomic.Pointer[pool.Conn]

	txStatus byte

	// Session settings the client asked for, as SQL text by lower-case name.
	params        map[string]string
	startupParams map[string]string
	paramsTag     uint64

	stmts        map[string]*sharedStmt
	unnamedSets  []setOp
	portalSets   []setOp
	batch        []byte
	ops          []op
	pending      []pend
	head         int
	skipToSync   bool
	stash        []setOp // settings completed since the last ReadyForQuery
	txSets       []setOp // settings made inside the open transaction
	errSeen      bool
	sawRollback  bool
	loginErr     *wire.Error
	serverFailed bool
}

var paramsTags atomic.Uint64

// clientError marks a failure to talk to the client (it went away).
type clientError struct{ err error }

func (e clientError) Error() string { return "client: " + e.err.Error() }
func (e clientError) Unwrap() error { return e.err }

func (ss *session) run() {
	defer ss.finish()
	for {
		if ss.srv.shutting.Load() && ss.txStatus == 'I' && ss.pendingLen() == 0 && ss.r.Buffered() == 0 {
			// Between transactions during shutdown: nothing is lost by leaving now.
			ss.fatal(wire.Fatalf(wire.CodeAdminShutdown, "terminating connection due to administrator command").
				WithDetail("shardproxy is shutting down"))
			return
		}
		var watch *serverWatch
		if ss.shouldWatch() {
			watch = ss.startWatch()
		}
		typ, msg, err := ss.r.Next()
		if watch != nil {
			if werr := watch.stop(); werr != nil {
				_ = ss.serverLost(werr)
				return
			}
		}
		if err != nil {
			if ss.onReadError(err) {
				continue
			}
			return
		}
		flush := false
		switch typ {
		case 'X':
			return
		case 'Q', 'F':
			ss.srv.countQuery()
			ss.addQuery(typ, msg)
			flush = true
		case 'S':
			flush = ss.r.Buffered() == 0 || len(ss.batch) >= maxBatch
			ss.addOp(typ, msg, nil)
		case 'H':
			ss.addOp(typ, msg, nil)
			flush = true
		case 'P':
			ss.addParse(msg)
		case 'B':
			ss.addBind(msg)
		case 'D':
			ss.addDescribe(msg)
		case 'C':
			ss.addClose(msg)
		case 'E':
			ss.srv.countQuery()
			ss.addExecute(msg)
		case 'd', 'c', 'f':
			// Copy messages outside COPY: PostgreSQL ignores them too
			// (they follow a COPY that failed).
		default:
			ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid frontend message type %d", typ))
			return
		}
		if flush {
			if err := ss.flushBatch(); err != nil {
				return
			}
		}
	}
}

// onReadError decides what a failed client read means; true to keep reading.
func (ss *session) onReadError(err error) bool {
	if wire.IsTimeout(err) && ss.srv.shutting.Load() {
		hard := time.Unix(0, ss.srv.hardStop.Load())
		if ss.txStatus != 'I' && time.Now().Before(hard) {
			// Let an open transaction finish until the hard deadline.
			_ = ss.conn.SetReadDeadline(hard)
			return true
		}
		ss.fatal(wire.Fatalf(wire.CodeAdminShutdown, "terminating connection due to administrator command").
			WithDetail("shardproxy is shutting down"))
		return false
	}
	if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		var fe *wire.FramingError
		if errors.As(err, &fe) {
			ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid message from client: %v", err))
		}
		ss.srv.log.Debug("client read", "pid", ss.pid, "err", err)
	}
	return false
}

// finish returns or closes the server connection when the client leaves.
func (ss *session) finish() {
	if ss.sc == nil {
		return
	}
	clean := ss.txStatus == 'I' && ss.pendingLen() == 0 && !ss.skipToSync && !ss.serverFailed
	if clean && ss.srv.cfg.Pool.Mode == config.PoolSession {
		clean = ss.resetServer()
	}
	ss.detach(!clean)
}

// resetServer clears session state before a session-pooled server
// connection serves another client.
func (ss *session) resetServer() bool {
	sc := ss.sc
	_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
	defer sc.SetDeadline(time.Time{})
	_ = sc.W.Send(&pgproto3.Query{String: "DISCARD ALL"})
	ss.push(pend{kind: pQuery, mode: mSwallow})
	if err := sc.W.Flush(); err != nil {
		return false
	}
	if err := ss.pump(); err != nil {
		return false
	}
	sc.ForgetAllPrepared()
	clear(sc.Params)
	sc.SyncTag = 0
	return true
}

// --- batching client messages ---

func (ss *session) addOp(typ byte, msg []byte, stmt *sharedStmt) *op {
	start := len(ss.batch)
	ss.batch = append(ss.batch, msg...)
	ss.ops = append(ss.ops, op{typ: typ, start: start, end: len(ss.batch), stmt: stmt})
	return &ss.ops[len(ss.ops)-1]
}

func (ss *session) addQuery(typ byte, msg []byte) {
	o := ss.addOp(typ, msg, nil)
	if typ == 'Q' {
		body := wire.Body(msg)
		if q, _, ok := cutCString(body); ok {
			o.sets = parseSessionSets(string(q))
		}
	}
}

func (ss *session) addParse(msg []byte) {
	name, rest, ok := cutCString(wire.Body(msg))
	if !ok || len(name) == 0 {
		ss.addOp('P', msg, nil)
		if ok {
			if q, _, ok := cutCString(rest); ok {
				ss.unnamedSets = parseSessionSets(string(q))
			}
		}
		return
	}
	st := ss.srv.stmts.get(rest)
	// A client re-using a name it has not closed would get 42P05 from
	// PostgreSQL; drivers never do it, so the newer statement simply wins.
	ss.stmts[string(name)] = st
	ss.addOp('P', msg, st)
}

func (ss *session) addBind(msg []byte) {
	portal, rest, ok := cutCString(wire.Body(msg))
	if !ok {
		ss.addOp('B', msg, nil)
		return
	}
	name, _, _ := cutCString(rest)
	var st *sharedStmt
	sets := ss.unnamedSets
	if len(name) > 0 {
		st = ss.stmts[string(name)]
		sets = nil
		if st != nil {
			sets = st.sets
		}
	}
	if len(portal) == 0 {
		ss.portalSets = sets
	}
	ss.addOp('B', msg, st)
}

func (ss *session) addDescribe(msg []byte) {
	body := wire.Body(msg)
	var st *sharedStmt
	if len(body) > 1 && body[0] == 'S' {
		if name, _, ok := cutCString(body[1:]); ok && len(name) > 0 {
			st = ss.stmts[string(name)]
		}
	}
	ss.addOp('D', msg, st)
}

func (ss *session) addClose(msg []byte) {
	body := wire.Body(msg)
	if len(body) > 1 && body[0] == 'S' {
		if name, _, ok := cutCString(body[1:]); ok && len(name) > 0 {
			if st := ss.stmts[string(name)]; st != nil {
				delete(ss.stmts, string(name))
				// The server copy stays cached for other clients; the
				// client just needs its CloseComplete.
				o := ss.addOp('C', msg, st)
				o.closeLocal = true
				return
			}
		}
	}
	ss.addOp('C', msg, nil)
}

func (ss *session) addExecute(msg []byte) {
	o := ss.addOp('E', msg, nil)
	if portal, _, ok := cutCString(wire.Body(msg)); ok && len(portal) == 0 {
		o.sets = ss.portalSets
	}
}

func (ss *session) resetBatch() {
	ss.batch = ss.batch[:0]
	ss.ops = ss.ops[:0]
	if cap(ss.batch) > 1<<20 {
		ss.batch = nil
	}
}

// flushBatch sends the batched messages to a server connection and relays
// the answers. A non-nil error ends the session.
func (ss *session) flushBatch() error {
	defer ss.resetBatch()
	if ss.sc == nil {
		if ss.onlyLocal() {
			return ss.answerLocally(nil)
		}
		if ss.onlyStatementBookkeeping() {
			return ss.answerBookkeeping()
		}
		// The pool bounds the wait and the connect itself; no context
		// allocation on this per-transaction path.
		sc, err := ss.pool.Acquire(context.Background())
		if err != nil {
			e := wire.FromServer(err, fmt.Sprintf("connect to %s %s %s", ss.pool.Shard, ss.pool.Role, ss.pool.Key.Node))
			if e.Severity == "FATAL" {
				e.Severity = "ERROR"
			}
			return ss.answerLocally(e)
		}
		ss.attach(sc)
	}
	ss.syncParams()
	ss.translate()
	if err := ss.sc.W.Flush(); err != nil {
		return ss.serverLost(err)
	}
	// The answer takes the server a while. Letting other sessions run
	// first makes the read below more often find it waiting, instead of
	// reading EAGAIN and parking on the poller (measured: about 10% more
	// pgbench -S throughput at 16 clients, 3-5 us less CPU per transaction).
	runtime.Gosched()
	if err := ss.pump(); err != nil {
		var ce clientError
		if errors.As(err, &ce) {
			ss.serverFailed = true
			return err
		}
		var de *desyncError
		if errors.As(err, &de) {
			ops := make([]byte, 0, len(ss.ops))
			for _, o := range ss.ops {
				ops = append(ops, o.typ)
			}
			ss.srv.log.Error("BUG: server answers out of step", "pid", ss.pid, "err", err, "batch", string(ops))
		}
		return ss.serverLost(err)
	}
	if err := ss.w.Flush(); err != nil {
		return clientError{err}
	}
	if ss.srv.cfg.Pool.Mode == config.PoolTransaction && ss.txStatus == 'I' && ss.pendingLen() == 0 && !ss.skipToSync {
		if ss.sc.TxStatus != 'I' {
			ss.srv.log.Error("BUG: client idle but server in transaction", "pid", ss.pid, "server_status", string(ss.sc.TxStatus))
		}
		ss.detach(false)
	}
	return nil
}

// onlyLocal reports whether the batch needs no server: only Syncs after
// an error with no server attached.
func (ss *session) onlyLocal() bool {
	if !ss.skipToSync {
		return false
	}
	for _, o := range ss.ops {
		if o.typ == 'S' {
			return false
		}
	}
	return true
}

// onlyStatementBookkeeping reports whether the batch only names or drops
// client statements (Parse of a named statement, Close of one, Sync,
// Flush) outside a transaction. The proxy prepares statements on a server
// when they are first used, so such a batch needs no server connection.
// This matters for more than speed: libpq's PQprepare blocks its caller
// until answered, and pgbench runs several clients per thread, so a
// prepare waiting for a pooled connection held by a sibling client's
// open transaction on the same thread would stall both.
// The cost: a statement that does not parse reports its error when first
// executed rather than when prepared.
func (ss *session) onlyStatementBookkeeping() bool {
	if ss.skipToSync || len(ss.ops) == 0 {
		return false
	}
	for _, o := range ss.ops {
		switch {
		case o.typ == 'P' && o.stmt != nil, o.typ == 'C' && o.closeLocal, o.typ == 'S', o.typ == 'H':
		default:
			return false
		}
	}
	return true
}

func (ss *session) answerBookkeeping() error {
	for _, o := range ss.ops {
		switch o.typ {
		case 'P':
			ss.w.Append(msgParseComplete)
		case 'C':
			ss.w.Append(msgCloseComplete)
		case 'S':
			ss.w.Append(msgReadyIdle)
		}
	}
	if err := ss.w.Flush(); err != nil {
		return clientError{err}
	}
	return nil
}

// answerLocally answers the batch without a server: with e for every
// statement (no server could be had), or, with e nil, by skipping to Sync.
func (ss *session) answerLocally(e *wire.Error) error {
	segmentErr := ss.skipToSync
	for _, o := range ss.ops {
		switch o.typ {
		case 'Q', 'F':
			if e != nil {
				ss.sendError(e)
			}
			_ = ss.w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case 'S':
			if e != nil && !segmentErr {
				ss.sendError(e)
			}
			segmentErr = false
			_ = ss.w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case 'H':
		default:
			if e != nil && !segmentErr {
				ss.sendError(e)
				segmentErr = true
			}
		}
	}
	ss.skipToSync = segmentErr
	ss.txStatus = 'I'
	if err := ss.w.Flush(); err != nil {
		return clientError{err}
	}
	return nil
}

func (ss *session) sendError(e *wire.Error) {
	_ = ss.w.Send(e.Response())
	if ss.srv.hooks.Error != nil {
		ss.srv.hooks.Error(e.Code)
	}
}

// fatal sends a FATAL error and flushes; the caller then closes.
func (ss *session) fatal(e *wire.Error) {
	e.Severity = "FATAL"
	ss.sendError(e)
	_ = ss.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = ss.w.Flush()
}

// serverLost reports a dead server connection to the client and ends the
// session: whatever the client was doing on it is gone.
func (ss *session) serverLost(err error) error {
	addr := ss.sc.Addr()
	ss.serverFailed = true
	ss.detach(true)
	ss.srv.log.Warn("server connection lost", "server", addr, "pid", ss.pid, "err", err)
	ss.fatal(wire.Fatalf(wire.CodeConnectionFailure, "lost connection to server %s (%s): %v", ss.pool.Shard, addr, err).
		WithHint("The statement may or may not have completed; reconnect and check."))
	return err
}

func (ss *session) attach(sc *pool.Conn) {
	ss.sc = sc
	ss.running.Store(sc)
}

func (ss *session) detach(broken bool) {
	sc := ss.sc
	if sc == nil {
		return
	}
	ss.sc = nil
	ss.running.Store(nil)
	if broken {
		sc.Broken = true
		ss.pending = ss.pending[:0]
		ss.head = 0
		ss.skipToSync = false
	}
	sc.Pool().Release(sc)
}

// syncParams applies the client's session settings to the attached
// server connection when it last served someone else (or the client
// changed them), as one swallowed simple query ahead of the batch.
func (ss *session) syncParams() {
	sc := ss.sc
	if sc.SyncTag == ss.paramsTag {
		return
	}
	var b strings.Builder
	for k, v := range ss.params {
		if sc.Params[k] != v {
			fmt.Fprintf(&b, "SET %s TO %s;", k, v)
		}
	}
	for k := range sc.Params {
		if _, ok := ss.params[k]; !ok {
			fmt.Fprintf(&b, "RESET %s;", k)
		}
	}
	sc.SyncTag = ss.paramsTag
	if b.Len() == 0 {
		return
	}
	clear(sc.Params)
	for k, v := range ss.params {
		sc.Params[k] = v
	}
	_ = sc.W.Send(&pgproto3.Query{String: b.String()})
	ss.push(pend{kind: pQuery, mode: mSwallow, login: ss.txStatus == 0})
}

// applySets records settings that took effect on the server.
func (ss *session) applySets(ops []setOp) {
	sc := ss.sc
	inSync := sc != nil && sc.SyncTag == ss.paramsTag
	for _, o := range ops {
		switch {
		case o.discard && !o.all: // DEALLOCATE ALL
			clear(ss.stmts)
			if sc != nil {
				sc.ForgetAllPrepared()
			}
		case o.all: // RESET ALL, DISCARD ALL
			if o.discard {
				clear(ss.stmts)
				if sc != nil {
					sc.ForgetAllPrepared()
				}
			}
			// The server is back to its defaults; the client expects its
			// startup settings, which the next sync re-applies.
			ss.params = cloneMap(ss.startupParams)
			if sc != nil {
				clear(sc.Params)
			}
			inSync = false
		case o.reset:
			if sc != nil {
				delete(sc.Params, o.name)
			}
			if v, ok := ss.startupParams[o.name]; ok {
				// The server fell back to its own default; the client
				// expects its startup value, which the next sync restores.
				ss.params[o.name] = v
				inSync = false
			} else {
				delete(ss.params, o.name)
			}
		default:
			ss.params[o.name] = o.value
			if sc != nil {
				sc.Params[o.name] = o.value
			}
		}
	}
	ss.paramsTag = paramsTags.Add(1)
	if inSync {
		sc.SyncTag = ss.paramsTag
	}
}

func (s *Server) countQuery() {
	if s.hooks.Query != nil {
		s.hooks.Query()
	}
}
