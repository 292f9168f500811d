package merge

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Type OIDs from pg_type.dat that the merger understands.
const (
	oidBool        = 16
	oidBytea       = 17
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidFloat4      = 700
	oidFloat8      = 701
	oidUnknown     = 705
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidNumeric     = 1700
	oidUUID        = 2950
)

// class groups types that decode, compare and encode alike.
type class uint8

const (
	clsOther     class = iota // not comparable here: only passed through or compared as bytes
	clsInt                    // int2, int4, int8, oid
	clsFloat                  // float4, float8
	clsNumeric                // numeric
	clsText                   // text, varchar, name, unknown: C collation (bytewise UTF-8)
	clsBpchar                 // character(n): trailing blanks are insignificant
	clsBytea                  // bytea: bytewise
	clsUUID                   // uuid: bytewise
	clsBool                   // false < true
	clsDate                   // days since 2000-01-01
	clsTime                   // time without time zone: µs since midnight
	clsTimestamp              // timestamp and timestamptz: µs since 2000-01-01 UTC
)

// column is what the merger knows about one result column.
type column struct {
	oid    uint32
	size   int16 // binary width for int/float (2, 4, 8)
	binary bool
	cls    class
	// scan parses text-format dates and times with pgtype (ISO DateStyle),
	// whose grammar covers BC years, offsets and infinities.
	scan pgtype.ScanPlan
	date pgtype.Date
	ts   pgtype.Timestamp
	tstz pgtype.Timestamptz
	tm   pgtype.Time
}

var typeNames = map[uint32]string{
	oidBool: "boolean", oidBytea: "bytea", oidName: "name", oidInt8: "bigint", oidInt2: "smallint",
	oidInt4: "integer", oidText: "text", oidOID: "oid", oidFloat4: "real", oidFloat8: "double precision",
	oidUnknown: "unknown", oidBpchar: "character", oidVarchar: "character varying", oidDate: "date",
	oidTime: "time without time zone", oidTimestamp: "timestamp without time zone",
	oidTimestamptz: "timestamp with time zone", oidNumeric: "numeric", oidUUID: "uuid",
	114: "json", 3802: "jsonb", 1186: "interval", 1266: "time with time zone", 790: "money",
	869: "inet", 650: "cidr", 829: "macaddr", 18: "\"char\"", 1560: "bit", 1562: "bit varying",
}

func typeName(oid uint32) string {
	if n, ok := typeNames[oid]; ok {
		return n
	}
	return "type with OID " + strconv.FormatUint(uint64(oid), 10)
}

var typeMap = pgtype.NewMap()

func newColumn(oid uint32, format int16) column {
	c := column{oid: oid, binary: format == 1}
	switch oid {
	case oidInt2:
		c.cls, c.size = clsInt, 2
	case oidInt4, oidOID:
		c.cls, c.size = clsInt, 4
	case oidInt8:
		c.cls, c.size = clsInt, 8
	case oidFloat4:
		c.cls, c.size = clsFloat, 4
	case oidFloat8:
		c.cls, c.size = clsFloat, 8
	case oidNumeric:
		c.cls = clsNumeric
	case oidText, oidVarchar, oidName, oidUnknown:
		c.cls = clsText
	case oidBpchar:
		c.cls = clsBpchar
	case oidBytea:
		c.cls = clsBytea
	case oidUUID:
		c.cls = clsUUID
	case oidBool:
		c.cls = clsBool
	case oidDate:
		c.cls = clsDate
	case oidTime:
		c.cls = clsTime
	case oidTimestamp, oidTimestamptz:
		c.cls = clsTimestamp
	}
	return c
}

