package merge

import (
	"encoding/binary"
	"errors"
	"math/big"
	"strconv"
)

// decimal is an exact PostgreSQL numeric: coef × 10^-scale, where scale
// is the display scale (dscale) PostgreSQL keeps with every value and
// prints; 1.50 and 1.5 are equal but print differently, so the scale is
// part of the value here and not normalised away.
//
// We do not use pgtype.Numeric for this: its binary decoder drops the
// display scale of zero (0.00 comes back as 0) and its binary encoder
// keeps trailing zero base-10000 digits PostgreSQL strips, so sums would
// neither print like PostgreSQL's nor match its bytes.
type decimal struct {
	special uint8 // decFinite, decNaN, decPosInf, decNegInf
	coef    big.Int
	scale   int32
}

const (
	decFinite uint8 = iota
	decNaN
	decPosInf
	decNegInf
)

// Numeric binary sign words (numeric.c).
const (
	numPos    = 0x0000
	numNeg    = 0x4000
	numNaN    = 0xC000
	numPosInf = 0xD000
	numNegInf = 0xF000
)

// Limits from numeric.c used by select_div_scale.
const (
	numericMinSigDigits     = 16
	numericMaxDisplayScale  = 1000
	numericMaxDecodeScale   = 0x3FFF // NUMERIC_DSCALE_MAX
	decDigitsPerNBASEDigit  = 4
	maxNumericTextExponent  = 1000 // NUMERIC_MAX_PRECISION: numeric_in refuses larger exponents
	maxNumericDecodedDigits = 1 << 16
)

var errBadNumeric = errors.New("invalid numeric value")

var pow10Cache [64]*big.Int

func init() {
	p := big.NewInt(1)
	for i := range pow10Cache {
		pow10Cache[i] = new(big.Int).Set(p)
		p.Mul(p, big.NewInt(10))
	}
}

// pow10 returns 10^n (n >= 0). Small powers are shared and must not be modified.
func pow10(n int64) *big.Int {
	if n < int64(len(pow10Cache)) {
		return pow10Cache[n]
	}
	return new(big.Int).Exp(big.NewInt(10), big.NewInt(n), nil)
}

func (d *decimal) setInt64(v int64) {
	d.special = decFinite
	d.coef.SetInt64(v)
	d.scale = 0
}

// parseDecimal reads numeric text: PostgreSQL's output (digits, optional
// fraction, NaN, Infinity, -Infinity) and, for HAVING constants, the rest
// of numeric_in's input: surrounding blanks, a leading +, an exponent.
// The scale follows numeric_in: fraction digits minus the exponent, at least 0.
func parseDecimal(s []byte, d *decimal) error {
	s = trimSpace(s)
	switch {
	case equalFoldStr(s, "nan"):
		d.special = decNaN
		return nil
	case equalFoldStr(s, "infinity"), equalFoldStr(s, "+infinity"), equalFoldStr(s, "inf"), equalFoldStr(s, "+inf"):
		d.special = decPosInf
		return nil
	case equalFoldStr(s, "-infinity"), equalFoldStr(s, "-inf"):
		d.special = decNegInf
		return nil
	}
	d.special = decFinite
	neg := false
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	// Accumulate up to 18 digits in a uint64, then spill into the big.Int,
	// so the common short value costs no big multiplications.
	d.coef.SetInt64(0)
	var chunk uint64
	var chunkDigits int
	flush := func() {
		if chunkDigits == 0 {
			return
		}
		if d.coef.Sign() == 0 {
			d.coef.SetUint64(chunk)
		} else {
			d.coef.Mul(&d.coef, pow10(int64(chunkDigits)))
			var t big.Int
			d.coef.Add(&d.coef, t.SetUint64(chunk))
		}
		chunk, chunkDigits = 0, 0
	}
	digits, frac := 0, 0
	seenPoint := false
	for ; i < len(s); i++ {
		c := s[i]
		if c == '.' && !seenPoint {
			seenPoint = true
			continue
		}
		if c < '0' || c > '9' {
			break
		}
		chunk = chunk*10 + uint64(c-'0')
		chunkDigits++
		if chunkDigits == 18 {
			flush()
		}
		digits++
		if seenPoint {
			frac++
		}
	}
	flush()
	if digits == 0 {
		return errBadNumeric
	}
	exp := int64(0)
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		eneg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			eneg = s[i] == '-'
			i++
		}
		start := i
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			exp = exp*10 + int64(s[i]-'0')
			if exp > maxNumericTextExponent {
				return errBadNumeric
			}
		}
		if i == start {
			return errBadNumeric
		}
		if eneg {
			exp = -exp
		}
	}
	if i != len(s) {
		return errBadNumeric
	}
	scale := int64(frac) - exp
	if scale < 0 {
		d.coef.Mul(&d.coef, pow10(-scale))
		scale = 0
	}
	if scale > numericMaxDecodeScale {
		return errBadNumeric
	}
	d.scale = int32(scale)
	if neg {
		d.coef.Neg(&d.coef)
	}
	return nil
}

