package proxy

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/merge"
	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/router"
	"github.com/shardproxy/shardproxy/wire"
)

// unit is one statement that runs on several shards: a fan-out read, a
// broadcast, a multi-row INSERT split by key, or a multi-statement query
// run piece by piece.
type unit struct {
	st     *plan.Statement
	sql    string
	shards []int
	simple bool
	pieces []router.Part

	// Extended protocol.
	stmt   *sharedStmt
	info   *stmtInfo
	portal string
	params plan.Params
	bind   []byte
	// Progress of the portal: described to the client, executed.
	described, executed bool
	g                   *gather
}

// gather collects the shards' answers to one multi-shard step.
type gather struct {
	ss     *session
	spec   *plan.Merge // nil: results are concatenated
	params *plan.Params
	merger *merge.Merger
	wantRD bool // the client gets the RowDescription as soon as a shard sends it
	rdSent bool
	// bindPending: the client is owed a BindComplete, which must precede
	// the RowDescription and any row streamed from the first shard.
	bindPending bool
	rd          []byte
	tag         []byte
	count       int64
	counted     bool
	err         *wire.Error
	copyOut     []byte // CopyOutResponse of a COPY TO fan-out
}

// execUnit runs an op whose statement spans several shards.
func (ss *session) execUnit(o *op, msg []byte) error {
	u := o.unit
	switch o.typ {
	case 'Q':
		var err error
		if u.pieces != nil {
			err = ss.execPieces(u)
		} else {
			err = ss.execSimpleMulti(u, o.implicit)
		}
		if err != nil {
			return err
		}
		if ss.tx.implicit {
			if err := ss.finishImplicit(); err != nil {
				return err
			}
		}
		ss.emitReady()
		return nil
	case 'B':
		describe, execute := false, false
		for i := range ss.ops {
			o2 := &ss.ops[i]
			if o2.unit == u && o2.typ == 'D' {
				describe = true
			}
			if o2.unit == u && o2.typ == 'E' {
				execute = true
			}
		}
		return ss.execExtMulti(u, o.implicit, true, describe, execute)
	case 'D':
		if u.described {
			return nil
		}
		return ss.execExtMulti(u, o.implicit, false, true, false)
	case 'E':
		if u.executed {
			return nil
		}
		return ss.execExtMulti(u, o.implicit, false, false, true)
	case 'C':
		ss.synth(msgCloseComplete)
	}
	return nil
}

// readyShards gets a connection on every shard of u, joined to the
// transaction, with nothing pending.
func (ss *session) readyShards(st *plan.Statement, shards []int, implicit bool) (bool, error) {
	for _, s := range shards {
		if err := ss.toShard(s, implicit); err != nil {
			return false, err
		}
		if ss.sc == nil { // no connection: the error was answered
			ss.markFailed()
			return false, nil
		}
		if st.Write && (ss.tx.open || ss.tx.implicit) {
			ss.tx.wrote |= 1 << uint(s)
		}
	}
	return true, ss.endRun()
}

// shardSQL is the text a shard runs for u, and the parameter order for
// an insert split (nil: all parameters as bound).
func (u *unit) shardSQL(rows []int) (string, []int) {
	if u.st.Kind == plan.InsertSplit && rows != nil {
		return u.st.Insert.Render(rows)
	}
	if u.st.ShardSQL != "" {
		return u.st.ShardSQL, nil
	}
	return u.sql, nil
}

func (ss *session) newGather(u *unit, wantRD bool) (*gather, error) {
	g := &gather{ss: ss, wantRD: wantRD}
	if u.st.Kind == plan.FanOut && u.st.Merge != nil {
		// The merger is made when the row layout is known: a SELECT *
		// leaves the router's column numbers relative to it.
		g.spec = u.st.Merge
		if !u.simple {
			g.params = &u.params
		}
	}
	return g, nil
}

// startMerge makes the merger for the shards' RowDescription rd.
func (g *gather) startMerge(rd []byte) error {
	spec := g.spec
	if spec.Relative {
		body := wire.Body(rd)
		if len(body) < 2 {
			return wire.Errorf(wire.CodeProtocolViolation, "short RowDescription from shard")
		}
		r := spec.Resolve(int(binary.BigEndian.Uint16(body)))
		spec = &r
	}
	m, err := merge.New(spec, g.params, g.ss.emit)
	if err != nil {
		return err
	}
	g.merger = m
	return nil
}

