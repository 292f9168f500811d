package proxy

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/pool"
	"github.com/shardproxy/shardproxy/router"
	"github.com/shardproxy/shardproxy/wire"
)

// A batch runs in two passes. planBatch routes every op in order
// (statement analysis, Bind parameters, portals) and marks segments (the
// ops up to a Sync) that write on more than one shard outside a
// transaction: those run as one transaction committed with 2PC. execBatch
// then sends each op to its target. Consecutive ops for the same shard
// form a run, written to that server in one go and answered in one read
// loop, so a single-shard batch costs what it cost before sharding.

// sessionCacheSize bounds the statements a session remembers the
// analysis of, so a repeated statement costs a map lookup without
// allocating (the router's own cache is shared and keyed by string).
const sessionCacheSize = 256

// planBatch routes every op of the batch.
func (ss *session) planBatch() {
	segStart := 0
	var segShards uint64
	segWrite := false
	mark := func(end int) {
		implicit := !ss.tx.open && segWrite && bitsCount(segShards) > 1
		for k := segStart; k < end; k++ {
			ss.ops[k].implicit = implicit
		}
	}
	for i := range ss.ops {
		o := &ss.ops[i]
		ss.planOp(o)
		switch {
		case o.tgt >= 0:
			segShards |= 1 << uint(o.tgt)
		case o.unit != nil:
			for _, s := range o.unit.shards {
				segShards |= 1 << uint(s)
			}
		}
		if o.st != nil && o.st.Write {
			segWrite = true
		}
		if o.typ == 'S' || o.typ == 'Q' {
			mark(i + 1)
			segStart, segShards, segWrite = i+1, 0, false
		}
	}
	mark(len(ss.ops))
	ss.readsToReplicas()
}

// readsToReplicas sends each complete read-only segment of the batch
// that runs outside a transaction on one shard to one of that shard's
// replicas, when one is healthy, lags within the bound and has replayed
// the session's last write there.
func (ss *session) readsToReplicas() {
	noReplicas := !ss.topo.hasReplicas
	if ss.tx.open || ss.target == "primary" || (noReplicas && ss.target != "replica") {
		return
	}
	start := 0
	for i := range ss.ops {
		o := &ss.ops[i]
		if o.typ != 'S' && o.typ != 'Q' {
			continue
		}
		seg := ss.ops[start : i+1]
		start = i + 1
		s, ok := readOnlySegment(seg)
		if !ok {
			continue
		}
		slot := ss.replicaSlot(s)
		if slot < 0 {
			if ss.target == "replica" || (ss.srv.Config().Replicas.Fallback == "error" && len(ss.topo.replicaSlots[s]) > 0) {
				ss.noReplica(seg, s)
			}
			continue
		}
		for k := range seg {
			if seg[k].tgt == s {
				seg[k].tgt = slot
			}
		}
	}
}

// noReplica refuses a read segment no replica can serve when the session
// asked for replicas only (shardproxy.target = 'replica') or the config
// says so (replicas.fallback: error).
func (ss *session) noReplica(seg []op, s int) {
	for k := range seg {
		if o := &seg[k]; o.typ == 'Q' || o.typ == 'B' {
			o.err = wire.Errorf(wire.CodeCannotConnectNow, "no replica of shard %s can serve this read", ss.topo.shardNames[s]).
				WithDetail("Every replica is down, lags beyond the bound, or has not replayed this session's last write there.").
				WithHint("SET shardproxy.target = 'auto' to let the primary serve it, or raise shardproxy.max_replica_lag.")
			return
		}
	}
}

// readOnlySegment reports whether every statement of seg is a plain read
// on one shard, outside any transaction; it returns the shard.
func readOnlySegment(seg []op) (int, bool) {
	shard := -1
	for k := range seg {
		o := &seg[k]
		if o.implicit || o.unit != nil || o.err != nil {
			return -1, false
		}
		if o.st != nil && (o.typ == 'Q' || o.typ == 'B' || o.typ == 'E') {
			if o.st.Write || o.st.Command != "SELECT" || o.st.Kind == plan.Local || o.st.Kind == plan.Refused {
				return -1, false
			}
		}
		if o.typ == 'F' {
			return -1, false
		}
		if o.tgt >= 0 {
			if shard >= 0 && o.tgt != shard {
				return -1, false
			}
			shard = o.tgt
		}
	}
	return shard, shard >= 0
}