// decodeDecimalBinary reads numeric_send's format: ndigits, weight, sign,
// dscale (int16 each) and ndigits base-10000 digits.
func decodeDecimalBinary(b []byte, d *decimal) error {
	if len(b) < 8 {
		return errBadNumeric
	}
	ndigits := int(binary.BigEndian.Uint16(b))
	weight := int64(int16(binary.BigEndian.Uint16(b[2:])))
	sign := binary.BigEndian.Uint16(b[4:])
	dscale := int64(binary.BigEndian.Uint16(b[6:]))
	if len(b) != 8+2*ndigits || dscale > numericMaxDecodeScale {
		return errBadNumeric
	}
	switch sign {
	case numNaN:
		d.special = decNaN
		return nil
	case numPosInf:
		d.special = decPosInf
		return nil
	case numNegInf:
		d.special = decNegInf
		return nil
	case numPos, numNeg:
	default:
		return errBadNumeric
	}
	d.special = decFinite
	d.scale = int32(dscale)
	d.coef.SetInt64(0)
	var chunk uint64
	n := 0
	for i := range ndigits {
		dig := binary.BigEndian.Uint16(b[8+2*i:])
		if dig >= 10000 {
			return errBadNumeric
		}
		chunk = chunk*10000 + uint64(dig)
		n++
		if n == 4 || i == ndigits-1 {
			if d.coef.Sign() == 0 {
				d.coef.SetUint64(chunk)
			} else {
				d.coef.Mul(&d.coef, pow10(int64(4*n)))
				var t big.Int
				d.coef.Add(&d.coef, t.SetUint64(chunk))
			}
			chunk, n = 0, 0
		}
	}
	// value = digits × 10000^(weight-ndigits+1); coef = value × 10^dscale.
	e := 4*(weight-int64(ndigits)+1) + dscale
	switch {
	case e > 0:
		d.coef.Mul(&d.coef, pow10(e))
	case e < 0:
		// Digits beyond dscale are zero in anything PostgreSQL sends.
		d.coef.Quo(&d.coef, pow10(-e))
	}
	if sign == numNeg {
		d.coef.Neg(&d.coef)
	}
	return nil
}

// appendText renders d like numeric_out: exactly scale fraction digits,
// no exponent, no negative zero.
func (d *decimal) appendText(buf []byte) []byte {
	switch d.special {
	case decNaN:
		return append(buf, "NaN"...)
	case decPosInf:
		return append(buf, "Infinity"...)
	case decNegInf:
		return append(buf, "-Infinity"...)
	}
	if d.coef.Sign() < 0 {
		buf = append(buf, '-')
	}
	start := len(buf)
	buf = appendAbs(buf, &d.coef)
	digits := len(buf) - start
	scale := int(d.scale)
	if scale == 0 {
		return buf
	}
	if digits <= scale {
		// 0.00ddd: shift the digits right to make room for "0." and zeros.
		pad := scale - digits + 2
		buf = append(buf, make([]byte, pad)...)
		copy(buf[start+pad:], buf[start:start+digits])
		buf[start] = '0'
		buf[start+1] = '.'
		for i := start + 2; i < start+pad; i++ {
			buf[i] = '0'
		}
		return buf
	}
	point := start + digits - scale
	buf = append(buf, 0)
	copy(buf[point+1:], buf[point:len(buf)-1])
	buf[point] = '.'
	return buf
}