// prepare plans the pgtype text scan for date/time columns. It runs once
// the column sits at its final address, because the plan targets its fields.
func (c *column) prepare() {
	if c.binary {
		return
	}
	switch c.oid {
	case oidDate:
		c.scan = typeMap.PlanScan(c.oid, pgtype.TextFormatCode, &c.date)
	case oidTimestamp:
		c.scan = typeMap.PlanScan(c.oid, pgtype.TextFormatCode, &c.ts)
	case oidTimestamptz:
		c.scan = typeMap.PlanScan(c.oid, pgtype.TextFormatCode, &c.tstz)
	case oidTime:
		c.scan = typeMap.PlanScan(c.oid, pgtype.TextFormatCode, &c.tm)
	}
}

// val is a decoded, comparable value. Which fields are used depends on
// the column's class.
type val struct {
	null bool
	i    int64    // ints, bool (0/1), date, time, timestamp; uuid's first 8 bytes
	u    uint64   // uuid's last 8 bytes
	f    float64  // floats
	b    []byte   // text, bpchar (without trailing blanks), bytea (raw bytes)
	d    *decimal // numeric; reused across decodes into the same val
}

var errBadValue = errors.New("malformed value")

// PostgreSQL's epoch (2000-01-01) in Unix seconds: binary dates and
// timestamps count from it, so text values are converted to the same scale.
const (
	pgEpochUnix   = 946684800
	secondsPerDay = 86400
)

// decode parses raw (nil = NULL) into v in c's format.
func (c *column) decode(raw []byte, v *val) error {
	if raw == nil {
		v.null = true
		return nil
	}
	v.null = false
	switch c.cls {
	case clsInt:
		if c.binary {
			switch {
			case len(raw) == 2 && c.size == 2:
				v.i = int64(int16(binary.BigEndian.Uint16(raw)))
			case len(raw) == 4 && c.oid == oidOID:
				v.i = int64(binary.BigEndian.Uint32(raw))
			case len(raw) == 4 && c.size == 4:
				v.i = int64(int32(binary.BigEndian.Uint32(raw)))
			case len(raw) == 8 && c.size == 8:
				v.i = int64(binary.BigEndian.Uint64(raw))
			default:
				return errBadValue
			}
			return nil
		}
		n, ok := parseInt(raw)
		if !ok {
			return errBadValue
		}
		v.i = n
	case clsFloat:
		if c.binary {
			switch {
			case len(raw) == 4 && c.size == 4:
				v.f = float64(math.Float32frombits(binary.BigEndian.Uint32(raw)))
			case len(raw) == 8 && c.size == 8:
				v.f = math.Float64frombits(binary.BigEndian.Uint64(raw))
			default:
				return errBadValue
			}
			return nil
		}
		// Parsing float4 text at 32 bits gives exactly the float4 the
		// server had, as the binary path does.
		f, err := strconv.ParseFloat(string(raw), int(c.size)*8)
		if err != nil {
			return errBadValue
		}
		v.f = f
	case clsNumeric:
		if v.d == nil {
			v.d = new(decimal)
		}
		if c.binary {
			return decodeDecimalBinary(raw, v.d)
		}
		return parseDecimal(raw, v.d)
	case clsText:
		v.b = raw
	case clsBpchar:
		v.b = bytes.TrimRight(raw, " ")
	case clsBytea:
		if c.binary {
			v.b = raw
			return nil
		}
		b, err := decodeByteaText(raw)
		if err != nil {
			return err
		}
		v.b = b
	case clsUUID:
		if c.binary {
			if len(raw) != 16 {
				return errBadValue
			}
			v.i = int64(binary.BigEndian.Uint64(raw))
			v.u = binary.BigEndian.Uint64(raw[8:])
			return nil
		}
		return parseUUID(raw, v)
	case clsBool:
		if c.binary {
			if len(raw) != 1 {
				return errBadValue
			}
			v.i = int64(raw[0] & 1)
			return nil
		}
		b, ok := parseBool(raw)
		if !ok {
			return errBadValue
		}
		v.i = b
	case clsDate:
		if c.binary {
			if len(raw) != 4 {
				return errBadValue
			}
			days := int64(int32(binary.BigEndian.Uint32(raw)))
			switch days {
			case math.MaxInt32:
				days = math.MaxInt64
			case math.MinInt32:
				days = math.MinInt64
			}
			v.i = days
			return nil
		}
		if err := c.scan.Scan(raw, &c.date); err != nil || !c.date.Valid {
			return errBadValue
		}
		v.i = dateDays(c.date)
	case clsTime:
		if c.binary {
			if len(raw) != 8 {
				return errBadValue
			}
			v.i = int64(binary.BigEndian.Uint64(raw))
			return nil
		}
		if err := c.scan.Scan(raw, &c.tm); err != nil || !c.tm.Valid {
			return errBadValue
		}
		v.i = c.tm.Microseconds
	case clsTimestamp:
		if c.binary {
			if len(raw) != 8 {
				return errBadValue
			}
			v.i = int64(binary.BigEndian.Uint64(raw))
			return nil
		}
		var t time.Time
		var inf pgtype.InfinityModifier
		if c.oid == oidTimestamptz {
			if err := c.scan.Scan(raw, &c.tstz); err != nil || !c.tstz.Valid {
				return errBadValue
			}
			t, inf = c.tstz.Time, c.tstz.InfinityModifier
		} else {
			if err := c.scan.Scan(raw, &c.ts); err != nil || !c.ts.Valid {
				return errBadValue
			}
			t, inf = c.ts.Time, c.ts.InfinityModifier
		}
		v.i = timestampMicros(t, inf)
	default:
		return errBadValue
	}
	return nil
}