// replicaSlot picks the replica slot for a read on shard s, or -1 for
// the primary.
func (ss *session) replicaSlot(s int) int {
	slots := ss.topo.replicaSlots[s]
	if len(slots) == 0 || ss.srv.replicas == nil {
		return -1
	}
	maxLag := ss.srv.Config().Replicas.MaxLag.D()
	if ss.maxLagD > 0 {
		maxLag = ss.maxLagD
	}
	var minLSN uint64
	if ss.ryw != "off" && ss.ryw != "false" && !ss.wroteAt[s].IsZero() {
		lsn, ok := ss.srv.replicas.LSNAfter(s, ss.wroteAt[s])
		if !ok {
			return -1 // the write is too recent to know where it is
		}
		minLSN = lsn
	}
	// After a cutover the slots' new owner serves reads from replicas
	// only once they show the moved rows.
	minLSN = max(minLSN, ss.srv.readFloor[s].Load())
	r, ok := ss.srv.replicas.Pick(s, maxLag, minLSN)
	if !ok || r < 0 || r >= len(slots) {
		return -1
	}
	return slots[r]
}

func bitsCount(m uint64) int {
	n := 0
	for ; m != 0; m &= m - 1 {
		n++
	}
	return n
}

// planOp routes one op; see route for targets.
func (ss *session) planOp(o *op) {
	msg := ss.batch[o.start:o.end]
	switch o.typ {
	case 'Q':
		ss.planQuery(o, msg)
	case 'F':
		o.tgt = ss.srv.defShard
	case 'P':
		if o.stmt != nil { // named: prepared on a server when first used
			o.st = o.stmt.plan
			o.tgt = tLocal
			if o.st.Kind == plan.Refused {
				o.err = o.st.Err
			}
			return
		}
		info := o.info
		if info == nil {
			_, rest, _ := cutCString(wire.Body(msg))
			info = ss.unnamedInfo(rest)
		}
		ss.unnamed = info
		o.st = info.st
		o.info = info
		// Sent along with the Bind or Describe that uses it.
		o.tgt = tLocal
		if info.st.Kind == plan.Refused {
			o.err = info.st.Err
		}
	case 'B':
		ss.planBind(o, msg)
	case 'D':
		body := wire.Body(msg)
		if len(body) > 0 && body[0] == 'P' {
			pi := ss.portal(body[1:])
			o.tgt, o.unit, o.st, o.info = pi.tgt, pi.unit, pi.st, pi.info
			return
		}
		info := ss.stmtInfoOf(o, body[1:])
		if info == nil {
			o.tgt = ss.defaultTarget()
			return
		}
		o.info, o.st = info, info.st
		switch info.st.Kind {
		case plan.Refused:
			o.tgt, o.err = tLocal, info.st.Err
		case plan.Local:
			o.tgt = tLocal
		default:
			o.tgt = ss.defaultTarget()
			if f, _ := ss.forcedShard(info.st); f >= 0 {
				o.tgt = f
			}
		}
	case 'E':
		pi := ss.portal(wire.Body(msg))
		o.tgt, o.unit, o.st, o.info = pi.tgt, pi.unit, pi.st, pi.info
	case 'C':
		body := wire.Body(msg)
		switch {
		case o.closeLocal:
			o.tgt = tLocal
		case len(body) > 0 && body[0] == 'P':
			pi := ss.portal(body[1:])
			o.tgt = pi.tgt
			if o.tgt < 0 {
				o.tgt = tLocal
			}
		default:
			o.tgt = tLocal
		}
	case 'S':
		o.tgt = tSync
	default: // 'H'
		o.tgt = tLocal
	}
}

