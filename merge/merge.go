// Package merge combines the rows that the shards return for a fan-out
// read (plan.FanOut) into what the client would get from one PostgreSQL
// holding all the rows: it regroups and re-aggregates partial
// aggregates, filters HAVING, removes duplicates across shards, orders,
// applies LIMIT/OFFSET and strips the helper columns the router added.
//
// The merger works on raw protocol messages: RowDescription ('T') and
// DataRow ('D') bytes, so rows that need no combining reach the client
// unchanged and without copies. Values it must look into are decoded per
// column type and format (text or binary, as the client asked in Bind);
// values it computes (counts, sums, averages) are encoded in that format,
// byte for byte as PostgreSQL would send them.
//
// Pipeline, in PostgreSQL's own order of evaluation:
//
//	shard rows -> [group + aggregate] -> [HAVING] -> [DISTINCT] -> [ORDER BY] -> [OFFSET/LIMIT] -> strip hidden -> emit
//
// Without grouping or ordering rows stream straight through; with
// ordering they are buffered and sorted in Finish (only LIMIT+OFFSET of
// them when a LIMIT bounds the result); groups live until Finish.
//
// Ordering and comparisons follow PostgreSQL's btree operators for the
// supported types (see class). Text is compared bytewise on UTF-8, which
// is the "C" collation (and C.UTF-8's codepoint order); columns with
// another collation are not ordered as PostgreSQL would order them, so
// the router must only plan merges of text ORDER BY/min/max it knows use
// C-like collations, or accept that difference.
//
// A Merger is used by one goroutine: the executor serializes Add calls
// when it reads the shards concurrently.
package merge

