package merge

import (
	"math"
	"math/big"
	"slices"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// aggSpec combines one aggregated column across shards.
type aggSpec struct {
	fn  plan.AggFunc
	col int
	in  *column // the shards' column (for avg: the partial sum)
	out *column // the client's column (for avg: numeric or float8)
	// avg: the hidden column with each shard's count.
	countCol int
	cnt      *column
}

// aggState is one group's running value for one aggregate. It holds a
// big.Int, so it is only used through pointers, never copied.
type aggState struct {
	has  bool    // a non-NULL input was seen
	i    int64   // count, integer sum, avg's count, bool
	f    float64 // float sum (float4 sums kept in float4 precision)
	d    decimal // numeric sum, avg's integer/numeric sum
	nan  bool    // numeric specials seen in partial sums
	pinf bool
	ninf bool
	raw  []byte // min/max: the best value as sent
	best val
}

func (mg *Merger) planGroups() error {
	mg.aggs = mg.aggs[:0]
	mg.aggOfCol = make([]int, mg.ncols)
	for i := range mg.aggOfCol {
		mg.aggOfCol[i] = -1
	}
	if !mg.grouped {
		return nil
	}
	for _, c := range mg.m.GroupBy {
		if mg.in[c].oid == oidInterval {
			return unsupported("cannot merge GROUP BY on column of type %s across shards", typeName(oidInterval))
		}
	}
	for _, a := range mg.m.Aggregates {
		if mg.aggOfCol[a.Col] >= 0 {
			return internalErr("column %d has two aggregates", a.Col)
		}
		if slices.Contains(mg.m.GroupBy, a.Col) {
			return internalErr("column %d is both grouped and aggregated", a.Col)
		}
		spec := aggSpec{fn: a.Func, col: a.Col, in: &mg.in[a.Col], out: &mg.out[a.Col]}
		bad := false
		switch a.Func {
		case plan.AggCount:
			bad = spec.in.cls != clsInt
		case plan.AggSum:
			bad = spec.in.cls != clsInt && spec.in.cls != clsFloat && spec.in.cls != clsNumeric
		case plan.AggMin, plan.AggMax:
			bad = spec.in.cls == clsOther
		case plan.AggAvg:
			spec.countCol, spec.cnt = a.CountCol, &mg.in[a.CountCol]
			if spec.cnt.cls != clsInt {
				return unsupported("cannot merge avg with a count column of type %s across shards", typeName(spec.cnt.oid))
			}
		case plan.AggBoolAnd, plan.AggBoolOr:
			bad = spec.in.cls != clsBool
		}
		if bad {
			return unsupported("cannot merge %s on column of type %s across shards", a.Func, typeName(spec.in.oid))
		}
		mg.aggOfCol[a.Col] = len(mg.aggs)
		mg.aggs = append(mg.aggs, spec)
	}
	// An avg's hidden count column is itself a count: if the plan does
	// not combine it, do so, so the column is right if anything reads it.
	for _, a := range mg.m.Aggregates {
		if a.Func == plan.AggAvg && mg.aggOfCol[a.CountCol] < 0 && !slices.Contains(mg.m.GroupBy, a.CountCol) {
			mg.aggOfCol[a.CountCol] = len(mg.aggs)
			mg.aggs = append(mg.aggs, aggSpec{fn: plan.AggCount, col: a.CountCol, in: &mg.in[a.CountCol], out: &mg.out[a.CountCol]})
		}
	}
	return nil
}

// add folds one shard's partial result (in fields) into st.
func (a *aggSpec) add(st *aggState, fields [][]byte, mg *Merger) error {
	raw := fields[a.col]
	v := &mg.scratch
	switch a.fn {
	case plan.AggCount:
		if raw == nil {
			return nil
		}
		if err := a.in.decode(raw, v); err != nil {
			return mg.badValue(a.col, err)
		}
		return addInt(&st.i, v.i)
	case plan.AggSum:
		if raw == nil {
			return nil
		}
		if err := a.in.decode(raw, v); err != nil {
			return mg.badValue(a.col, err)
		}
		st.has = true
		switch a.in.cls {
		case clsInt:
			return addInt(&st.i, v.i)
		case clsFloat:
			return addFloat(&st.f, v.f, a.in.size)
		default:
			st.addDecimal(v.d, &mg.tmp)
		}
	case plan.AggMin, plan.AggMax:
		if raw == nil {
			return nil
		}
		if err := a.in.decode(raw, v); err != nil {
			return mg.badValue(a.col, err)
		}
		if st.has {
			c := compare(a.in.cls, v, &st.best, &mg.tmp)
			if (a.fn == plan.AggMin && c >= 0) || (a.fn == plan.AggMax && c <= 0) {
				return nil
			}
		}
		st.has = true
		st.raw = append(st.raw[:0], raw...)
		// Decode again from our own copy, so the kept value does not
		// point into the caller's buffer.
		if err := a.in.decode(st.raw, &st.best); err != nil {
			return mg.badValue(a.col, err)
		}
	case plan.AggAvg:
		if c := fields[a.countCol]; c != nil {
			if err := a.cnt.decode(c, v); err != nil {
				return mg.badValue(a.countCol, err)
			}
			if err := addInt(&st.i, v.i); err != nil {
				return err
			}
		}
		if raw == nil {
			return nil
		}
		if err := a.in.decode(raw, v); err != nil {
			return mg.badValue(a.col, err)
		}
		st.has = true
		switch a.in.cls {
		case clsFloat:
			// avg(float4/float8) accumulates in float8 (float8_accum).
			return addFloat(&st.f, v.f, 8)
		case clsInt:
			var d decimal
			d.setInt64(v.i)
			st.addDecimal(&d, &mg.tmp)
		default:
			st.addDecimal(v.d, &mg.tmp)
		}
	case plan.AggBoolAnd, plan.AggBoolOr:
		if raw == nil {
			return nil
		}
		if err := a.in.decode(raw, v); err != nil {
			return mg.badValue(a.col, err)
		}
		switch {
		case !st.has:
			st.i = v.i
		case a.fn == plan.AggBoolAnd:
			st.i &= v.i
		default:
			st.i |= v.i
		}
		st.has = true
	}
	return nil
}

// addDecimal adds a partial numeric sum, tracking NaN and infinities the
// way numeric_avg_accum's counters do (finished by finishSpecials).
func (st *aggState) addDecimal(d *decimal, tmp *big.Int) {
	switch d.special {
	case decNaN:
		st.nan = true
	case decPosInf:
		st.pinf = true
	case decNegInf:
		st.ninf = true
	default:
		st.d.addFinite(d, tmp)
	}
}

// final appends the group's result for a in out's format; null reports a
// NULL result (nothing appended).
func (a *aggSpec) final(buf []byte, st *aggState, mg *Merger) ([]byte, bool, error) {
	switch a.fn {
	case plan.AggCount:
		out, ok := a.out.appendInt(buf, st.i)
		if !ok {
			return nil, false, outOfRange(a.out)
		}
		return out, false, nil
	case plan.AggSum:
		if !st.has {
			return buf, true, nil
		}
		switch a.in.cls {
		case clsInt:
			out, ok := a.out.appendInt(buf, st.i)
			if !ok {
				return nil, false, outOfRange(a.out)
			}
			return out, false, nil
		case clsFloat:
			return a.out.appendFloat(buf, st.f), false, nil
		}
		st.finishSpecials()
		return a.out.appendDecimal(buf, &st.d), false, nil
	case plan.AggMin, plan.AggMax:
		if !st.has {
			return buf, true, nil
		}
		return append(buf, st.raw...), false, nil
	case plan.AggAvg:
		if !st.has || st.i == 0 {
			return buf, true, nil
		}
		if a.in.cls == clsFloat {
			return a.out.appendFloat(buf, st.f/float64(st.i)), false, nil
		}
		st.finishSpecials()
		var q decimal
		q.divAvg(&st.d, st.i)
		return a.out.appendDecimal(buf, &q), false, nil
	case plan.AggBoolAnd, plan.AggBoolOr:
		if !st.has {
			return buf, true, nil
		}
		return a.out.appendBool(buf, st.i != 0), false, nil
	}
	return nil, false, internalErr("unknown aggregate %d", a.fn)
}

// finishSpecials folds the NaN / infinity counters into st.d as
// numeric_sum does: NaN wins, +Inf and -Inf together make NaN.
func (st *aggState) finishSpecials() {
	switch {
	case st.nan || (st.pinf && st.ninf):
		st.d.special = decNaN
	case st.pinf:
		st.d.special = decPosInf
	case st.ninf:
		st.d.special = decNegInf
	}
}

// addInt adds with int8pl's overflow check.
func addInt(acc *int64, v int64) error {
	s := *acc + v
	if (s > *acc) != (v > 0) {
		return wire.Errorf(codeOutOfRange, "bigint out of range")
	}
	*acc = s
	return nil
}

// addFloat adds with float8pl's / float4pl's overflow check: an infinite
// result from finite inputs is an error. float4 sums round to float4
// after every addition, as float4pl does.
func addFloat(acc *float64, v float64, size int16) error {
	var s float64
	if size == 4 {
		s = float64(float32(*acc) + float32(v))
	} else {
		s = *acc + v
	}
	if math.IsInf(s, 0) && !math.IsInf(*acc, 0) && !math.IsInf(v, 0) {
		return wire.Errorf(codeOutOfRange, "value out of range: overflow")
	}
	*acc = s
	return nil
}

func outOfRange(c *column) *wire.Error {
	return wire.Errorf(codeOutOfRange, "%s out of range", typeName(c.oid))
}
