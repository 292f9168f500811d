package sharded

// Differential test: the same rows go into a 3-shard proxy (split by key)
// and into one plain PostgreSQL database (the reference, a separate
// database on shard0's server); several hundred SELECTs must then return
// the same results through both, over the simple protocol (text results)
// and the extended protocol (pgx's default: prepared, binary where pgx
// knows the type; and unnamed statements with text parameters and text
// results).
//
// Loading: diff_t through the proxy by multi-row INSERTs (half with
// literals over the simple protocol, half with $N text parameters), diff_s
// by COPY (half binary, half text); the reference gets literal INSERTs.
// After loading, every row must sit on the shard that owns its key's slot.
//
// Results are compared as raw protocol values (bytes, in the format the
// client asked for): row order where the query's ORDER BY fixes it (qOrd:
// it ends in a unique column, or covers every output column), else as
// sorted multisets; column names, type OIDs, formats and the command tag
// too. float8 values are compared exactly, except in queries marked qTol
// (sums and averages of the column r, whose values are not exact binary
// fractions, so the order of additions changes the last bits; relative
// tolerance 1e-9); the column f holds exact binary fractions, whose sums
// are exact in any order, so its aggregates are compared byte for byte.
// Queries marked qNum compare numeric and float8 by value: the columns ns
// and fz hold equal values spelled differently (1, 1.0, 1.00; 0, -0), of
// which PostgreSQL may show either in min/max/GROUP BY/DISTINCT.
// Queries marked qErr must fail on the proxy with the reference's SQLSTATE.
//
// Refusals: a query the proxy refuses with SQLSTATE 0A000 fails the test
// unless it is marked qRefuse (forms the router's golden files and the
// merger document as unsupported across shards); those do not count
// toward the total. The test data avoid values whose display PostgreSQL
// leaves undefined (equal numerics at different scales outside ns, -0
// outside fz, intervals with months or 24+ hours).
//
// Set DIFF_REPORT=path to also write every failure, uncapped, to a file.

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

const (
	diffSeed  = 0x5eed_d1ff
	diffRefDB = "diffref"
)

// ---------------------------------------------------------------------
// Data

// dv is one value as PostgreSQL's text input would take it.
type dv struct {
	null bool
	s    string
}

func dvNull() dv       { return dv{null: true} }
func dvS(s string) dv  { return dv{s: s} }
func dvI(i int64) dv   { return dv{s: strconv.FormatInt(i, 10)} }
func dvF(f float64) dv { return dv{s: strconv.FormatFloat(f, 'g', -1, 64)} }
func dvB(b bool) dv    { return dv{s: strconv.FormatBool(b)} }
func dvMaybe(null bool, v dv) dv {
	if null {
		return dvNull()
	}
	return v
}

// dcol is a column of a test table; bare columns are written as SQL
// literals without quotes (integers, booleans), the others quoted.
type dcol struct {
	name, typ string
	bare      bool
}

type dtable struct {
	name string
	cols []dcol
	rows [][]dv
}

func (tb *dtable) ddl() string {
	var parts []string
	for i, c := range tb.cols {
		p := c.name + " " + c.typ
		if i == 0 {
			p += " PRIMARY KEY"
		}
		parts = append(parts, p)
	}
	return fmt.Sprintf("CREATE TABLE %s (%s)", tb.name, strings.Join(parts, ", "))
}

func (tb *dtable) colList() string {
	var names []string
	for _, c := range tb.cols {
		names = append(names, c.name)
	}
	return strings.Join(names, ", ")
}

func sqlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func (tb *dtable) literal(i int, v dv) string {
	if v.null {
		return "NULL"
	}
	if tb.cols[i].bare {
		return v.s
	}
	return sqlQuote(v.s)
}

// insertSQL is a multi-row INSERT of rows with literal values.
func (tb *dtable) insertSQL(rows [][]dv) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "INSERT INTO %s (%s) VALUES ", tb.name, tb.colList())
	for r, row := range rows {
		if r > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for i, v := range row {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(tb.literal(i, v))
		}
		sb.WriteByte(')')
	}
	return sb.String()
}

// insertParams is a multi-row INSERT with $N parameters and their text values.
func (tb *dtable) insertParams(rows [][]dv) (string, [][]byte) {
	var sb strings.Builder
	var vals [][]byte
	fmt.Fprintf(&sb, "INSERT INTO %s (%s) VALUES ", tb.name, tb.colList())
	n := 0
	for r, row := range rows {
		if r > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for i, v := range row {
			if i > 0 {
				sb.WriteString(", ")
			}
			n++
			fmt.Fprintf(&sb, "$%d", n)
			if v.null {
				vals = append(vals, nil)
			} else {
				vals = append(vals, []byte(v.s))
			}
		}
		sb.WriteByte(')')
	}
	return sb.String(), vals
}

// copyText renders rows in COPY's text format.
func copyText(rows [][]dv) string {
	esc := strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)
	var sb strings.Builder
	for _, row := range rows {
		for i, v := range row {
			if i > 0 {
				sb.WriteByte('\t')
			}
			if v.null {
				sb.WriteString(`\N`)
			} else {
				sb.WriteString(esc.Replace(v.s))
			}
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}

// Text values: ASCII, case, multibyte, empty, quotes, backslashes, tabs, newlines.
var diffTexts = []string{
	"", " ", "a", "A", "b", "B", "abc", "Abc", "abd", "zeta", "z", "ZZ", "0", "10", "9",
	"é", "e", "ü", "ß", "日本", "日本語", "ж", "🙂", "a b", "a_b", "it's", `back\slash`,
	"tab\tx", "multi\nline", "~tilde", "Ωmega",
}

// Numeric values: no two of them equal at different scales (1.0 and 1.00
// are equal but print differently; which one a GROUP BY or DISTINCT keeps
// is not defined).
var diffNumerics = []string{
	"0", "1", "-1", "1.5", "-2.25", "0.001", "-0.001", "12345.6789", "-98765.4321",
	"3.14159265358979323846", "1000000000000000000000", "0.000000000000000001", "42",
	"-0.5", "7.125", "2.5", "99999999999.99999", "-3",
}

// Numerics that are equal at different scales, and char(4) values: for
// queries that compare by value (qNum) or rely on bpchar semantics.
var diffEqualNumerics = []string{"1", "1.0", "1.00", "2.5", "2.50", "0", "0.000", "-7.10", "-7.1"}

var diffChars = []string{"", "a", "a b", "ab", " a", "abcd", "é", "Z", "日本"}

var diffJSON = []string{`{"a": 1}`, `[1, 2]`, `"s"`, `1`, `null`, `{"b": [true, false]}`, `{}`, `[]`, `2.5`, `{"a": 1, "b": 2}`}

// diffInterval is an interval without months and with hours under a day,
// so that no two equal intervals print differently ('1 mon' = '30 days',
// '1 day' = '24:00:00' would make min/max/DISTINCT pick either form).
func diffInterval(rng *rand.Rand) string {
	sign := ""
	if rng.IntN(4) == 0 {
		sign = "-"
	}
	return fmt.Sprintf("%s%d days %s%02d:%02d:%02d", sign, rng.IntN(400), sign, rng.IntN(24), rng.IntN(60), rng.IntN(60))
}

func diffBytea(rng *rand.Rand) string {
	b := make([]byte, rng.IntN(5))
	for i := range b {
		b[i] = byte(rng.IntN(256))
	}
	return fmt.Sprintf(`\x%x`, b)
}

// diffIDs are the keys of diff_t: small, negative, zero, huge, extremes.
func diffIDs(rng *rand.Rand) []int64 {
	var ids []int64
	for i := int64(1); i <= 2400; i++ {
		ids = append(ids, i)
	}
	for i := int64(1); i <= 400; i++ {
		ids = append(ids, -7*i)
	}
	for i := int64(0); i < 100; i++ {
		ids = append(ids, 9_000_000_000_000_000_000+i*1_000_003)
		ids = append(ids, -9_000_000_000_000_000_000-i*999_983)
	}
	ids = append(ids, 0, math.MaxInt64, math.MinInt64)
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	return ids
}

func genDiffT(rng *rand.Rand) *dtable {
	tb := &dtable{name: "diff_t", cols: []dcol{
		{"id", "bigint", true}, {"a", "int", true}, {"b", "bigint", true}, {"g", "int NOT NULL", true},
		{"n", "numeric", false}, {"m", "numeric(12,3)", false}, {"c", "numeric(10,2)", false},
		{"f", "float8", false}, {"r", "float8", false}, {"t", "text", false}, {"u", "text", false},
		{"flag", "boolean", true}, {"d", "date", false},
		{"ts", "timestamp", false}, {"tz", "timestamptz", false}, {"iv", "interval", false},
		{"uid", "uuid", false}, {"ch", "char(4)", false}, {"bt", "bytea", false}, {"j", "jsonb", false},
		{"ns", "numeric", false}, {"fz", "float8", false},
	}}
	pct := func(p int) bool { return rng.IntN(100) < p }
	dec := func(units int64, scale int) string {
		sign := ""
		if units < 0 {
			sign, units = "-", -units
		}
		p := int64(math.Pow10(scale))
		return fmt.Sprintf("%s%d.%0*d", sign, units/p, scale, units%p)
	}
	prefixes := []string{"x", "X", "ж", "日", "", "é"}
	base := time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)
	var g9, g10, g11 int
	for _, id := range diffIDs(rng) {
		g := rng.IntN(12)
		row := []dv{
			dvI(id),
			dvMaybe(pct(8), dvI(int64(rng.IntN(2001)-1000))),
			dvMaybe(pct(5), dvI(rng.Int64N(20_000_000_000_000_000)-10_000_000_000_000_000)),
			dvI(int64(g)),
			dvMaybe(pct(10), dvS(diffNumerics[rng.IntN(len(diffNumerics))])),
			dvMaybe(pct(5), dvS(dec(rng.Int64N(200_000_000)-100_000_000, 3))),
			dvMaybe(pct(3), dvS(dec(rng.Int64N(2_000_000_000)-1_000_000_000, 2))),
			dvMaybe(pct(5), dvF(float64(rng.IntN(80001)-40000)/4)),
			dvMaybe(pct(5), dvF(rng.Float64()*2000-1000)),
			dvMaybe(pct(7), dvS(diffTexts[rng.IntN(len(diffTexts))])),
			dvS(fmt.Sprintf("%s-%05d", prefixes[rng.IntN(len(prefixes))], rng.IntN(100000))),
			dvMaybe(pct(10), dvB(rng.IntN(2) == 1)),
			dvMaybe(pct(5), dvS(base.AddDate(0, 0, rng.IntN(15000)).Format("2006-01-02"))),
			dvMaybe(pct(5), dvS(base.Add(time.Duration(rng.Int64N(40*365*24*3600*1e6))*time.Microsecond).Format("2006-01-02 15:04:05.999999"))),
			dvMaybe(pct(5), dvS(base.Add(time.Duration(rng.Int64N(40*365*24*3600*1e3))*time.Millisecond).
				In(time.FixedZone("", (rng.IntN(27)-12)*3600)).Format("2006-01-02 15:04:05.999-07"))),
			dvMaybe(pct(10), dvS(diffInterval(rng))),
			dvMaybe(pct(5), dvS(fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<12), rng.IntN(1<<12), rng.Int64N(1<<48)))),
			dvMaybe(pct(5), dvS(diffChars[rng.IntN(len(diffChars))])),
			dvMaybe(pct(5), dvS(diffBytea(rng))),
			dvMaybe(pct(10), dvS(diffJSON[rng.IntN(len(diffJSON))])),
			dvMaybe(pct(10), dvS(diffEqualNumerics[rng.IntN(len(diffEqualNumerics))])),
			dvMaybe(pct(10), dvS([]string{"0", "-0", "1.5", "-1.5", "NaN"}[rng.IntN(5)])),
		}
		// Special values, each confined to one group so that the other
		// groups (and WHERE g < 11) keep ordinary sums.
		switch g {
		case 9: // bigint extremes (sum(bigint) is numeric: no overflow)
			if g9 < 2 {
				row[2] = dvI([]int64{math.MaxInt64, math.MinInt64}[g9])
			}
			g9++
		case 10: // date infinities and a BC date
			if g10 < 3 {
				row[12] = dvS([]string{"infinity", "-infinity", "0044-03-15 BC"}[g10])
				row[13] = dvS([]string{"infinity", "-infinity", "0044-03-15 12:00:00 BC"}[g10])
				row[14] = dvS([]string{"-infinity", "infinity", "2000-02-29 23:59:59.999999+14"}[g10])
			}
			g10++
		case 11: // float and numeric NaN / infinities
			if g11 < 3 {
				row[4] = dvS([]string{"NaN", "Infinity", "-Infinity"}[g11])
				row[7] = dvS([]string{"Infinity", "NaN", "-Infinity"}[g11])
			}
			g11++
		}
		tb.rows = append(tb.rows, row)
	}
	return tb
}

