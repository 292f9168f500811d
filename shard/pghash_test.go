package shard

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/wire"
)

// The acceptance test: for every supported key type, the slot computed
// here equals the partition PostgreSQL itself picks for the same key in a
// table PARTITION BY HASH with modulus 256. Keys are loaded with COPY
// text, so PostgreSQL reads them with the same input function HashText
// imitates; each row's binary form (typsend) checks HashBinary, and the
// SQL slot expressions are checked on the same rows.

const (
	pgSlots   = 256
	keysPerTy = 100_000
)

type keyGen func(r *rand.Rand, i int) (text string, null bool)

func TestSlotsMatchPostgresHashPartitioning(t *testing.T) {
	dsn := testDSN(t)
	cases := []struct {
		name, sqlType, send string
		n                   int
		gen                 keyGen
	}{
		{"int2", "smallint", "int2send", keysPerTy, genInt(math.MinInt16, math.MaxInt16)},
		{"int4", "integer", "int4send", keysPerTy, genInt(math.MinInt32, math.MaxInt32)},
		{"int8", "bigint", "int8send", keysPerTy, genInt(math.MinInt64, math.MaxInt64)},
		{"text", "text", "textsend", keysPerTy, genText},
		{"uuid", "uuid", "uuid_send", keysPerTy, genUUID},
		{"numeric", "numeric", "numeric_send", keysPerTy, genNumeric},
		// Smaller runs for what shares code with the above.
		{"varchar", "varchar(1000)", "varcharsend", 10_000, genText},
		{"numeric_30_2", "numeric(30,2)", "numeric_send", 20_000, genNumericModest},
		{"numeric_30_m2", "numeric(30,-2)", "numeric_send", 20_000, genNumericModest},
	}
	start := time.Now()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			typ, err := ParseKeyType(c.sqlType)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(uint64(len(c.name)), 42))
			keys := make([]string, c.n)
			nulls := make([]bool, c.n)
			for i := range keys {
				keys[i], nulls[i] = c.gen(r, i)
			}
			checkAgainstPostgres(t, dsn, "hk_"+c.name, c.sqlType, c.send, typ, keys, nulls)
		})
	}
	t.Cleanup(func() { t.Logf("all types: %v", time.Since(start).Round(time.Millisecond)) })
}