// unnamedInfo analyzes an unnamed statement (rest: the Parse body after
// the name), once per distinct text per session.
func (ss *session) unnamedInfo(rest []byte) *stmtInfo {
	info := ss.unnamedInfos[string(rest)]
	if info == nil {
		q, after, _ := cutCString(rest)
		info = &stmtInfo{sql: string(q), oids: parseOIDs(after)}
		info.st = ss.statementOf(info.sql)
		if info.st.Kind == plan.Local {
			info.sets = parseSessionSets(info.sql)
		}
		if len(ss.unnamedInfos) >= sessionCacheSize {
			clear(ss.unnamedInfos)
		}
		ss.unnamedInfos[string(rest)] = info
	}
	return info
}

// defaultTarget is where statements without a shard of their own go: a
// connection the session already uses, else the default shard.
func (ss *session) defaultTarget() int {
	if ss.forceShardIdx >= 0 {
		return ss.forceShardIdx
	}
	if ss.sc != nil && ss.cur >= 0 && ss.cur < len(ss.topo.primaries) {
		return ss.cur
	}
	return ss.srv.defShard
}

// stmtInfoOf finds the statement a Describe or Bind names.
func (ss *session) stmtInfoOf(o *op, name []byte) *stmtInfo {
	n, _, _ := cutCString(name)
	if len(n) == 0 {
		return ss.unnamed
	}
	if o.stmt != nil {
		return o.stmt.info
	}
	return nil
}

func (ss *session) portal(body []byte) portalInfo {
	name, _, _ := cutCString(body)
	if len(name) == 0 {
		return ss.unnamedPortal
	}
	if pi, ok := ss.portals[string(name)]; ok {
		return pi
	}
	return portalInfo{tgt: ss.defaultTarget()}
}

func (ss *session) setPortal(name []byte, pi portalInfo) {
	if len(name) == 0 {
		ss.unnamedPortal = pi
		return
	}
	if ss.portals == nil {
		ss.portals = map[string]portalInfo{}
	}
	ss.portals[string(name)] = pi
}

func (ss *session) planBind(o *op, msg []byte) {
	var info *stmtInfo
	if o.stmt != nil {
		info = o.stmt.info
	} else {
		info = ss.unnamed
	}
	if info == nil {
		// Bind of an unknown statement: the server reports it.
		o.tgt = ss.defaultTarget()
		portal, _, _ := cutCString(wire.Body(msg))
		ss.setPortal(portal, portalInfo{tgt: o.tgt})
		return
	}
	portal, _, ok := ss.decodeBind(msg, info.oids)
	o.st, o.info = info.st, info
	if !ok {
		o.tgt = ss.defaultTarget()
		ss.setPortal(portal, portalInfo{tgt: o.tgt, info: info})
		return
	}
	tgt, shards, err := ss.routeForBind(info.st)
	o.tgt, o.err = tgt, err
	pi := portalInfo{tgt: tgt, st: info.st, info: info}
	if tgt == tMulti {
		u := &unit{st: info.st, sql: info.sql, shards: shards, stmt: o.stmt, info: info, portal: string(portal)}
		u.params = cloneParams(&ss.bindParams)
		u.bind = msg
		o.unit = u
		pi.unit = u
	}
	ss.setPortal(portal, pi)
}

func (ss *session) routeForBind(st *plan.Statement) (int, []int, *wire.Error) {
	if st.Kind == plan.Local && st.Control != nil && st.Control.Kind == plan.Session {
		return ss.defaultTarget(), nil, nil
	}
	return ss.route(st, &ss.bindParams)
}

func cloneParams(p *plan.Params) plan.Params {
	c := plan.Params{OIDs: p.OIDs}
	c.Values = append([][]byte(nil), p.Values...)
	c.Formats = append([]int16(nil), p.Formats...)
	return c
}

