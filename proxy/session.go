package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/pool"
	"github.com/shardproxy/shardproxy/router"
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

	// Routing, filled by planBatch.
	tgt      int             // shard index, tLocal, tMulti or tSync
	unit     *unit           // tMulti: the multi-shard execution
	st       *plan.Statement // the statement a Q, P, B, D or E runs
	info     *stmtInfo       // the client statement a B or D uses
	sql      string          // Q: the single statement's text
	err      *wire.Error     // refused: the error to answer
	implicit bool            // its segment writes on several shards: one 2PC transaction
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
	kind    byte
	mode    uint8
	forget  string  // server statement to forget if this entry fails
	sets    []setOp // settings applied if the entry completes
	login   bool    // the login-time settings query: its error is fatal
	capture bool    // a swallowed query whose error the proxy reports itself
	quietZ  bool    // relay everything but the ReadyForQuery
	data    []byte  // mSynth: the message the proxy answers
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
	pool     *pool.Pool   // the default shard's primary pool (login)
	pools    []*pool.Pool // by node slot (primaries by shard index, then replicas)
	// topo is the topology the session's slots refer to; it moves to the
	// server's current one at each batch (adoptTopology).
	topo                   *topology
	serverUser, serverPass string
	// conns are the server connections held, by shard index; sc is the
	// one messages currently go to (conns[cur]).
	conns []*pool.Conn
	held  int
	cur   int

	tx      txn
	segMask uint64 // shards the current segment (up to Sync) used

	// Read-your-writes: when the session last wrote on each shard (a
	// commit), and the shards written by the batch being run outside a
	// transaction.
	wroteAt    []time.Time
	batchWrote uint64

	// Statement and portal routing state.
	unnamed       *stmtInfo
	unnamedSent   *stmtInfo // the unnamed statement last parsed on a server
	unnamedOn     int       // shard index + 1 it was parsed on
	unnamedPortal portalInfo
	portals       map[string]portalInfo
	unnamedInfos  map[string]*stmtInfo       // by Parse body after the name
	queries       map[string][]router.Part   // simple queries by text
	normalized    map[string]*plan.Statement // by text without constants; nil: not usable
	normBuf       []byte
	normLits      [][]byte
	bindParams    plan.Params
	captured      *wire.Error
	errCount      int // errors sent to the client

	// shardproxy.* session settings.
	forceShard    string
	forceShardIdx int
	explainOn     bool
	target        string
	maxLag        string
	maxLagD       time.Duration
	ryw           string

	// sc is the attached server connection (nil between transactions in
	// transaction pooling); running mirrors it for the cancel path.
	sc      *pool.Conn
	running atomic.Pointer[pool.Conn]
	// inBatch is the freeze epoch the session's current batch began in
	// (0: between batches); frozenHit notes a route into a frozen slot.
	inBatch   atomic.Uint64
	inMulti   atomic.Uint64 // likewise, for a batch spanning shards
	frozenHit bool
	// txEpoch is the freeze epoch the session's transaction began in (0:
	// none open): a cutover lets transactions older than its freeze
	// through and waits for them to end.
	txEpoch atomic.Uint64

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
	countedUser  string // the user this client counts against (Server.admitUser)
}

var paramsTags atomic.Uint64

// maxSharedTags bounds the table of settings sets that have a shared tag;
// an application that gives every session its own settings (a unique
// application_name, say) gets fresh tags once it is full, as before.
const maxSharedTags = 4096

var sharedTags struct {
	sync.Mutex
	m map[string]uint64
}

// paramsTagOf returns the tag of a set of session settings. Sessions with
// the same settings share a tag, so a server connection passed between
// them (every transaction, in transaction pooling) skips comparing the
// settings: the common case, where every client of an application logs in
// with the same startup parameters. It runs when settings change, not per
// transaction.
func paramsTagOf(params map[string]string) uint64 {
	keys := make([]string, 0, len(params))
	n := 0
	for k, v := range params {
		keys = append(keys, k)
		n += len(k) + len(v) + 2
	}
	sort.Strings(keys)
	b := make([]byte, 0, n)
	for _, k := range keys {
		b = append(b, k...)
		b = append(b, 0)
		b = append(b, params[k]...)
		b = append(b, 0)
	}
	sharedTags.Lock()
	defer sharedTags.Unlock()
	if tag, ok := sharedTags.m[string(b)]; ok {
		return tag
	}
	tag := paramsTags.Add(1)
	if sharedTags.m == nil {
		sharedTags.m = map[string]uint64{}
	}
	if len(sharedTags.m) < maxSharedTags {
		sharedTags.m[string(b)] = tag
	}
	return tag
}