// appendAbs appends the decimal digits of |x|.
func appendAbs(buf []byte, x *big.Int) []byte {
	if x.IsInt64() {
		v := x.Int64()
		if v < 0 {
			v = -v
		}
		return strconv.AppendInt(buf, v, 10)
	}
	start := len(buf)
	buf = x.Append(buf, 10)
	if buf[start] == '-' {
		copy(buf[start:], buf[start+1:])
		buf = buf[:len(buf)-1]
	}
	return buf
}

// appendBinary renders d like numeric_send, with PostgreSQL's canonical
// digits (no leading or trailing zero base-10000 digits, zero has none),
// so the bytes equal what a single server sends.
func (d *decimal) appendBinary(buf []byte) []byte {
	var sign uint16
	switch d.special {
	case decNaN:
		sign = numNaN
	case decPosInf:
		sign = numPosInf
	case decNegInf:
		sign = numNegInf
	}
	if sign != 0 {
		// numeric_send reads the display scale of a special value through
		// the short-header macros, which find bits of the sign word there:
		// +/-Infinity go out with dscale 32, NaN with 0. Copy that, so the
		// bytes equal a single server's.
		buf = binary.BigEndian.AppendUint32(buf, 0)
		buf = binary.BigEndian.AppendUint16(buf, sign)
		return binary.BigEndian.AppendUint16(buf, (sign&0x1F80)>>7)
	}
	if d.coef.Sign() == 0 {
		buf = binary.BigEndian.AppendUint16(buf, 0)
		buf = binary.BigEndian.AppendUint16(buf, 0)
		buf = binary.BigEndian.AppendUint16(buf, numPos)
		return binary.BigEndian.AppendUint16(buf, uint16(d.scale))
	}
	sign = numPos
	if d.coef.Sign() < 0 {
		sign = numNeg
	}
	// Pad the fraction to whole base-10000 digits, then cut the decimal
	// digit string into groups of four from the right.
	scale := int(d.scale)
	pad := (4 - scale%4) % 4
	var tmp [64]byte
	ds := appendAbs(tmp[:0], &d.coef)
	for range pad {
		ds = append(ds, '0')
	}
	lead := (4 - len(ds)%4) % 4
	ngroups := (len(ds) + lead) / 4
	fracGroups := (scale + pad) / 4
	weight := ngroups - 1 - fracGroups
	group := func(g int) uint16 {
		// Group g covers ds[4g-lead : 4g-lead+4], with missing leading digits as zeros.
		v := 0
		for k := 4*g - lead; k < 4*g-lead+4; k++ {
			v *= 10
			if k >= 0 {
				v += int(ds[k] - '0')
			}
		}
		return uint16(v)
	}
	n := ngroups
	for n > 0 && group(n-1) == 0 {
		n--
	}
	buf = binary.BigEndian.AppendUint16(buf, uint16(n))
	buf = binary.BigEndian.AppendUint16(buf, uint16(int16(weight)))
	buf = binary.BigEndian.AppendUint16(buf, sign)
	buf = binary.BigEndian.AppendUint16(buf, uint16(d.scale))
	for g := range n {
		buf = binary.BigEndian.AppendUint16(buf, group(g))
	}
	return buf
}

// cmpDecimal orders numerics like cmp_numerics: -Infinity < finite <
// Infinity < NaN, and NaN equals NaN. tmp is scratch space.
func cmpDecimal(a, b *decimal, tmp *big.Int) int {
	ra, rb := decRank(a), decRank(b)
	if ra != rb || ra != 1 {
		return cmpInt(int64(ra), int64(rb))
	}
	sa, sb := a.coef.Sign(), b.coef.Sign()
	if sa != sb {
		return cmpInt(int64(sa), int64(sb))
	}
	switch {
	case a.scale == b.scale:
		return a.coef.Cmp(&b.coef)
	case a.scale < b.scale:
		tmp.Mul(&a.coef, pow10(int64(b.scale-a.scale)))
		return tmp.Cmp(&b.coef)
	default:
		tmp.Mul(&b.coef, pow10(int64(a.scale-b.scale)))
		return a.coef.Cmp(tmp)
	}
}

func decRank(d *decimal) int {
	switch d.special {
	case decNegInf:
		return 0
	case decPosInf:
		return 2
	case decNaN:
		return 3
	}
	return 1
}