func (ss *session) planQuery(o *op, msg []byte) {
	q, _, _ := cutCString(wire.Body(msg))
	parts, ok := ss.queries[string(q)]
	if !ok && ss.planNormalized(o, q) {
		return
	}
	if !ok {
		parts = ss.srv.router.Analyze(string(q))
		if len(ss.queries) >= sessionCacheSize {
			clear(ss.queries)
		}
		ss.queries[string(q)] = parts
	}
	for _, p := range parts {
		if p.Stmt.Kind == plan.Local {
			// SET, RESET, DISCARD, savepoints: what the client's
			// settings become once the query succeeds.
			o.sets = parseSessionSets(string(q))
			break
		}
	}
	if len(parts) == 0 {
		o.tgt = ss.defaultTarget()
		return
	}
	if len(parts) == 1 {
		st := parts[0].Stmt
		o.st = st
		o.sql = parts[0].SQL
		if st.Kind == plan.Local && st.Control.Kind == plan.Session {
			o.tgt = ss.defaultTarget()
			return
		}
		tgt, shards, err := ss.route(st, nil)
		o.tgt, o.err = tgt, err
		if tgt == tMulti {
			o.unit = &unit{st: st, sql: parts[0].SQL, shards: shards, simple: true}
		}
		return
	}
	// Several statements: one server runs them all when they all go to
	// the same shard; otherwise the proxy runs them one by one.
	same := -2
	write := false
	for _, p := range parts {
		st := p.Stmt
		write = write || st.Write
		tgt, _, err := ss.route(st, nil)
		if st.Kind == plan.Local && st.Control.Kind == plan.Session {
			tgt = ss.defaultTarget()
		}
		if err != nil || tgt < 0 || (same != -2 && tgt != same) {
			same = -1
			break
		}
		same = tgt
	}
	if same >= 0 {
		o.tgt = same
		o.st = &plan.Statement{Kind: plan.Default, Write: write}
		return
	}
	o.tgt = tMulti
	o.st = &plan.Statement{Kind: plan.FanOut, Command: "SELECT", Write: write}
	o.unit = &unit{st: o.st, simple: true, pieces: parts}
}

// execBatch sends every op to its target and relays the answers.
//
// A read-only segment sent to a replica that dies before the client got
// any of its answer runs again on the primary: the client sees no error
// (a replica failing is the proxy's business, not the application's).
func (ss *session) execBatch() error {
	segStart, retried := 0, false
	flushes, buffered := ss.w.Flushes(), ss.w.Len()
	slot := -1 // the replica the current segment reads from
	for i := 0; i < len(ss.ops); i++ {
		o := &ss.ops[i]
		if i == segStart {
			flushes, buffered, slot = ss.w.Flushes(), ss.w.Len(), -1
		}
		if ss.skipToSync && o.typ != 'S' {
			continue
		}
		if o.tgt >= len(ss.topo.primaries) {
			slot = o.tgt
		}
		err := ss.execOp(o)
		onReplica := slot >= 0
		if err == nil && onReplica && (o.typ == 'S' || o.typ == 'Q') {
			err = ss.endRun()
		}
		if err != nil {
			var ce clientError
			var de *desyncError
			var rd replicaDown
			down := errors.As(err, &rd)
			if !retried && onReplica && !errors.As(err, &ce) && !errors.As(err, &de) && ss.w.Flushes() == flushes &&
				(down || (ss.sc != nil && ss.cur == slot)) {
				ss.srv.log.Warn("replica failed during a read; running it on the primary", "pid", ss.pid, "node", ss.topo.slotNames[slot], "err", err)
				if h := ss.srv.hooks.ReadRetried; h != nil {
					h(ss.topo.nodes[slot].Addr())
				}
				if !down {
					ss.dropFailed()
				}
				ss.w.Truncate(buffered)
				for k := segStart; k < len(ss.ops); k++ {
					if ss.ops[k].tgt == slot {
						ss.ops[k].tgt = ss.topo.slotShard[slot]
					}
				}
				ss.segMask = 0
				retried = true
				i = segStart - 1
				continue
			}
			return err
		}
		if o.typ == 'S' || o.typ == 'Q' {
			segStart, retried = i+1, false
		}
	}
	return ss.endRun()
}

// dropFailed closes the current server connection after an I/O error,
// forgetting what it owed.
func (ss *session) dropFailed() {
	ss.serverFailed = false
	ss.detach(true)
}

