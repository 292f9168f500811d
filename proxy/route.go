package proxy

import (
	"encoding/binary"
	"fmt"
	"math/big"
	"sort"
	"strings"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/router"
	"github.com/shardproxy/shardproxy/shard"
	"github.com/shardproxy/shardproxy/wire"
)

// Targets of an op besides a shard index (>= 0).
const (
	tLocal = -1 // answered by the proxy itself
	tMulti = -2 // runs on several shards as one unit
	tSync  = -3 // Sync: every server connection the segment used
)

// stmtInfo is what the session knows of a statement the client parsed.
type stmtInfo struct {
	sql  string
	st   *plan.Statement
	oids []uint32
	sets []setOp // session settings it changes when executed
}

// portalInfo is where a bound portal lives.
type portalInfo struct {
	tgt  int
	unit *unit
	st   *plan.Statement // for portals answered locally (BEGIN, SHOW shardproxy.x)
	info *stmtInfo
}

// statementOf analyzes one statement text, which must hold exactly one
// statement for the extended protocol.
func (ss *session) statementOf(sql string) *plan.Statement {
	parts := ss.srv.router.Analyze(sql)
	switch len(parts) {
	case 0:
		return emptyStatement
	case 1:
		return parts[0].Stmt
	}
	return multiInPrepared
}

var (
	emptyStatement  = &plan.Statement{Kind: plan.Default}
	multiInPrepared = &plan.Statement{Kind: plan.Refused, Command: "SELECT",
		Err: wire.Errorf(wire.CodeSyntaxError, "cannot insert multiple commands into a prepared statement")}
)

// forcedShard is the shard shardproxy.shard (or a hint) names, or -1.
func (ss *session) forcedShard(st *plan.Statement) (int, *wire.Error) {
	name := st.Hints.Shard
	if name == "" {
		name = ss.forceShard
	}
	if name == "" {
		return -1, nil
	}
	for i, n := range ss.topo.shardNames {
		if n == name {
			return i, nil
		}
	}
	return -1, wire.Errorf(wire.CodeInvalidParameterValue, "shardproxy.shard: no shard named %q", name).
		WithHint("Known shards: " + strings.Join(ss.topo.shardNames, ", "))
}

// route decides where a statement with the given bound parameters runs:
// a shard index, tLocal (the proxy answers) or tMulti with the shards.
func (ss *session) route(st *plan.Statement, p *plan.Params) (tgt int, shards []int, err *wire.Error) {
	if st.Kind == plan.Refused {
		// Refused only for spanning shards: fine on one forced shard.
		if f, e := ss.forcedShard(st); st.CrossShard && e == nil && f >= 0 {
			return f, nil, nil
		}
		return tLocal, nil, st.Err
	}
	if st.Kind == plan.Local {
		return tLocal, nil, nil
	}
	if f, e := ss.forcedShard(st); e != nil || f >= 0 {
		return f, nil, e
	}
	switch st.Kind {
	case plan.Default:
		return ss.srv.defShard, nil, nil
	case plan.AnyShard:
		// A shard the session already holds a primary connection to.
		for i, c := range ss.conns[:len(ss.topo.primaries)] {
			if c != nil {
				return i, nil, nil
			}
		}
		return ss.srv.defShard, nil, nil
	case plan.Keyed, plan.FanOut:
		if st.Kind == plan.FanOut && len(st.Keys) == 0 {
			return tMulti, ss.topo.allShards, nil
		}
		m := ss.srv.ShardMap()
		var one = -1
		var many []int
		for _, k := range st.Keys {
			owners, err := locateKey(m, k, p)
			if err != nil {
				return tLocal, nil, asWireError(err)
			}
			owners = ss.frozenOwner(owners)
			for _, o := range owners {
				if one < 0 {
					one = o
				} else if o != one {
					if many == nil {
						many = []int{one}
					}
					many = appendUnique(many, o)
				}
			}
		}
		if many != nil {
			sort.Ints(many)
			return tMulti, many, nil
		}
		if one < 0 {
			return tMulti, ss.topo.allShards, nil
		}
		return one, nil, nil
	case plan.InsertSplit:
		rows, err := ss.splitRows(st, p)
		if err != nil {
			return tLocal, nil, err
		}
		if len(rows) == 1 {
			for s := range rows {
				return s, nil, nil
			}
		}
		shards := make([]int, 0, len(rows))
		for s := range rows {
			shards = append(shards, s)
		}
		sort.Ints(shards)
		return tMulti, shards, nil
	default: // FanOut, Broadcast, CopyIn
		return tMulti, ss.topo.allShards, nil
	}
}