// diffSKeys are the text keys of diff_s.
func diffSKeys() []string {
	var ks []string
	for i := 0; i < 850; i++ {
		ks = append(ks, fmt.Sprintf("k-%04d", i))
	}
	for i := 0; i < 50; i++ {
		ks = append(ks, fmt.Sprintf("ключ-%d", i), fmt.Sprintf("日本-%d", i))
	}
	for i := 0; i < 40; i++ {
		ks = append(ks, fmt.Sprintf("🙂%d", i))
	}
	return append(ks, "", " ", "O'Brien", `a"b`, `back\slash`, "UPPER", "upper", "ß", "Straße", "tab\tkey")
}

func genDiffS(rng *rand.Rand) *dtable {
	tb := &dtable{name: "diff_s", cols: []dcol{
		{"k", "text", false}, {"v", "int", true}, {"w", "numeric(8,2)", false}, {"cat", "text", false},
		{"ok", "boolean", true}, {"big", "bigint", true}, {"note", "text", false},
	}}
	pct := func(p int) bool { return rng.IntN(100) < p }
	cats := []string{"red", "green", "blue", "grün", "赤", ""}
	words := []string{"alpha", "beta", "gamma", "δέλτα", "", "epsilon"}
	keys := diffSKeys()
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	// The empty key and a few other odd ones go first (into the binary
	// COPY half) and last (the text COPY half), whatever the shuffle did.
	for i, k := range []string{"", "O'Brien", "🙂1", "tab\tkey", " ", `back\slash`} {
		at := slices.Index(keys, k)
		to := i
		if i >= 3 {
			to = len(keys) - 1 - (i - 3)
		}
		keys[at], keys[to] = keys[to], keys[at]
	}
	for _, k := range keys {
		w := rng.Int64N(20_000_000) - 10_000_000
		ws := fmt.Sprintf("%d.%02d", w/100, abs64(w%100))
		if w < 0 && w > -100 {
			ws = "-" + ws
		}
		tb.rows = append(tb.rows, []dv{
			dvS(k),
			dvMaybe(pct(10), dvI(int64(rng.IntN(1000)-500))),
			dvMaybe(pct(5), dvS(ws)),
			dvMaybe(pct(10), dvS(cats[rng.IntN(len(cats))])),
			dvMaybe(pct(10), dvB(rng.IntN(2) == 1)),
			dvMaybe(pct(5), dvI(rng.Int64()-math.MaxInt64/2)),
			dvMaybe(pct(30), dvS(words[rng.IntN(len(words))]+" "+words[rng.IntN(len(words))])),
		})
	}
	return tb
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// ---------------------------------------------------------------------
// Queries

type diffMode int

const (
	modeSimple  diffMode = iota // simple protocol, text results (pgx interpolates parameters)
	modeExt                     // pgx default: prepared statement, binary params/results where pgx can
	modeExtText                 // unnamed statement, text parameters of unspecified type, text results
)

func (m diffMode) String() string {
	return [...]string{"simple", "extended", "extended-text"}[m]
}

const (
	qOrd    = 1 << iota // ORDER BY fixes the row order (compare in order)
	qTol                // compare float8 with a relative tolerance
	qRefuse             // a form the proxy is expected to refuse with 0A000
	qNum                // compare numeric and float values by value (1.0 = 1.00, -0 = 0)
	qErr                // the reference raises an error: the proxy must raise the same SQLSTATE
)

type diffQuery struct {
	cat   string
	sql   string
	args  []any
	flags int
	modes []diffMode
}

type qbuild struct{ qs []diffQuery }

func (b *qbuild) q(cat string, flags int, sql string, args ...any) {
	b.qs = append(b.qs, diffQuery{cat: cat, sql: sql, args: args, flags: flags})
}

func inList[T any](xs []T, lit func(T) string) string {
	var s []string
	for _, x := range xs {
		s = append(s, lit(x))
	}
	return strings.Join(s, ", ")
}

func i64lit(x int64) string { return strconv.FormatInt(x, 10) }

// diffQueries builds the query list from templates and parameters.
func diffQueries(tT, tS *dtable) []diffQuery {
	b := &qbuild{}
	rng := rand.New(rand.NewPCG(diffSeed, 2))
	var ids []int64
	for _, r := range tT.rows {
		id, _ := strconv.ParseInt(r[0].s, 10, 64)
		ids = append(ids, id)
	}
	var keys []string
	for _, r := range tS.rows {
		keys = append(keys, r[0].s)
	}
	pickIDs := func(n int) []int64 {
		out := make([]int64, n)
		for i := range out {
			out[i] = ids[rng.IntN(len(ids))]
		}
		return out
	}
	pickKeys := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = keys[rng.IntN(len(keys))]
		}
		return out
	}

	// --- ORDER BY / LIMIT / OFFSET -----------------------------------
	orderCols := []string{"a", "b", "n", "m", "c", "f", "r", "t", "u", "d", "flag", "g", "ts", "tz", "uid", "ch", "bt", "ns", "fz"}
	dirs := []string{"ASC", "DESC"}
	nulls := []string{"", " NULLS FIRST", " NULLS LAST"}
	limits := []string{"LIMIT 10", "LIMIT 25 OFFSET 100", "LIMIT 7 OFFSET 2995", "LIMIT 50 OFFSET 1500", "OFFSET 2990", "LIMIT 3 OFFSET 1"}
	k := 0
	for _, col := range orderCols {
		for _, dir := range dirs {
			for _, nl := range nulls {
				idDir := []string{"", " DESC"}[k%2]
				b.q("order", qOrd, fmt.Sprintf("SELECT id, %s FROM diff_t ORDER BY %s %s%s, id%s %s",
					col, col, dir, nl, idDir, limits[k%len(limits)]))
				k++
			}
		}
	}
	b.q("order", qOrd, "SELECT g, t, id FROM diff_t ORDER BY g, t DESC NULLS LAST, id LIMIT 40 OFFSET 10")
	b.q("order", qOrd, "SELECT flag, d, id, a FROM diff_t ORDER BY flag NULLS FIRST, d DESC, id DESC LIMIT 30")
	b.q("order", qOrd, "SELECT * FROM diff_t ORDER BY id LIMIT 5")
	b.q("order", qOrd, "SELECT * FROM diff_t ORDER BY id DESC OFFSET 2990")
	b.q("order", qOrd, "SELECT * FROM diff_t WHERE g = 3 ORDER BY u, id")
	b.q("order", qOrd, "SELECT id, g FROM diff_t ORDER BY g DESC, id")
	b.q("order", qOrd, "SELECT id, a FROM diff_t ORDER BY 2 DESC, 1 LIMIT 20")
	b.q("order", qOrd, "SELECT id, a * 2 AS dbl FROM diff_t ORDER BY dbl, id LIMIT 20")
	b.q("order", qOrd, "SELECT id FROM diff_t ORDER BY abs(a) NULLS FIRST, id LIMIT 15")
	b.q("order", qOrd, "SELECT id, t FROM diff_t ORDER BY length(t) DESC NULLS LAST, t, id LIMIT 25")
	b.q("order", qOrd, "SELECT id, a FROM diff_t ORDER BY a, id LIMIT ALL")
	b.q("order", qOrd, "SELECT id, a FROM diff_t ORDER BY id LIMIT 0")
	b.q("order", qOrd, "SELECT id, a FROM diff_t ORDER BY id LIMIT 10 OFFSET 5000")
	b.q("order", qOrd, "SELECT id, a FROM diff_t ORDER BY id LIMIT NULL OFFSET 2998")
	b.q("order", qOrd, "SELECT id, u FROM diff_t ORDER BY u DESC, id FETCH FIRST 7 ROWS ONLY")
	b.q("order", qOrd, "SELECT id, u FROM diff_t ORDER BY u, id OFFSET 3 ROWS FETCH NEXT 4 ROWS ONLY")
	b.q("order", qOrd, "SELECT id, d FROM diff_t WHERE d IS NOT NULL ORDER BY d, id LIMIT 10")
	b.q("order", qOrd, "SELECT id, d FROM diff_t ORDER BY d DESC NULLS LAST, id LIMIT 10")
	b.q("order", qOrd, "SELECT id, a::text AS at FROM diff_t ORDER BY at, id LIMIT 20")
	b.q("order", qOrd, "SELECT id, f FROM diff_t WHERE g = 11 ORDER BY f DESC NULLS LAST, id LIMIT 10")
	b.q("order", qOrd, "SELECT id, n FROM diff_t WHERE g = 11 ORDER BY n, id LIMIT 400")
	b.q("order", qOrd, "SELECT id, a FROM diff_t WHERE a > $1 ORDER BY a DESC, id LIMIT $2 OFFSET $3", 100, 15, 7)
	b.q("order", qOrd, "SELECT id, t FROM diff_t WHERE t > $1 ORDER BY t, id LIMIT $2", "b", 30)
	b.q("order", qOrd, "SELECT id, m FROM diff_t ORDER BY m DESC NULLS FIRST, id LIMIT $1", 12)
	b.q("order", qOrd, "SELECT id, c FROM diff_t ORDER BY c, id OFFSET $1", 2980)
	b.q("order", qOrd, "SELECT id, b FROM diff_t ORDER BY b, id LIMIT $1 OFFSET $2", 5, 0)
	b.q("order", qOrd, "SELECT id FROM diff_t ORDER BY id LIMIT 1")
	b.q("order", qOrd, "SELECT id FROM diff_t ORDER BY id DESC LIMIT 1")
	b.q("order", qOrd, "SELECT k, v FROM diff_s ORDER BY k")
	b.q("order", qOrd, "SELECT k, v FROM diff_s ORDER BY k DESC LIMIT 20 OFFSET 3")
	b.q("order", qOrd, "SELECT k, cat FROM diff_s ORDER BY cat NULLS FIRST, k DESC LIMIT 50")
	b.q("order", qOrd, "SELECT k, w FROM diff_s ORDER BY w DESC NULLS LAST, k LIMIT 20")
	b.q("order", qOrd, "SELECT k, big FROM diff_s ORDER BY big, k LIMIT 15 OFFSET 985")
	b.q("order", qOrd, "SELECT k, note FROM diff_s ORDER BY note NULLS FIRST, k LIMIT 30 OFFSET 290")
	b.q("order", qOrd, "SELECT id, upper(t) AS ut, t FROM diff_t ORDER BY ut NULLS FIRST, id LIMIT 40")
	b.q("order", qOrd, "SELECT id, CASE WHEN a < 0 THEN 'neg' WHEN a > 0 THEN 'pos' ELSE 'zero' END AS sign FROM diff_t ORDER BY sign, id DESC LIMIT 20")
	b.q("order", qOrd, "SELECT id, -a AS a FROM diff_t ORDER BY a, id LIMIT 8")
	b.q("order", qOrd, `SELECT id AS "Id", a AS "A b" FROM diff_t ORDER BY "A b" DESC NULLS LAST, "Id" LIMIT 8`)
	b.q("order", qOrd, "SELECT id, g FROM diff_t WHERE (g, id) > (3, 100) ORDER BY g, id LIMIT 10")
	b.q("order", qOrd, "SELECT * FROM diff_s ORDER BY length(k), k LIMIT 5")
	b.q("order", qOrd, "SELECT *, id FROM diff_t ORDER BY 23 DESC LIMIT 3")
	b.q("order", qOrd, "SELECT id, ts, tz FROM diff_t WHERE g = 10 ORDER BY ts NULLS FIRST, id LIMIT 6")
	b.q("order", qOrd, "SELECT id, tz FROM diff_t WHERE g = 10 ORDER BY tz DESC NULLS LAST, id LIMIT 6")
	b.q("order", qOrd, "SELECT id, ch, length(ch) FROM diff_t ORDER BY ch DESC, id LIMIT 30 OFFSET 100")
	b.q("order", qOrd, "SELECT id, iv FROM diff_t WHERE id IN (1, 2, 3) ORDER BY id")
	b.q("order", qRefuse, "SELECT id, iv FROM diff_t ORDER BY iv, id LIMIT 10")
	b.q("order", qRefuse, "SELECT id, j FROM diff_t ORDER BY j, id LIMIT 10")
	b.q("order", 0, "SELECT id, a, t FROM diff_t WHERE g = 5")
	b.q("order", 0, "SELECT * FROM diff_s")

	// --- aggregates without GROUP BY ----------------------------------
	wheres := []string{"", "WHERE g < 11", "WHERE a > 0", "WHERE t IS NULL", "WHERE flag",
		"WHERE g IN (1, 2, 3)", "WHERE id < 0", "WHERE 1 = 0", "WHERE id = 42", "WHERE d < '2000-01-01'"}
	for _, col := range []string{"a", "b", "g", "n", "m", "c", "f"} {
		for _, w := range wheres {
			b.q("agg", qOrd, fmt.Sprintf("SELECT count(*), count(%[1]s), sum(%[1]s), min(%[1]s), max(%[1]s), avg(%[1]s) FROM diff_t %[2]s", col, w))
		}
	}
	for _, w := range []string{"", "WHERE g = 1", "WHERE a < 0", "WHERE id IN (1, 2, 3, 4, 5, 6)"} {
		b.q("agg", qOrd|qTol, "SELECT count(r), sum(r), min(r), max(r), avg(r) FROM diff_t "+w)
	}
	for _, w := range []string{"", "WHERE g = 10", "WHERE a IS NULL", "WHERE 1 = 0", "WHERE id = ANY('{1,2,3}')"} {
		b.q("agg", qOrd, "SELECT min(t), max(t), min(u), max(u), min(d), max(d), bool_and(flag), bool_or(flag), every(flag) FROM diff_t "+w)
	}
	b.q("agg", qOrd, "SELECT min(ts), max(ts), min(tz), max(tz), min(ch), max(ch), count(iv), count(j), count(uid) FROM diff_t")
	b.q("agg", qOrd, "SELECT min(ts), max(ts), min(tz), max(tz) FROM diff_t WHERE g < 10")
	b.q("agg", qOrd, "SELECT min(ch), max(ch), count(ch) FROM diff_t WHERE ch < 'ab'")
	b.q("agg", qOrd|qNum, "SELECT min(ns), max(ns), sum(ns), avg(ns), count(ns) FROM diff_t")
	b.q("agg", qOrd|qNum, "SELECT min(fz), max(fz), sum(fz), avg(fz) FROM diff_t WHERE fz <> 'NaN'")
	b.q("agg", qOrd, "SELECT sum(g::float4), avg(g::float4), min(f::float4), max(f::float4) FROM diff_t")
	b.q("agg", qOrd|qTol, "SELECT sum(f::float4), avg(f::float4) FROM diff_t WHERE g < 11")
	b.q("agg", qOrd, "SELECT count(*)::int AS n FROM diff_t")
	b.q("agg", qOrd, "SELECT count(*)::int8 AS n, count(t)::int2, count(a)::int4 FROM diff_t")
	// A count cast to a non-integer type is an aggregate in an expression.
	b.q("agg", qRefuse, "SELECT count(a)::numeric FROM diff_t")
	b.q("agg", qRefuse, "SELECT count(b)::float8 FROM diff_t")
	b.q("agg", qRefuse, "SELECT count(*)::text FROM diff_t")
	b.q("agg", qOrd, `SELECT avg(a) AS "Avg A", sum(a) AS "Sum", count(*) AS count FROM diff_t`)
	b.q("agg", qRefuse, "SELECT sum(iv), avg(iv) FROM diff_t")
	b.q("agg", qRefuse, "SELECT min(iv), max(iv) FROM diff_t")
	b.q("agg", qOrd, "SELECT count(*) AS total, count(a) AS non_null FROM diff_t WHERE a IS NOT NULL")
	b.q("agg", qOrd, "SELECT count(DISTINCT id), sum(DISTINCT id) FROM diff_t WHERE g = 4")
	b.q("agg", qOrd, "SELECT sum(a) FILTER (WHERE flag), count(*) FILTER (WHERE a IS NULL), avg(m) FILTER (WHERE g > 5) FROM diff_t")
	b.q("agg", qOrd, "SELECT sum(a * 2), avg(a + 0.5), max(length(t)), min(-a) FROM diff_t")
	b.q("agg", qOrd, "SELECT avg(g), avg(a::numeric), avg(b::numeric(30,5)), sum(c * 2) FROM diff_t")
	b.q("agg", qOrd, "SELECT avg(f), sum(f), avg(a::float8) FROM diff_t WHERE g < 11")
	b.q("agg", qOrd, "SELECT avg(a::int8), sum(a::int8), avg(a::int2), sum(a::int2) FROM diff_t")
	b.q("agg", qOrd, "SELECT max(id), min(id), sum(id), avg(id) FROM diff_t")
	b.q("agg", qOrd, "SELECT count(*), sum(a), avg(b) FROM diff_t WHERE a BETWEEN $1 AND $2", -100, 250)
	b.q("agg", qOrd, "SELECT count(*), sum(b), avg(m) FROM diff_t WHERE d >= $1::date", "2005-01-01")
	b.q("agg", qOrd, "SELECT count(*), max(t) FROM diff_t WHERE t LIKE $1", "a%")
	b.q("agg", qOrd, "SELECT count(*), min(k), max(k), sum(v), avg(v), avg(w), sum(big), avg(big) FROM diff_s")
	for _, w := range []string{"WHERE cat = 'red'", "WHERE ok", "WHERE v IS NULL", "WHERE k LIKE 'k-0%'", "WHERE k > 'k-0500'", "WHERE cat IS NULL"} {
		b.q("agg", qOrd, "SELECT count(*), min(k), max(k), sum(v), avg(w), sum(big), max(note) FROM diff_s "+w)
	}
	b.q("agg", qOrd, "SELECT count(*) FROM diff_t WHERE t = ''")
	b.q("agg", qOrd, "SELECT count(*) FROM diff_t WHERE u LIKE 'ж%'")
	b.q("agg", qOrd, "SELECT sum(m), sum(c), sum(n) FROM diff_t WHERE g <> 11 AND id > 0")
	// Documented refusals.
	b.q("agg", qRefuse, "SELECT sum(a) + 1 FROM diff_t")
	b.q("agg", qRefuse, "SELECT avg(a)::numeric(10,2) FROM diff_t")
	b.q("agg", qRefuse, "SELECT string_agg(t, ',') FROM diff_t")
	b.q("agg", qRefuse, "SELECT count(DISTINCT a) FROM diff_t")
	b.q("agg", qRefuse, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a) FROM diff_t")
	b.q("agg", qRefuse, "SELECT stddev(a) FROM diff_t")
	b.q("agg", qRefuse, "SELECT id, row_number() OVER (ORDER BY id) FROM diff_t")

	// --- GROUP BY ------------------------------------------------------
	groupCols := []string{"g", "t", "flag", "g, flag", "t, flag"}
	aggSets := []string{
		"count(*), sum(a), avg(a)",
		"min(t), max(u), count(d)",
		"sum(m), avg(c), max(f)",
		"sum(b), avg(b), min(d), max(d)",
		"bool_and(flag), bool_or(a > 0), count(a), min(n)",
	}
	for gi, gc := range groupCols {
		for ai, as := range aggSets {
			sel := fmt.Sprintf("SELECT %s, %s FROM diff_t", gc, as)
			switch (gi + ai) % 3 {
			case 0:
				b.q("group", qOrd, fmt.Sprintf("%s GROUP BY %s ORDER BY %s", sel, gc, gc))
				b.q("group", 0, fmt.Sprintf("%s GROUP BY %s", sel, gc))
			case 1:
				desc := strings.ReplaceAll(gc, ",", " DESC NULLS FIRST,") + " DESC NULLS FIRST"
				b.q("group", qOrd, fmt.Sprintf("%s GROUP BY %s ORDER BY %s LIMIT 3 OFFSET 1", sel, gc, desc))
				b.q("group", 0, fmt.Sprintf("%s WHERE a > 0 GROUP BY %s", sel, gc))
			case 2:
				b.q("group", qOrd, fmt.Sprintf("%s WHERE g < 11 GROUP BY %s ORDER BY %s", sel, gc, gc))
				b.q("group", qOrd, fmt.Sprintf("%s GROUP BY %s ORDER BY %s LIMIT 4", sel, gc, gc))
			}
		}
	}
	b.q("group", qOrd, "SELECT id, count(*), sum(a) FROM diff_t GROUP BY id ORDER BY id LIMIT 20 OFFSET 5")
	b.q("group", qOrd, "SELECT id, g, max(t) FROM diff_t WHERE g = 2 GROUP BY id, g ORDER BY id DESC LIMIT 10")
	b.q("group", qOrd, "SELECT g, id, count(*) FROM diff_t GROUP BY g, id HAVING count(*) >= 1 ORDER BY id LIMIT 10")
	b.q("group", 0, "SELECT id, avg(a) FROM diff_t WHERE g = 7 GROUP BY id")
	b.q("group", 0, "SELECT count(*), sum(a) FROM diff_t GROUP BY g")
	b.q("group", qOrd, "SELECT max(a) FROM diff_t GROUP BY g ORDER BY 1")
	b.q("group", qOrd, "SELECT a % 7 AS r7, count(*) FROM diff_t GROUP BY a % 7 ORDER BY r7 NULLS FIRST")
	b.q("group", qOrd, "SELECT upper(t), count(*) FROM diff_t GROUP BY upper(t) ORDER BY 1")
	b.q("group", qOrd, "SELECT extract(year FROM d) AS y, count(*), min(d) FROM diff_t GROUP BY 1 ORDER BY 1 NULLS FIRST")
	b.q("group", qOrd, "SELECT g, count(*) AS cnt FROM diff_t GROUP BY g ORDER BY cnt DESC, g")
	b.q("group", qOrd, "SELECT t, sum(a) FROM diff_t GROUP BY t ORDER BY sum(a) DESC NULLS LAST, t LIMIT 5")
	b.q("group", qOrd, "SELECT g FROM diff_t GROUP BY g ORDER BY avg(a), g")
	b.q("group", qOrd, "SELECT g, max(d) FROM diff_t GROUP BY g ORDER BY min(u), g")
	b.q("group", qOrd, "SELECT g, count(*) FROM diff_t GROUP BY g ORDER BY max(t) DESC, g LIMIT 5")
	b.q("group", qOrd, "SELECT flag, count(*) FROM diff_t GROUP BY 1 ORDER BY 1 NULLS FIRST")
	b.q("group", qOrd, "SELECT g AS grp, sum(a) AS total FROM diff_t GROUP BY grp ORDER BY grp")
	b.q("group", qOrd, "SELECT d, count(*) FROM diff_t WHERE g = 10 GROUP BY d ORDER BY d NULLS FIRST LIMIT 10")
	b.q("group", qOrd, "SELECT n, count(*) FROM diff_t GROUP BY n ORDER BY n NULLS FIRST")
	b.q("group", qOrd, "SELECT f, count(*) FROM diff_t WHERE g = 11 GROUP BY f ORDER BY f DESC LIMIT 5")
	b.q("group", qOrd, "SELECT g, sum(f), avg(f) FROM diff_t GROUP BY g ORDER BY g")
	b.q("group", qOrd|qTol, "SELECT g, sum(r), avg(r), min(r), max(r) FROM diff_t GROUP BY g ORDER BY g")
	b.q("group", qOrd, "SELECT g, sum(n), avg(n), sum(m), avg(m) FROM diff_t GROUP BY g ORDER BY g")
	b.q("group", qOrd, "SELECT g, sum(b), avg(b), max(b), min(b) FROM diff_t GROUP BY g ORDER BY g DESC")
	b.q("group", qOrd, "SELECT cat, count(*), sum(v), avg(w), min(k), max(k) FROM diff_s GROUP BY cat ORDER BY cat NULLS FIRST")
	b.q("group", qOrd, "SELECT ok, cat, count(*), avg(big) FROM diff_s GROUP BY ok, cat ORDER BY 1, 2")
	b.q("group", qOrd, "SELECT k, count(*) FROM diff_s GROUP BY k ORDER BY k LIMIT 20")
	b.q("group", qOrd, "SELECT length(k), count(*), min(k) FROM diff_s GROUP BY 1 ORDER BY 1")
	b.q("group", 0, "SELECT cat, max(w) FROM diff_s GROUP BY cat")
	b.q("group", qOrd, "SELECT g, count(*) FROM diff_t WHERE a > $1 GROUP BY g ORDER BY g", 0)
	b.q("group", qOrd, "SELECT g, sum(a) FROM diff_t GROUP BY g ORDER BY g LIMIT $1 OFFSET $2", 4, 3)
	b.q("group", qOrd, "SELECT t, count(*) FROM diff_t WHERE t <> $1 GROUP BY t ORDER BY t", "a")
	b.q("group", qOrd, "SELECT DISTINCT count(*) FROM diff_t GROUP BY flag ORDER BY 1")
	b.q("group", qOrd, "SELECT count(*) FROM diff_t GROUP BY g ORDER BY g")
	b.q("group", qOrd, "SELECT g, avg(m) AS am FROM diff_t GROUP BY g ORDER BY am DESC, g LIMIT 3")
	b.q("group", qOrd, "SELECT g, avg(m) FROM diff_t GROUP BY g ORDER BY avg(m), g")
	b.q("group", qOrd, "SELECT g, count(*)::int, count(a)::bigint FROM diff_t GROUP BY g ORDER BY g")
	// Ambiguous across shards: input column a or the output column a.
	b.q("group", qRefuse, "SELECT a % 3 AS a, count(*) FROM diff_t GROUP BY a ORDER BY 1, 2")
	b.q("group", qOrd, "SELECT a % 3 AS a3, count(*) FROM diff_t GROUP BY a3 ORDER BY 1, 2")
	b.q("group", qOrd, "SELECT ch, count(*), min(id), max(ts) FROM diff_t GROUP BY ch ORDER BY ch NULLS FIRST")
	b.q("group", qOrd, "SELECT date_trunc('year', ts) AS y, count(*), max(tz) FROM diff_t GROUP BY 1 ORDER BY 1 NULLS FIRST")
	b.q("group", qOrd, "SELECT tz::date AS day, count(*) FROM diff_t WHERE g < 10 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5")
	b.q("group", 0, "SELECT j, count(*) FROM diff_t GROUP BY j")
	b.q("group", 0, "SELECT bt, count(*) FROM diff_t WHERE g = 1 GROUP BY bt")
	b.q("group", qNum, "SELECT ns, count(*), sum(a) FROM diff_t GROUP BY ns")
	b.q("group", qNum, "SELECT fz, count(*), min(id) FROM diff_t GROUP BY fz")
	b.q("group", qOrd|qNum, "SELECT ns, count(*) FROM diff_t GROUP BY ns ORDER BY ns NULLS FIRST")
	b.q("group", qOrd|qNum, "SELECT g, sum(ns), avg(ns), min(ns), max(ns) FROM diff_t GROUP BY g ORDER BY g")
	b.q("group", qRefuse, "SELECT iv, count(*) FROM diff_t WHERE id < 10 GROUP BY iv")
	b.q("group", qRefuse, "SELECT j, count(*) FROM diff_t GROUP BY j ORDER BY j")
	b.q("group", qRefuse, "SELECT g, count(*) FROM diff_t GROUP BY ROLLUP (g)")
	b.q("group", qRefuse, "SELECT g, sum(a) / count(*) FROM diff_t GROUP BY g")

	// --- HAVING ----------------------------------------------------------
	havings := []string{
		"count(*) > 240", "sum(a) < 0", "avg(a) > 0", "min(t) = ''", "max(d) >= '2030-01-01'",
		"count(a) <> 230", "count(*) > 1 AND g > 3", "sum(m) IS NOT NULL", "bool_or(flag)",
		"avg(c) > 0", "max(a) >= 999", "100 < count(*)", "min(f) < -9000", "sum(b) > 0",
		"avg(n) > 1.5", "count(*) >= 240 AND max(t) > 'z'", "sum(a) IS NULL", "min(u) <= 'X'",
	}
	for i, h := range havings {
		b.q("having", qOrd, fmt.Sprintf("SELECT g, count(*), sum(a) FROM diff_t GROUP BY g HAVING %s ORDER BY g", h))
		if i%2 == 0 {
			b.q("having", qOrd, fmt.Sprintf("SELECT g, max(u) FROM diff_t WHERE flag GROUP BY g HAVING %s ORDER BY g DESC LIMIT 3", h))
		} else {
			b.q("having", 0, fmt.Sprintf("SELECT g, avg(m) FROM diff_t GROUP BY g HAVING %s", h))
		}
	}
	b.q("having", qOrd, "SELECT g, avg(a) FROM diff_t GROUP BY g HAVING avg(a) > 0 ORDER BY g")
	b.q("having", qOrd, "SELECT g, avg(f) FROM diff_t GROUP BY g HAVING avg(f) > 0.5 ORDER BY g")
	b.q("having", qOrd, "SELECT g, sum(b) FROM diff_t GROUP BY g HAVING sum(b) > 1e16 ORDER BY g")
	b.q("having", qOrd, "SELECT g, max(ts) FROM diff_t GROUP BY g HAVING max(ts) > '2029-06-01' ORDER BY g")
	b.q("having", qOrd, "SELECT g, min(tz) FROM diff_t GROUP BY g HAVING min(tz) < '1990-01-02 00:00:00+00' ORDER BY g")
	b.q("having", qOrd, "SELECT g, max(ch) FROM diff_t GROUP BY g HAVING max(ch) = '日本' ORDER BY g")
	b.q("having", qOrd, "SELECT g, min(ch) FROM diff_t GROUP BY g HAVING min(ch) = '' ORDER BY g")
	b.q("having", qOrd|qNum, "SELECT fz, count(*) FROM diff_t GROUP BY fz HAVING sum(ns) > 10 ORDER BY fz NULLS FIRST")
	b.q("having", qRefuse, "SELECT g FROM diff_t GROUP BY g HAVING min(tz) < '1990-01-02' ORDER BY g")
	b.q("having", qOrd, "SELECT t, count(*) FROM diff_t GROUP BY t HAVING count(*) > 100 ORDER BY t")
	b.q("having", qOrd, "SELECT flag, avg(a) FROM diff_t GROUP BY flag HAVING avg(a) < 100 ORDER BY flag")
	b.q("having", qOrd, "SELECT count(*) FROM diff_t HAVING count(*) > 10")
	b.q("having", qOrd, "SELECT count(*) FROM diff_t HAVING count(*) > 100000")
	b.q("having", qOrd, "SELECT cat, avg(w) FROM diff_s GROUP BY cat HAVING avg(w) > 0 ORDER BY cat")
	b.q("having", qOrd, "SELECT cat, count(*) FROM diff_s GROUP BY cat HAVING count(*) >= 150 AND min(k) < 'k-0100' ORDER BY cat NULLS LAST")
	b.q("having", qOrd, "SELECT id, sum(a) FROM diff_t GROUP BY id HAVING sum(a) > 990 ORDER BY id")
	b.q("having", qOrd, "SELECT g, count(*) FROM diff_t WHERE a > $1 GROUP BY g HAVING count(*) > 100 ORDER BY g", -500)
	b.q("having", qRefuse, "SELECT g, count(*) FROM diff_t GROUP BY g HAVING count(*) > $1 ORDER BY g", 240)
	b.q("having", qRefuse, "SELECT g FROM diff_t GROUP BY g HAVING count(*) > 240 OR g = 1")
	b.q("having", qRefuse, "SELECT g FROM diff_t GROUP BY g HAVING count(*) BETWEEN 200 AND 260")
	b.q("having", qRefuse, "SELECT g FROM diff_t GROUP BY g HAVING sum(a) > count(*)")

	// --- DISTINCT -------------------------------------------------------
	b.q("distinct", qOrd, "SELECT DISTINCT g FROM diff_t ORDER BY g")
	b.q("distinct", qOrd, "SELECT DISTINCT t FROM diff_t ORDER BY t NULLS FIRST")
	b.q("distinct", 0, "SELECT DISTINCT flag FROM diff_t")
	b.q("distinct", qOrd, "SELECT DISTINCT g, flag FROM diff_t ORDER BY g DESC, flag NULLS FIRST")
	b.q("distinct", 0, "SELECT DISTINCT n FROM diff_t")
	b.q("distinct", qOrd, "SELECT DISTINCT d FROM diff_t ORDER BY d DESC LIMIT 10")
	b.q("distinct", qOrd, "SELECT DISTINCT t FROM diff_t ORDER BY t LIMIT 5 OFFSET 3")
	b.q("distinct", qOrd, "SELECT DISTINCT a % 5 FROM diff_t ORDER BY 1")
	b.q("distinct", qOrd, "SELECT DISTINCT cat FROM diff_s ORDER BY cat")
	b.q("distinct", 0, "SELECT DISTINCT cat, ok FROM diff_s")
	b.q("distinct", qOrd, "SELECT DISTINCT g FROM diff_t WHERE a > 500 ORDER BY g LIMIT 3")
	b.q("distinct", qOrd, "SELECT DISTINCT f FROM diff_t WHERE g = 11 ORDER BY f LIMIT 10")
	b.q("distinct", qOrd, "SELECT DISTINCT f FROM diff_t WHERE g = 11 ORDER BY f DESC LIMIT 10")
	b.q("distinct", qOrd, "SELECT DISTINCT t, length(t) FROM diff_t ORDER BY 2, 1")
	b.q("distinct", qOrd, "SELECT DISTINCT flag, t FROM diff_t ORDER BY t DESC NULLS LAST, flag")
	b.q("distinct", qOrd, "SELECT DISTINCT extract(year FROM d) FROM diff_t ORDER BY 1 LIMIT 20")
	b.q("distinct", 0, "SELECT DISTINCT t, g FROM diff_t WHERE g < 3")
	b.q("distinct", qOrd, "SELECT DISTINCT * FROM diff_s ORDER BY k LIMIT 5")
	b.q("distinct", qOrd, "SELECT DISTINCT id FROM diff_t ORDER BY id LIMIT 10 OFFSET 20")
	b.q("distinct", qOrd, "SELECT DISTINCT m FROM diff_t WHERE g = 4 ORDER BY m NULLS FIRST LIMIT 15")
	b.q("distinct", qOrd, "SELECT DISTINCT g FROM diff_t WHERE t = $1 ORDER BY g", "é")
	b.q("distinct", qOrd, "SELECT DISTINCT lower(k) FROM diff_s WHERE k IN ('UPPER', 'upper', 'ß') ORDER BY 1")
	b.q("distinct", qRefuse, "SELECT DISTINCT ON (g) g, id FROM diff_t ORDER BY g, id")
	b.q("distinct", qNum, "SELECT DISTINCT ns FROM diff_t")
	b.q("distinct", qNum, "SELECT DISTINCT fz FROM diff_t")
	b.q("distinct", qOrd|qNum, "SELECT DISTINCT ns, fz FROM diff_t ORDER BY 1, 2")
	b.q("distinct", qOrd, "SELECT DISTINCT ch FROM diff_t ORDER BY ch")
	b.q("distinct", 0, "SELECT DISTINCT j FROM diff_t")
	b.q("distinct", 0, "SELECT DISTINCT bt FROM diff_t WHERE g = 2")
	b.q("distinct", qOrd, "SELECT DISTINCT bt FROM diff_t WHERE g = 3 ORDER BY bt NULLS FIRST")
	b.q("distinct", qOrd, "SELECT DISTINCT uid FROM diff_t WHERE g = 4 ORDER BY uid LIMIT 20")
	b.q("distinct", qOrd, "SELECT DISTINCT date_trunc('month', tz) AS mon FROM diff_t ORDER BY mon DESC NULLS LAST LIMIT 12")
	b.q("distinct", qRefuse, "SELECT DISTINCT iv FROM diff_t WHERE g = 1")

	// --- IN lists, = ANY -------------------------------------------------
	for _, n := range []int{1, 2, 5, 20, 60} {
		list := pickIDs(n)
		lit := inList(list, i64lit)
		b.q("in", qOrd, fmt.Sprintf("SELECT id, a, t FROM diff_t WHERE id IN (%s) ORDER BY id", lit))
		b.q("in", qOrd, fmt.Sprintf("SELECT count(*), sum(a), avg(m), min(t) FROM diff_t WHERE id IN (%s)", lit))
		b.q("in", qOrd, fmt.Sprintf("SELECT g, count(*) FROM diff_t WHERE id IN (%s) GROUP BY g ORDER BY g", lit))
		b.q("in", qOrd, fmt.Sprintf("SELECT id FROM diff_t WHERE id IN (%s) ORDER BY id DESC LIMIT 3 OFFSET 1", lit))
		b.q("in", qOrd, "SELECT id, a, d FROM diff_t WHERE id = ANY($1) ORDER BY id", list)
		b.q("in", 0, "SELECT id, b, n FROM diff_t WHERE id = ANY($1)", list)
	}
	b.q("in", qOrd, "SELECT id FROM diff_t WHERE id NOT IN (1, 2, 3, 4, 5) ORDER BY id LIMIT 10")
	b.q("in", qOrd, fmt.Sprintf("SELECT id, a FROM diff_t WHERE id IN (%s, 5000000, -1) ORDER BY id", inList(pickIDs(4), i64lit)))
	b.q("in", qOrd, "SELECT id, a FROM diff_t WHERE id = ANY('{1,2,3,-7,-14}'::bigint[]) ORDER BY id")
	b.q("in", qOrd, "SELECT id, a FROM diff_t WHERE id = ANY(ARRAY[10, 20, 30, 9223372036854775807]) ORDER BY id")
	b.q("in", qOrd, "SELECT id FROM diff_t WHERE id = ANY('{1,NULL,3}'::bigint[]) ORDER BY id")
	b.q("in", qOrd, "SELECT id FROM diff_t WHERE id IN (1, NULL, 4) ORDER BY id")
	b.q("in", qOrd, "SELECT count(*) FROM diff_t WHERE a IN (1, 2, 3, NULL)")
	b.q("in", qOrd, "SELECT id, t FROM diff_t WHERE t IN ('a', 'é', '', '日本') ORDER BY t, id LIMIT 50")
	b.q("in", qOrd, "SELECT id, a FROM diff_t WHERE id IN (7, 8, 9) AND a > 0 ORDER BY id")
	b.q("in", qOrd, "SELECT id, a FROM diff_t WHERE id IN ($1, $2, $3) ORDER BY id", ids[0], ids[1], ids[2])
	b.q("in", qOrd, fmt.Sprintf("SELECT id, a FROM diff_t WHERE id IN (%s) ORDER BY a NULLS FIRST, id LIMIT 2", inList(pickIDs(10), i64lit)))
	b.q("in", qOrd, "SELECT avg(a), max(t), count(*) FROM diff_t WHERE id = ANY($1)", pickIDs(30))
	b.q("in", qOrd, "SELECT count(*), sum(a) FROM diff_t WHERE id = ANY($1)", []int64{})
	b.q("in", qOrd, "SELECT id FROM diff_t WHERE id = ANY($1) ORDER BY id DESC LIMIT $2", pickIDs(25), 5)
	b.q("in", qOrd, "SELECT DISTINCT g FROM diff_t WHERE id = ANY($1) ORDER BY g", pickIDs(40))
	b.q("in", qOrd, "SELECT id FROM diff_t WHERE id = 1 OR id = 2 OR id = -7 ORDER BY id")
	b.q("in", qOrd, "SELECT id, a FROM diff_t WHERE id IN (1, 1, 1, 2, 2) ORDER BY id")
	b.q("in", qOrd, "SELECT count(*) FROM diff_t WHERE id IN (1, 2, 3, 4, 5) AND id = 5")
	b.q("in", qOrd, "SELECT id, a FROM diff_t WHERE id IN (1.0, 2.5, 3) ORDER BY id")
	b.q("in", qOrd, "SELECT id FROM diff_t WHERE id IN ('4', '5') ORDER BY id")
	{
		ks := append(pickKeys(5), "", "O'Brien", "ключ-3", "missing")
		b.q("in", qOrd, fmt.Sprintf("SELECT k, v FROM diff_s WHERE k IN (%s) ORDER BY k", inList(ks, sqlQuote)))
		b.q("in", qOrd, "SELECT k, v, w FROM diff_s WHERE k = ANY($1) ORDER BY k", ks)
		b.q("in", qOrd, "SELECT count(*), sum(v), max(k) FROM diff_s WHERE k = ANY($1)", ks)
		b.q("in", qOrd, "SELECT cat, count(*) FROM diff_s WHERE k = ANY($1) GROUP BY cat ORDER BY cat", pickKeys(50))
	}

	// --- NULLs ------------------------------------------------------------
	b.q("null", qOrd, "SELECT id, a FROM diff_t WHERE a IS NULL ORDER BY id")
	b.q("null", qOrd, "SELECT id, t, flag FROM diff_t WHERE t IS NOT NULL AND flag IS NULL ORDER BY id LIMIT 30")
	b.q("null", qOrd, "SELECT count(*) FROM diff_t WHERE a IS DISTINCT FROM 5")
	b.q("null", qOrd, "SELECT count(*) FROM diff_t WHERE a IS NOT DISTINCT FROM NULL")
	b.q("null", qOrd, "SELECT id FROM diff_t WHERE flag IS UNKNOWN ORDER BY id DESC LIMIT 12")
	b.q("null", qOrd, "SELECT id FROM diff_t WHERE a = NULL")
	b.q("null", qOrd, "SELECT id FROM diff_t WHERE id = NULL")
	b.q("null", qOrd, "SELECT id FROM diff_t WHERE id IS NULL")
	b.q("null", qOrd, "SELECT count(*) FROM diff_t WHERE n IS NULL")
	b.q("null", qOrd, "SELECT coalesce(t, '<null>') AS tt, count(*) FROM diff_t GROUP BY 1 ORDER BY 1")
	b.q("null", qOrd, "SELECT id, nullif(a, 0) FROM diff_t ORDER BY 2 NULLS FIRST, 1 LIMIT 10")
	b.q("null", qOrd, "SELECT count(*), count(a), count(b), count(n), count(t), count(flag), count(d) FROM diff_t")
	b.q("null", qOrd, "SELECT min(a), max(a), sum(a), avg(a), count(a) FROM diff_t WHERE a IS NULL")
	b.q("null", qOrd, "SELECT g, sum(a), avg(a), min(a) FROM diff_t WHERE a IS NULL GROUP BY g ORDER BY g")
	b.q("null", qOrd, "SELECT k, v FROM diff_s WHERE v IS NULL ORDER BY k")
	b.q("null", qOrd, "SELECT count(*) FROM diff_t WHERE $1::int IS NULL", nil)
	b.q("null", qOrd, "SELECT id FROM diff_t WHERE id = $1", nil)
	b.q("null", qOrd, "SELECT id, a FROM diff_t WHERE a > $1 OR $1 IS NULL ORDER BY id LIMIT 5", nil)
	b.q("null", qOrd, "SELECT id, b FROM diff_t WHERE b IS NULL ORDER BY id DESC LIMIT 20")
	b.q("null", qOrd, "SELECT t IS NULL AS isnull, count(*) FROM diff_t GROUP BY 1 ORDER BY 1")
	b.q("null", qOrd, "SELECT id, d FROM diff_t WHERE d IS NULL AND id > 0 ORDER BY id LIMIT 25")
	b.q("null", qOrd, "SELECT k, note FROM diff_s WHERE note IS NULL AND cat IS NOT NULL ORDER BY k DESC LIMIT 10")

	// --- text keys -------------------------------------------------------
	for _, key := range []string{"k-0001", "k-0849", "ключ-7", "日本-12", "🙂3", "", " ", "O'Brien", `a"b`,
		`back\slash`, "UPPER", "upper", "Straße", "tab\tkey", "missing-key", "ß"} {
		b.q("textkey", qOrd, fmt.Sprintf("SELECT k, v, w, cat, ok FROM diff_s WHERE k = %s", sqlQuote(key)))
		b.q("textkey", qOrd, "SELECT k, v, big, note FROM diff_s WHERE k = $1", key)
	}
	b.q("textkey", qOrd, "SELECT k FROM diff_s WHERE k > 'k-0800' ORDER BY k")
	b.q("textkey", qOrd, "SELECT k, v FROM diff_s WHERE k LIKE 'ключ%' ORDER BY k DESC")
	b.q("textkey", qOrd, "SELECT min(k), max(k), count(*) FROM diff_s WHERE k < 'k'")
	b.q("textkey", qOrd, "SELECT k, length(k), octet_length(k) FROM diff_s WHERE k IN ('日本-1', '🙂1', 'ß', '') ORDER BY k")
	b.q("textkey", qOrd, "SELECT k FROM diff_s WHERE k = 'UPPER' OR k = 'upper' ORDER BY k")
	b.q("textkey", qOrd, "SELECT k, v FROM diff_s WHERE k = $1 AND v IS NOT NULL", "k-0002")
	b.q("textkey", qOrd, "SELECT count(*), sum(v) FROM diff_s WHERE k = $1", "ключ-0")
	b.q("textkey", qOrd, "SELECT k FROM diff_s WHERE k >= $1 ORDER BY k LIMIT $2", "日", 5)

	// --- keyed single-shard --------------------------------------------
	for _, id := range []int64{1, 42, 2400, -7, -2800, 0, math.MaxInt64, math.MinInt64, 9_000_000_000_000_000_000, -9_000_000_000_000_999_983, 5_000_000, -1} {
		b.q("keyed", qOrd, fmt.Sprintf("SELECT * FROM diff_t WHERE id = %d", id))
		b.q("keyed", qOrd, "SELECT id, a, n, t, d FROM diff_t WHERE id = $1", id)
	}
	b.q("keyed", qOrd, "SELECT id, a, t FROM diff_t WHERE id = $1 AND a IS NOT NULL", int64(17))
	b.q("keyed", qOrd, "SELECT count(*), sum(a), avg(a) FROM diff_t WHERE id = 17")
	b.q("keyed", qOrd, "SELECT g, count(*) FROM diff_t WHERE id = 42 GROUP BY g")
	b.q("keyed", qOrd, "SELECT * FROM diff_t WHERE id = $1::bigint", int64(99))
	b.q("keyed", qOrd, "SELECT id FROM diff_t WHERE id = 42 ORDER BY id LIMIT 1")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = '43'")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE 44 = id")
	b.q("keyed", qOrd, "SELECT id FROM diff_t WHERE id = 42 OR id = 43 ORDER BY id")
	b.q("keyed", qOrd, "SELECT id FROM diff_t WHERE id BETWEEN 10 AND 20 ORDER BY id")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = 42.0")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = 42.5")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = 42::int2")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = $1::int", 45)
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = $1::numeric", "46.0")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = 42 OR a = 5 ORDER BY id")
	b.q("keyed", qOrd, "SELECT * FROM diff_t GROUP BY id ORDER BY id LIMIT 3")
	b.q("keyed", qOrd, "SELECT k, v FROM diff_s WHERE k = 'O''Brien'::varchar")
	b.q("keyed", qOrd, "SELECT k, v FROM diff_s WHERE k = $1::varchar", "日本-3")
	b.q("keyed", qOrd, "SELECT k, v FROM diff_s WHERE k = E'tab\\tkey'")
	b.q("keyed", qOrd, "SELECT k, v FROM diff_s WHERE k = U&'Stra\\00DFe'")
	b.q("keyed", qOrd, "SELECT k, v FROM diff_s WHERE k = 'k-00' || '07'")
	b.q("keyed", qOrd, "SELECT id FROM diff_t WHERE id > 9000000000000000000 ORDER BY id LIMIT 5")
	b.q("keyed", qOrd, "SELECT id, b FROM diff_t WHERE id = -9223372036854775808")
	b.q("keyed", qOrd, "SELECT id, b FROM diff_t WHERE id = 9223372036854775807")
	b.q("keyed", qOrd, "SELECT id, a FROM diff_t WHERE id = $1 ORDER BY id LIMIT $2", int64(3), 1)

	// --- joins and co-located subqueries -------------------------------------
	b.q("join", qOrd, "SELECT x.id, x.a, y.t FROM diff_t x JOIN diff_t y ON x.id = y.id WHERE x.g = 3 ORDER BY x.id LIMIT 50")
	b.q("join", qOrd, "SELECT count(*), sum(x.a), avg(y.m) FROM diff_t x JOIN diff_t y USING (id) WHERE y.flag")
	b.q("join", qOrd, "SELECT x.g, count(*), max(y.d) FROM diff_t x JOIN diff_t y ON y.id = x.id GROUP BY x.g ORDER BY x.g")
	b.q("join", qOrd, "SELECT x.id, y.a FROM diff_t x, diff_t y WHERE x.id = y.id AND x.id = 42")
	b.q("join", qOrd, fmt.Sprintf("SELECT x.id, y.id FROM diff_t x JOIN diff_t y ON x.id = y.id WHERE x.id IN (%s) ORDER BY 1", inList(pickIDs(8), i64lit)))
	b.q("join", qOrd, "SELECT x.id FROM diff_t x LEFT JOIN diff_t y ON x.id = y.id AND y.a > 0 WHERE y.id IS NULL ORDER BY x.id LIMIT 20")
	b.q("join", qOrd, "SELECT DISTINCT x.g FROM diff_t x JOIN diff_t y ON x.id = y.id WHERE y.a > 900 ORDER BY 1")
	b.q("join", qOrd, "SELECT a.k, b.v FROM diff_s a JOIN diff_s b ON a.k = b.k WHERE a.cat = 'red' ORDER BY a.k")
	b.q("join", qOrd, "SELECT x.id, x.a + y.a AS s FROM diff_t x JOIN diff_t y ON x.id = y.id ORDER BY 2 DESC NULLS LAST, 1 LIMIT 10")
	b.q("join", qOrd, "SELECT count(*) FROM diff_t x JOIN diff_t y ON x.id = y.id JOIN diff_t z ON z.id = y.id")
	b.q("join", qOrd, "SELECT x.id, y.t FROM diff_t x JOIN diff_t y ON x.id = y.id WHERE x.id = $1", int64(1234))
	b.q("join", 0, "SELECT a.k, b.note FROM diff_s a JOIN diff_s b USING (k) WHERE b.ok")
	b.q("join", qOrd, "SELECT x.id, count(y.id) FROM diff_t x LEFT JOIN diff_t y ON y.id = x.id AND y.flag GROUP BY x.id ORDER BY x.id LIMIT 15")
	b.q("join", qOrd, "SELECT count(*) FROM diff_t x WHERE EXISTS (SELECT 1 FROM diff_t y WHERE y.id = x.id AND y.a > 100)")
	b.q("join", qOrd, "SELECT x.id FROM diff_t x WHERE NOT EXISTS (SELECT 1 FROM diff_t y WHERE y.id = x.id AND y.a IS NOT NULL) ORDER BY x.id LIMIT 20")
	b.q("join", qOrd, "SELECT id, a FROM diff_t WHERE id IN (SELECT id FROM diff_t WHERE a > 990) ORDER BY id")
	b.q("join", qOrd, "SELECT x.id, (SELECT y.t FROM diff_t y WHERE y.id = x.id) AS tt FROM diff_t x ORDER BY x.id LIMIT 10")
	b.q("join", qRefuse, "SELECT count(*) FROM diff_t x JOIN diff_t y ON x.a = y.a")
	b.q("join", qRefuse, "SELECT count(*) FROM diff_t x JOIN diff_s y ON x.t = y.k")
	b.q("join", qRefuse, "SELECT count(*) FROM (SELECT g FROM diff_t GROUP BY g) s")
	b.q("join", qRefuse, "WITH x AS (SELECT id FROM diff_t WHERE a > 0) SELECT count(*) FROM x")

	// --- errors: the proxy must fail as PostgreSQL does ---------------------
	b.q("error", qErr, "SELECT id FROM diff_t ORDER BY id LIMIT -1")
	b.q("error", qErr, "SELECT id FROM diff_t ORDER BY id OFFSET -1")
	b.q("error", qErr, "SELECT g, count(*) FROM diff_t GROUP BY g ORDER BY g LIMIT -3")
	b.q("error", qErr, "SELECT id FROM diff_t ORDER BY id LIMIT $1", -5)
	b.q("error", qErr, "SELECT count(*) FROM diff_t WHERE id = 'abc'")
	b.q("error", qErr, "SELECT id, 1 / (a - a) FROM diff_t WHERE a IS NOT NULL ORDER BY id LIMIT 3")
	b.q("error", qErr, "SELECT count(*) FROM diff_s WHERE k = $1::int", 5)
	b.q("error", qErr, "SELECT sum(a) FROM diff_t WHERE t::int > 0")
	b.q("error", qErr, "SELECT nosuchcolumn FROM diff_t ORDER BY id LIMIT 3")
	b.q("keyed", qOrd, "SELECT id FROM diff_t WHERE id = 99999999999999999999")
	b.q("keyed", qOrd, "SELECT id FROM diff_t WHERE id = -99999999999999999999.5")
	b.q("order", qOrd, "SELECT id FROM diff_t ORDER BY id LIMIT $1", nil)
	b.q("order", qOrd, "SELECT id FROM diff_t ORDER BY id DESC LIMIT $1 OFFSET $2", 3, nil)

	// --- misc: expressions, UNION ALL -----------------------------------
	b.q("misc", qOrd, "SELECT id, a + 1, upper(t), length(t), -b FROM diff_t ORDER BY id LIMIT 15")
	b.q("misc", qOrd, "SELECT id, a::float8 / 3 AS third, n * 2 AS twice FROM diff_t WHERE g = 1 ORDER BY id LIMIT 20")
	b.q("misc", qOrd, "SELECT id, d + 1 AS next_day, date_part('dow', d) FROM diff_t WHERE g < 10 ORDER BY id LIMIT 20")
	b.q("misc", 0, "SELECT id FROM diff_t WHERE g = 1 UNION ALL SELECT id FROM diff_t WHERE g = 2")
	b.q("misc", qOrd, "SELECT id, a FROM diff_t WHERE g = 1 UNION ALL SELECT id, a FROM diff_t WHERE g = 2 ORDER BY id LIMIT 20")
	b.q("misc", qOrd, "SELECT t FROM diff_t WHERE g = 1 UNION SELECT t FROM diff_t WHERE g = 2 ORDER BY t NULLS FIRST")
	b.q("misc", qOrd, "SELECT k AS key FROM diff_s WHERE v > 400 UNION ALL SELECT u FROM diff_t WHERE a > 995 ORDER BY key")
	b.q("misc", qOrd, "SELECT id, t || '!' AS bang FROM diff_t WHERE t LIKE '%b%' ORDER BY bang, id")
	b.q("misc", qOrd, "SELECT id, round(m, 1) AS rm FROM diff_t ORDER BY rm DESC NULLS LAST, id LIMIT 10")
	b.q("misc", qOrd, "SELECT 1 AS one, count(*) FROM diff_t")
	b.q("misc", qRefuse, "SELECT t FROM diff_t WHERE g = 1 INTERSECT SELECT t FROM diff_t WHERE g = 2")
	b.q("misc", qRefuse, "SELECT id, t FROM diff_t ORDER BY t COLLATE \"C\", id LIMIT 5")
	b.q("misc", qRefuse, "SELECT id FROM diff_t ORDER BY id FETCH FIRST 3 ROWS WITH TIES")

	// Every query over the simple protocol and pgx's default extended
	// path; the text extended path for every query with parameters and
	// every third of the others.
	for i := range b.qs {
		q := &b.qs[i]
		q.modes = []diffMode{modeSimple, modeExt}
		if len(q.args) > 0 || i%3 == 0 {
			q.modes = append(q.modes, modeExtText)
		}
	}
	return b.qs
}