func dateDays(d pgtype.Date) int64 {
	switch d.InfinityModifier {
	case pgtype.Infinity:
		return math.MaxInt64
	case pgtype.NegativeInfinity:
		return math.MinInt64
	}
	return floorDiv(d.Time.Unix(), secondsPerDay) - pgEpochUnix/secondsPerDay
}

func timestampMicros(t time.Time, inf pgtype.InfinityModifier) int64 {
	switch inf {
	case pgtype.Infinity:
		return math.MaxInt64
	case pgtype.NegativeInfinity:
		return math.MinInt64
	}
	return (t.Unix()-pgEpochUnix)*1_000_000 + int64(t.Nanosecond()/1000)
}

// compare orders two non-NULL values of class cls as PostgreSQL's btree
// operators do. tmp is scratch space for numerics.
func compare(cls class, a, b *val, tmp *big.Int) int {
	switch cls {
	case clsInt, clsBool, clsDate, clsTime, clsTimestamp:
		return cmpInt(a.i, b.i)
	case clsFloat:
		return cmpFloat(a.f, b.f)
	case clsNumeric:
		return cmpDecimal(a.d, b.d, tmp)
	case clsUUID:
		if a.i != b.i {
			return cmpUint(uint64(a.i), uint64(b.i))
		}
		return cmpUint(a.u, b.u)
	default:
		return bytes.Compare(a.b, b.b)
	}
}