func (ss *session) execOp(o *op) error {
	msg := ss.batch[o.start:o.end]
	if o.err != nil {
		if err := ss.endRun(); err != nil {
			return err
		}
		ss.sendError(o.err)
		if o.typ == 'Q' {
			ss.emitReady()
		} else {
			ss.skipToSync = true
		}
		return nil
	}
	if ss.tx.failed && startsStatement(o) && !endsFailedTx(o.st) {
		if err := ss.endRun(); err != nil {
			return err
		}
		ss.sendError(errInFailedTx())
		if o.typ == 'Q' {
			ss.emitReady()
		} else {
			ss.skipToSync = true
		}
		return nil
	}
	if ss.explains(o) {
		if err := ss.explain(o); err != nil {
			return err
		}
	}
	if o.typ == 'Q' {
		ss.segMask = 0 // a simple query is a segment of its own
	}
	switch {
	case o.typ == 'S':
		return ss.execSync(o, msg)
	case o.unit != nil:
		if err := ss.endRun(); err != nil {
			return err
		}
		return ss.execUnit(o, msg)
	case o.tgt == tLocal:
		return ss.execLocal(o, msg)
	}
	if ss.tx.open && (o.typ == 'Q' || o.typ == 'E') && isSessionControl(o.st) {
		// SET and friends inside a transaction apply to every shard the
		// transaction is open on, and to shards it reaches later.
		if err := ss.spreadSetting(o); err != nil {
			return err
		}
	}
	if err := ss.toShard(o.tgt, o.implicit); err != nil {
		return err
	}
	if ss.sc == nil {
		// No server could be had: the error went to the client.
		if o.typ == 'Q' {
			ss.emitReady()
		} else {
			ss.skipToSync = true
		}
		return nil
	}
	if o.st != nil && o.st.Write {
		if ss.tx.open || ss.tx.implicit {
			ss.tx.wrote |= 1 << uint(ss.cur)
		} else {
			ss.batchWrote |= 1 << uint(ss.cur)
		}
	}
	if (o.typ == 'B' || (o.typ == 'D' && msg[5] == 'S')) && o.stmt == nil && o.info != nil {
		// An unnamed statement is parsed on the server that runs it.
		if ss.unnamedSent != o.info || ss.unnamedOn != ss.cur+1 {
			ss.sendUnnamedParse(o.info)
		}
	}
	ss.translateOp(o, msg)
	return nil
}

// startsStatement reports ops that begin running a statement: refused in
// a failed transaction.
func startsStatement(o *op) bool {
	return o.typ == 'Q' || o.typ == 'B' || o.typ == 'F'
}

func endsFailedTx(st *plan.Statement) bool {
	if st == nil || st.Kind != plan.Local || st.Control == nil {
		return false
	}
	switch st.Control.Kind {
	case plan.Commit, plan.Rollback, plan.RollbackTo:
		return true
	}
	return false
}

func errInFailedTx() *wire.Error {
	return wire.Errorf(wire.CodeInFailedTransaction, "current transaction is aborted, commands ignored until end of transaction block")
}

// sendUnnamedParse sends the client's pending unnamed Parse to the current
// server; its ParseComplete was already answered by the proxy.
func (ss *session) sendUnnamedParse(info *stmtInfo) {
	ss.sc.W.SetBuf(appendMsg(ss.sc.W.Buf(), 'P', []byte{0}, []byte(info.sql), []byte{0}, encodeOIDs(info.oids)))
	ss.push(pend{kind: pParse, mode: mSwallow})
	ss.unnamedSent, ss.unnamedOn = info, ss.cur+1
}

func encodeOIDs(oids []uint32) []byte {
	b := make([]byte, 2+4*len(oids))
	b[0], b[1] = byte(len(oids)>>8), byte(len(oids))
	for i, o := range oids {
		b[2+4*i] = byte(o >> 24)
		b[3+4*i] = byte(o >> 16)
		b[4+4*i] = byte(o >> 8)
		b[5+4*i] = byte(o)
	}
	return b
}

