package shard

import (
	"encoding/binary"
	"math"
	"strconv"

	"github.com/shardproxy/shardproxy/wire"
)

// PostgreSQL stores numeric as base-10000 digits (NBASE) aligned on the
// decimal point, with a weight (the power of 10000 of the first digit).
// hash_numeric_extended hashes those int16 digits with leading and
// trailing zero digits removed, then XORs in the adjusted weight; the
// sign and the display scale are left out, so 1.5, 1.50 and -1.5 all hash
// alike, zero (of any scale) hashes to seed-1 and NaN/±Infinity to seed.
// A decimal keeps exactly the significant decimal digits and the power of
// ten of the first one, from which the NBASE digits follow directly.

type numSpecial uint8

const (
	numFinite numSpecial = iota
	numNaN
	numPInf
	numNInf
)

const (
	numericWeightMax = math.MaxInt16
	numericWeightMin = math.MinInt16
	numericDscaleMax = 0x3FFF
	// numericExpLimit is INT_MAX/2, the exponent bound of numeric_in.
	numericExpLimit = math.MaxInt32 / 2
)

// decimal is a numeric value reduced to what its hash and order depend on.
type decimal struct {
	special numSpecial
	neg     bool
	// digits are the significant decimal digits (values 0-9) with no
	// leading or trailing zeros; empty means zero.
	digits []byte
	// exp is the power of ten of digits[0].
	exp int
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func skipSpace(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

func onlySpace(s string) bool { return skipSpace(s, 0) == len(s) }

// hasPrefixFold is a case-insensitive ASCII prefix test (pg_strncasecmp).
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// numericSpecials are tried in numeric_in's order; "infinity" must come
// before "inf" so that the longer spelling wins.
var numericSpecials = [...]struct {
	word string
	sp   numSpecial
}{
	{"nan", numNaN}, {"infinity", numPInf}, {"+infinity", numPInf}, {"-infinity", numNInf},
	{"inf", numPInf}, {"+inf", numPInf}, {"-inf", numNInf},
}

func syntaxError(typ, input string) *wire.Error {
	return wire.Errorf(codeInvalidTextRepresentation, "invalid input syntax for type %s: %s", typ, quoted(input))
}

// quoted renders input as PostgreSQL's messages do: in double quotes,
// unescaped. Being a copy, it also keeps input (often a view of a
// caller's buffer) from escaping to the heap on the hot path.
func quoted(input string) string { return "\"" + input + "\"" }

func numericOverflow() *wire.Error {
	return wire.Errorf(codeNumericValueOutOfRange, "value overflows numeric format")
}

// parseNumeric parses s as PostgreSQL 15's numeric_in does (no typmod).
// The digits are stored in scratch's backing array when it is big enough.
func parseNumeric(s string, scratch []byte) (decimal, *wire.Error) {
	var d decimal
	i := skipSpace(s, 0)
	for _, sp := range numericSpecials {
		if hasPrefixFold(s[i:], sp.word) {
			if !onlySpace(s[i+len(sp.word):]) {
				return d, syntaxError("numeric", s)
			}
			d.special = sp.sp
			return d, nil
		}
	}
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		d.neg = s[i] == '-'
		i++
	}
	haveDP := false
	if i < len(s) && s[i] == '.' {
		haveDP = true
		i++
	}
	if i >= len(s) || !isDigit(s[i]) {
		return d, syntaxError("numeric", s)
	}
	raw := scratch[:0]
	intDigits, fracDigits := 0, 0
	for i < len(s) {
		c := s[i]
		if isDigit(c) {
			raw = append(raw, c-'0')
			if haveDP {
				fracDigits++
			} else {
				intDigits++
			}
		} else if c == '.' {
			if haveDP {
				return d, syntaxError("numeric", s)
			}
			haveDP = true
		} else {
			break
		}
		i++
	}
	exp10 := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		// numeric_in reads the exponent with strtol, which skips leading
		// white space and takes a sign.
		j := skipSpace(s, i+1)
		eneg := false
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			eneg = s[j] == '-'
			j++
		}
		if j >= len(s) || !isDigit(s[j]) {
			return d, syntaxError("numeric", s)
		}
		var e int64
		for ; j < len(s) && isDigit(s[j]); j++ {
			if e < math.MaxInt32 {
				e = e*10 + int64(s[j]-'0')
			}
		}
		if eneg {
			e = -e
		}
		if e >= numericExpLimit || e <= -numericExpLimit {
			return d, numericOverflow()
		}
		exp10 = int(e)
		i = j
	}
	if !onlySpace(s[i:]) {
		return d, syntaxError("numeric", s)
	}
	dscale := max(fracDigits-exp10, 0)
	d.digits, d.exp = trimDigits(raw, intDigits-1+exp10)
	if len(d.digits) == 0 {
		d.neg = false
	}
	if err := d.checkRange(dscale); err != nil {
		return d, err
	}
	return d, nil
}

