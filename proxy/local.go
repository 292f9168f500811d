package proxy

import (
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// execLocal answers an op the proxy handles itself: statement bookkeeping
// (Parse, Close), and statements the router marked Local (transaction
// control, shardproxy.* settings).
func (ss *session) execLocal(o *op, msg []byte) error {
	switch o.typ {
	case 'P':
		if o.stmt == nil {
			ss.unnamedSent = nil
		}
		ss.synth(msgParseComplete)
	case 'C':
		ss.synth(msgCloseComplete)
	case 'H':
		if ss.sc != nil && ss.pendingLen() > 0 {
			ss.sc.W.Append(msg)
		}
	case 'B':
		ss.synth(msgBindComplete)
	case 'D':
		if len(msg) > 5 && msg[5] == 'S' {
			var oids []uint32
			if o.info != nil {
				oids = o.info.oids
			}
			ss.synth(encode(&pgproto3.ParameterDescription{ParameterOIDs: oids}))
		}
		if o.st != nil && o.st.Kind == plan.Local && o.st.Control.Kind == plan.ShowProxy {
			ss.synth(encode(showDescription(o.st.Control.Name)))
		} else {
			ss.synth(msgNoData)
		}
	case 'E', 'Q':
		if err := ss.endRun(); err != nil {
			return err
		}
		sql := o.sql
		if o.typ == 'E' && o.info != nil {
			sql = o.info.sql
		}
		errs := ss.errCount
		if err := ss.runLocal(o.st, sql, o.typ == 'Q'); err != nil {
			return err
		}
		if ss.errCount == errs {
			// Savepoint markers and the like, for settings bookkeeping.
			ss.stash = append(ss.stash, o.sets...)
		}
		if o.typ == 'Q' {
			ss.emitReady()
		}
	}
	return nil
}

var (
	msgBindComplete = []byte{'2', 0, 0, 0, 4}
	msgNoData       = []byte{'n', 0, 0, 0, 4}
)

func encode(m pgproto3.BackendMessage) []byte {
	b, _ := m.Encode(nil)
	return b
}

func showDescription(name string) *pgproto3.RowDescription {
	return &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{
		Name: []byte("shardproxy." + name), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1,
	}}}
}

// runLocal runs a Local statement and answers its result (without the
// ReadyForQuery). simple is true for the simple query protocol, where a
// ShowProxy also sends its RowDescription.
func (ss *session) runLocal(st *plan.Statement, sql string, simple bool) error {
	c := st.Control
	tag := st.Command
	var e *wire.Error
	var err error
	switch c.Kind {
	case plan.Begin:
		if ss.tx.open {
			ss.notice(wire.CodeActiveTransaction, "there is already a transaction in progress")
			break
		}
		ss.tx.open = true
		ss.tx.begin = sql
		ss.noteTxEpoch()
		tag = "BEGIN"
	case plan.Commit:
		tag = "COMMIT"
		switch {
		case !ss.tx.open:
			ss.notice(wire.CodeNoActiveTransaction, "there is no transaction in progress")
		case ss.tx.failed:
			tag = "ROLLBACK"
			err = ss.rollbackAll()
		default:
			e, err = ss.commitAll()
		}
		if c.Chain && e == nil && err == nil {
			ss.tx.open, ss.tx.begin = true, "BEGIN"
		}
	case plan.Rollback:
		tag = "ROLLBACK"
		if !ss.tx.open {
			ss.notice(wire.CodeNoActiveTransaction, "there is no transaction in progress")
		}
		err = ss.rollbackAll()
		if c.Chain {
			ss.tx.open, ss.tx.begin = true, "BEGIN"
		}
	case plan.Savepoint, plan.Release, plan.RollbackTo:
		tag, e, err = ss.savepoint(c)
	case plan.SetProxy, plan.ResetProxy:
		tag = "SET"
		if c.Kind == plan.ResetProxy {
			tag = "RESET"
		}
		e = ss.setProxy(c.Name, c.Value, c.Kind == plan.ResetProxy)
	case plan.ShowProxy:
		tag = "SHOW"
		v, ok := ss.showProxy(c.Name)
		if !ok {
			e = wire.Errorf("42704", "unrecognized configuration parameter \"shardproxy.%s\"", c.Name)
			break
		}
		if simple {
			ss.w.Append(encode(showDescription(c.Name)))
		}
		ss.w.Append(encode(&pgproto3.DataRow{Values: [][]byte{[]byte(v)}}))
	default:
		e = wire.Errorf(wire.CodeFeatureNotSupported, "%s is not supported through shardproxy", st.Command)
	}
	if err != nil {
		return err
	}
	if e != nil {
		ss.sendError(e)
		if ss.tx.open {
			ss.tx.failed = true
		}
		if !simple {
			ss.skipToSync = true
		}
		return nil
	}
	if tag == "ROLLBACK" {
		ss.sawRollback = true
	}
	ss.w.Append(encode(&pgproto3.CommandComplete{CommandTag: []byte(tag)}))
	return nil
}

func (ss *session) notice(code, msg string) {
	ss.w.Append(encode(&pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: code, Message: msg}))
}