// clientError marks a failure to talk to the client (it went away).
type clientError struct{ err error }

func (e clientError) Error() string { return "client: " + e.err.Error() }
func (e clientError) Unwrap() error { return e.err }

func (ss *session) run() {
	defer ss.finish()
	defer func() {
		// A bug must cost one session, not the proxy and every client
		// on it. The server connections are closed (their state is
		// unknown), so no transaction is left half done.
		if r := recover(); r != nil {
			ss.srv.log.Error("BUG: session panicked", "pid", ss.pid, "panic", r, "stack", string(debug.Stack()))
			ss.serverFailed = true
			for i, sc := range ss.conns {
				if sc != nil {
					ss.useConn(i)
					ss.detach(true)
				}
			}
			ss.fatal(wire.Fatalf(wire.CodeInternalError, "shardproxy internal error: %v", r).
				WithHint("This is a bug in shardproxy; the connection was closed and its open transaction rolled back."))
		}
	}()
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
		if ss.r.Buffered() == 0 {
			ss.w.Release() // about to wait on the client: hold no buffer meanwhile
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
		if ss.reportTooLarge(err) {
			return false
		}
		if errors.As(err, &fe) {
			ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid message from client: %v", err))
		}
		ss.srv.log.Debug("client read", "pid", ss.pid, "err", err)
	}
	return false
}

// reportTooLarge tells the client its message was over
// limits.max_message_size; false if err is something else. The message
// was not read, so the connection cannot go on.
func (ss *session) reportTooLarge(err error) bool {
	var tl *wire.TooLargeError
	if !errors.As(err, &tl) {
		return false
	}
	ss.srv.log.Warn("client message over limits.max_message_size", "pid", ss.pid, "user", ss.countedUser, "type", string(tl.Type), "bytes", tl.Length)
	ss.fatal(wire.Fatalf(wire.CodeProgramLimitExceeded, "message of %d bytes is over limits.max_message_size (%d bytes)", tl.Length, tl.Max).
		WithHint("Raise limits.max_message_size, or send the data in smaller pieces (COPY, or several statements)."))
	return true
}

// finish returns or closes the server connections when the client leaves.
func (ss *session) finish() {
	for s, sc := range ss.conns {
		if sc == nil {
			continue
		}
		ss.useConn(s)
		clean := ss.txStatus == 'I' && !ss.tx.open && sc.TxStatus == 'I' && ss.pendingLen() == 0 && !ss.skipToSync && !ss.serverFailed
		if clean && ss.srv.cfg.Pool.Mode == config.PoolSession {
			clean = ss.resetServer()
		}
		ss.detach(!clean)
	}
	if ss.sc != nil { // login connection not yet in conns
		ss.detach(true)
	}
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
	// Settings a query changes are found when it is planned.
	ss.addOp(typ, msg, nil)
}