// execSimpleMulti runs a simple-query statement on every shard of u.
func (ss *session) execSimpleMulti(u *unit, implicit bool) error {
	if u.st.Kind == plan.CopyIn {
		return ss.copySplit(u, implicit)
	}
	ok, err := ss.readyShards(u.st, u.shards, implicit && !u.st.NoTxBlock)
	if err != nil || !ok {
		return err
	}
	g, err := ss.newGather(u, true)
	if err != nil {
		ss.sendError(asWireError(err))
		return nil
	}
	var split map[int][]int
	if u.st.Kind == plan.InsertSplit {
		var e *wire.Error
		if split, e = ss.splitRows(u.st, nil); e != nil {
			ss.sendError(e)
			return nil
		}
	}
	for _, s := range u.shards {
		sql, _ := u.shardSQL(split[s])
		sc := ss.conns[s]
		_ = sc.W.Send(&pgproto3.Query{String: sql})
		if err := sc.W.Flush(); err != nil {
			ss.useConn(s)
			return serverIOError{err}
		}
	}
	for _, s := range u.shards {
		if err := ss.readShard(s, g, true); err != nil {
			return err
		}
	}
	return ss.finishGather(u, g)
}

// execExtMulti runs the steps of an extended-protocol portal on every
// shard of u: Parse and Bind, Describe, Execute, as asked.
func (ss *session) execExtMulti(u *unit, implicit, bind, describe, execute bool) error {
	ok, err := ss.readyShards(u.st, u.shards, implicit && !u.st.NoTxBlock)
	if err != nil || !ok {
		ss.skipToSync = err == nil
		return err
	}
	if u.g == nil {
		g, err := ss.newGather(u, false)
		if err != nil {
			ss.sendError(asWireError(err))
			ss.skipToSync = true
			return nil
		}
		u.g = g
	}
	g := u.g
	// Unmerged rows stream to the client while the shards are read, so
	// BindComplete and the RowDescription go out when the first shard's
	// arrive (gather.lead), not after the loop.
	g.wantRD, g.rdSent, g.bindPending = describe && !u.described, false, bind
	var split map[int][]int
	if u.st.Kind == plan.InsertSplit {
		var e *wire.Error
		if split, e = ss.splitRows(u.st, &u.params); e != nil {
			ss.sendError(e)
			ss.skipToSync = true
			return nil
		}
	}
	ss.unnamedSent = nil
	for _, s := range u.shards {
		sc := ss.conns[s]
		w := sc.W
		if bind {
			sql, order := u.shardSQL(split[s])
			oids := u.info.oids
			if order != nil {
				oids = pick(oids, order)
			}
			w.SetBuf(appendMsg(w.Buf(), 'P', []byte{0}, []byte(sql), []byte{0}, encodeOIDs(oids)))
			w.SetBuf(appendBind(w.Buf(), u.bind, order, u.hiddenCols()))
		}
		if bind || describe {
			// The merge needs the shards' row layout even when the
			// client did not ask for it.
			w.SetBuf(appendMsg(w.Buf(), 'D', []byte{'P', 0}))
		}
		if execute {
			w.SetBuf(appendMsg(w.Buf(), 'E', []byte{0}, []byte{0, 0, 0, 0}))
		}
		w.Append(msgFlush)
		if err := w.Flush(); err != nil {
			ss.useConn(s)
			return serverIOError{err}
		}
	}
	for _, s := range u.shards {
		if err := ss.readShardExt(s, g, bind, bind || describe, execute); err != nil {
			return err
		}
	}
	if g.err != nil {
		ss.sendError(g.err)
		ss.skipToSync = true
		return nil
	}
	g.lead()
	if describe && !u.described {
		u.described = true
		if !g.rdSent {
			if g.rd != nil {
				ss.w.Append(g.rd)
			} else {
				ss.w.Append(msgNoData)
			}
		}
	}
	if execute {
		u.executed = true
		return ss.finishGather(u, g)
	}
	return nil
}

// pick returns oids reordered to the parameter order of a split insert.
func pick(oids []uint32, order []int) []uint32 {
	out := make([]uint32, len(order))
	for i, n := range order {
		if n-1 < len(oids) {
			out[i] = oids[n-1]
		}
	}
	return out
}

// hiddenCols is how many helper columns the shard SQL adds to the
// client's: their results come in text.
func (u *unit) hiddenCols() int {
	if u.st.Kind != plan.FanOut || u.st.Merge == nil {
		return 0
	}
	return u.st.Merge.Hidden
}