// splitRows groups the rows of a multi-row INSERT by owning shard.
func (ss *session) splitRows(st *plan.Statement, p *plan.Params) (map[int][]int, *wire.Error) {
	m := ss.srv.ShardMap()
	rows := map[int][]int{}
	for i, k := range st.Insert.Rows {
		owners, err := locateKey(m, k, p)
		if err != nil {
			return nil, asWireError(err)
		}
		owners = ss.frozenOwner(owners)
		if len(owners) != 1 {
			return nil, wire.Errorf(wire.CodeFeatureNotSupported, "INSERT row %d into %s has no single owning shard", i+1, st.Table)
		}
		rows[owners[0]] = append(rows[owners[0]], i)
	}
	return rows, nil
}

func appendUnique(s []int, v int) []int {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

func asWireError(err error) *wire.Error {
	if e, ok := err.(*wire.Error); ok {
		return e
	}
	return wire.Errorf(wire.CodeInternalError, "routing: %v", err)
}

// decodeBind reads a Bind message's parameters into ss.bindParams
// (values alias the message). It returns the portal and statement names.
func (ss *session) decodeBind(msg []byte, oids []uint32) (portal, stmt []byte, ok bool) {
	p := &ss.bindParams
	p.Values = p.Values[:0]
	p.Formats = p.Formats[:0]
	p.OIDs = oids
	b := wire.Body(msg)
	portal, b, ok = cutCString(b)
	if !ok {
		return nil, nil, false
	}
	stmt, b, ok = cutCString(b)
	if !ok || len(b) < 2 {
		return nil, nil, false
	}
	nf := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < 2*nf+2 {
		return nil, nil, false
	}
	for i := 0; i < nf; i++ {
		p.Formats = append(p.Formats, int16(binary.BigEndian.Uint16(b[2*i:])))
	}
	b = b[2*nf:]
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < np; i++ {
		if len(b) < 4 {
			return nil, nil, false
		}
		n := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if n < 0 {
			p.Values = append(p.Values, nil)
			continue
		}
		if int(n) > len(b) {
			return nil, nil, false
		}
		p.Values = append(p.Values, b[:n:n])
		b = b[n:]
	}
	return portal, stmt, true
}

// parseOIDs reads the parameter types of a Parse body after the query.
func parseOIDs(rest []byte) []uint32 {
	if len(rest) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if n == 0 || len(rest) < 4*n {
		return nil
	}
	oids := make([]uint32, n)
	for i := range oids {
		oids[i] = binary.BigEndian.Uint32(rest[4*i:])
	}
	return oids
}

// explainRoute renders the shardproxy.explain NOTICE for a statement.
func (ss *session) explainRoute(st *plan.Statement, tgt int, shards []int) string {
	var where string
	switch {
	case tgt >= 0:
		where = ss.topo.slotNames[tgt]
	case tgt == tMulti:
		names := make([]string, len(shards))
		for i, s := range shards {
			names[i] = ss.topo.shardNames[s]
		}
		where = strings.Join(names, ",")
	default:
		where = "proxy"
	}
	role := "primary"
	if tgt >= len(ss.topo.primaries) {
		role = "replica"
	}
	return fmt.Sprintf("route: %s %s %s", where, role, router.Describe(st))
}

// locateKey is Locate, plus what PostgreSQL does with a numeric constant
// compared with or stored into an integer key: '46.0' is 46, 41.5 is
// stored as 42, and a value beyond bigint matches no row (and fails an
// INSERT on whichever shard runs it).
func locateKey(m *shard.Map, k plan.Key, p *plan.Params) ([]int, error) {
	owners, err := m.Locate(k, p)
	if err == nil {
		return owners, nil
	}
	we, ok := err.(*wire.Error)
	if !ok || (we.Code != wire.CodeInvalidTextRepr && we.Code != "22003") {
		return nil, err
	}
	t, ok := m.Table(k.Table)
	if !ok || !t.Type.IsInteger() {
		return nil, err
	}
	var text string
	switch {
	case k.IsValue:
		text = k.Value
	case k.Param > 0 && !p.Binary(k.Param):
		v, _ := p.Value(k.Param)
		text = string(v)
	default:
		return nil, err
	}
	r, ok := new(big.Rat).SetString(strings.TrimSpace(text))
	if !ok {
		return nil, err
	}
	// Round half away from zero, as numeric -> bigint does.
	half := big.NewRat(1, 2)
	if r.Sign() < 0 {
		half.Neg(half)
	}
	r.Add(r, half)
	n := new(big.Int).Quo(r.Num(), r.Denom())
	if !n.IsInt64() {
		return []int{m.ShardOfNull(k.Table)}, nil
	}
	return m.Locate(plan.Key{Table: k.Table, Column: k.Column, Value: n.String(), IsValue: true}, nil)
}