// toShard makes shard s's connection the target of the next messages:
// the run on another connection is finished first, and a connection the
// session does not hold yet is acquired, given the client's settings, and
// joined to the open transaction.
func (ss *session) toShard(s int, implicit bool) error {
	if ss.sc != nil && ss.cur == s {
		ss.segMask |= 1 << uint(s)
		if implicit && !ss.tx.open {
			ss.startImplicit()
		}
		ss.join(s)
		return nil
	}
	if err := ss.endRun(); err != nil {
		return err
	}
	sc := ss.conns[s]
	if sc == nil {
		p, e := ss.poolFor(s)
		if e != nil {
			ss.sendError(e)
			ss.sc = nil
			ss.cur = -1
			return nil
		}
		var err error
		sc, err = p.Acquire(context.Background())
		if err != nil && s >= len(ss.topo.primaries) {
			// A replica that cannot be reached: the caller runs the
			// read on the primary instead.
			return replicaDown{err}
		}
		if err != nil {
			e := wire.FromServer(err, fmt.Sprintf("connect to %s %s %s", p.Shard, p.Role, p.Key.Node))
			if e.Severity == "FATAL" {
				e.Severity = "ERROR"
			}
			ss.sendError(e)
			ss.sc = nil
			ss.cur = -1
			return nil
		}
		ss.conns[s] = sc
		ss.held++
		ss.countReplica(s, true)
	}
	ss.sc = sc
	ss.cur = s
	ss.running.Store(sc)
	ss.segMask |= 1 << uint(s)
	if implicit && !ss.tx.open {
		ss.startImplicit()
	}
	ss.syncParams()
	ss.join(s)
	return nil
}

// join opens the session's transaction on shard s's connection: BEGIN as
// the client wrote it, then the savepoints made so far, so a later
// ROLLBACK TO works there too.
func (ss *session) join(s int) {
	if !(ss.tx.open || ss.tx.implicit) || ss.tx.joined&(1<<uint(s)) != 0 {
		return
	}
	ss.tx.joined |= 1 << uint(s)
	q := ss.tx.begin
	if q == "" {
		q = "BEGIN"
	}
	for _, set := range ss.tx.settings {
		q += "; " + set
	}
	for _, sp := range ss.tx.savepoints {
		q += "; SAVEPOINT " + quoteIdent(sp)
	}
	ss.sendOwnQuery(q)
}

// sendOwnQuery queues a simple query of the proxy's own on the current
// connection, its answer swallowed. A simple query drops the server's
// unnamed statement.
func (ss *session) sendOwnQuery(q string) {
	_ = ss.sc.W.Send(&pgproto3.Query{String: q})
	ss.push(pend{kind: pQuery, mode: mSwallow})
	if ss.unnamedOn == ss.cur+1 {
		ss.unnamedOn = 0
	}
}

// endRun sends what was written to the current server and relays the
// answers. A run cut before its segment's Sync ends with a Flush so the
// server answers what it has.
func (ss *session) endRun() error {
	sc := ss.sc
	if sc == nil || (sc.W.Len() == 0 && ss.pendingLen() == 0) {
		return nil
	}
	if ss.pendingLen() > 0 && !ss.endsWithSync() {
		sc.W.Append(msgFlush)
	}
	if err := sc.W.Flush(); err != nil {
		return serverIOError{err}
	}
	// The answer takes the server a while. Letting other sessions run
	// first makes the read below more often find it waiting, instead of
	// reading EAGAIN and parking on the poller (measured: about 10% more
	// pgbench -S throughput at 16 clients, 3-5 us less CPU per transaction).
	runtime.Gosched()
	return ss.pumpTimed()
}

// pumpTimed is pump bounded by limits.query_timeout: a server that has
// not finished answering by then is treated as lost. Without it, a server
// that stalls with its socket open (SIGSTOP, a hung host behind a live
// TCP stack) would hold the client forever.
func (ss *session) pumpTimed() error {
	qt := ss.srv.Config().Limits.QueryTimeout.D()
	if qt <= 0 || ss.pendingLen() == 0 {
		return ss.pump()
	}
	sc := ss.sc
	_ = sc.SetReadDeadline(time.Now().Add(qt))
	err := ss.pump()
	if err != nil && wire.IsTimeout(err) {
		return &queryTimeoutError{after: qt, err: err}
	}
	_ = sc.SetReadDeadline(time.Time{})
	return err
}

// queryTimeoutError is a server that did not answer within query_timeout.
type queryTimeoutError struct {
	after time.Duration
	err   error
}

func (e *queryTimeoutError) Error() string {
	return fmt.Sprintf("no answer within limits.query_timeout (%s)", e.after)
}
func (e *queryTimeoutError) Unwrap() error { return e.err }