func (ss *session) addParse(msg []byte) {
	name, rest, ok := cutCString(wire.Body(msg))
	if !ok || len(name) == 0 {
		o := ss.addOp('P', msg, nil)
		ss.unnamedSets = nil
		if ok {
			o.info = ss.unnamedInfo(rest)
			ss.unnamedSets = o.info.sets
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

// flushBatch routes the batched messages, sends them to their shards
// and relays the answers. A non-nil error ends the session.
func (ss *session) flushBatch() error {
	defer ss.resetBatch()
	if ss.held == 0 && ss.onlyStatementBookkeeping() {
		return ss.answerBookkeeping()
	}
	ss.adoptTopology()
	ss.enterBatch()
	defer ss.leaveBatch()
	ss.planBatch()
	for {
		f := ss.srv.gate.Load()
		if f == nil {
			if !ss.frozenHit {
				break
			}
			// Planned against a freeze that ended since: plan again
			// with the map it left.
			ss.replanBatch()
			continue
		}
		if !ss.heldByFreeze(f) {
			break
		}
		if e := ss.waitThaw(f); e != nil {
			ss.failBatch(e)
			break
		}
		ss.adoptTopology()
		ss.replanBatch()
	}
	cfg := ss.srv.Config()
	var started time.Time
	if ss.srv.hooks.Batch != nil || cfg.Log.SlowQuery > 0 {
		started = time.Now()
	}
	ss.countStatements()
	if cfg.Log.Statements && ss.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		ss.logStatements()
	}
	if err := ss.execBatch(); err != nil {
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
	if thr := cfg.Log.SlowQuery.D(); thr > 0 {
		if d := time.Since(started); d > thr {
			ss.logSlow(d)
		}
	}
	if ss.srv.hooks.Batch != nil {
		if shard, replica, ok := ss.batchTarget(); ok {
			name := ""
			if shard >= 0 {
				name = ss.topo.shardNames[shard]
			}
			ss.srv.hooks.Batch(shard, name, replica, time.Since(started))
		}
	}
	if ss.batchWrote != 0 {
		ss.noteWrites(ss.batchWrote)
		ss.batchWrote = 0
	}
	if err := ss.w.Flush(); err != nil {
		return clientError{err}
	}
	if ss.srv.cfg.Pool.Mode == config.PoolTransaction && ss.txStatus == 'I' && !ss.tx.open && ss.pendingLen() == 0 && !ss.skipToSync {
		ss.releaseAll()
	}
	return nil
}

// releaseAll returns every held server connection to its pool.
func (ss *session) releaseAll() {
	ss.segMask = 0
	for s, sc := range ss.conns {
		if sc == nil {
			continue
		}
		if sc.TxStatus != 'I' {
			ss.srv.log.Error("BUG: client idle but server in transaction", "pid", ss.pid, "node", ss.topo.slotNames[s], "server_status", string(sc.TxStatus))
		}
		ss.useConn(s)
		ss.detach(false)
	}
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
	if ss.skipToSync || len(ss.ops) == 0 || ss.tx.open {
		return false
	}
	for _, o := range ss.ops {
		switch {
		case o.typ == 'P' && o.stmt != nil && o.stmt.plan.Kind != plan.Refused, o.typ == 'C' && o.closeLocal, o.typ == 'S', o.typ == 'H':
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

func (ss *session) sendError(e *wire.Error) {
	ss.errCount++
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
// session: whatever the client was doing on it is gone, and so is the
// transaction it had open on the other shards.
func (ss *session) serverLost(err error) error {
	shard, addr := ss.topo.shardNames[ss.srv.defShard], ""
	if ss.sc != nil {
		addr = ss.sc.Addr()
		if ss.cur >= 0 {
			shard = ss.topo.slotNames[ss.cur]
		}
	}
	if h := ss.srv.hooks.ServerLost; h != nil && addr != "" {
		h(ss.sc.Pool().Key.Node)
	}
	var qt *queryTimeoutError
	if errors.As(err, &qt) && ss.sc != nil {
		// The server may be merely slow, not gone: cancel the statement so
		// it does not run on after the proxy gave up on it.
		sc := ss.sc
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = sc.Cancel(ctx)
		}()
	}
	ss.serverFailed = true
	for s, sc := range ss.conns {
		if sc != nil {
			ss.useConn(s)
			ss.detach(true)
		}
	}
	if ss.sc != nil {
		ss.detach(true)
	}
	if qt != nil {
		ss.srv.log.Warn("server did not answer within limits.query_timeout; connection closed", "shard", shard, "server", addr, "pid", ss.pid, "timeout", qt.after)
		ss.fatal(wire.Fatalf(wire.CodeQueryCanceled, "canceling statement: server %s (%s) did not answer within limits.query_timeout (%s)", shard, addr, qt.after).
			WithHint("The statement may or may not have completed; reconnect and check."))
		return err
	}
	ss.srv.log.Warn("server connection lost", "shard", shard, "server", addr, "pid", ss.pid, "err", err)
	ss.fatal(wire.Fatalf(wire.CodeConnectionFailure, "lost connection to server %s (%s): %v", shard, addr, err).
		WithHint("The statement may or may not have completed; reconnect and check."))
	return err
}

// detach gives the current connection back to its pool.
func (ss *session) detach(broken bool) {
	sc := ss.sc
	if sc == nil {
		return
	}
	ss.sc = nil
	ss.running.Store(nil)
	if ss.cur >= 0 && ss.conns[ss.cur] == sc {
		ss.conns[ss.cur] = nil
		ss.held--
		ss.countReplica(ss.cur, false)
		ss.tx.joined &^= 1 << uint(ss.cur)
		if ss.unnamedOn == ss.cur+1 {
			ss.unnamedOn = 0
		}
	}
	ss.cur = -1
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
	if ss.unnamedOn == ss.cur+1 {
		ss.unnamedOn = 0
	}
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
			ss.forceShard, ss.forceShardIdx, ss.explainOn = "", -1, false
			ss.target, ss.maxLag, ss.maxLagD, ss.ryw = "", "", 0, ""
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
	ss.paramsTag = paramsTagOf(ss.params)
	if inSync {
		sc.SyncTag = ss.paramsTag
	}
}

func (s *Server) countQuery() {
	if s.hooks.Query != nil {
		s.hooks.Query()
	}
}

// noteWrites records that the session's writes on the shards in mask
// have committed now: its later reads there need a replica that has
// replayed them.
func (ss *session) noteWrites(mask uint64) {
	now := time.Now()
	for s := range ss.wroteAt {
		if mask&(1<<uint(s)) != 0 {
			ss.wroteAt[s] = now
		}
	}
}

// countStatements reports each statement of the planned batch by route.
func (ss *session) countStatements() {
	h := ss.srv.hooks.Statement
	if h == nil {
		return
	}
	for i := range ss.ops {
		o := &ss.ops[i]
		if (o.typ != 'Q' && o.typ != 'E') || o.err != nil {
			continue
		}
		switch {
		case o.unit != nil && o.st != nil && o.st.Kind == plan.Broadcast:
			h(RouteBroadcast, false)
		case o.unit != nil:
			h(RouteMulti, false)
		case o.tgt >= 0:
			h(RouteSingle, o.tgt >= len(ss.topo.primaries))
		case o.tgt == tLocal:
			h(RouteLocal, false)
		}
	}
}

// batchTarget is the shard (and role) every server-bound statement of the
// batch went to, -1 when they spanned shards; ok is false when the proxy
// answered everything itself.
func (ss *session) batchTarget() (shard int, replica, ok bool) {
	node := -1
	for i := range ss.ops {
		o := &ss.ops[i]
		switch {
		case o.unit != nil:
			return -1, false, true
		case o.tgt < 0:
			continue
		case node >= 0 && o.tgt != node:
			return -1, false, true
		}
		node = o.tgt
	}
	if node < 0 {
		return 0, false, false
	}
	return ss.topo.slotShard[node], node >= len(ss.topo.primaries), true
}

// logStatements writes each statement of the batch with its route, at
// debug level (log.statements).
func (ss *session) logStatements() {
	for i := range ss.ops {
		o := &ss.ops[i]
		if (o.typ != 'Q' && o.typ != 'E') || o.st == nil {
			continue
		}
		var shards []int
		if o.unit != nil {
			shards = o.unit.shards
		}
		tgt := o.tgt
		if o.unit != nil {
			tgt = tMulti
		}
		ss.srv.log.Debug("statement", "pid", ss.pid, "user", ss.user.Name, "route", ss.explainRoute(o.st, tgt, shards), "sql", ss.opSQL(o))
	}
}

// logSlow reports a batch slower than log.slow_query, with its first
// statement and its route.
func (ss *session) logSlow(d time.Duration) {
	route, sql := "proxy", ""
	if shard, replica, ok := ss.batchTarget(); ok {
		route = "multi_shard"
		if shard >= 0 {
			route = ss.topo.shardNames[shard]
			if replica {
				route += " replica"
			}
		}
	}
	n := 0
	for i := range ss.ops {
		o := &ss.ops[i]
		if o.typ == 'Q' || o.typ == 'E' {
			if n == 0 {
				sql = ss.opSQL(o)
			}
			n++
		}
	}
	ss.srv.log.Warn("slow query", "pid", ss.pid, "user", ss.user.Name, "database", ss.database, "duration", d.Round(time.Microsecond),
		"route", route, "statements", n, "sql", sql)
}

// opSQL is a statement's text for the log, cut at 300 bytes.
func (ss *session) opSQL(o *op) string {
	sql := o.sql
	if o.info != nil {
		sql = o.info.sql
	} else if sql == "" && o.typ == 'Q' {
		q, _, _ := cutCString(wire.Body(ss.batch[o.start:o.end]))
		sql = string(q)
	}
	if len(sql) > 300 {
		sql = sql[:300] + "..."
	}
	return sql
}