// cmpFloat is float8_cmp_internal: NaN sorts above everything (and equals
// NaN), -0 equals 0.
func cmpFloat(a, b float64) int {
	an, bn := math.IsNaN(a), math.IsNaN(b)
	switch {
	case an && bn:
		return 0
	case an:
		return 1
	case bn:
		return -1
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// parseInt parses an optionally signed decimal integer with surrounding
// blanks (int8in's syntax), without allocating.
func parseInt(s []byte) (int64, bool) {
	s = trimSpace(s)
	neg := false
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if len(s) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (math.MaxUint64-9)/10 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	if neg {
		if n > 1<<63 {
			return 0, false
		}
		return int64(-n), true
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	return int64(n), true
}

// parseBool accepts boolin's spellings: t, true, y, yes, on, 1 and their
// negations, case-insensitively, including unique prefixes of the words.
func parseBool(s []byte) (int64, bool) {
	if len(s) == 1 { // boolout's t / f, the only forms a server sends
		switch s[0] {
		case 't':
			return 1, true
		case 'f':
			return 0, true
		}
	}
	s = trimSpace(s)
	if len(s) == 0 {
		return 0, false
	}
	low := make([]byte, 0, 8)
	for _, c := range s {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		low = append(low, c)
	}
	w := string(low)
	prefixOf := func(word string) bool { return len(w) <= len(word) && word[:len(w)] == w }
	switch {
	case prefixOf("true"), prefixOf("yes"), w == "on", w == "1":
		return 1, true
	case prefixOf("false"), prefixOf("no"), w == "off", w == "of", w == "0":
		return 0, true
	}
	return 0, false
}

// parseUUID accepts uuid_in's forms: 32 hex digits, optionally with
// hyphens between groups and surrounding braces.
func parseUUID(s []byte, v *val) error {
	s = trimSpace(s)
	if len(s) >= 2 && s[0] == '{' && s[len(s)-1] == '}' {
		s = s[1 : len(s)-1]
	}
	var out [16]byte
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		if n == 32 {
			return errBadValue
		}
		h, ok := unhex(s[i])
		if !ok {
			return errBadValue
		}
		if n%2 == 0 {
			out[n/2] = h << 4
		} else {
			out[n/2] |= h
		}
		n++
	}
	if n != 32 {
		return errBadValue
	}
	v.i = int64(binary.BigEndian.Uint64(out[:]))
	v.u = binary.BigEndian.Uint64(out[8:])
	return nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decodeByteaText reads bytea's text output: hex (\x...) or escape format.
func decodeByteaText(s []byte) ([]byte, error) {
	if len(s) >= 2 && s[0] == '\\' && s[1] == 'x' {
		out := make([]byte, hex.DecodedLen(len(s)-2))
		if _, err := hex.Decode(out, s[2:]); err != nil {
			return nil, errBadValue
		}
		return out, nil
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == '\\':
			out = append(out, '\\')
			i++
		case i+3 < len(s) && isOct(s[i+1]) && isOct(s[i+2]) && isOct(s[i+3]):
			out = append(out, (s[i+1]-'0')<<6|(s[i+2]-'0')<<3|(s[i+3]-'0'))
			i += 3
		default:
			return nil, errBadValue
		}
	}
	return out, nil
}

func isOct(c byte) bool { return '0' <= c && c <= '7' }

// appendKey appends raw in a form whose bytes are equal exactly when
// PostgreSQL's equality says the values are equal, for GROUP BY and
// DISTINCT: numerics ignore trailing fraction zeros, floats treat -0 as 0
// and all NaNs as one, char(n) ignores trailing blanks. Other types
// compare by their bytes, which is exact for the types whose output is
// canonical (integers, text in a deterministic collation, dates, ...).
// scratch is decode space for numerics and floats.
func (c *column) appendKey(buf, raw []byte, scratch *val) ([]byte, error) {
	if raw == nil {
		return append(buf, 0xFF, 0xFF, 0xFF, 0xFF), nil
	}
	lenAt := len(buf)
	buf = append(buf, 0, 0, 0, 0)
	switch c.cls {
	case clsNumeric:
		if err := c.decode(raw, scratch); err != nil {
			return nil, err
		}
		buf = scratch.d.appendKey(buf)
	case clsFloat:
		if err := c.decode(raw, scratch); err != nil {
			return nil, err
		}
		f := scratch.f
		switch {
		case math.IsNaN(f):
			f = math.NaN()
		case f == 0:
			f = 0
		}
		buf = binary.BigEndian.AppendUint64(buf, math.Float64bits(f))
	case clsBpchar:
		buf = append(buf, bytes.TrimRight(raw, " ")...)
	default:
		buf = append(buf, raw...)
	}
	binary.BigEndian.PutUint32(buf[lenAt:], uint32(len(buf)-lenAt-4))
	return buf, nil
}

// parseConst parses a HAVING constant (SQL text without quotes) as a value
// of c's type, the way PostgreSQL's input function for that type would.
func (c *column) parseConst(s string, v *val) error {
	raw := []byte(s)
	switch c.cls {
	case clsInt:
		n, ok := parseInt(raw)
		if !ok {
			return errBadValue
		}
		v.i = n
	case clsFloat:
		f, err := strconv.ParseFloat(string(trimSpace(raw)), 64)
		if err != nil {
			return errBadValue
		}
		v.f = f
	case clsNumeric:
		v.d = new(decimal)
		return parseDecimal(raw, v.d)
	case clsText:
		v.b = raw
	case clsBpchar:
		v.b = bytes.TrimRight(raw, " ")
	case clsBytea:
		b, err := decodeByteaText(raw)
		if err != nil {
			return err
		}
		v.b = b
	case clsUUID:
		return parseUUID(raw, v)
	case clsBool:
		b, ok := parseBool(raw)
		if !ok {
			return errBadValue
		}
		v.i = b
	case clsDate, clsTime, clsTimestamp:
		if c.oid == oidTimestamptz && !hasZone(raw) {
			return errNeedsZone
		}
		raw = trimSpace(raw)
		if c.cls == clsTimestamp && c.oid != oidTimestamptz && len(raw) == 10 && raw[4] == '-' && raw[7] == '-' {
			// A date-only constant compared with a timestamp means its
			// midnight, as PostgreSQL's timestamp input reads it.
			raw = append(append([]byte(nil), raw...), " 00:00:00"...)
		}
		text := column{oid: c.oid, cls: c.cls}
		text.prepare()
		return text.decode(raw, v)
	default:
		return errBadValue
	}
	return nil
}

var errNeedsZone = errors.New("timestamptz constant without a time zone")

// hasZone reports whether an ISO timestamp literal carries an explicit
// UTC offset after its time of day (or is an infinity): without one its
// meaning depends on the session's TimeZone, which the merger cannot see.
func hasZone(s []byte) bool {
	s = trimSpace(s)
	if equalFoldStr(s, "infinity") || equalFoldStr(s, "-infinity") {
		return true
	}
	sp := bytes.IndexByte(s, ' ')
	if sp < 0 {
		return false
	}
	rest := s[sp+1:]
	return bytes.ContainsAny(rest, "+-Zz")
}

// appendInt appends n in c's type and format; ok is false when n does not
// fit the type (PostgreSQL raises "... out of range").
func (c *column) appendInt(buf []byte, n int64) ([]byte, bool) {
	switch c.size {
	case 2:
		if n < math.MinInt16 || n > math.MaxInt16 {
			return buf, false
		}
	case 4:
		if n < math.MinInt32 || n > math.MaxInt32 {
			return buf, false
		}
	}
	if !c.binary {
		return strconv.AppendInt(buf, n, 10), true
	}
	switch c.size {
	case 2:
		return binary.BigEndian.AppendUint16(buf, uint16(n)), true
	case 4:
		return binary.BigEndian.AppendUint32(buf, uint32(n)), true
	}
	return binary.BigEndian.AppendUint64(buf, uint64(n)), true
}

func (c *column) appendFloat(buf []byte, f float64) []byte {
	if c.size == 4 {
		if c.binary {
			return binary.BigEndian.AppendUint32(buf, math.Float32bits(float32(f)))
		}
		return appendPGFloat(buf, f, 32)
	}
	if c.binary {
		return binary.BigEndian.AppendUint64(buf, math.Float64bits(f))
	}
	return appendPGFloat(buf, f, 64)
}

func (c *column) appendDecimal(buf []byte, d *decimal) []byte {
	if c.binary {
		return d.appendBinary(buf)
	}
	return d.appendText(buf)
}

func (c *column) appendBool(buf []byte, b bool) []byte {
	switch {
	case c.binary && b:
		return append(buf, 1)
	case c.binary:
		return append(buf, 0)
	case b:
		return append(buf, 't')
	}
	return append(buf, 'f')
}

func (c *column) String() string {
	f := "text"
	if c.binary {
		f = "binary"
	}
	return fmt.Sprintf("%s (%s)", typeName(c.oid), f)
}