// endsWithSync reports whether the last pending entry makes the server
// answer without a Flush.
func (ss *session) endsWithSync() bool {
	for i := len(ss.pending) - 1; i >= ss.head; i-- {
		switch ss.pending[i].kind {
		case pSync, pQuery:
			return true
		}
		if ss.pending[i].mode != mSynth {
			return false
		}
	}
	return true
}

var msgFlush = []byte{'H', 0, 0, 0, 4}

// serverIOError is a failed write to or read from a server connection.
type serverIOError struct{ err error }

func (e serverIOError) Error() string { return e.err.Error() }
func (e serverIOError) Unwrap() error { return e.err }

// synth queues a message the proxy answers itself, after whatever the
// current run still owes the client.
func (ss *session) synth(msg []byte) {
	if ss.pendingLen() > 0 {
		ss.push(pend{kind: 0, mode: mSynth, data: msg})
		return
	}
	ss.w.Append(msg)
}

// execSync ends a segment: the one server that ran it answers the Sync
// itself; several are synced quietly and the proxy answers, committing
// an implicit multi-shard transaction first.
func (ss *session) execSync(o *op, msg []byte) error {
	ss.skipToSync = false
	mask := ss.segMask
	ss.segMask = 0
	if mask == 0 && !ss.tx.implicit {
		if err := ss.endRun(); err != nil {
			return err
		}
		ss.emitReady()
		return nil
	}
	if !ss.tx.implicit && ss.sc != nil && mask == 1<<uint(ss.cur) {
		ss.sc.W.Append(msg)
		ss.push(pend{kind: pSync})
		return nil
	}
	if err := ss.endRun(); err != nil {
		return err
	}
	if err := ss.syncQuietly(mask); err != nil {
		return err
	}
	if ss.tx.implicit {
		if err := ss.finishImplicit(); err != nil {
			return err
		}
	}
	ss.emitReady()
	return nil
}

// syncQuietly sends Sync to every connection in mask and reads their
// ReadyForQuery without relaying it.
func (ss *session) syncQuietly(mask uint64) error {
	for s, sc := range ss.conns {
		if sc != nil && mask&(1<<uint(s)) != 0 {
			sc.W.Append(msgSync)
			if err := sc.W.Flush(); err != nil {
				ss.useConn(s)
				return serverIOError{err}
			}
		}
	}
	for s, sc := range ss.conns {
		if sc != nil && mask&(1<<uint(s)) != 0 {
			ss.useConn(s)
			ss.push(pend{kind: pSync, mode: mSwallow})
			if err := ss.pumpTimed(); err != nil {
				return err
			}
			if sc.TxStatus == 'E' && ss.tx.open {
				ss.tx.failed = true
			}
		}
	}
	return nil
}

var msgSync = []byte{'S', 0, 0, 0, 4}

// useConn points the session at shard s's held connection.
func (ss *session) useConn(s int) {
	ss.sc = ss.conns[s]
	ss.cur = s
	ss.running.Store(ss.sc)
}

// clientStatus is the transaction status the client sees.
func (ss *session) clientStatus() byte {
	switch {
	case ss.tx.open && ss.tx.failed:
		return 'E'
	case ss.tx.open:
		return 'T'
	}
	return 'I'
}

// emitReady answers ReadyForQuery for the proxy.
func (ss *session) emitReady() {
	st := ss.clientStatus()
	ss.synth([]byte{'Z', 0, 0, 0, 5, st})
	if ss.pendingLen() == 0 {
		ss.readyForQuery(st, true)
	}
}