func checkAgainstPostgres(t *testing.T, dsn, table, sqlType, send string, typ KeyType, keys []string, nulls []bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	t0 := time.Now()
	setup := fmt.Sprintf(`
SET synchronous_commit = off;
DROP TABLE IF EXISTS %[1]s;
CREATE TABLE %[1]s (id int, k %[2]s) PARTITION BY HASH (k);
DO $$ BEGIN
	FOR r IN 0..%[3]d LOOP
		EXECUTE format('CREATE UNLOGGED TABLE %[1]s_%%s PARTITION OF %[1]s FOR VALUES WITH (MODULUS %[4]d, REMAINDER %%s)', r, r);
	END LOOP;
END $$;`, table, sqlType, pgSlots-1, pgSlots)
	if _, err := conn.Exec(ctx, setup); err != nil {
		t.Fatalf("create %s: %v", table, err)
	}
	pr, pw := io.Pipe()
	go func() {
		var b strings.Builder
		for i, k := range keys {
			b.Reset()
			b.WriteString(strconv.Itoa(i))
			b.WriteByte('\t')
			if nulls[i] {
				b.WriteString(`\N`)
			} else {
				b.WriteString(copyEscape(k))
			}
			b.WriteByte('\n')
			if _, err := io.WriteString(pw, b.String()); err != nil {
				return
			}
		}
		pw.Close()
	}()
	if _, err := conn.PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (id, k) FROM STDIN", table)); err != nil {
		pr.CloseWithError(err)
		t.Fatalf("copy into %s: %v", table, err)
	}
	tLoad := time.Since(t0)

	// The bigint expression is PRODUCT.md's, verbatim; SlotExpr is
	// checked for every type.
	product := "NULL::numeric"
	if typ.Kind == Int8 {
		product = fmt.Sprintf("((hashint8extended(k, 8816678312871386365)::numeric + 5305509591434766563 + 18446744073709551616) %% 18446744073709551616) %% %d", pgSlots)
	}
	// SlotExpr's bitwise form (power-of-two counts) and the numeric form
	// are both checked against PostgreSQL's choice, and the numeric form
	// also with a count that is not a power of two against Go.
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT id, tableoid::regclass::text, %s(k), %s, %s, %s, %s FROM %s",
		send, SlotExpr("k", typ, pgSlots), product, NumericSlotExpr("k", typ, pgSlots), NumericSlotExpr("k", typ, 100), table), pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen, bad := 0, 0
	report := func(format string, args ...any) {
		if bad++; bad <= 10 {
			t.Errorf(format, args...)
		}
	}
	for rows.Next() {
		var (
			id        int
			part      string
			sent      []byte
			expr      int
			prodSlot  *int
			numSlot   int
			num100    int
			remainder int
		)
		if err := rows.Scan(&id, &part, &sent, &expr, &prodSlot, &numSlot, &num100); err != nil {
			t.Fatal(err)
		}
		seen++
		remainder, err = strconv.Atoi(part[strings.LastIndexByte(part, '_')+1:])
		if err != nil {
			t.Fatalf("partition name %q", part)
		}
		if nulls[id] {
			if remainder != NullSlot || expr != NullSlot {
				report("NULL key: PostgreSQL partition %d, SlotExpr %d, want %d", remainder, expr, NullSlot)
			}
			continue
		}
		got, err := SlotOfText(typ, keys[id], pgSlots)
		if err != nil {
			report("key %q: %v", keys[id], err)
			continue
		}
		if got != remainder {
			report("%s key %q: slot %d, PostgreSQL chose partition %d", sqlType, keys[id], got, remainder)
		}
		h, err := HashBinary(typ, sent)
		if err != nil {
			report("%s key %q: binary %x: %v", sqlType, keys[id], sent, err)
		} else if s := SlotOfHash(h, pgSlots); s != remainder {
			report("%s key %q: binary %x gives slot %d, PostgreSQL chose %d", sqlType, keys[id], sent, s, remainder)
		}
		if expr != remainder {
			report("%s key %q: SlotExpr gives %d, PostgreSQL chose %d", sqlType, keys[id], expr, remainder)
		}
		if numSlot != remainder {
			report("%s key %q: NumericSlotExpr gives %d, PostgreSQL chose %d", sqlType, keys[id], numSlot, remainder)
		}
		if want := SlotOfHash(h, 100); err == nil && num100 != want {
			report("%s key %q: NumericSlotExpr with 100 slots gives %d, Go %d", sqlType, keys[id], num100, want)
		}
		if prodSlot != nil && *prodSlot != remainder {
			report("%s key %q: PRODUCT.md's expression gives %d, PostgreSQL chose %d", sqlType, keys[id], *prodSlot, remainder)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if seen != len(keys) {
		t.Errorf("read back %d rows of %d", seen, len(keys))
	}
	if bad > 10 {
		t.Errorf("... %d mismatches in all", bad)
	}
	t.Logf("%d %s keys: load %v, total %v", len(keys), sqlType, tLoad.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	if _, err := conn.Exec(ctx, "DROP TABLE "+table); err != nil {
		t.Error(err)
	}
}

// copyEscape escapes a value for COPY's text format.
func copyEscape(s string) string {
	if !strings.ContainsAny(s, "\\\t\n\r") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)
	return r.Replace(s)
}

// genInt yields the extremes and their neighbours, small numbers, random
// values across the range, NULLs, and the spellings int*in accepts.
func genInt(lo, hi int64) keyGen {
	edges := []int64{lo, lo + 1, hi, hi - 1, 0, 1, -1, 2, -2, 255, 256, -256, 65535, 65536, -65536,
		math.MaxInt32, math.MinInt32, math.MaxInt32 + 1, math.MinInt32 - 1, 1 << 32, -1 << 32, 1<<32 - 1, -(1<<32 - 1)}
	return func(r *rand.Rand, i int) (string, bool) {
		if i < len(edges) {
			v := min(max(edges[i], lo), hi)
			return strconv.FormatInt(v, 10), false
		}
		if i%997 == 0 {
			return "", true
		}
		var v int64
		switch r.IntN(3) {
		case 0:
			v = r.Int64N(2001) - 1000
		case 1:
			// Full range, including the top half of uint64 (negatives).
			v = int64(r.Uint64())
			if lo > math.MinInt64 {
				v = lo + int64(r.Uint64N(uint64(hi-lo)+1))
			}
		default:
			v = r.Int64N(1<<20) << r.IntN(40)
			v = min(max(v, lo), hi)
		}
		s := strconv.FormatInt(v, 10)
		switch r.IntN(20) {
		case 0:
			s = "  " + s + " \t"
		case 1:
			if v >= 0 {
				s = "+" + s
			}
		case 2:
			if v >= 0 {
				s = "000" + s
			}
		}
		return s, false
	}
}

var textRunes = []rune("aZ09 _-.,;:!?'\"\\\t\nåéüßçñ€£¥ΩЖ中文日本語한국어🙂🎉\u200b\u00a0")

func genText(r *rand.Rand, i int) (string, bool) {
	if i == 0 {
		return "", false
	}
	if i%997 == 0 {
		return "", true
	}
	var n int
	switch r.IntN(4) {
	case 0:
		n = r.IntN(13) // every tail length of the Jenkins hash
	case 1:
		n = r.IntN(40)
	case 2:
		n = 12*r.IntN(5) + r.IntN(3)
	default:
		n = r.IntN(300)
	}
	var b strings.Builder
	for range n {
		if r.IntN(3) == 0 {
			b.WriteRune(textRunes[r.IntN(len(textRunes))])
		} else {
			b.WriteByte(byte('a' + r.IntN(26)))
		}
	}
	return b.String(), false
}

func genUUID(r *rand.Rand, i int) (string, bool) {
	if i%997 == 0 {
		return "", true
	}
	var u [16]byte
	for j := range u {
		u[j] = byte(r.Uint32())
	}
	if i == 1 {
		u = [16]byte{}
	}
	if i == 2 {
		for j := range u {
			u[j] = 0xff
		}
	}
	h := fmt.Sprintf("%x", u[:])
	switch r.IntN(6) {
	case 0:
		return h, false
	case 1:
		return "{" + strings.ToUpper(h) + "}", false
	case 2:
		// A hyphen is allowed after any group of four digits.
		return h[:4] + "-" + h[4:8] + "-" + h[8:20] + "-" + h[20:], false
	}
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], false
}

