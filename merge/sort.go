package merge

import (
	"encoding/binary"
	"math"
	"math/big"
	"slices"

	"github.com/shardproxy/shardproxy/wire"
)

const codeOutOfMemory = "53200"

// ORDER BY: rows are buffered with their sort keys decoded once, then
// sorted in Finish. Without a LIMIT every row is kept; sorting compares
// compact entries whose first key is folded into an order-preserving
// uint64, so most comparisons stay in cache and never look at the row.
// With a LIMIT only LIMIT+OFFSET rows are kept, in a max-heap.

type sortCol struct {
	col        int
	desc       bool
	nullsFirst bool
	c          *column
}

// brow is a buffered row with its decoded sort keys.
type brow struct {
	data  []byte
	keys  []val
	shard int64
	seq   int64
}

// sortEnt is one row in the unbounded sort buffer. It holds no pointers
// (the row is found by index), so sorting moves plain words: no write
// barriers, nothing for the GC to scan.
type sortEnt struct {
	pre uint64 // the first sort key, order-preserving (see prefixKind), DESC already applied
	ord uint64 // shard<<40 | arrival: the tie-break
	idx uint32 // the row: mg.slabs[idx/slabRows][idx%slabRows]
	nr  uint8  // the first key's NULL rank: 0 NULLS FIRST, 1 value, 2 NULLS LAST
	// ex: pre stands for this value exactly (a short text, a numeric
	// that is a float64), so two ex entries with equal pre have equal keys.
	ex bool
}

// slabRows is how many buffered rows share one allocation.
const slabRows = 256

func (mg *Merger) rowAt(idx uint32) *brow { return &mg.slabs[idx/slabRows][idx%slabRows] }

// prefixKind says how well sortEnt.pre represents the first key.
type prefixKind uint8

const (
	prefixNone    prefixKind = iota // pre is 0: always compare the keys
	prefixExact                     // equal pre means equal key
	prefixPartial                   // pre orders, but equal pre needs the keys compared
)

func prefixKindOf(cls class) prefixKind {
	switch cls {
	case clsInt, clsBool, clsDate, clsTime, clsTimestamp, clsFloat:
		return prefixExact
	case clsText, clsBpchar, clsBytea, clsUUID, clsNumeric:
		return prefixPartial
	}
	return prefixNone
}

// prefix maps a non-NULL value to a uint64 whose unsigned order agrees
// with the value order (ties allowed unless the kind is exact); exact
// reports that this value alone is the only one with that prefix.
func prefix(cls class, v *val) (pre uint64, exact bool) {
	switch cls {
	case clsInt, clsBool, clsDate, clsTime, clsTimestamp:
		return uint64(v.i) ^ 1<<63, true
	case clsFloat:
		return floatPrefix(v.f), true
	case clsText, clsBpchar, clsBytea:
		var b [8]byte
		copy(b[:], v.b)
		// Text cannot contain NUL bytes, so zero padding is unambiguous
		// for up to 8 bytes; bytea can.
		return binary.BigEndian.Uint64(b[:]), cls != clsBytea && len(v.b) <= 8
	case clsUUID:
		return uint64(v.i), false
	case clsNumeric:
		f, exact := decimalFloat(v.d)
		return floatPrefix(f), exact
	}
	return 0, false
}

// floatPrefix orders floats as PostgreSQL does: -0 equals 0, NaN is
// above everything (and equals NaN).
func floatPrefix(f float64) uint64 {
	switch {
	case math.IsNaN(f):
		return math.MaxUint64
	case f == 0:
		f = 0
	}
	b := math.Float64bits(f)
	if b>>63 != 0 {
		return ^b
	}
	return b | 1<<63
}

// decimalFloat converts d to the nearest float64 (NaN above +Inf through
// floatPrefix). Correct rounding keeps the conversion monotonic, which is
// all the prefix needs: values that round alike are compared exactly,
// unless exact says the float64 is the value itself.
func decimalFloat(d *decimal) (f float64, exact bool) {
	switch d.special {
	case decNaN:
		return math.NaN(), true
	case decPosInf:
		return math.Inf(1), false // huge finite values round to +Inf too
	case decNegInf:
		return math.Inf(-1), false
	}
	if d.coef.IsInt64() && d.scale <= 22 {
		// Both operands are exact float64s, so the division rounds once.
		// c / 10^s = (c / 5^s) / 2^s is a float64 when 5^s divides c.
		if c := d.coef.Int64(); c >= -1<<53 && c <= 1<<53 {
			exact = d.scale <= 27 && c%pow5[d.scale] == 0
			return float64(c) / math.Pow10(int(d.scale)), exact
		}
	}
	var num, den big.Float
	num.SetPrec(256).SetInt(&d.coef)
	den.SetPrec(256).SetInt(pow10(int64(d.scale)))
	f, _ = new(big.Float).SetPrec(53).Quo(&num, &den).Float64()
	return f, false
}

// pow5[i] is 5^i, for the exactness test above.
var pow5 = func() (p [28]int64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 5
	}
	return p
}()