// planNormalized routes a simple query by the plan of its text with the
// constants taken out, so statements differing only in their constants
// share one cached plan and are not parsed each time. It handles what
// goes to the shard(s) owning the keys with the client's own text; the
// rest (fan-outs that merge, rewrites) is planned from the original.
func (ss *session) planNormalized(o *op, q []byte) bool {
	norm, lits, ok := router.NormalizeLiterals(ss.normBuf[:0], ss.normLits[:0], q)
	ss.normBuf, ss.normLits = norm, lits
	if !ok {
		return false
	}
	st, seen := ss.normalized[string(norm)]
	if !seen {
		parts := ss.srv.router.Analyze(string(norm))
		st = nil
		if len(parts) == 1 {
			switch k := parts[0].Stmt.Kind; {
			case k == plan.Keyed, k == plan.Default, k == plan.AnyShard, k == plan.FanOut && len(parts[0].Stmt.Keys) > 0:
				st = parts[0].Stmt
			}
		}
		if len(ss.normalized) >= sessionCacheSize {
			clear(ss.normalized)
		}
		ss.normalized[string(norm)] = st
	}
	if st == nil {
		return false
	}
	p := &ss.bindParams
	p.Values, p.Formats, p.OIDs = p.Values[:0], p.Formats[:0], nil
	p.Values = append(p.Values, lits...)
	tgt, shards, err := ss.route(st, p)
	switch {
	case err != nil:
		// Let the full analysis report it with the client's own text.
		return false
	case tgt >= 0:
		o.st, o.tgt = st, tgt
		return true
	case tgt == tMulti && st.Kind == plan.Keyed:
		o.st, o.tgt = st, tMulti
		o.unit = &unit{st: st, sql: string(q), shards: shards, simple: true}
		return true
	}
	return false
}

func isSessionControl(st *plan.Statement) bool {
	return st != nil && st.Kind == plan.Local && st.Control != nil && st.Control.Kind == plan.Session
}

// spreadSetting runs a session-setting statement of an open transaction
// on the transaction's other shards, before the client's own copy runs
// on the target shard, and remembers it for shards joined later.
func (ss *session) spreadSetting(o *op) error {
	sql := o.sql
	if o.typ == 'E' && o.info != nil {
		sql = o.info.sql
	}
	if sql == "" {
		return nil
	}
	ss.tx.settings = append(ss.tx.settings, sql)
	others := ss.tx.joined
	if o.tgt >= 0 {
		others &^= 1 << uint(o.tgt)
	}
	if others == 0 {
		return nil
	}
	if err := ss.endRun(); err != nil {
		return err
	}
	e, err := ss.sendAll(others, func(int) string { return sql })
	if e != nil {
		ss.srv.log.Warn("setting on another shard of the transaction failed", "pid", ss.pid, "err", e)
	}
	return err
}

// countReplica tells the replica picker a replica slot's connection was
// taken (or given back): its outstanding queries, for least-busy picks.
func (ss *session) countReplica(slot int, taken bool) {
	if slot < len(ss.topo.primaries) || ss.srv.replicas == nil {
		return
	}
	shard, r := ss.topo.slotShard[slot], ss.topo.slotReplica[slot]
	if taken {
		ss.srv.replicas.Acquired(shard, r)
	} else {
		ss.srv.replicas.Released(shard, r)
	}
}

// poolFor is the pool of connection slot s. A primary slot follows the
// replica monitor: a primary it sees down fails at once (rather than
// after a connect timeout), and after a promotion the slot's connections
// go to the promoted replica.
func (ss *session) poolFor(s int) (*pool.Pool, *wire.Error) {
	if s >= len(ss.topo.primaries) || ss.srv.replicas == nil {
		return ss.pools[s], nil
	}
	r, known, healthy := ss.srv.replicas.Primary(s)
	switch {
	case !known:
		return ss.pools[s], nil // not probed yet: try the configured one
	case !healthy:
		return nil, wire.Errorf(wire.CodeConnectionFailure, "the primary of shard %s is not reachable", ss.topo.shardNames[s]).
			WithHint("Writes and transactions on this shard fail until the primary is back or a replica is promoted; reads outside transactions are served by replicas.")
	case r >= 0 && r < len(ss.topo.replicaSlots[s]):
		return ss.pools[ss.topo.replicaSlots[s][r]], nil
	}
	return ss.pools[s], nil
}

// replicaDown is a replica connection that could not be had.
type replicaDown struct{ err error }

func (e replicaDown) Error() string { return "replica unreachable: " + e.err.Error() }
func (e replicaDown) Unwrap() error { return e.err }

// serverFatal is a FATAL error a replica sent before closing: the read is
// run elsewhere instead of relaying it.
type serverFatal struct{ e *wire.Error }

func (e serverFatal) Error() string { return "server closing: " + e.e.Message }