// ---------------------------------------------------------------------
// Running and comparing

type diffResult struct {
	names   []string
	oids    []uint32
	formats []int16
	rows    [][][]byte // nil value: NULL
	tag     string
	err     error
}

func copyRaw(raw [][]byte) [][]byte {
	row := make([][]byte, len(raw))
	for i, v := range raw {
		if v != nil {
			row[i] = append([]byte{}, v...)
		}
	}
	return row
}

func (r *diffResult) describe(fds []pgconn.FieldDescription) {
	for _, fd := range fds {
		r.names = append(r.names, fd.Name)
		r.oids = append(r.oids, fd.DataTypeOID)
		r.formats = append(r.formats, fd.Format)
	}
}

// textParam renders an argument in PostgreSQL's text input format.
func textParam(a any) []byte {
	switch v := a.(type) {
	case nil:
		return nil
	case string:
		return []byte(v)
	case int:
		return []byte(strconv.Itoa(v))
	case int64:
		return []byte(strconv.FormatInt(v, 10))
	case []int64:
		return []byte("{" + inList(v, i64lit) + "}")
	case []string:
		return []byte("{" + inList(v, func(s string) string {
			return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
		}) + "}")
	}
	panic(fmt.Sprintf("textParam: unsupported %T", a))
}

func runDiffQuery(ctx context.Context, c *pgx.Conn, q *diffQuery, mode diffMode) (res diffResult) {
	if mode == modeExtText {
		params := make([][]byte, len(q.args))
		for i, a := range q.args {
			params[i] = textParam(a)
		}
		rr := c.PgConn().ExecParams(ctx, q.sql, params, nil, nil, nil)
		res.describe(rr.FieldDescriptions())
		for rr.NextRow() {
			res.rows = append(res.rows, copyRaw(rr.Values()))
		}
		tag, err := rr.Close()
		res.tag, res.err = tag.String(), err
		return res
	}
	args := q.args
	if mode == modeSimple {
		args = append([]any{pgx.QueryExecModeSimpleProtocol}, args...)
	}
	rows, err := c.Query(ctx, q.sql, args...)
	if err != nil {
		res.err = err
		return res
	}
	res.describe(rows.FieldDescriptions())
	for rows.Next() {
		res.rows = append(res.rows, copyRaw(rows.RawValues()))
	}
	rows.Close()
	res.tag, res.err = rows.CommandTag().String(), rows.Err()
	return res
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func isFloatOID(oid uint32) bool { return oid == pgtype.Float4OID || oid == pgtype.Float8OID }

func parseFloatVal(v []byte, format int16, oid uint32) (float64, bool) {
	if format == pgtype.BinaryFormatCode {
		switch {
		case oid == pgtype.Float8OID && len(v) == 8:
			return math.Float64frombits(uint64(v[0])<<56 | uint64(v[1])<<48 | uint64(v[2])<<40 | uint64(v[3])<<32 |
				uint64(v[4])<<24 | uint64(v[5])<<16 | uint64(v[6])<<8 | uint64(v[7])), true
		case oid == pgtype.Float4OID && len(v) == 4:
			return float64(math.Float32frombits(uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3]))), true
		}
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	return f, err == nil
}

