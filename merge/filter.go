package merge

import (
	"errors"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// filterSpec is one HAVING condition on a combined column.
type filterSpec struct {
	col  int
	op   filterOp
	null bool // IS NULL (op =) / IS NOT NULL (op <>)
	c    *column
	k    val // the constant, in c's type
	// asNumeric: an integer column compared with a non-integer constant
	// (count(*) > 2.5): PostgreSQL compares them as numeric.
	asNumeric bool
}

type filterOp uint8

const (
	opEq filterOp = iota
	opNe
	opLt
	opLe
	opGt
	opGe
)

var filterOps = map[string]filterOp{"=": opEq, "<>": opNe, "<": opLt, "<=": opLe, ">": opGt, ">=": opGe}

func newFilter(f plan.Filter, c *column) (filterSpec, error) {
	fs := filterSpec{col: f.Col, op: filterOps[f.Op], null: f.Null, c: c}
	if f.Null {
		return fs, nil
	}
	if c.cls == clsOther {
		return fs, unsupported("cannot merge HAVING on column of type %s across shards", typeName(c.oid))
	}
	err := c.parseConst(f.Value, &fs.k)
	if err != nil && c.cls == clsInt {
		fs.k.d = new(decimal)
		if parseDecimal([]byte(f.Value), fs.k.d) == nil {
			fs.asNumeric, err = true, nil
		}
	}
	switch {
	case errors.Is(err, errNeedsZone):
		return fs, unsupported("cannot merge HAVING comparing %s with %q across shards: the constant needs an explicit UTC offset",
			typeName(c.oid), f.Value)
	case err != nil:
		return fs, wire.Errorf(codeInvalidText, "invalid input syntax for type %s: %q", typeName(c.oid), f.Value)
	}
	return fs, nil
}

// match evaluates the condition on a combined value (nil = NULL).
func (f *filterSpec) match(raw []byte, mg *Merger) (bool, error) {
	if f.null {
		return (raw == nil) == (f.op == opEq), nil
	}
	if raw == nil {
		return false, nil // comparisons with NULL are never true
	}
	v := &mg.scratch
	if err := f.c.decode(raw, v); err != nil {
		return false, mg.badValue(f.col, err)
	}
	var c int
	if f.asNumeric {
		var d decimal
		d.setInt64(v.i)
		c = cmpDecimal(&d, f.k.d, &mg.tmp)
	} else {
		c = compare(f.c.cls, v, &f.k, &mg.tmp)
	}
	switch f.op {
	case opEq:
		return c == 0, nil
	case opNe:
		return c != 0, nil
	case opLt:
		return c < 0, nil
	case opLe:
		return c <= 0, nil
	case opGt:
		return c > 0, nil
	}
	return c >= 0, nil
}