var numericFixed = []string{
	"0", "0.0", "-0", "-0.000", "+0", "000", "0e10", "0.0e-5", ".0",
	"NaN", "nan", "Infinity", "-Infinity", "+inf", "-INF", "  NaN  ",
	"1", "-1", "1.5", "1.50", "-1.5", "1.500000", "01.5", "1.", ".5", "-.5",
	"10000", "9999", "10000.0001", "0.0001", "0.00001", "-0.00001234",
	"1e4", "1E-4", "1.5e3", "15e-1", "1e 5", "1e+5", "-2.5e-10",
	"12345678901234567890123456789012345678901234567890",
	"-99999999999999999999999999999999999999.99999999999999999999",
	"1e1000", "-1e-1000", "123.456e-300", "9.9999e131071",
	"  42  ", "\t-7\n", "100", "1000", "100000000", "0.1", "0.01", "0.001",
}

func genNumeric(r *rand.Rand, i int) (string, bool) {
	if i < len(numericFixed) {
		return numericFixed[i], false
	}
	if i%997 == 0 {
		return "", true
	}
	digits := func(n int) string {
		var b strings.Builder
		for range n {
			b.WriteByte(byte('0' + r.IntN(10)))
		}
		return b.String()
	}
	var s string
	switch r.IntN(5) {
	case 0:
		s = strconv.FormatInt(r.Int64N(2_000_001)-1_000_000, 10)
	case 1:
		s = digits(1+r.IntN(30)) + "." + digits(r.IntN(30))
	case 2:
		// Trailing and leading zeros that do not change the value.
		s = strings.Repeat("0", r.IntN(5)) + digits(1+r.IntN(8)) + "." + digits(r.IntN(6)) + strings.Repeat("0", r.IntN(9))
	case 3:
		s = digits(1+r.IntN(6)) + "." + digits(r.IntN(6)) + "e" + strconv.Itoa(r.IntN(400)-200)
	default:
		s = "0." + strings.Repeat("0", r.IntN(12)) + digits(1+r.IntN(10))
	}
	if r.IntN(2) == 0 && s[0] != '-' {
		s = "-" + s
	}
	return s, false
}

// genNumericModest stays within numeric(30,s) and lands on rounding
// boundaries (…5 in the first dropped digit) often.
func genNumericModest(r *rand.Rand, i int) (string, bool) {
	fixed := []string{"0", "0.005", "-0.005", "0.004", "0.995", "9.995", "-9.995", "49", "50", "-50", "149.99", "150", "0.5", "99.5"}
	if i < len(fixed) {
		return fixed[i], false
	}
	if i%997 == 0 {
		return "", true
	}
	s := strconv.FormatInt(r.Int64N(1_000_000_000), 10) + "." + strconv.Itoa(r.IntN(100000))
	if r.IntN(3) == 0 {
		s = strconv.Itoa(r.IntN(1000)) + "." + []string{"5", "05", "005", "495", "4999", "5000"}[r.IntN(6)]
	}
	if r.IntN(2) == 0 {
		s = "-" + s
	}
	return s, false
}