// sortKey orders rows of an unordered comparison; floats are rounded so
// that tolerated differences do not change their place.
func sortKey(tm *pgtype.Map, r *diffResult, row [][]byte, tol, num bool) string {
	var sb strings.Builder
	for i, v := range row {
		nv, isNum := "", false
		if num && v != nil {
			nv, isNum = numValue(tm, r.oids[i], r.formats[i], v)
		}
		if v == nil {
			sb.WriteString("\x00N")
		} else if isNum {
			sb.WriteString("\x00D" + nv)
		} else if tol && isFloatOID(r.oids[i]) {
			f, _ := parseFloatVal(v, r.formats[i], r.oids[i])
			sb.WriteString("\x00F" + strconv.FormatFloat(f, 'g', 9, 64))
		} else {
			sb.WriteString("\x00V")
			sb.Write(v)
		}
		sb.WriteString("\x01")
	}
	return sb.String()
}

// numValue renders a numeric or float value canonically (by value).
func numValue(tm *pgtype.Map, oid uint32, format int16, v []byte) (string, bool) {
	switch {
	case oid == pgtype.NumericOID:
		s := string(v)
		if format == pgtype.BinaryFormatCode {
			var n pgtype.Numeric
			if err := tm.Scan(oid, format, v, &n); err != nil {
				return "", false
			}
			x, err := n.Value()
			if err != nil {
				return "", false
			}
			s = fmt.Sprint(x)
		}
		var r big.Rat
		if _, ok := r.SetString(s); ok {
			return r.RatString(), true
		}
		return s, true // NaN, Infinity
	case isFloatOID(oid):
		f, ok := parseFloatVal(v, format, oid)
		if f == 0 {
			f = 0 // -0
		}
		return strconv.FormatFloat(f, 'g', -1, 64), ok
	}
	return "", false
}

