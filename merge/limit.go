package merge

import (
	"encoding/binary"
	"math"
	"math/big"
	"strconv"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

const codeInvalidBinary = "22P03" // invalid_binary_representation

// resolveCount evaluates a LIMIT (isLimit) or OFFSET: -1 means no LIMIT
// (absent, ALL or NULL); an absent or NULL OFFSET is 0. Negative values
// are refused with PostgreSQL's errors.
func resolveCount(c *plan.Count, params *plan.Params, isLimit bool) (int64, error) {
	none := int64(0)
	if isLimit {
		none = -1
	}
	if c == nil || c.All {
		return none, nil
	}
	n := c.Value
	if c.Param > 0 {
		var raw []byte
		ok := false
		if params != nil {
			raw, ok = params.Value(c.Param)
		}
		if !ok {
			return 0, wire.Errorf(codeUndefinedParameter, "there is no parameter $%d", c.Param)
		}
		if raw == nil {
			return none, nil
		}
		var oid uint32
		if c.Param-1 < len(params.OIDs) {
			oid = params.OIDs[c.Param-1]
		}
		var err error
		if n, err = paramInt(raw, params.Binary(c.Param), oid, c.Param); err != nil {
			return 0, err
		}
	}
	if n < 0 {
		if isLimit {
			return 0, wire.Errorf(codeNegativeLimit, "LIMIT must not be negative")
		}
		return 0, wire.Errorf(codeNegativeOffset, "OFFSET must not be negative")
	}
	return n, nil
}

// paramInt reads a bound LIMIT/OFFSET value as PostgreSQL casts it to
// bigint: integers as they are, float8/float4 rounded half to even
// (dtoi8's rint), numeric rounded half away from zero (numeric_int8).
// Without a declared type PostgreSQL infers bigint.
func paramInt(raw []byte, bin bool, oid uint32, n int) (int64, error) {
	bad := func() error {
		if bin {
			return wire.Errorf(codeInvalidBinary, "incorrect binary data format in bind parameter %d", n)
		}
		return wire.Errorf(codeInvalidText, "invalid input syntax for type bigint: %q", raw)
	}
	switch oid {
	case oidFloat4, oidFloat8:
		var f float64
		switch {
		case bin && oid == oidFloat8 && len(raw) == 8:
			f = math.Float64frombits(binary.BigEndian.Uint64(raw))
		case bin && oid == oidFloat4 && len(raw) == 4:
			f = float64(math.Float32frombits(binary.BigEndian.Uint32(raw)))
		case !bin:
			var err error
			if f, err = strconv.ParseFloat(string(trimSpace(raw)), 64); err != nil {
				return 0, bad()
			}
		default:
			return 0, bad()
		}
		f = math.RoundToEven(f)
		if math.IsNaN(f) || f < math.MinInt64 || f >= math.MaxInt64 {
			return 0, wire.Errorf(codeOutOfRange, "bigint out of range")
		}
		return int64(f), nil
	case oidNumeric:
		var d decimal
		var err error
		if bin {
			err = decodeDecimalBinary(raw, &d)
		} else {
			err = parseDecimal(raw, &d)
		}
		if err != nil {
			return 0, bad()
		}
		return d.roundInt64()
	}
	if bin {
		switch len(raw) {
		case 8:
			return int64(binary.BigEndian.Uint64(raw)), nil
		case 4:
			return int64(int32(binary.BigEndian.Uint32(raw))), nil
		case 2:
			return int64(int16(binary.BigEndian.Uint16(raw))), nil
		}
		return 0, bad()
	}
	v, ok := parseInt(raw)
	if !ok {
		return 0, bad()
	}
	return v, nil
}

// roundInt64 is numeric_int8: round half away from zero, range-checked.
func (d *decimal) roundInt64() (int64, error) {
	if d.special != decFinite {
		return 0, wire.Errorf(wire.CodeFeatureNotSupported, "cannot convert %s to bigint", d)
	}
	q := new(big.Int).Abs(&d.coef)
	if d.scale > 0 {
		var r big.Int
		div := pow10(int64(d.scale))
		q.QuoRem(q, div, &r)
		if r.Lsh(&r, 1).Cmp(div) >= 0 {
			q.Add(q, big.NewInt(1))
		}
	}
	if d.coef.Sign() < 0 {
		q.Neg(q)
	}
	if !q.IsInt64() {
		return 0, wire.Errorf(codeOutOfRange, "bigint out of range")
	}
	return q.Int64(), nil
}