// Input errors and edge spellings: PostgreSQL's own cast either accepts
// the text and hashes it as HashText does, or rejects it with the SQLSTATE
// and message HashText returns.
func TestInputParsingMatchesPostgres(t *testing.T) {
	dsn := testDSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	inputs := map[string][]string{
		"smallint": {"32767", "32768", "-32768", "-32769", " 1 ", "1 1", "", " ", "+", "-", "1x", "abc", "1.0", "0x10", "1_000", "99999999999999999999x"},
		"integer":  {"2147483647", "2147483648", "-2147483648", "-2147483649", "+0", "--1", "1e3", "\t7\n"},
		"bigint":   {"9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "abc", "", "1.5", "١٢"},
		"uuid": {"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
			"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
			"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
			"a0eebc999c0b4ef8bb6d6bb9bd380a11-", "-a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0e-ebc999c0b4ef8bb6d6bb9bd380a11", ""},
		"numeric": {"", " ", ".", "-", "+.", "1e", "1e+", "1e 5", "1 e5", "1.2.3", "1..2", "--1", "NaNx", "nan ", "Infinityx", "infinit",
			"1e2147483647", "1e1073741823", "1e1073741822", "1e-1073741823", "1e131072", "1e131071", "0e-16383", "0e-16384",
			"1e-16383", "1e-16384", "0.5e-16383", "9e-16383", "1e-131073", "1_000", "0x1F", "1,5", "١"},
		"numeric(5,2)": {"1.005", "-1.005", "999.994", "999.995", "0.001", "1e-3", "NaN"},
	}
	for sqlType, list := range inputs {
		typ, err := ParseKeyType(sqlType)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range list {
			var pgHash int64
			err := conn.QueryRow(ctx, fmt.Sprintf("SELECT %s($1::text::%s, %d)", typ.HashFunc(), sqlType, int64(HashPartitionSeed)), in).Scan(&pgHash)
			h, goErr := HashText(typ, in)
			var pgErr *pgconn.PgError
			if typ.Precision > 0 && errorsAs(err, &pgErr) && pgErr.Code == "22003" {
				// Too many digits for numeric(p,s): the shard reports
				// that; routing only needs the rounded value.
				continue
			}
			switch {
			case err == nil && goErr == nil:
				if uint64(pgHash) != h {
					t.Errorf("%s %q: hash %x, PostgreSQL %x", sqlType, in, h, uint64(pgHash))
				}
			case err == nil:
				t.Errorf("%s %q: PostgreSQL accepts it, HashText says %v", sqlType, in, goErr)
			case goErr == nil:
				t.Errorf("%s %q: PostgreSQL rejects it (%v), HashText accepts it", sqlType, in, err)
			case !errorsAs(err, &pgErr):
				t.Fatal(err)
			default:
				we := asWireError(t, goErr)
				if we.Code != pgErr.Code || we.Message != pgErr.Message {
					t.Errorf("%s %q: error %s %q, PostgreSQL %s %q", sqlType, in, we.Code, we.Message, pgErr.Code, pgErr.Message)
				}
			}
		}
	}
}

// The text array walker reads the elements PostgreSQL's array_in reads,
// and rejects what it rejects.
func TestTextArraysMatchPostgres(t *testing.T) {
	dsn := testDSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	inputs := []string{
		"{}", "{ }", "{a}", "{a,b}", " { a , b } ", `{"a b", "c,d", "e\"f", "g\\h"}`, `{a\,b}`, `{a\ }`, `{ a\  }`,
		"{NULL}", "{null, NuLl}", `{"NULL"}`, `{\NULL}`, "{NULLx}", "{{a,b},{c,d}}", "[1:2]={a,b}", "[0:0][1:2]={{a,b}}",
		`{"",""}`, "{a b c}", `{"a"b}`, "{a,,b}", "{a,}", "{,a}", "{", "}", "a", "{a}}", "{{a}", "{a} b", `{"a}`, `{a\}`,
		"{é,日本}", "{\ta\n}", `{"\t"}`,
	}
	for _, in := range inputs {
		var pgElems []*string
		pgErr := conn.QueryRow(ctx, "SELECT coalesce(array_agg(x), '{}') FROM unnest($1::text::text[]) x", in).Scan(&pgElems)
		var goElems []*string
		goErr := walkTextArray(in, nil, func(elem string, null bool) *wire.Error {
			if null {
				goElems = append(goElems, nil)
			} else {
				e := strings.Clone(elem)
				goElems = append(goElems, &e)
			}
			return nil
		})
		if pgErr != nil || goErr != nil {
			if pgErr == nil || goErr == nil {
				t.Errorf("%q: PostgreSQL error %v, walker error %v", in, pgErr, goErr)
			}
			continue
		}
		render := func(es []*string) string {
			var parts []string
			for _, e := range es {
				if e == nil {
					parts = append(parts, "NULL")
				} else {
					parts = append(parts, strconv.Quote(*e))
				}
			}
			return strings.Join(parts, " ")
		}
		if g, w := render(goElems), render(pgElems); g != w {
			t.Errorf("%q: walker reads [%s], PostgreSQL [%s]", in, g, w)
		}
	}
}