// trimDigits drops leading and trailing zero digits of raw, whose first
// digit has power of ten exp. It is a pure function because storing
// through a pointer would make escape analysis move every caller's
// scratch buffer to the heap.
func trimDigits(raw []byte, exp int) ([]byte, int) {
	f := 0
	for f < len(raw) && raw[f] == 0 {
		f++
	}
	if f == len(raw) {
		return raw[:0], 0
	}
	l := len(raw)
	for raw[l-1] == 0 {
		l--
	}
	return raw[f:l], exp - f
}

// checkRange reports what make_result reports: a weight or display scale
// that does not fit the on-disk format.
func (d *decimal) checkRange(dscale int) *wire.Error {
	if dscale > numericDscaleMax {
		return numericOverflow()
	}
	if len(d.digits) > 0 {
		if w := d.weight(); w > numericWeightMax || w < numericWeightMin {
			return numericOverflow()
		}
	}
	return nil
}

func floorDiv4(x int) int {
	if x >= 0 {
		return x / 4
	}
	return -((-x + 3) / 4)
}

// weight is the power of 10000 of the first NBASE digit.
func (d *decimal) weight() int { return floorDiv4(d.exp) }

// digitAt returns the decimal digit with power of ten q.
func (d *decimal) digitAt(q int) int {
	j := d.exp - q
	if j < 0 || j >= len(d.digits) {
		return 0
	}
	return int(d.digits[j])
}

// hash is hash_numeric_extended(d, HashPartitionSeed).
func (d *decimal) hash() uint64 {
	if d.special != numFinite {
		return HashPartitionSeed
	}
	if len(d.digits) == 0 {
		return HashPartitionSeed - 1
	}
	w := d.weight()
	last := floorDiv4(d.exp - len(d.digits) + 1)
	n := w - last + 1
	var stack [128]byte
	buf := stack[:0]
	if 2*n > len(stack) {
		buf = make([]byte, 0, 2*n)
	}
	for g := w; g >= last; g-- {
		q := 4 * g
		v := d.digitAt(q+3)*1000 + d.digitAt(q+2)*100 + d.digitAt(q+1)*10 + d.digitAt(q)
		// NumericDigit is a native int16: little-endian on the servers we
		// support.
		buf = binary.LittleEndian.AppendUint16(buf, uint16(v))
	}
	return hashBytesExtended(buf, HashPartitionSeed) ^ uint64(int64(w))
}

// rounded returns d rounded to scale decimal places (negative: to tens,
// hundreds...), half away from zero, as round_var does for a numeric(p,s)
// typmod. It works in d's digit storage. (Value receivers and results
// here and below keep callers' scratch buffers on the stack.)
func (d decimal) rounded(scale int) decimal {
	if d.special != numFinite || len(d.digits) == 0 {
		return d
	}
	keep := d.exp + scale + 1 // digits with power >= -scale
	if keep >= len(d.digits) {
		return d
	}
	if keep < 0 {
		return decimal{}
	}
	up := d.digits[keep] >= 5
	digits := d.digits[:keep]
	if up {
		i := keep - 1
		for ; i >= 0; i-- {
			if digits[i] < 9 {
				digits[i]++
				break
			}
			digits[i] = 0
		}
		if i < 0 {
			// Carried out of the first digit (or nothing was kept): the
			// value is 10^(exp+1), the digits after it zeros.
			d.digits = append(d.digits[:0], 1)
			d.exp++
			return d
		}
	}
	d.digits, d.exp = trimDigits(digits, d.exp)
	if len(d.digits) == 0 {
		d.neg = false
	}
	return d
}

// truncated returns d with the digits past scale decimal places dropped
// (trunc_var).
func (d decimal) truncated(scale int) decimal {
	if d.special != numFinite || len(d.digits) == 0 {
		return d
	}
	keep := d.exp + scale + 1
	if keep >= len(d.digits) {
		return d
	}
	if keep <= 0 {
		return decimal{}
	}
	d.digits, d.exp = trimDigits(d.digits[:keep], d.exp)
	return d
}

// decimalFromInt builds the decimal of v in scratch.
func decimalFromInt(v int64, scratch []byte) decimal {
	var d decimal
	mag := uint64(v)
	if v < 0 {
		d.neg = true
		mag = -mag
	}
	raw := strconv.AppendUint(scratch[:0], mag, 10)
	for i := range raw {
		raw[i] -= '0'
	}
	d.digits, d.exp = trimDigits(raw, len(raw)-1)
	if len(d.digits) == 0 {
		d.neg = false
	}
	return d
}