// addFinite adds the finite x to the finite d; the result's scale is the
// larger one, as in PostgreSQL's add_var. tmp is scratch space.
func (d *decimal) addFinite(x *decimal, tmp *big.Int) {
	switch {
	case x.scale == d.scale:
		d.coef.Add(&d.coef, &x.coef)
	case x.scale < d.scale:
		tmp.Mul(&x.coef, pow10(int64(d.scale-x.scale)))
		d.coef.Add(&d.coef, tmp)
	default:
		d.coef.Mul(&d.coef, pow10(int64(x.scale-d.scale)))
		d.coef.Add(&d.coef, &x.coef)
		d.scale = x.scale
	}
}

// appendKey appends a canonical form of d for equality (GROUP BY,
// DISTINCT): 1.5 and 1.50 are the same group in PostgreSQL.
func (d *decimal) appendKey(buf []byte) []byte {
	if d.special != decFinite {
		return append(buf, 'S', d.special)
	}
	if d.coef.Sign() == 0 {
		return append(buf, '0')
	}
	if d.coef.Sign() < 0 {
		buf = append(buf, '-')
	}
	digStart := len(buf)
	buf = appendAbs(buf, &d.coef)
	exp := -int64(d.scale)
	for len(buf) > digStart+1 && buf[len(buf)-1] == '0' {
		buf = buf[:len(buf)-1]
		exp++
	}
	buf = append(buf, 'e')
	return strconv.AppendInt(buf, exp, 10)
}

// weightAndFirstDigit returns the base-10000 weight of d's first nonzero
// digit and that digit, as select_div_scale computes them (0, 0 for zero).
func weightAndFirstDigit(d *decimal) (weight int64, first int) {
	if d.coef.Sign() == 0 {
		return 0, 0
	}
	var tmp [64]byte
	ds := appendAbs(tmp[:0], &d.coef)
	e := int64(len(ds)) - 1 - int64(d.scale) // decimal exponent of the leading digit
	weight = floorDiv(e, 4)
	k := int(e - 4*weight + 1) // decimal digits in the first base-10000 digit: 1..4
	for i := range k {
		first *= 10
		if i < len(ds) {
			first += int(ds[i] - '0')
		}
	}
	return weight, first
}

// divAvg sets d to sum / count (count > 0) exactly as numeric_div does:
// the result scale from select_div_scale (numeric.c) and the quotient
// rounded half away from zero at that scale. This is how avg() of
// integers and numerics finishes in PostgreSQL (int8_avg, numeric_avg).
func (d *decimal) divAvg(sum *decimal, count int64) {
	switch sum.special {
	case decNaN, decPosInf, decNegInf:
		// ±Infinity / positive count keeps its sign; NaN stays NaN.
		d.special = sum.special
		return
	}
	var cnt decimal
	cnt.setInt64(count)
	w1, f1 := weightAndFirstDigit(sum)
	w2, f2 := weightAndFirstDigit(&cnt)
	qweight := w1 - w2
	if f1 <= f2 {
		qweight--
	}
	rscale := numericMinSigDigits - qweight*decDigitsPerNBASEDigit
	rscale = max(rscale, int64(sum.scale), 0)
	rscale = min(rscale, numericMaxDisplayScale)

	num := new(big.Int).Abs(&sum.coef)
	den := big.NewInt(count)
	if rscale >= int64(sum.scale) {
		num.Mul(num, pow10(rscale-int64(sum.scale)))
	} else {
		den.Mul(den, pow10(int64(sum.scale)-rscale))
	}
	var rem big.Int
	d.special = decFinite
	d.coef.QuoRem(num, den, &rem)
	if rem.Lsh(&rem, 1).Cmp(den) >= 0 {
		d.coef.Add(&d.coef, big.NewInt(1))
	}
	if sum.coef.Sign() < 0 {
		d.coef.Neg(&d.coef)
	}
	d.scale = int32(rscale)
}

// String renders d as numeric_out does (for error messages and tests).
func (d *decimal) String() string {
	return string(d.appendText(nil))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func trimSpace(s []byte) []byte {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// equalFoldStr compares s with the lower-case ASCII word w, ignoring case.
func equalFoldStr(s []byte, w string) bool {
	if len(s) != len(w) {
		return false
	}
	for i := range s {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[i] {
			return false
		}
	}
	return true
}
