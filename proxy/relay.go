package proxy

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/wire"
)

// clientFlushAt is how much relayed output is held before writing to the
// client even though the server has more ready.
const clientFlushAt = 32 << 10

// serverFlushAt is the COPY FROM STDIN chunk sent to the server at once.
const serverFlushAt = 64 << 10

func (ss *session) push(p pend) { ss.pending = append(ss.pending, p) }

func (ss *session) pendingLen() int { return len(ss.pending) - ss.head }

func (ss *session) pop() {
	ss.head++
	if ss.head == len(ss.pending) {
		ss.pending = ss.pending[:0]
		ss.head = 0
	}
}

// translateOp writes one client message to the current server
// connection, renaming client statements to their shared server names and
// preparing them on this server first where it lacks them, and queues
// what the message owes the client.
func (ss *session) translateOp(o *op, msg []byte) {
	sc := ss.sc
	w := sc.W
	if limit := ss.srv.Config().Pool.PreparedStatementCache; sc.PreparedCount() > limit {
		for _, name := range sc.EvictPrepared(limit * 9 / 10) {
			w.SetBuf(appendMsg(w.Buf(), 'C', []byte{'S'}, []byte(name), []byte{0}))
			ss.push(pend{kind: pClose, mode: mSwallow})
		}
	}
	switch o.typ {
	case 'B':
		if o.stmt == nil {
			w.Append(msg)
		} else {
			ss.ensurePrepared(o.stmt)
			portal, rest, _ := cutCString(wire.Body(msg))
			_, rest, _ = cutCString(rest)
			w.SetBuf(appendMsg(w.Buf(), 'B', portal, []byte{0}, []byte(o.stmt.serverName), []byte{0}, rest))
		}
		ss.push(pend{kind: pBind})
	case 'D':
		kind := byte(pDescribePortl)
		if len(msg) > 5 && msg[5] == 'S' {
			kind = pDescribeStmt
		}
		if o.stmt == nil {
			w.Append(msg)
		} else {
			ss.ensurePrepared(o.stmt)
			w.SetBuf(appendMsg(w.Buf(), 'D', []byte{'S'}, []byte(o.stmt.serverName), []byte{0}))
		}
		ss.push(pend{kind: kind})
	case 'C':
		w.Append(msg)
		ss.push(pend{kind: pClose})
	case 'E':
		w.Append(msg)
		ss.push(pend{kind: pExecute, sets: o.sets})
	case 'Q', 'F':
		w.Append(msg)
		ss.push(pend{kind: pQuery, sets: o.sets})
		if o.typ == 'Q' && ss.unnamedOn == ss.cur+1 {
			ss.unnamedOn = 0 // a simple query drops the unnamed statement
		}
	default: // 'H'
		w.Append(msg)
	}
}

// ensurePrepared prepares st on the attached server if it lacks it; the
// ParseComplete is the proxy's to swallow.
func (ss *session) ensurePrepared(st *sharedStmt) {
	if ss.sc.HasPrepared(st.serverName) {
		return
	}
	ss.sc.W.Append(st.parse)
	ss.sc.AddPrepared(st.serverName)
	ss.push(pend{kind: pParse, mode: mSwallow, forget: st.serverName})
}

// emit appends a relayed message for the client, writing out when the
// buffer is large.
func (ss *session) emit(msg []byte) error {
	ss.w.Append(msg)
	if ss.w.Len() >= clientFlushAt {
		if err := ss.w.Flush(); err != nil {
			return clientError{err}
		}
	}
	return nil
}

var (
	msgParseComplete = []byte{'1', 0, 0, 0, 4}
	msgCloseComplete = []byte{'3', 0, 0, 0, 4}
	msgReadyIdle     = []byte{'Z', 0, 0, 0, 5, 'I'}
)