// toInt converts to int64 the way numeric -> bigint casts do: rounding
// half away from zero.
func (d decimal) toInt() (int64, *wire.Error) {
	switch d.special {
	case numNaN:
		return 0, wire.Errorf(wire.CodeFeatureNotSupported, "cannot convert NaN to bigint")
	case numPInf, numNInf:
		return 0, wire.Errorf(wire.CodeFeatureNotSupported, "cannot convert infinity to bigint")
	}
	// Rounding works in the digits' storage, which d shares with its
	// caller: round a copy.
	if d.exp+1 < len(d.digits) {
		var buf [24]byte
		d.digits = append(buf[:0], d.digits...)
		d = d.rounded(0)
	}
	if len(d.digits) == 0 {
		return 0, nil
	}
	if d.exp > 18 {
		return 0, wire.Errorf(codeNumericValueOutOfRange, "bigint out of range")
	}
	var mag uint64
	for q := d.exp; q >= 0; q-- {
		mag = mag*10 + uint64(d.digitAt(q))
	}
	if d.neg {
		if mag > 1<<63 {
			return 0, wire.Errorf(codeNumericValueOutOfRange, "bigint out of range")
		}
		return -int64(mag), nil
	}
	if mag > math.MaxInt64 {
		return 0, wire.Errorf(codeNumericValueOutOfRange, "bigint out of range")
	}
	return int64(mag), nil
}

// cmp orders decimals as numeric_cmp does: -Infinity < finite <
// +Infinity < NaN (NaN equals itself, so it can be a list value).
func (d *decimal) cmp(e *decimal) int {
	rank := func(x *decimal) int {
		switch x.special {
		case numNInf:
			return 0
		case numPInf:
			return 2
		case numNaN:
			return 3
		}
		return 1
	}
	if r1, r2 := rank(d), rank(e); r1 != r2 || r1 != 1 {
		return r1 - r2
	}
	sign := func(x *decimal) int {
		switch {
		case len(x.digits) == 0:
			return 0
		case x.neg:
			return -1
		}
		return 1
	}
	s1, s2 := sign(d), sign(e)
	if s1 != s2 || s1 == 0 {
		return s1 - s2
	}
	c := 0
	switch {
	case d.exp != e.exp:
		c = d.exp - e.exp
	default:
		for i := 0; i < len(d.digits) && i < len(e.digits) && c == 0; i++ {
			c = int(d.digits[i]) - int(e.digits[i])
		}
		if c == 0 {
			c = len(d.digits) - len(e.digits)
		}
	}
	return c * s1
}

// appendCanonical appends a byte string equal for equal numerics.
func (d *decimal) appendCanonical(b []byte) []byte {
	if d.special != numFinite {
		return append(b, 0xFF, byte(d.special))
	}
	sign := byte(1)
	if d.neg {
		sign = 0
	}
	b = append(b, sign)
	b = binary.BigEndian.AppendUint32(b, uint32(int32(d.exp)))
	return append(b, d.digits...)
}

// decodeNumericBinary reads numeric_send's format: int16 ndigits, int16
// weight, uint16 sign, int16 dscale, then ndigits int16 NBASE digits, and
// applies numeric_recv's checks and its truncation to dscale.
func decodeNumericBinary(b []byte, scratch []byte) (decimal, *wire.Error) {
	var d decimal
	if len(b) < 8 {
		return d, errBinary
	}
	ndigits := int(binary.BigEndian.Uint16(b))
	weight := int(int16(binary.BigEndian.Uint16(b[2:])))
	sign := binary.BigEndian.Uint16(b[4:])
	dscale := int(binary.BigEndian.Uint16(b[6:]))
	if len(b) != 8+2*ndigits {
		return d, errBinary
	}
	switch sign {
	case 0x0000:
	case 0x4000:
		d.neg = true
	case 0xC000:
		d.special = numNaN
	case 0xD000:
		d.special = numPInf
	case 0xF000:
		d.special = numNInf
	default:
		return d, wire.Errorf(codeInvalidBinaryRepresentation, "invalid sign in external \"numeric\" value")
	}
	if dscale&numericDscaleMax != dscale {
		return d, wire.Errorf(codeInvalidBinaryRepresentation, "invalid scale in external \"numeric\" value")
	}
	raw := scratch[:0]
	for i := 0; i < ndigits; i++ {
		v := int16(binary.BigEndian.Uint16(b[8+2*i:]))
		if v < 0 || v >= 10000 {
			return d, wire.Errorf(codeInvalidBinaryRepresentation, "invalid digit in external \"numeric\" value")
		}
		raw = append(raw, byte(v/1000), byte(v/100%10), byte(v/10%10), byte(v%10))
	}
	if d.special != numFinite {
		d.neg = false
		return d, nil
	}
	d.digits, d.exp = trimDigits(raw, 4*weight+3)
	if len(d.digits) == 0 {
		d.neg = false
	}
	d = d.truncated(dscale)
	if err := d.checkRange(dscale); err != nil {
		return d, err
	}
	return d, nil
}