// savepoint runs SAVEPOINT, RELEASE and ROLLBACK TO on every shard the
// transaction joined, and remembers open savepoints for shards joined later.
func (ss *session) savepoint(c *plan.Control) (string, *wire.Error, error) {
	var tag, sql, what string
	switch c.Kind {
	case plan.Savepoint:
		tag, sql, what = "SAVEPOINT", "SAVEPOINT ", "SAVEPOINT"
	case plan.Release:
		tag, sql, what = "RELEASE", "RELEASE SAVEPOINT ", "RELEASE SAVEPOINT"
	default:
		tag, sql, what = "ROLLBACK", "ROLLBACK TO SAVEPOINT ", "ROLLBACK TO SAVEPOINT"
	}
	if !ss.tx.open {
		return tag, wire.Errorf(wire.CodeNoActiveTransaction, "%s can only be used in transaction blocks", what), nil
	}
	at := -1
	for i := len(ss.tx.savepoints) - 1; i >= 0; i-- {
		if ss.tx.savepoints[i] == c.Name {
			at = i
			break
		}
	}
	if c.Kind != plan.Savepoint && at < 0 {
		return tag, wire.Errorf("3B001", "savepoint \"%s\" does not exist", c.Name), nil
	}
	e, err := ss.sendAll(ss.tx.joined, func(int) string { return sql + quoteIdent(c.Name) })
	if err != nil || e != nil {
		return tag, e, err
	}
	switch c.Kind {
	case plan.Savepoint:
		ss.tx.savepoints = append(ss.tx.savepoints, c.Name)
	case plan.Release:
		ss.tx.savepoints = ss.tx.savepoints[:at]
	default:
		ss.tx.savepoints = ss.tx.savepoints[:at+1]
		ss.tx.failed = false
	}
	return tag, nil, nil
}

// setProxy changes a shardproxy.* session setting.
func (ss *session) setProxy(name, value string, reset bool) *wire.Error {
	if reset || strings.EqualFold(value, "default") {
		value = ""
	}
	switch name {
	case "shard":
		if value == "" {
			ss.forceShard, ss.forceShardIdx = "", -1
			return nil
		}
		for i, n := range ss.topo.shardNames {
			if n == value {
				ss.forceShard, ss.forceShardIdx = value, i
				return nil
			}
		}
		return wire.Errorf(wire.CodeInvalidParameterValue, "invalid value for parameter \"shardproxy.shard\": %q", value).
			WithHint("Known shards: " + strings.Join(ss.topo.shardNames, ", "))
	case "explain":
		switch strings.ToLower(value) {
		case "", "off", "false", "0":
			ss.explainOn = false
		case "on", "true", "1":
			ss.explainOn = true
		default:
			return wire.Errorf(wire.CodeInvalidParameterValue, "parameter \"shardproxy.explain\" requires a Boolean value")
		}
	case "target":
		switch strings.ToLower(value) {
		case "", "auto", "primary", "replica":
			ss.target = strings.ToLower(value)
		default:
			return wire.Errorf(wire.CodeInvalidParameterValue, "invalid value for parameter \"shardproxy.target\": %q", value).
				WithHint("Use auto, primary or replica.")
		}
	case "max_replica_lag":
		var d time.Duration
		if value != "" {
			var err error
			if d, err = time.ParseDuration(value); err != nil || d < 0 {
				return wire.Errorf(wire.CodeInvalidParameterValue, "invalid value for parameter \"shardproxy.max_replica_lag\": %q", value).
					WithHint("Use a duration such as '500ms' or '2s'.")
			}
		}
		ss.maxLag, ss.maxLagD = value, d
	case "read_your_writes":
		switch strings.ToLower(value) {
		case "", "on", "off", "true", "false":
			ss.ryw = strings.ToLower(value)
		default:
			return wire.Errorf(wire.CodeInvalidParameterValue, "parameter \"shardproxy.read_your_writes\" requires a Boolean value")
		}
	default:
		return wire.Errorf("42704", "unrecognized configuration parameter \"shardproxy.%s\"", name)
	}
	return nil
}

func (ss *session) showProxy(name string) (string, bool) {
	or := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	switch name {
	case "shard":
		return ss.forceShard, true
	case "explain":
		if ss.explainOn {
			return "on", true
		}
		return "off", true
	case "target":
		return or(ss.target, "auto"), true
	case "max_replica_lag":
		return or(ss.maxLag, "0"), true
	case "read_your_writes":
		return or(ss.ryw, "on"), true
	}
	return "", false
}

// explain sends the shardproxy.explain NOTICE for a statement about to run.
func (ss *session) explain(o *op) error {
	var shards []int
	if o.unit != nil {
		shards = o.unit.shards
	}
	n := &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000",
		Message: ss.explainRoute(o.st, o.tgt, shards)}
	ss.synth(encode(n))
	return nil
}

// explains reports whether op o gets a route NOTICE: statements that
// start running (Query, Bind) with shardproxy.explain on.
func (ss *session) explains(o *op) bool {
	if o.st == nil || (o.typ != 'Q' && o.typ != 'B') {
		return false
	}
	return ss.explainOn || o.st.Hints.Explain
}