// pump relays server messages to the client until every pending entry is
// answered. Entries the proxy answers itself are emitted in their turn.
func (ss *session) pump() error {
	sc := ss.sc
	got := false
	for {
		for ss.pendingLen() > 0 && ss.pending[ss.head].mode == mSynth {
			p := &ss.pending[ss.head]
			switch {
			case p.data != nil:
				ss.w.Append(p.data)
				if p.data[0] == 'Z' {
					ss.readyForQuery(p.data[5], true)
				}
			case p.kind == pParse:
				ss.w.Append(msgParseComplete)
			case p.kind == pClose:
				ss.w.Append(msgCloseComplete)
			}
			ss.pop()
		}
		if ss.pendingLen() == 0 {
			return nil
		}
		if got && sc.R.Buffered() == 0 && ss.w.Len() > 0 {
			// Nothing more to read without waiting: let the client have
			// what there is (rows before a slow function finishes). Not
			// before the server's first answer: until then the statement
			// can still be retried elsewhere if the server is gone.
			if err := ss.w.Flush(); err != nil {
				return clientError{err}
			}
		}
		typ, msg, err := sc.R.Next()
		if err != nil {
			return err
		}
		got = true
		h := &ss.pending[ss.head]
		if !answers(h.kind, typ) {
			// The server's answers no longer line up with what was asked:
			// relaying on would hand one client another's results.
			return &desyncError{got: typ, want: h.kind, pending: ss.pendingKinds()}
		}
		fwd := h.mode == mForward && !(typ == 'Z' && h.quietZ)
		switch typ {
		case 'D', 'd': // DataRow, CopyData: the bulk of traffic
			if fwd {
				if err := ss.emit(msg); err != nil {
					return err
				}
			}
		case 'C': // CommandComplete
			if fwd {
				if err := ss.emit(msg); err != nil {
					return err
				}
			}
			if bytes.HasPrefix(wire.Body(msg), []byte("ROLLBACK")) {
				ss.sawRollback = true
			}
			if h.kind == pExecute {
				ss.stash = append(ss.stash, h.sets...)
				ss.pop()
			} else if h.kind == pQuery && len(h.sets) > 0 {
				// Settings of a simple query apply once it all succeeded.
				ss.stash = append(ss.stash, h.sets...)
				h.sets = nil
			}
		case 'Z': // ReadyForQuery
			status := byte('I')
			if len(msg) > 5 {
				status = msg[5]
			}
			sc.TxStatus = status
			quiet := h.quietZ
			ss.pop()
			if quiet && status == 'E' && ss.tx.open {
				ss.tx.failed = true
			}
			if fwd {
				if ss.tx.open {
					// The client's transaction spans the proxy's view of
					// every shard, not just this server's.
					if status == 'E' {
						ss.tx.failed = true
					}
					status = ss.clientStatus()
					msg[5] = status
				}
				if err := ss.emit(msg); err != nil {
					return err
				}
				ss.readyForQuery(status, true)
			}
		case 'E':
			if ss.cur >= len(ss.topo.primaries) && errorSeverity(msg) == "FATAL" {
				// A replica going away (shutdown, crash of its
				// postmaster): the read can still run elsewhere.
				return serverFatal{decodeError(msg)}
			}
			if err := ss.serverError(h, msg); err != nil {
				return err
			}
		case '1', '2', '3': // ParseComplete, BindComplete, CloseComplete
			if fwd {
				ss.w.Append(msg)
			}
			ss.pop()
		case 'T', 'n': // RowDescription, NoData
			if fwd {
				ss.w.Append(msg)
			}
			if h.kind == pDescribeStmt || h.kind == pDescribePortl {
				ss.pop()
			}
		case 'I', 's': // EmptyQueryResponse, PortalSuspended
			if fwd {
				ss.w.Append(msg)
			}
			if h.kind == pExecute {
				ss.pop()
			}
		case 'S': // ParameterStatus
			ss.parameterStatus(msg)
			if fwd {
				ss.w.Append(msg)
			}
		case 'G': // CopyInResponse: the client streams rows to the server
			ss.w.Append(msg)
			if err := ss.copyIn(); err != nil {
				return err
			}
		default: // 't', 'H', 'c', 'N', 'A', 'V', 'W', ...
			if fwd || typ == 'A' {
				if err := ss.emit(msg); err != nil {
					return err
				}
			}
		}
	}
}

// readyForQuery settles transaction state and session settings at the end
// of a query or Sync.
func (ss *session) readyForQuery(status byte, counted bool) {
	prev := ss.txStatus
	if counted && status == 'I' && ss.srv.hooks.Transaction != nil && (prev != 'I' || !ss.errSeen) {
		ss.srv.hooks.Transaction()
	}
	// A failed statement's settings never happened. ROLLBACK TO SAVEPOINT
	// also reports "ROLLBACK" but leaves the transaction open ('T'): its
	// marker in the settings list undoes what followed the savepoint.
	if ss.errSeen {
		ss.stash = ss.stash[:0]
	}
	switch {
	case status == 'I' && ss.sawRollback:
		ss.stash = ss.stash[:0]
		ss.txSets = ss.txSets[:0]
	case status == 'I':
		if len(ss.txSets) > 0 || len(ss.stash) > 0 {
			if ops := resolveSavepoints(append(ss.txSets, ss.stash...)); len(ops) > 0 {
				ss.applySets(ops)
			}
		}
		ss.txSets = ss.txSets[:0]
		ss.stash = ss.stash[:0]
	case status == 'T', status == 'E':
		ss.txSets = append(ss.txSets, ss.stash...)
		ss.stash = ss.stash[:0]
	}
	if counted || prev != 0 {
		ss.txStatus = status
		ss.noteTxEpoch()
	}
	ss.errSeen = false
	ss.sawRollback = false
}

