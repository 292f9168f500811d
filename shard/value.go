package shard

import (
	"encoding/binary"
	"math"
	"unsafe"

	"github.com/shardproxy/shardproxy/wire"
)

// SQLSTATEs of input errors, as PostgreSQL's input functions raise them.
const (
	codeInvalidTextRepresentation   = "22P02"
	codeNumericValueOutOfRange      = "22003"
	codeInvalidBinaryRepresentation = "22P03"
	codeUndefinedFunction           = "42883"
)

// PostgreSQL type OIDs a client may declare for a key parameter.
const (
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidText    = 25
	oidName    = 19
	oidUnknown = 705
	oidBpchar  = 1042
	oidVarchar = 1043
	oidNumeric = 1700
	oidUUID    = 2950
)

// arrayElem maps array type OIDs to their element OIDs.
func arrayElem(oid uint32) uint32 {
	switch oid {
	case 1016:
		return oidInt8
	case 1005:
		return oidInt2
	case 1007:
		return oidInt4
	case 1009:
		return oidText
	case 1015:
		return oidVarchar
	case 1014:
		return oidBpchar
	case 1003:
		return oidName
	case 1231:
		return oidNumeric
	case 2951:
		return oidUUID
	}
	return 0
}

// kindOfOID is the key kind a declared parameter type decodes as; 0 for
// types the router cannot decode.
func kindOfOID(oid uint32) Kind {
	switch oid {
	case oidInt2:
		return Int2
	case oidInt4:
		return Int4
	case oidInt8:
		return Int8
	case oidText, oidVarchar, oidBpchar, oidName, oidUnknown:
		return Text
	case oidUUID:
		return UUID
	case oidNumeric:
		return Numeric
	}
	return 0
}

// value is one decoded key. Integers of every width are held as int64
// (they hash alike) and varchar as text.
type value struct {
	kind Kind // Int8, Text, UUID or Numeric
	i    int64
	s    string
	u    [16]byte
	d    decimal
}

func (v *value) hash() uint64 {
	switch v.kind {
	case Int8:
		return HashInt(v.i)
	case Text:
		return HashString(v.s)
	case UUID:
		return HashUUID(v.u)
	default:
		return v.d.hash()
	}
}

// cmp orders two values of the same kind as PostgreSQL's btree operators
// do, with text in byte order (the C collation; C.UTF-8 and ICU root
// order differ for some characters, so range bounds on text keys are
// compared as bytes whatever the database collation).
func (v *value) cmp(w *value) int {
	switch v.kind {
	case Int8:
		switch {
		case v.i < w.i:
			return -1
		case v.i > w.i:
			return 1
		}
		return 0
	case Text:
		switch {
		case v.s < w.s:
			return -1
		case v.s > w.s:
			return 1
		}
		return 0
	case UUID:
		for i := range v.u {
			if v.u[i] != w.u[i] {
				return int(v.u[i]) - int(w.u[i])
			}
		}
		return 0
	default:
		return v.d.cmp(&w.d)
	}
}

// appendCanonical appends bytes that are equal exactly for equal values.
func (v *value) appendCanonical(b []byte) []byte {
	switch v.kind {
	case Int8:
		return binary.BigEndian.AppendUint64(b, uint64(v.i))
	case Text:
		return append(b, v.s...)
	case UUID:
		return append(b, v.u[:]...)
	default:
		return v.d.appendCanonical(b)
	}
}

// bytesString views b as a string without copying. Callers use the
// string only while b is neither modified nor reused.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

var intLimits = [...]struct{ min, max int64 }{
	Int2: {math.MinInt16, math.MaxInt16},
	Int4: {math.MinInt32, math.MaxInt32},
	Int8: {math.MinInt64, math.MaxInt64},
}