// buffer keeps a row for ordering: all of them, or with a LIMIT only the
// first LIMIT+OFFSET in a max-heap, so memory stays bounded.
func (mg *Merger) buffer(shard int64, row []byte) error {
	var r *brow
	if mg.heapCap >= 0 {
		if mg.heapCap == 0 {
			return nil
		}
		r = mg.spare
		mg.spare = nil
		if r == nil {
			r = &brow{keys: make([]val, len(mg.sorts))}
		}
		r.data = append(r.data[:0], row...)
	} else {
		if len(mg.ents) >= math.MaxUint32 {
			return wire.Errorf(codeOutOfMemory, "too many rows to sort across shards")
		}
		if len(mg.ents)%slabRows == 0 {
			mg.slabs = append(mg.slabs, make([]brow, slabRows))
		}
		r = mg.rowAt(uint32(len(mg.ents)))
		if len(mg.valBuf) < len(mg.sorts) {
			mg.valBuf = make([]val, max(1024, len(mg.sorts)))
		}
		r.keys = mg.valBuf[:len(mg.sorts):len(mg.sorts)]
		mg.valBuf = mg.valBuf[len(mg.sorts):]
		r.data = mg.arena.copy(row)
	}
	r.shard, r.seq = shard, mg.seq
	mg.seq++
	for k := range mg.sorts {
		s := &mg.sorts[k]
		var raw []byte
		if off := mg.offs[s.col]; off >= 0 {
			raw = r.data[off : int(off)+len(mg.fields[s.col])]
		}
		if err := s.c.decode(raw, &r.keys[k]); err != nil {
			return mg.badValue(s.col, err)
		}
	}
	if mg.heapCap < 0 {
		e := sortEnt{idx: uint32(len(mg.ents)), ord: uint64(shard)<<40 | uint64(r.seq), nr: 1}
		s := &mg.sorts[0]
		switch k0 := &r.keys[0]; {
		case k0.null && s.nullsFirst:
			e.nr = 0
		case k0.null:
			e.nr = 2
		case mg.preKind != prefixNone:
			e.pre, e.ex = prefix(s.c.cls, k0)
			if s.desc {
				e.pre = ^e.pre
			}
		}
		mg.ents = append(mg.ents, e)
		return nil
	}
	if int64(len(mg.rows)) < mg.heapCap {
		mg.rows = append(mg.rows, r)
		mg.siftUp(len(mg.rows) - 1)
		return nil
	}
	if mg.cmpRows(r, mg.rows[0]) >= 0 {
		mg.spare = r
		return nil
	}
	mg.spare = mg.rows[0]
	mg.rows[0] = r
	mg.siftDown(0)
	return nil
}

// cmpKeys compares the sort keys from index from on.
func (mg *Merger) cmpKeys(a, b *brow, from int) int {
	for k := from; k < len(mg.sorts); k++ {
		s := &mg.sorts[k]
		va, vb := &a.keys[k], &b.keys[k]
		if va.null || vb.null {
			if va.null == vb.null {
				continue
			}
			if va.null == s.nullsFirst {
				return -1
			}
			return 1
		}
		if c := compare(s.c.cls, va, vb, &mg.tmp); c != 0 {
			if s.desc {
				return -c
			}
			return c
		}
	}
	return 0
}

// cmpRows is the final order: the sort keys, then shard, then arrival, so
// ties keep shard order and each shard's own order.
func (mg *Merger) cmpRows(a, b *brow) int {
	if c := mg.cmpKeys(a, b, 0); c != 0 {
		return c
	}
	if a.shard != b.shard {
		return cmpInt(a.shard, b.shard)
	}
	return cmpInt(a.seq, b.seq)
}

// cmpEnts is cmpRows on sort entries, looking at the rows only when the
// first key's prefix cannot decide.
func (mg *Merger) cmpEnts(a, b sortEnt) int {
	if a.nr != b.nr {
		return int(a.nr) - int(b.nr)
	}
	from := 0
	if a.nr != 1 {
		from = 1 // both NULL: the first key is equal
	} else if mg.preKind != prefixNone {
		if a.pre != b.pre {
			return cmpUint(a.pre, b.pre)
		}
		if mg.preKind == prefixExact || (a.ex && b.ex) {
			from = 1
		}
	}
	if from < len(mg.sorts) {
		if c := mg.cmpKeys(mg.rowAt(a.idx), mg.rowAt(b.idx), from); c != 0 {
			return c
		}
	}
	return cmpUint(a.ord, b.ord)
}

// The heap keeps the greatest retained row at the root, to be evicted
// first when a smaller one arrives.
func (mg *Merger) siftUp(i int) {
	h := mg.rows
	for i > 0 {
		p := (i - 1) / 2
		if mg.cmpRows(h[i], h[p]) <= 0 {
			return
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (mg *Merger) siftDown(i int) {
	h := mg.rows
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		largest := l
		if r := l + 1; r < len(h) && mg.cmpRows(h[r], h[l]) > 0 {
			largest = r
		}
		if mg.cmpRows(h[largest], h[i]) <= 0 {
			return
		}
		h[i], h[largest] = h[largest], h[i]
		i = largest
	}
}

func (mg *Merger) flushSorted() error {
	if mg.heapCap >= 0 {
		slices.SortFunc(mg.rows, mg.cmpRows)
		for i, r := range mg.rows {
			if mg.done {
				break
			}
			if err := mg.deliver(r.data); err != nil {
				return err
			}
			mg.rows[i] = nil
		}
		mg.rows = nil
		return nil
	}
	slices.SortFunc(mg.ents, mg.cmpEnts)
	for _, e := range mg.ents {
		if mg.done {
			break
		}
		if err := mg.deliver(mg.rowAt(e.idx).data); err != nil {
			return err
		}
	}
	mg.ents, mg.slabs = nil, nil
	return nil
}