// serverError relays an ErrorResponse and, in the extended protocol,
// drops what the server will now skip until Sync.
func (ss *session) serverError(h *pend, msg []byte) error {
	if h.mode == mSwallow && h.kind == pQuery {
		e := decodeError(msg)
		switch {
		case h.login:
			ss.loginErr = e
		case h.capture:
			if ss.captured == nil {
				e.Severity = "ERROR"
				e.Fields = nil
				ss.captured = e
			}
		default:
			ss.srv.log.Warn("applying session settings failed", "pid", ss.pid, "err", e)
		}
		return nil
	}
	ss.errSeen = true
	ss.errCount++
	if ss.srv.hooks.Error != nil {
		ss.srv.hooks.Error(errorCode(msg))
	}
	if err := ss.emit(msg); err != nil {
		return err
	}
	if h.kind == pQuery {
		return nil // the ReadyForQuery still comes
	}
	for ss.pendingLen() > 0 && ss.pending[ss.head].kind != pSync {
		if f := ss.pending[ss.head].forget; f != "" {
			ss.sc.ForgetPrepared(f)
		}
		ss.pop()
	}
	if ss.pendingLen() == 0 {
		ss.skipToSync = true
	}
	return nil
}

// copyIn streams COPY FROM STDIN data from the client to the server until
// CopyDone or CopyFail.
func (ss *session) copyIn() error {
	if err := ss.w.Flush(); err != nil {
		return clientError{err}
	}
	sc := ss.sc
	for {
		if ss.r.Buffered() == 0 && sc.W.Len() > 0 {
			if err := sc.W.Flush(); err != nil {
				return err
			}
		}
		typ, msg, err := ss.r.Next()
		if err != nil {
			ss.reportTooLarge(err)
			return clientError{err}
		}
		switch typ {
		case 'd':
			sc.W.Append(msg)
			if sc.W.Len() >= serverFlushAt {
				if err := sc.W.Flush(); err != nil {
					return err
				}
			}
		case 'c', 'f':
			sc.W.Append(msg)
			return sc.W.Flush()
		case 'H', 'S':
			// The server ignores these during COPY; pass them on as sent.
			sc.W.Append(msg)
		default:
			_ = sc.W.Send(&pgproto3.CopyFail{Message: "unexpected message type during COPY from stdin"})
			_ = sc.W.Flush()
			ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "unexpected message type %q during COPY from stdin", typ))
			return clientError{io.ErrUnexpectedEOF}
		}
	}
}

func (ss *session) parameterStatus(msg []byte) {
	name, rest, ok := cutCString(wire.Body(msg))
	if !ok {
		return
	}
	val, _, ok := cutCString(rest)
	if !ok {
		return
	}
	ss.sc.Reported[string(name)] = string(val)
}

// errorSeverity pulls the non-localized severity out of a raw ErrorResponse.
func errorSeverity(msg []byte) string {
	b := wire.Body(msg)
	sev := ""
	for len(b) > 0 && b[0] != 0 {
		f := b[0]
		v, rest, ok := cutCString(b[1:])
		if !ok {
			break
		}
		switch f {
		case 'V':
			return string(v)
		case 'S':
			sev = string(v)
		}
		b = rest
	}
	return sev
}

// errorCode pulls the SQLSTATE out of a raw ErrorResponse.
func errorCode(msg []byte) string {
	b := wire.Body(msg)
	for len(b) > 0 && b[0] != 0 {
		f := b[0]
		v, rest, ok := cutCString(b[1:])
		if !ok {
			break
		}
		if f == 'C' {
			return string(v)
		}
		b = rest
	}
	return ""
}

func decodeError(msg []byte) *wire.Error {
	var er pgproto3.ErrorResponse
	if err := er.Decode(wire.Body(msg)); err != nil {
		return wire.Errorf(wire.CodeProtocolViolation, "undecodable server error: %v", err)
	}
	return &wire.Error{Severity: "FATAL", Code: er.Code, Message: er.Message, Detail: er.Detail, Hint: er.Hint}
}

// answers reports whether a server message of type typ can be (part of)
// the answer to a pending message of kind kind. Asynchronous messages
// (notices, notifications, parameter changes) may come at any time.
func answers(kind, typ byte) bool {
	switch typ {
	case 'N', 'A', 'S', 'E':
		return true
	}
	switch kind {
	case pParse:
		return typ == '1'
	case pBind:
		return typ == '2'
	case pClose:
		return typ == '3'
	case pDescribeStmt:
		return typ == 't' || typ == 'T' || typ == 'n'
	case pDescribePortl:
		return typ == 'T' || typ == 'n'
	case pSync:
		return typ == 'Z'
	case pExecute:
		switch typ {
		case 'D', 'C', 'I', 's', 'G', 'H', 'W', 'd', 'c':
			return true
		}
	case pQuery:
		switch typ {
		case 'T', 'D', 'C', 'I', 'Z', 'G', 'H', 'W', 'd', 'c', 'V':
			return true
		}
	}
	return false
}

// desyncError reports a server answer that does not fit the pending queue.
type desyncError struct {
	got, want byte
	pending   string
}

func (e *desyncError) Error() string {
	return fmt.Sprintf("protocol desync: server sent %q while %q was pending (queue %s)", e.got, e.want, e.pending)
}

func (ss *session) pendingKinds() string {
	var b strings.Builder
	for _, p := range ss.pending[ss.head:] {
		b.WriteByte(p.kind)
		b.WriteByte("fsy"[p.mode])
	}
	return b.String()
}