// appendBind appends the client's Bind rewritten for the unnamed portal and
// statement, keeping only the parameters in order (1-based) when not nil.
// Per-column result formats are extended with text for hidden columns.
func appendBind(dst, bind []byte, order []int, hidden int) []byte {
	b := wire.Body(bind)
	_, b, _ = cutCString(b)
	_, b, _ = cutCString(b)
	if hidden > 0 {
		b = padResultFormats(b, hidden)
	}
	if order == nil {
		return appendMsg(dst, 'B', []byte{0, 0}, b)
	}
	// Parameter formats, values, result formats.
	nf := int(binary.BigEndian.Uint16(b))
	formats := b[2 : 2+2*nf]
	b = b[2+2*nf:]
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	vals := make([][]byte, np)
	for i := 0; i < np; i++ {
		n := int32(binary.BigEndian.Uint32(b))
		if n < 0 {
			vals[i] = b[:4]
			b = b[4:]
			continue
		}
		vals[i] = b[:4+n]
		b = b[4+n:]
	}
	results := b
	body := []byte{0, 0}
	switch nf {
	case 0, 1:
		body = append(body, byte(nf>>8), byte(nf))
		body = append(body, formats...)
	default:
		body = append(body, byte(len(order)>>8), byte(len(order)))
		for _, n := range order {
			body = append(body, formats[2*(n-1):2*n]...)
		}
	}
	body = append(body, byte(len(order)>>8), byte(len(order)))
	for _, n := range order {
		body = append(body, vals[n-1]...)
	}
	body = append(body, results...)
	return appendMsg(dst, 'B', body)
}

// readShard reads shard s's answer to a simple query up to ReadyForQuery.
func (ss *session) readShard(s int, g *gather, simple bool) error {
	ss.useConn(s)
	sc := ss.sc
	for {
		typ, msg, err := sc.R.Next()
		if err != nil {
			return serverIOError{err}
		}
		switch typ {
		case 'Z':
			if len(msg) > 5 {
				sc.TxStatus = msg[5]
				if msg[5] == 'E' && ss.tx.open {
					ss.tx.failed = true
				}
			}
			return nil
		case 'G':
			// COPY FROM STDIN reached a non-split path: refuse it.
			_ = sc.W.Send(&pgproto3.CopyFail{Message: "COPY FROM STDIN is not supported here"})
			if err := sc.W.Flush(); err != nil {
				return serverIOError{err}
			}
		default:
			if err := g.take(s, typ, msg); err != nil {
				return err
			}
		}
	}
}

// readShardExt reads shard s's answers to the extended steps sent.
func (ss *session) readShardExt(s int, g *gather, bind, describe, execute bool) error {
	ss.useConn(s)
	sc := ss.sc
	for {
		if !bind && !describe && !execute {
			return nil
		}
		typ, msg, err := sc.R.Next()
		if err != nil {
			return serverIOError{err}
		}
		switch typ {
		case '1':
		case '2':
			bind = false
		case 'T', 'n':
			describe = false
			if err := g.take(s, typ, msg); err != nil {
				return err
			}
		case 'C', 'I', 's':
			execute = false
			if err := g.take(s, typ, msg); err != nil {
				return err
			}
		case 'E':
			// The server now skips to Sync: nothing more comes.
			_ = g.take(s, typ, msg)
			return nil
		default:
			if err := g.take(s, typ, msg); err != nil {
				return err
			}
		}
	}
}

// take handles one message of shard s's answer.
func (g *gather) take(s int, typ byte, msg []byte) error {
	ss := g.ss
	switch typ {
	case 'T':
		if g.rd != nil {
			return nil
		}
		if g.spec != nil && g.merger == nil {
			if err := g.startMerge(msg); err != nil {
				g.fail(asWireError(err))
				return nil
			}
		}
		if g.merger != nil {
			rd, err := g.merger.Describe(msg)
			if err != nil {
				g.fail(asWireError(err))
				return nil
			}
			g.rd = rd
		} else {
			g.rd = append([]byte(nil), msg...)
		}
		if g.wantRD {
			g.lead()
			ss.w.Append(g.rd)
			g.rdSent = true
		}
	case 'D':
		if g.err != nil {
			return nil
		}
		if g.merger != nil {
			if err := g.merger.Add(s, msg); err != nil {
				g.fail(asWireError(err))
			}
			return nil
		}
		g.lead()
		return ss.emit(msg)
	case 'H': // CopyOutResponse
		if g.copyOut == nil {
			g.copyOut = append([]byte(nil), msg...)
			g.lead()
			ss.w.Append(msg)
		}
	case 'd':
		return ss.emit(msg)
	case 'c':
	case 'C':
		tag := wire.Body(msg)
		tag = tag[:len(tag)-1]
		if g.tag == nil {
			g.tag = append([]byte(nil), tag...)
		}
		if i := bytes.LastIndexByte(tag, ' '); i >= 0 {
			if n, err := strconv.ParseInt(string(tag[i+1:]), 10, 64); err == nil {
				g.count += n
				g.counted = true
			}
		}
	case 'E':
		g.fail(ss.onShard(decodeError(msg), s))
	case 'N', 'A':
		return ss.emit(msg)
	case 'S':
		ss.parameterStatus(msg)
	case 'I', 'n', 's':
	}
	return nil
}