func valuesEqual(tm *pgtype.Map, oid uint32, format int16, a, b []byte, tol, num bool) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	if string(a) == string(b) {
		return true
	}
	if num {
		x, ok1 := numValue(tm, oid, format, a)
		y, ok2 := numValue(tm, oid, format, b)
		if ok1 && ok2 && x == y {
			return true
		}
	}
	if !tol || !isFloatOID(oid) {
		return false
	}
	x, ok1 := parseFloatVal(a, format, oid)
	y, ok2 := parseFloatVal(b, format, oid)
	if !ok1 || !ok2 {
		return false
	}
	if math.IsNaN(x) || math.IsNaN(y) || math.IsInf(x, 0) || math.IsInf(y, 0) {
		return x == y || (math.IsNaN(x) && math.IsNaN(y))
	}
	return math.Abs(x-y) <= 1e-9*math.Max(math.Max(math.Abs(x), math.Abs(y)), 1e-9)
}

// showRow renders a row for a failure report, decoding binary values.
func showRow(tm *pgtype.Map, r *diffResult, row [][]byte) string {
	var parts []string
	for i, v := range row {
		if v == nil {
			parts = append(parts, "NULL")
			continue
		}
		if r.formats[i] == pgtype.TextFormatCode {
			parts = append(parts, strconv.Quote(string(v)))
			continue
		}
		s := fmt.Sprintf("0x%x", v)
		if typ, ok := tm.TypeForOID(r.oids[i]); ok {
			if x, err := typ.Codec.DecodeValue(tm, r.oids[i], r.formats[i], v); err == nil {
				if dv, ok := x.(driver.Valuer); ok {
					if y, err := dv.Value(); err == nil {
						x = y
					}
				}
				if tt, ok := x.(time.Time); ok {
					x = tt.Format("2006-01-02")
				}
				s = fmt.Sprintf("%v (bin)", x)
			}
		}
		parts = append(parts, s)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// compareDiff returns "" when the proxy's result equals the reference's.
func compareDiff(tm *pgtype.Map, q *diffQuery, p, r *diffResult) string {
	tol, num := q.flags&qTol != 0, q.flags&qNum != 0
	if p.err != nil || r.err != nil {
		if p.err != nil && r.err != nil && sqlState(p.err) == sqlState(r.err) {
			return ""
		}
		return fmt.Sprintf("errors differ:\n    proxy:     %v\n    reference: %v", p.err, r.err)
	}
	if !slices.Equal(p.names, r.names) {
		return fmt.Sprintf("column names differ: proxy %q, reference %q", p.names, r.names)
	}
	if !slices.Equal(p.oids, r.oids) {
		return fmt.Sprintf("column types differ: proxy OIDs %v, reference OIDs %v (columns %q)", p.oids, r.oids, r.names)
	}
	if !slices.Equal(p.formats, r.formats) {
		return fmt.Sprintf("column formats differ: proxy %v, reference %v", p.formats, r.formats)
	}
	prow, rrow := p.rows, r.rows
	how := "in order"
	if q.flags&qOrd == 0 {
		how = "as sorted multisets"
		prow, rrow = slices.Clone(prow), slices.Clone(rrow)
		slices.SortStableFunc(prow, func(x, y [][]byte) int {
			return strings.Compare(sortKey(tm, p, x, tol, num), sortKey(tm, p, y, tol, num))
		})
		slices.SortStableFunc(rrow, func(x, y [][]byte) int {
			return strings.Compare(sortKey(tm, r, x, tol, num), sortKey(tm, r, y, tol, num))
		})
	}
	for i := 0; i < min(len(prow), len(rrow)); i++ {
		for j := range prow[i] {
			if !valuesEqual(tm, r.oids[j], r.formats[j], prow[i][j], rrow[i][j], tol, num) {
				return fmt.Sprintf("row %d differs (compared %s; proxy %d rows, reference %d rows), column %q:\n    proxy:     %s\n    reference: %s",
					i, how, len(prow), len(rrow), r.names[j], showRow(tm, p, prow[i]), showRow(tm, r, rrow[i]))
			}
		}
	}
	if len(prow) != len(rrow) {
		extra, who := rrow, "reference"
		if len(prow) > len(rrow) {
			extra, who = prow, "proxy"
		}
		n := min(len(prow), len(rrow))
		return fmt.Sprintf("row counts differ: proxy %d, reference %d; first extra row (%s, #%d): %s",
			len(prow), len(rrow), who, n, showRow(tm, r, extra[n]))
	}
	if p.tag != r.tag {
		return fmt.Sprintf("command tags differ: proxy %q, reference %q", p.tag, r.tag)
	}
	return ""
}

// ---------------------------------------------------------------------
// The test

func TestDifferential(t *testing.T) {
	start := time.Now()
	ctx := ctxT(t, 5*time.Minute)
	srv := startProxy(t, 3, nil)
	pc := connect(t, srv)

	rng := rand.New(rand.NewPCG(diffSeed, 1))
	tT := genDiffT(rng)
	tS := genDiffS(rng)

	// The reference: one plain database on shard0's server.
	shard0 := cluster.Primary(shardNames()[0])
	admin := connectDSN(t, shard0.DSN("postgres"))
	mustExec(t, admin, "DROP DATABASE IF EXISTS "+diffRefDB+" WITH (FORCE)")
	mustExec(t, admin, "CREATE DATABASE "+diffRefDB)
	ref, err := pgx.Connect(ctx, shard0.DSN(diffRefDB))
	if err != nil {
		t.Fatalf("connect reference: %v", err)
	}
	t.Cleanup(func() {
		_ = ref.Close(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+diffRefDB+" WITH (FORCE)"); err != nil {
			t.Errorf("drop reference database: %v", err)
		}
	})

	// Schema on both sides; through the proxy the DDL is broadcast.
	for _, tb := range []*dtable{tT, tS} {
		mustExec(t, pc, "DROP TABLE IF EXISTS "+tb.name)
		mustExec(t, pc, tb.ddl())
		mustExec(t, ref, tb.ddl())
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pc.Exec(ctx, "DROP TABLE IF EXISTS diff_t, diff_s"); err != nil {
			t.Logf("drop test tables: %v", err)
		}
	})
	simpleExec := func(c *pgx.Conn, sql string) {
		t.Helper()
		if _, err := c.PgConn().Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatalf("%.200s...: %v", sql, err)
		}
	}

	// Reference: multi-row INSERTs with literals.
	for _, tb := range []*dtable{tT, tS} {
		for i := 0; i < len(tb.rows); i += 500 {
			simpleExec(ref, tb.insertSQL(tb.rows[i:min(i+500, len(tb.rows))]))
		}
	}

	// Proxy, diff_t: first half as simple multi-row INSERTs with literals,
	// second half as extended multi-row INSERTs with text parameters; the
	// proxy splits each by row.
	half := len(tT.rows) / 2
	for i := 0; i < half; i += 250 {
		simpleExec(pc, tT.insertSQL(tT.rows[i:min(i+250, half)]))
	}
	for i := half; i < len(tT.rows); i += 100 {
		sql, vals := tT.insertParams(tT.rows[i:min(i+100, len(tT.rows))])
		if _, err := pc.PgConn().ExecParams(ctx, sql, vals, nil, nil, nil).Close(); err != nil {
			t.Fatalf("parameterized insert into diff_t: %v", err)
		}
	}
	// Proxy, diff_s: half by binary COPY (pgx CopyFrom), half by text COPY.
	halfS := len(tS.rows) / 2
	var goRows [][]any
	for _, row := range tS.rows[:halfS] {
		goRows = append(goRows, diffSGoRow(t, row))
	}
	var cols []string
	for _, c := range tS.cols {
		cols = append(cols, c.name)
	}
	if n, err := pc.CopyFrom(ctx, pgx.Identifier{"diff_s"}, cols, pgx.CopyFromRows(goRows)); err != nil || n != int64(halfS) {
		t.Fatalf("binary COPY into diff_s: %d rows, %v", n, err)
	}
	if tag, err := pc.PgConn().CopyFrom(ctx, strings.NewReader(copyText(tS.rows[halfS:])),
		"COPY diff_s ("+tS.colList()+") FROM STDIN"); err != nil || tag.RowsAffected() != int64(len(tS.rows)-halfS) {
		t.Fatalf("text COPY into diff_s: %v, %v", tag, err)
	}

	// Every row landed once, spread over the three shards.
	for _, tb := range []*dtable{tT, tS} {
		counts := onShards(t, 3, "SELECT count(*) FROM "+tb.name)
		if sum(counts) != int64(len(tb.rows)) {
			t.Fatalf("%s: rows per shard %s, want %d in total", tb.name, joinInts(counts), len(tb.rows))
		}
		for _, n := range counts {
			if n == 0 {
				t.Fatalf("%s: rows per shard %s: a shard got none", tb.name, joinInts(counts))
			}
		}
		t.Logf("%s: %d rows, per shard %s", tb.name, len(tb.rows), joinInts(counts))
	}
	loaded := time.Now()

	type failure struct {
		q    *diffQuery
		mode diffMode
		msg  string
	}
	var failures []failure

	// Every row sits on the shard that owns its key's slot (PostgreSQL's
	// hash partitioning with modulus 256, slots in 3 contiguous blocks).
	for i, name := range shardNames() {
		sc := connectShard(t, name)
		for _, chk := range []struct{ table, key, hash string }{{"diff_t", "id", "hashint8extended"}, {"diff_s", "k", "hashtextextended"}} {
			sql := fmt.Sprintf(`SELECT %[2]s::text FROM %[1]s WHERE floor(
				(((%[3]s(%[2]s, 8816678312871386365)::numeric + 5305509591434766563 + 18446744073709551616)
				  %% 18446744073709551616) %% 256) * 3 / 256) <> $1 ORDER BY 1 LIMIT 10`, chk.table, chk.key, chk.hash)
			rows, err := sc.Query(ctx, sql, i)
			if err != nil {
				t.Fatalf("placement check: %v", err)
			}
			wrong, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatalf("placement check: %v", err)
			}
			if len(wrong) > 0 {
				failures = append(failures, failure{&diffQuery{cat: "placement", sql: "(load) " + chk.table}, modeSimple,
					fmt.Sprintf("shard %s holds rows whose key belongs to another shard: %s = %q", name, chk.key, wrong)})
			}
		}
	}

	queries := diffQueries(tT, tS)
	tm := pc.TypeMap()
	stats := map[string]int{}
	distinct := map[string]bool{}
	refused, refusedAnswered, executions := 0, 0, 0
	type timing struct {
		what       string
		proxy, ref time.Duration
	}
	var slow []timing
	var answered []string
	for i := range queries {
		q := &queries[i]
		for _, mode := range q.modes {
			qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			t0 := time.Now()
			p := runDiffQuery(qctx, pc, q, mode)
			t1 := time.Now()
			r := runDiffQuery(qctx, ref, q, mode)
			slow = append(slow, timing{q.sql + " [" + mode.String() + "]", t1.Sub(t0), time.Since(t1)})
			cancel()
			executions++
			if pc.IsClosed() {
				pc = connect(t, srv)
				tm = pc.TypeMap()
				p.err = fmt.Errorf("proxy connection closed: %w", p.err)
			}
			if (r.err != nil) != (q.flags&qErr != 0) && q.flags&qRefuse == 0 {
				t.Fatalf("reference: %s [%s]: error %v, want error: %v (a bug in the test)", q.sql, mode, r.err, q.flags&qErr != 0)
			}
			if q.flags&qRefuse != 0 {
				if sqlState(p.err) == "0A000" {
					refused++
					continue
				}
				refusedAnswered++
				answered = append(answered, q.sql)
			} else if sqlState(p.err) == "0A000" {
				failures = append(failures, failure{q, mode, fmt.Sprintf("refused by the proxy (0A000), not in the list of expected refusals: %v", p.err)})
				continue
			}
			if msg := compareDiff(tm, q, &p, &r); msg != "" {
				failures = append(failures, failure{q, mode, msg})
			}
		}
		if q.flags&qRefuse == 0 {
			distinct[fmt.Sprintf("%s %v", q.sql, q.args)] = true
			stats[q.cat]++
		}
	}

	var cats []string
	for c := range stats {
		cats = append(cats, c)
	}
	slices.Sort(cats)
	var parts []string
	for _, c := range cats {
		parts = append(parts, fmt.Sprintf("%s=%d", c, stats[c]))
	}
	t.Logf("%d SELECTs compared (%s), %d executions over simple/extended/extended-text; %d expected refusals seen, %d expected-refusal forms answered; load %v, queries %v",
		len(distinct), strings.Join(parts, " "), executions, refused, refusedAnswered,
		loaded.Sub(start).Round(time.Millisecond), time.Since(loaded).Round(time.Millisecond))
	if len(answered) > 0 {
		t.Logf("forms expected to be refused that the proxy answered (compared like the others): %q", slices.Compact(answered))
	}
	slices.SortFunc(slow, func(a, b timing) int { return int(b.proxy - a.proxy) })
	for _, x := range slow[:min(5, len(slow))] {
		t.Logf("slowest: proxy %v, reference %v: %s", x.proxy.Round(time.Millisecond), x.ref.Round(time.Millisecond), x.what)
	}
	if len(distinct) < 300 {
		t.Errorf("only %d SELECTs counted, want at least 300", len(distinct))
	}

	if len(failures) == 0 {
		return
	}
	var all strings.Builder
	for i, f := range failures {
		args := ""
		if len(f.q.args) > 0 {
			args = fmt.Sprintf("\n  args: %v", f.q.args)
		}
		fmt.Fprintf(&all, "#%d [%s, %s] %s%s\n  %s\n\n", i+1, f.q.cat, f.mode, f.q.sql, args, f.msg)
	}
	if path := os.Getenv("DIFF_REPORT"); path != "" {
		_ = os.WriteFile(path, []byte(all.String()), 0o644)
	}
	report := all.String()
	const maxReport = 20000
	if len(report) > maxReport {
		report = report[:maxReport] + "\n... (truncated; set DIFF_REPORT=file for all)"
	}
	failedQueries := map[string]bool{}
	for _, f := range failures {
		failedQueries[f.q.sql] = true
	}
	t.Errorf("%d failures in %d of %d queries:\n\n%s", len(failures), len(failedQueries), len(queries), report)
}

// diffSGoRow converts a diff_s row to Go values for a binary COPY.
func diffSGoRow(t *testing.T, row []dv) []any {
	out := make([]any, len(row))
	for i, v := range row {
		if v.null {
			continue
		}
		switch i {
		case 1:
			n, _ := strconv.ParseInt(v.s, 10, 32)
			out[i] = int32(n)
		case 2:
			var num pgtype.Numeric
			if err := num.Scan(v.s); err != nil {
				t.Fatalf("numeric %q: %v", v.s, err)
			}
			out[i] = num
		case 4:
			out[i] = v.s == "true"
		case 5:
			n, _ := strconv.ParseInt(v.s, 10, 64)
			out[i] = n
		default:
			out[i] = v.s
		}
	}
	return out
}