// parseInt parses s as int2in/int4in/int8in do in PostgreSQL 15: optional
// white space, an optional sign, decimal digits, optional white space.
func parseInt(s string, k Kind) (int64, *wire.Error) {
	i := skipSpace(s, 0)
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if i >= len(s) || !isDigit(s[i]) {
		return 0, syntaxError(k.String(), s)
	}
	lim := intLimits[k]
	// Accumulate negatively so that the minimum value fits.
	var acc int64
	for ; i < len(s) && isDigit(s[i]); i++ {
		d := int64(s[i] - '0')
		if acc < (lim.min+d)/10 {
			return 0, wire.Errorf(codeNumericValueOutOfRange, "value %s is out of range for type %s", quoted(s), k)
		}
		acc = acc*10 - d
	}
	if !onlySpace(s[i:]) {
		return 0, syntaxError(k.String(), s)
	}
	if !neg {
		if acc < -lim.max {
			return 0, wire.Errorf(codeNumericValueOutOfRange, "value %s is out of range for type %s", quoted(s), k)
		}
		acc = -acc
	}
	return acc, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// parseUUID parses s as uuid_in does: 32 hex digits, a hyphen allowed
// after any group of four, optionally in braces, no white space.
func parseUUID(s string) ([16]byte, *wire.Error) {
	var u [16]byte
	i := 0
	braces := len(s) > 0 && s[0] == '{'
	if braces {
		i++
	}
	for n := 0; n < 16; n++ {
		if i+1 >= len(s) {
			return u, syntaxError("uuid", s)
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return u, syntaxError("uuid", s)
		}
		u[n] = hi<<4 | lo
		i += 2
		if i < len(s) && s[i] == '-' && n%2 == 1 && n < 15 {
			i++
		}
	}
	if braces {
		if i >= len(s) || s[i] != '}' {
			return u, syntaxError("uuid", s)
		}
		i++
	}
	if i != len(s) {
		return u, syntaxError("uuid", s)
	}
	return u, nil
}

// parseText parses a key in text form with the column type's input
// function, strictly (COPY fields, text parameters, range/list bounds).
// Numeric digits go into scratch.
func parseText(t KeyType, s string, scratch []byte) (value, *wire.Error) {
	switch {
	case t.Kind.isInt():
		i, err := parseInt(s, t.Kind)
		return value{kind: Int8, i: i}, err
	case t.Kind.isText():
		return value{kind: Text, s: s}, nil
	case t.Kind == UUID:
		u, err := parseUUID(s)
		return value{kind: UUID, u: u}, err
	case t.Kind == Numeric:
		d, err := parseNumeric(s, scratch)
		if err != nil {
			return value{}, err
		}
		if t.HasScale {
			d = d.rounded(t.Scale)
		}
		return value{kind: Numeric, d: d}, nil
	}
	return value{}, wire.Errorf(wire.CodeInternalError, "shard key of unknown type %d", t.Kind)
}

// parseLiteral parses a key written as an SQL constant. Unlike a typed
// input it accepts any number for an integer column: PostgreSQL compares
// an integer column with 1.5 or 3000000000 as numeric or bigint instead
// of failing, and rounds numerics assigned to an integer column, so the
// owner of the rounded value is the only shard that can hold a match.
func parseLiteral(t KeyType, s string, scratch []byte) (value, *wire.Error) {
	if !t.Kind.isInt() {
		return parseText(t, s, scratch)
	}
	i, err := parseInt(s, Int8)
	if err == nil {
		return value{kind: Int8, i: i}, nil
	}
	d, nerr := parseNumeric(s, scratch)
	if nerr != nil || d.special != numFinite {
		if err.Code == codeNumericValueOutOfRange {
			return value{}, err
		}
		return value{}, syntaxError(t.Kind.String(), s)
	}
	i, nerr = d.toInt()
	if nerr != nil {
		return value{}, nerr
	}
	return value{kind: Int8, i: i}, nil
}

// errBinary marks malformed binary input inside the decoders; callers
// turn it into a fresh error naming the parameter (never returned as is).
var errBinary = &wire.Error{Code: codeInvalidBinaryRepresentation}

func binaryFormatError(param int) *wire.Error {
	if param > 0 {
		return wire.Errorf(codeInvalidBinaryRepresentation, "incorrect binary data format in bind parameter %d", param)
	}
	return wire.Errorf(codeInvalidBinaryRepresentation, "incorrect binary data format in shard key")
}

// decodeBinary decodes a key in binary format. oid is the type the
// client declared for it (0: the column's own type, as PostgreSQL infers
// it); param is the 1-based parameter number for messages (0 for COPY).
func decodeBinary(t KeyType, oid uint32, b []byte, scratch []byte, param int) (value, *wire.Error) {
	src := t.Kind
	if oid != 0 {
		if src = kindOfOID(oid); src == 0 {
			return value{}, wire.Errorf(wire.CodeFeatureNotSupported,
				"cannot route by a binary parameter of type OID %d: the shard key is %s", oid, t).
				WithHint("Send the key as " + t.String() + " or in text format.")
		}
	}
	var v value
	switch {
	case src.isInt():
		switch len(b) {
		case 2:
			v.i = int64(int16(binary.BigEndian.Uint16(b)))
		case 4:
			v.i = int64(int32(binary.BigEndian.Uint32(b)))
		case 8:
			v.i = int64(binary.BigEndian.Uint64(b))
		default:
			return v, binaryFormatError(param)
		}
		v.kind = Int8
	case src.isText():
		s := bytesString(b)
		if oid == oidBpchar {
			// bpchar compares and casts to text without trailing blanks.
			for len(s) > 0 && s[len(s)-1] == ' ' {
				s = s[:len(s)-1]
			}
		}
		if !t.Kind.isText() {
			return parseText(t, s, scratch)
		}
		v.kind, v.s = Text, s
	case src == UUID:
		if len(b) != 16 {
			return v, binaryFormatError(param)
		}
		v.kind = UUID
		copy(v.u[:], b)
	case src == Numeric:
		d, err := decodeNumericBinary(b, scratch)
		if err == errBinary {
			return v, binaryFormatError(param)
		}
		if err != nil {
			return v, err
		}
		v.kind, v.d = Numeric, d
	}
	return convert(v, t, scratch)
}

// convert turns a decoded value into the column's kind as PostgreSQL's
// comparison with the column would: integers and numerics convert both
// ways (numeric to integer rounds), text is parsed with the column's
// input function, anything else has no = operator.
func convert(v value, t KeyType, scratch []byte) (value, *wire.Error) {
	switch {
	case t.Kind.isInt():
		switch v.kind {
		case Int8:
			return v, nil
		case Numeric:
			i, err := v.d.toInt()
			return value{kind: Int8, i: i}, err
		case Text:
			return parseText(t, v.s, scratch)
		}
	case t.Kind == Numeric:
		switch v.kind {
		case Int8:
			d := decimalFromInt(v.i, scratch)
			if t.HasScale {
				d = d.rounded(t.Scale)
			}
			return value{kind: Numeric, d: d}, nil
		case Numeric:
			if t.HasScale {
				v.d = v.d.rounded(t.Scale)
			}
			return v, nil
		case Text:
			return parseText(t, v.s, scratch)
		}
	case t.Kind.isText():
		if v.kind == Text {
			return v, nil
		}
	case t.Kind == UUID:
		switch v.kind {
		case UUID:
			return v, nil
		case Text:
			return parseText(t, v.s, scratch)
		}
	}
	return value{}, wire.Errorf(codeUndefinedFunction, "operator does not exist: %s = %s", t.Kind, v.kind)
}