// lead sends what the client is owed before any row: the BindComplete of
// an extended-protocol step.
func (g *gather) lead() {
	if g.bindPending {
		g.bindPending = false
		g.ss.w.Append(msgBindComplete)
	}
}

func (g *gather) fail(e *wire.Error) {
	if g.err == nil {
		e.Severity = "ERROR"
		e.Fields = nil
		g.err = e
	}
}

// finishGather emits the merged rows and the command tag, or the error.
func (ss *session) finishGather(u *unit, g *gather) error {
	if g.err != nil {
		ss.sendError(g.err)
		if !u.simple {
			ss.skipToSync = true
		}
		return nil
	}
	if g.copyOut != nil {
		ss.w.Append([]byte{'c', 0, 0, 0, 4})
	}
	count := g.count
	if g.merger != nil {
		n, err := g.merger.Finish()
		if err != nil {
			ss.sendError(asWireError(err))
			if !u.simple {
				ss.skipToSync = true
			}
			return nil
		}
		count = n
	}
	if g.tag == nil {
		ss.w.Append([]byte{'I', 0, 0, 0, 4})
		return nil
	}
	tag := g.tag
	if g.counted && u.st.Kind != plan.Broadcast {
		i := bytes.LastIndexByte(tag, ' ')
		tag = strconv.AppendInt(append([]byte(nil), tag[:i+1]...), count, 10)
	}
	ss.w.Append(encode(&pgproto3.CommandComplete{CommandTag: tag}))
	return nil
}

// execPieces runs a multi-statement simple query one statement at a
// time, as PostgreSQL would: it stops at the first error, and runs as one
// transaction (the proxy's, across shards) unless it controls
// transactions itself.
func (ss *session) execPieces(u *unit) error {
	own := !ss.tx.open && u.st.Write
	for _, p := range u.pieces {
		if p.Stmt.Kind == plan.Local && p.Stmt.Control != nil && p.Stmt.Control.Kind <= plan.RollbackTo {
			own = false
		}
	}
	if own {
		ss.startImplicit()
	}
	for _, p := range u.pieces {
		st := p.Stmt
		failedBefore := ss.errCount
		if err := ss.execPiece(st, p.SQL); err != nil {
			return err
		}
		if ss.errCount != failedBefore {
			break
		}
	}
	return nil
}

// execPiece runs one statement of a multi-statement query, without a
// ReadyForQuery.
func (ss *session) execPiece(st *plan.Statement, sql string) error {
	if ss.tx.failed && !endsFailedTx(st) {
		ss.sendError(errInFailedTx())
		return nil
	}
	if st.Kind == plan.Local && st.Control.Kind != plan.Session {
		return ss.runLocal(st, sql, true)
	}
	tgt, shards, e := ss.route(st, nil)
	if st.Kind == plan.Local {
		tgt, e = ss.defaultTarget(), nil
	}
	if e != nil {
		ss.sendError(e)
		return nil
	}
	if tgt == tMulti {
		u := &unit{st: st, sql: sql, shards: shards, simple: true}
		return ss.execSimpleMulti(u, ss.tx.implicit)
	}
	if err := ss.toShard(tgt, ss.tx.implicit); err != nil || ss.sc == nil {
		if err == nil {
			ss.markFailed()
		}
		return err
	}
	if st.Write && (ss.tx.open || ss.tx.implicit) {
		ss.tx.wrote |= 1 << uint(tgt)
	}
	_ = ss.sc.W.Send(&pgproto3.Query{String: sql})
	ss.push(pend{kind: pQuery, quietZ: true})
	return ss.endRun()
}

// padResultFormats returns the Bind tail b (parameter formats, values,
// result formats) with n text result formats appended when the client
// gave one format per column.
func padResultFormats(b []byte, n int) []byte {
	rest := b
	if len(rest) < 2 {
		return b
	}
	nf := int(binary.BigEndian.Uint16(rest))
	rest = rest[2+2*nf:]
	np := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	for i := 0; i < np; i++ {
		l := int32(binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		if l > 0 {
			rest = rest[l:]
		}
	}
	nr := int(binary.BigEndian.Uint16(rest))
	if nr <= 1 {
		return b // none or one format: applies to every column
	}
	head := len(b) - len(rest)
	out := make([]byte, 0, len(b)+2*n)
	out = append(out, b[:head]...)
	out = binary.BigEndian.AppendUint16(out, uint16(nr+n))
	out = append(out, rest[2:]...)
	for i := 0; i < n; i++ {
		out = append(out, 0, 0)
	}
	return out
}