import (
	"encoding/binary"
	"fmt"
	"math/big"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// SQLSTATEs raised while merging, as PostgreSQL raises them.
const (
	codeOutOfRange         = "22003" // numeric_value_out_of_range
	codeInvalidText        = "22P02" // invalid_text_representation
	codeNegativeLimit      = "2201W" // invalid_row_count_in_limit_clause
	codeNegativeOffset     = "2201X" // invalid_row_count_in_result_offset_clause
	codeUndefinedParameter = "42P02"
)

// arenaChunk is the allocation unit for buffered rows: big enough that
// copying a row rarely allocates, small enough not to waste much.
const arenaChunk = 64 << 10

// Merger combines one fan-out result. Create it with New, then call
// Describe, Add for every row and Finish.
type Merger struct {
	m    plan.Merge
	emit func(row []byte) error
	// allVisible: New got a nil Merge, meaning plain concatenation of
	// whatever columns the shards return.
	allVisible bool
	limit      int64 // -1: no LIMIT
	offset     int64

	described bool
	ncols     int
	visible   int
	in        []column // columns as the shards send them
	out       []column // columns as the client gets them (avg retyped)

	// What Add has to do per row.
	passthrough bool // emit as received (no LIMIT/OFFSET, hidden columns, ordering, ...)
	needFields  bool // split rows into fields
	grouped     bool
	ordered     bool

	fields  [][]byte // fields of the row being processed (nil = NULL)
	offs    []int32  // their offsets in that row (-1 for NULL)
	out1    []byte   // the stripped row handed to emit
	rowBuf  []byte   // a group's combined row
	keyBuf  []byte
	scratch val
	tmp     big.Int

	skipped, emitted int64
	done             bool
	seq              int64

	seen map[string]struct{} // DISTINCT

	sorts   []sortCol
	heapCap int64      // rows to keep when ordered with a LIMIT; -1: all
	rows    []*brow    // with a LIMIT: a max-heap of the rows kept so far
	spare   *brow      // recycled heap row
	ents    []sortEnt  // without a LIMIT: every row, sorted in Finish
	preKind prefixKind // how sortEnt.pre encodes the first sort key
	slabs   [][]brow   // the rows behind ents
	arena   arena
	valBuf  []val

	aggs      []aggSpec
	aggOfCol  []int // column -> index in aggs, or -1
	groups    map[string]*group
	groupList []*group

	having []filterSpec
}

// group is one GROUP BY group: its first row (for grouping keys and the
// other non-aggregated columns) and the aggregate states.
type group struct {
	fields [][]byte
	aggs   []aggState
	shard  int64
	seq    int64
}

type arena struct{ buf []byte }

func (a *arena) copy(b []byte) []byte {
	if cap(a.buf)-len(a.buf) < len(b) {
		a.buf = make([]byte, 0, max(arenaChunk, len(b)))
	}
	n := len(a.buf)
	a.buf = append(a.buf, b...)
	return a.buf[n:len(a.buf):len(a.buf)]
}

// New prepares the merge of one fan-out result. params resolves LIMIT/OFFSET $N.
// emit receives each raw DataRow ('D' message, complete with type byte and length)
// for the client, in order. emit must not keep the slice after it returns: the
// merger reuses it (and a streamed row is the slice Add was given).
//
// A nil m means plain concatenation of the shards' rows.
func New(m *plan.Merge, params *plan.Params, emit func(row []byte) error) (*Merger, error) {
	mg := &Merger{emit: emit, limit: -1, heapCap: -1}
	if m == nil {
		mg.allVisible = true
	} else {
		mg.m = *m
	}
	if emit == nil {
		return nil, internalErr("New needs an emit function")
	}
	var err error
	if mg.limit, err = resolveCount(mg.m.Limit, params, true); err != nil {
		return nil, err
	}
	off, err := resolveCount(mg.m.Offset, params, false)
	if err != nil {
		return nil, err
	}
	mg.offset = max(off, 0)
	if mg.limit == 0 {
		mg.done = true
	}
	for _, f := range mg.m.Having {
		switch f.Op {
		case "=", "<>", "<", "<=", ">", ">=":
		default:
			return nil, internalErr("unknown HAVING operator %q", f.Op)
		}
		if f.Null && f.Op != "=" && f.Op != "<>" {
			return nil, internalErr("HAVING IS [NOT] NULL needs operator = or <>, got %q", f.Op)
		}
	}
	for _, a := range mg.m.Aggregates {
		if a.Func < plan.AggCount || a.Func > plan.AggBoolOr {
			return nil, internalErr("unknown aggregate %d on column %d", a.Func, a.Col)
		}
	}
	mg.grouped = mg.m.Grouped
	mg.ordered = len(mg.m.OrderBy) > 0
	if mg.ordered && mg.limit >= 0 {
		// Keep only the first LIMIT+OFFSET rows; saturate rather than overflow.
		mg.heapCap = mg.limit + mg.offset
		if mg.heapCap < 0 {
			mg.heapCap = -1
		}
	}
	if mg.m.Distinct {
		mg.seen = make(map[string]struct{})
	}
	return mg, nil
}

// Describe takes the RowDescription ('T' message, raw) a shard returned for
// ShardSQL and returns the client's RowDescription: hidden columns (from
// m.Visible on) removed, avg columns retyped (numeric when the sum column is
// an integer or numeric, float8 when it is float4/float8).
//
// It also learns each column's type OID and format (text/binary) for
// comparing and combining values, so rd must carry the result formats the
// shards will use for the rows (a portal Describe, or a statement Describe
// whose format codes the executor filled in from the client's Bind).
func (mg *Merger) Describe(rd []byte) ([]byte, error) {
	body, err := messageBody(rd, 'T')
	if err != nil {
		return nil, err
	}
	var desc pgproto3.RowDescription
	if err := desc.Decode(body); err != nil {
		return nil, internalErr("malformed RowDescription: %v", err)
	}
	n := len(desc.Fields)
	if mg.m.Relative {
		// A SELECT * plan names columns from the end; now the width is known.
		mg.m = mg.m.Resolve(n)
	}
	visible := mg.m.Visible
	if mg.allVisible {
		visible = n
	}
	if visible < 0 || visible > n {
		return nil, internalErr("plan shows %d columns but the shards return %d", visible, n)
	}
	if err := mg.checkColumns(n); err != nil {
		return nil, err
	}
	mg.ncols, mg.visible = n, visible
	mg.in = make([]column, n)
	mg.out = make([]column, n)
	for i, f := range desc.Fields {
		mg.in[i] = newColumn(f.DataTypeOID, f.Format)
		mg.out[i] = mg.in[i]
	}
	for _, a := range mg.m.Aggregates {
		// Only combined averages are split into sum and count; a
		// shard-local group's avg arrives finished.
		if a.Func != plan.AggAvg || !mg.grouped {
			continue
		}
		in := &mg.in[a.Col]
		f := &desc.Fields[a.Col]
		switch in.cls {
		case clsInt, clsNumeric:
			f.DataTypeOID, f.DataTypeSize = oidNumeric, -1
		case clsFloat:
			f.DataTypeOID, f.DataTypeSize = oidFloat8, 8
		default:
			return nil, unsupported("cannot merge avg over a sum of type %s across shards", typeName(in.oid))
		}
		f.TypeModifier = -1
		mg.out[a.Col] = newColumn(f.DataTypeOID, f.Format)
	}
	for i := range n {
		mg.in[i].prepare()
		mg.out[i].prepare()
	}
	if err := mg.plan(); err != nil {
		return nil, err
	}
	mg.described = true
	desc.Fields = desc.Fields[:visible]
	return desc.Encode(nil)
}

// checkColumns verifies that every column the plan names exists.
func (mg *Merger) checkColumns(n int) error {
	check := func(what string, c int) error {
		if c < 0 || c >= n {
			return internalErr("%s column %d is outside the %d columns the shards return", what, c, n)
		}
		return nil
	}
	for _, c := range mg.m.GroupBy {
		if err := check("GROUP BY", c); err != nil {
			return err
		}
	}
	for _, a := range mg.m.Aggregates {
		if err := check(a.Func.String(), a.Col); err != nil {
			return err
		}
		if a.Func == plan.AggAvg {
			if err := check("avg count", a.CountCol); err != nil {
				return err
			}
		}
	}
	for _, f := range mg.m.Having {
		if err := check("HAVING", f.Col); err != nil {
			return err
		}
	}
	for _, s := range mg.m.OrderBy {
		if err := check("ORDER BY", s.Col); err != nil {
			return err
		}
	}
	return nil
}

// plan derives the per-row work from the Merge and the column types.
func (mg *Merger) plan() error {
	n := mg.ncols
	mg.fields = make([][]byte, n)
	mg.offs = make([]int32, n)
	mg.sorts = mg.sorts[:0]
	for _, s := range mg.m.OrderBy {
		c := &mg.out[s.Col]
		if c.cls == clsOther {
			return unsupported("cannot merge ORDER BY on column of type %s across shards", typeName(c.oid))
		}
		mg.sorts = append(mg.sorts, sortCol{col: s.Col, desc: s.Desc, nullsFirst: s.NullsFirst, c: c})
	}
	if len(mg.sorts) > 0 {
		mg.preKind = prefixKindOf(mg.sorts[0].c.cls)
	}
	if err := mg.planGroups(); err != nil {
		return err
	}
	if mg.m.Distinct {
		for i := range mg.visible {
			if mg.out[i].oid == oidInterval {
				return unsupported("cannot merge DISTINCT on column of type %s across shards", typeName(oidInterval))
			}
		}
	}
	mg.having = mg.having[:0]
	for _, f := range mg.m.Having {
		fs, err := newFilter(f, &mg.out[f.Col])
		if err != nil {
			return err
		}
		mg.having = append(mg.having, fs)
	}
	mg.needFields = mg.grouped || mg.ordered || mg.m.Distinct || mg.visible < n || len(mg.having) > 0
	mg.passthrough = !mg.needFields && mg.limit < 0 && mg.offset == 0
	return nil
}

const oidInterval = 1186

// Done reports whether the client already has every row it will get (a
// LIMIT was reached while streaming, or LIMIT 0): the executor may stop
// reading the shards. Further Adds are ignored.
func (mg *Merger) Done() bool { return mg.done }

// Add takes one raw DataRow from shard (0-based). Rows that need no
// combining or ordering are emitted before Add returns; rows kept for
// later are copied, so the caller may reuse row afterwards.
func (mg *Merger) Add(shard int, row []byte) error {
	if mg.passthrough {
		// The plain concatenation: check the frame only, no copies.
		if len(row) < 7 || row[0] != 'D' || int(binary.BigEndian.Uint16(row[5:])) != mg.ncols {
			return internalErr("shard %d sent a malformed DataRow", shard)
		}
		mg.emitted++
		return mg.emitRow(row)
	}
	if !mg.described {
		return internalErr("Add before Describe")
	}
	if mg.done {
		return nil
	}
	if !mg.needFields {
		if len(row) < 7 || row[0] != 'D' || int(binary.BigEndian.Uint16(row[5:])) != mg.ncols {
			return internalErr("shard %d sent a malformed DataRow", shard)
		}
		return mg.deliver(row)
	}
	if err := mg.split(row); err != nil {
		return internalErr("shard %d sent a malformed DataRow: %v", shard, err)
	}
	if mg.grouped {
		return mg.addToGroup(int64(shard), row)
	}
	return mg.stage(int64(shard), row)
}

// Finish emits the remaining rows and returns how many rows the client got
// (for the "SELECT n" command tag).
func (mg *Merger) Finish() (int64, error) {
	if !mg.described {
		if mg.grouped && len(mg.m.GroupBy) == 0 {
			return 0, internalErr("Finish before Describe")
		}
		return mg.emitted, nil
	}
	if mg.grouped {
		if err := mg.flushGroups(); err != nil {
			return mg.emitted, err
		}
	}
	if mg.ordered {
		if err := mg.flushSorted(); err != nil {
			return mg.emitted, err
		}
	}
	return mg.emitted, nil
}

// split fills mg.fields / mg.offs from a DataRow with mg.ncols columns.
func (mg *Merger) split(row []byte) error {
	if len(row) < 7 || row[0] != 'D' {
		return fmt.Errorf("not a DataRow")
	}
	if int(binary.BigEndian.Uint32(row[1:])) != len(row)-1 {
		return fmt.Errorf("length %d does not match %d bytes", binary.BigEndian.Uint32(row[1:]), len(row)-1)
	}
	if n := int(binary.BigEndian.Uint16(row[5:])); n != mg.ncols {
		return fmt.Errorf("%d columns, RowDescription had %d", n, mg.ncols)
	}
	p := 7
	for i := range mg.ncols {
		if len(row)-p < 4 {
			return fmt.Errorf("truncated at column %d", i)
		}
		l := int32(binary.BigEndian.Uint32(row[p:]))
		p += 4
		if l < 0 {
			mg.fields[i], mg.offs[i] = nil, -1
			continue
		}
		if int(l) > len(row)-p {
			return fmt.Errorf("column %d overruns the message", i)
		}
		mg.fields[i], mg.offs[i] = row[p:p+int(l):p+int(l)], int32(p)
		p += int(l)
	}
	if p != len(row) {
		return fmt.Errorf("%d trailing bytes", len(row)-p)
	}
	return nil
}

// stage runs the steps after grouping for a row whose fields are in
// mg.fields: HAVING, DISTINCT, then ordering or delivery.
func (mg *Merger) stage(shard int64, row []byte) error {
	for i := range mg.having {
		ok, err := mg.having[i].match(mg.fields[mg.having[i].col], mg)
		if err != nil || !ok {
			return err
		}
	}
	if mg.seen != nil {
		key := mg.keyBuf[:0]
		for i := range mg.visible {
			var err error
			if key, err = mg.out[i].appendKey(key, mg.fields[i], &mg.scratch); err != nil {
				return mg.badValue(i, err)
			}
		}
		mg.keyBuf = key
		if _, dup := mg.seen[string(key)]; dup {
			return nil
		}
		mg.seen[string(key)] = struct{}{}
	}
	if mg.ordered {
		return mg.buffer(shard, row)
	}
	return mg.deliver(row)
}

// deliver applies OFFSET and LIMIT and emits row without hidden columns.
func (mg *Merger) deliver(row []byte) error {
	if mg.done {
		return nil
	}
	if mg.skipped < mg.offset {
		mg.skipped++
		return nil
	}
	mg.emitted++
	if mg.limit >= 0 && mg.emitted >= mg.limit {
		mg.done = true
	}
	if mg.visible < mg.ncols {
		row = mg.strip(row)
	}
	return mg.emitRow(row)
}

func (mg *Merger) emitRow(row []byte) error {
	if err := mg.emit(row); err != nil {
		return fmt.Errorf("merge: emit row: %w", err)
	}
	return nil
}

// strip returns row without the hidden columns. They are always the last
// ones, so the visible fields are a prefix of the message body.
func (mg *Merger) strip(row []byte) []byte {
	p := 7
	for range mg.visible {
		l := int32(binary.BigEndian.Uint32(row[p:]))
		p += 4
		if l > 0 {
			p += int(l)
		}
	}
	out := append(mg.out1[:0], 'D', 0, 0, 0, 0, byte(mg.visible>>8), byte(mg.visible))
	out = append(out, row[7:p]...)
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	mg.out1 = out
	return out
}

// addToGroup folds a shard row (in mg.fields) into its group.
func (mg *Merger) addToGroup(shard int64, row []byte) error {
	key := mg.keyBuf[:0]
	for _, c := range mg.m.GroupBy {
		var err error
		if key, err = mg.in[c].appendKey(key, mg.fields[c], &mg.scratch); err != nil {
			return mg.badValue(c, err)
		}
	}
	mg.keyBuf = key
	g, ok := mg.groups[string(key)]
	if !ok {
		g = mg.newGroup(shard, row)
		if mg.groups == nil {
			mg.groups = make(map[string]*group)
		}
		mg.groups[string(key)] = g
	}
	for i := range mg.aggs {
		if err := mg.aggs[i].add(&g.aggs[i], mg.fields, mg); err != nil {
			return err
		}
	}
	return nil
}

func (mg *Merger) newGroup(shard int64, row []byte) *group {
	g := &group{shard: shard, seq: mg.seq, aggs: make([]aggState, len(mg.aggs))}
	mg.seq++
	g.fields = make([][]byte, mg.ncols)
	if row != nil {
		data := mg.arena.copy(row)
		for i, off := range mg.offs {
			if off >= 0 {
				g.fields[i] = data[off : int(off)+len(mg.fields[i])]
			}
		}
	}
	mg.groupList = append(mg.groupList, g)
	return g
}

// flushGroups turns each group into a row and sends it down the pipeline.
func (mg *Merger) flushGroups() error {
	if len(mg.groupList) == 0 && len(mg.m.GroupBy) == 0 {
		// Aggregates without GROUP BY always yield one row, even when no
		// shard sent one (count 0, other aggregates NULL).
		mg.newGroup(0, nil)
	}
	for gi, g := range mg.groupList {
		row, err := mg.groupRow(g)
		if err != nil {
			return err
		}
		mg.groupList[gi] = nil
		if err := mg.split(row); err != nil {
			return internalErr("combined row: %v", err)
		}
		mg.seq = g.seq
		if err := mg.stage(g.shard, row); err != nil {
			return err
		}
		if mg.done {
			break
		}
	}
	mg.groupList, mg.groups = nil, nil
	return nil
}

// groupRow renders a group as a DataRow with every column, aggregates
// finished and encoded in their column's format.
func (mg *Merger) groupRow(g *group) ([]byte, error) {
	buf := append(mg.rowBuf[:0], 'D', 0, 0, 0, 0, byte(mg.ncols>>8), byte(mg.ncols))
	for c := range mg.ncols {
		lenAt := len(buf)
		buf = append(buf, 0, 0, 0, 0)
		if ai := mg.aggOfCol[c]; ai >= 0 {
			var null bool
			var err error
			buf, null, err = mg.aggs[ai].final(buf, &g.aggs[ai], mg)
			if err != nil {
				return nil, err
			}
			if null {
				buf = buf[:lenAt+4]
				binary.BigEndian.PutUint32(buf[lenAt:], 0xFFFFFFFF)
				continue
			}
		} else if g.fields[c] == nil {
			binary.BigEndian.PutUint32(buf[lenAt:], 0xFFFFFFFF)
			continue
		} else {
			buf = append(buf, g.fields[c]...)
		}
		binary.BigEndian.PutUint32(buf[lenAt:], uint32(len(buf)-lenAt-4))
	}
	binary.BigEndian.PutUint32(buf[1:], uint32(len(buf)-1))
	mg.rowBuf = buf
	return buf, nil
}

func (mg *Merger) badValue(col int, err error) error {
	return internalErr("cannot read column %d (%s): %v", col, mg.out[col].String(), err)
}

func messageBody(msg []byte, typ byte) ([]byte, error) {
	if len(msg) < 5 || msg[0] != typ || int(binary.BigEndian.Uint32(msg[1:])) != len(msg)-1 {
		return nil, internalErr("expected a complete %q message", typ)
	}
	return msg[5:], nil
}

func internalErr(format string, args ...any) *wire.Error {
	return wire.Errorf(wire.CodeInternalError, "merge: "+format, args...)
}

func unsupported(format string, args ...any) *wire.Error {
	return wire.Errorf(wire.CodeFeatureNotSupported, format, args...).
		WithHint("Run the query on one shard (shardproxy.shard) or restrict it by the shard key.")
}
