package merge

import (
	"math"
	"math/big"
	"strconv"
)

// appendPGFloat renders f as float8out / float4out do with PostgreSQL's
// default extra_float_digits (1, since PostgreSQL 12): the shortest
// decimal that reads back exactly, in fixed notation when the decimal
// exponent is in [-4, 15) for float8 and [-4, 6) for float4 (the %g
// thresholds of DBL_DIG / FLT_DIG that d2s.c / f2s.c mimic), else
// d.ddde±XX. A session with extra_float_digits <= 0 gets a different
// text form from PostgreSQL; binary results are unaffected.
func appendPGFloat(buf []byte, f float64, bitSize int) []byte {
	switch {
	case math.IsNaN(f):
		return append(buf, "NaN"...)
	case math.IsInf(f, 1):
		return append(buf, "Infinity"...)
	case math.IsInf(f, -1):
		return append(buf, "-Infinity"...)
	case f == 0:
		if math.Signbit(f) {
			return append(buf, "-0"...)
		}
		return append(buf, '0')
	}
	threshold := 15
	if bitSize == 32 {
		threshold = 6
	}
	neg := math.Signbit(f)
	if neg {
		f = -f
		buf = append(buf, '-')
	}
	var tmp [40]byte
	digits, exp := shortestDigits(tmp[:0], f, -1, bitSize)
	nd := len(digits)
	if f >= boundaryCheckFrom[bitSize/64] && onBoundary(f, digits, exp, bitSize) {
		// PostgreSQL's Ryu never picks a decimal that lies exactly on the
		// rounding boundary (d2s.c / f2s.c: acceptBounds = false, while
		// Go accepts it when the mantissa is even): take the shortest
		// decimal strictly inside the interval, as it does.
		digits, exp = insideDigits(tmp[:0], f, nd, bitSize)
		nd = len(digits)
	}
	if exp < -4 || exp >= threshold {
		buf = append(buf, digits[0])
		if nd > 1 {
			buf = append(buf, '.')
			buf = append(buf, digits[1:]...)
		}
		buf = append(buf, 'e')
		if exp < 0 {
			buf = append(buf, '-')
			exp = -exp
		} else {
			buf = append(buf, '+')
		}
		if exp < 10 {
			buf = append(buf, '0')
		}
		return strconv.AppendInt(buf, int64(exp), 10)
	}
	switch {
	case exp < 0:
		buf = append(buf, '0', '.')
		for range -exp - 1 {
			buf = append(buf, '0')
		}
		buf = append(buf, digits[:nd]...)
	case nd <= exp+1:
		buf = append(buf, digits[:nd]...)
		for range exp + 1 - nd {
			buf = append(buf, '0')
		}
	default:
		buf = append(buf, digits[:exp+1]...)
		buf = append(buf, '.')
		buf = append(buf, digits[exp+1:nd]...)
	}
	return buf
}

// boundaryCheckFrom is the magnitude below which no decimal of at most 17
// (float8) or 9 (float4) digits can sit exactly on a rounding boundary:
// below it the boundary's exact decimal expansion is longer. Indexed by
// bitSize/64 (0: float4, 1: float8).
var boundaryCheckFrom = [2]float64{1 << 20, 1 << 49}

// shortestDigits returns f's (f > 0) decimal digits and the decimal
// exponent of the first one: the shortest round-trip form for prec -1,
// else prec significant digits, correctly rounded.
func shortestDigits(buf []byte, f float64, prec, bitSize int) ([]byte, int) {
	if prec > 0 {
		prec--
	}
	e := strconv.AppendFloat(buf, f, 'e', prec, bitSize) // d[.ddd]e±XX
	nd := 0
	i := 0
	for ; e[i] != 'e'; i++ {
		if e[i] != '.' {
			e[nd] = e[i]
			nd++
		}
	}
	exp := 0
	for j := i + 2; j < len(e); j++ {
		exp = exp*10 + int(e[j]-'0')
	}
	if e[i+1] == '-' {
		exp = -exp
	}
	return e[:nd], exp
}

// interval returns the exact rounding interval of f (> 0): the midpoints
// to its neighbours at bitSize precision.
func interval(f float64, bitSize int) (lo, hi *big.Rat) {
	var prev, next float64
	if bitSize == 32 {
		prev = float64(math.Nextafter32(float32(f), 0))
		next = float64(math.Nextafter32(float32(f), math.MaxFloat32))
	} else {
		prev = math.Nextafter(f, 0)
		next = math.Nextafter(f, math.Inf(1))
	}
	x := new(big.Rat).SetFloat64(f)
	half := big.NewRat(1, 2)
	lo = new(big.Rat).Add(x, new(big.Rat).SetFloat64(prev))
	lo.Mul(lo, half)
	if math.IsInf(next, 0) || next == f {
		// The largest finite value: the spacing above is the one below.
		hi = new(big.Rat).Sub(x, new(big.Rat).SetFloat64(prev))
		hi.Mul(hi, half)
		return lo, hi.Add(hi, x)
	}
	hi = new(big.Rat).Add(x, new(big.Rat).SetFloat64(next))
	hi.Mul(hi, half)
	return lo, hi
}

// decimalRat is digits × 10^(exp-len(digits)+1) as an exact rational.
func decimalRat(digits []byte, exp int) *big.Rat {
	var d big.Int
	d.SetString(string(digits), 10)
	p := exp - len(digits) + 1
	r := new(big.Rat).SetInt(&d)
	if p >= 0 {
		return r.Mul(r, new(big.Rat).SetInt(pow10(int64(p))))
	}
	return r.Quo(r, new(big.Rat).SetInt(pow10(int64(-p))))
}

func onBoundary(f float64, digits []byte, exp, bitSize int) bool {
	lo, hi := interval(f, bitSize)
	d := decimalRat(digits, exp)
	return d.Cmp(lo) == 0 || d.Cmp(hi) == 0
}

// insideDigits finds the shortest decimal strictly inside f's rounding
// interval, longer than n digits: the correctly rounded one at each
// length, or its neighbour when f is a power of two and the interval is
// lopsided.
func insideDigits(buf []byte, f float64, n, bitSize int) ([]byte, int) {
	lo, hi := interval(f, bitSize)
	inside := func(digits []byte, exp int) bool {
		d := decimalRat(digits, exp)
		return d.Cmp(lo) > 0 && d.Cmp(hi) < 0
	}
	maxDigits := 17
	if bitSize == 32 {
		maxDigits = 9
	}
	for l := n + 1; l <= maxDigits; l++ {
		digits, exp := shortestDigits(buf, f, l, bitSize)
		if inside(digits, exp) {
			return trimZeros(digits), exp
		}
		// The neighbour one unit up (the interval is wider above a power of two).
		up := incDigits(append([]byte(nil), digits...))
		upExp := exp
		if len(up) > len(digits) {
			up, upExp = up[:len(digits)], exp+1
		}
		if inside(up, upExp) {
			return trimZeros(up), upExp
		}
	}
	return shortestDigits(buf, f, maxDigits, bitSize)
}

// incDigits adds one unit in the last place to a decimal digit string,
// growing it by one digit on carry out ("999" -> "1000").
func incDigits(d []byte) []byte {
	for i := len(d) - 1; i >= 0; i-- {
		if d[i] < '9' {
			d[i]++
			return d
		}
		d[i] = '0'
	}
	return append([]byte{'1'}, d...)
}

func trimZeros(d []byte) []byte {
	for len(d) > 1 && d[len(d)-1] == '0' {
		d = d[:len(d)-1]
	}
	return d
}
