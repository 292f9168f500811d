package shard

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/wire"
)

func errorsAs(err error, target any) bool { return err != nil && errors.As(err, target) }

func asWireError(t testing.TB, err error) *wire.Error {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v (%T) is not a *wire.Error", err, err)
	}
	return we
}

func TestConstants(t *testing.T) {
	if int64(HashPartitionSeed) != 8816678312871386365 {
		t.Errorf("HashPartitionSeed = %d", int64(HashPartitionSeed))
	}
	// PRODUCT.md's decimal form of hash_combine64's constant.
	if combineOffset != 5305509591434766563 {
		t.Errorf("combineOffset = %d", combineOffset)
	}
}

// Integers of every width hash alike, which is what lets one hash serve
// smallint, integer and bigint columns.
func TestHashIntWidths(t *testing.T) {
	for _, v := range []int64{0, 1, -1, 42, -42, math.MaxInt16, math.MinInt16, math.MaxInt32, math.MinInt32} {
		var hs []uint64
		for _, k := range []Kind{Int2, Int4, Int8} {
			if k == Int2 && (v > math.MaxInt16 || v < math.MinInt16) {
				continue
			}
			h, err := HashText(KeyType{Kind: k}, formatInt(v))
			if err != nil {
				t.Fatal(err)
			}
			hs = append(hs, h)
		}
		for _, h := range hs {
			if h != HashInt(v) {
				t.Errorf("%d: hashes %x differ from HashInt %x", v, hs, HashInt(v))
			}
		}
	}
}

func formatInt(v int64) string {
	if v < 0 {
		return "-" + formatUint(uint64(-v))
	}
	return formatUint(uint64(v))
}

func formatUint(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		if v /= 10; v == 0 {
			return string(b[i:])
		}
	}
}

// hash_numeric_extended ignores sign, scale and spelling: equal numerics
// hash alike, and so do a number and its negation.
func TestNumericHashEquivalences(t *testing.T) {
	groups := [][]string{
		{"1.5", "1.50", "01.5000", "15e-1", "0.15e1", "-1.5", "+1.5"},
		{"0", "0.000", "-0", "0e100", ".0", "-0.0e-5"},
		{"NaN", "nan", "Infinity", "-Infinity", "inf", "-inf"},
		{"100", "1e2", "100.00", "1E+2"},
		{"10000", "1e4"},
		{"0.0001", "1e-4", "0.00010"},
	}
	num := KeyType{Kind: Numeric}
	for _, g := range groups {
		want, err := HashText(num, g[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range g[1:] {
			if h, err := HashText(num, s); err != nil || h != want {
				t.Errorf("numeric %q hashes to %x (%v), %q to %x", s, h, err, g[0], want)
			}
		}
	}
	if HashPartitionSeed-1 != mustHash(t, num, "0") || HashPartitionSeed != mustHash(t, num, "NaN") {
		t.Error("zero must hash to seed-1 and NaN to seed")
	}
	if mustHash(t, num, "1") == mustHash(t, num, "10") || mustHash(t, num, "1") == mustHash(t, num, "10000") {
		t.Error("1, 10 and 10000 must differ (weight and digit value)")
	}
}

func mustHash(t *testing.T, typ KeyType, s string) uint64 {
	t.Helper()
	h, err := HashText(typ, s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNumericRoundAndTruncate(t *testing.T) {
	cases := []struct {
		in    string
		scale int
		want  string
	}{
		{"1.005", 2, "1.01"}, {"-1.005", 2, "-1.01"}, {"1.004", 2, "1"}, {"9.995", 2, "10"},
		{"0.004", 2, "0"}, {"0.005", 2, "0.01"}, {"0.0004", 2, "0"}, {"149", -2, "100"},
		{"150", -2, "200"}, {"49", -2, "0"}, {"50", -2, "100"}, {"99999.5", 0, "100000"},
		{"123", 2, "123"}, {"NaN", 0, "NaN"},
	}
	for _, c := range cases {
		d, err := parseNumeric(c.in, nil)
		if err != nil {
			t.Fatal(err)
		}
		d = d.rounded(c.scale)
		if got := mustHash(t, KeyType{Kind: Numeric}, c.want); d.hash() != got {
			t.Errorf("round(%s, %d) is not %s", c.in, c.scale, c.want)
		}
	}
}

func TestParseKeyType(t *testing.T) {
	for _, name := range config.KeyTypeNames {
		if _, err := ParseKeyType(name); err != nil {
			t.Errorf("config accepts %q, ParseKeyType: %v", name, err)
		}
	}
	cases := map[string]KeyType{
		"BIGINT":         {Kind: Int8},
		"int":            {Kind: Int4},
		"smallint":       {Kind: Int2},
		"varchar(20)":    {Kind: Varchar},
		"numeric":        {Kind: Numeric},
		"numeric(10)":    {Kind: Numeric, HasScale: true, Precision: 10},
		"decimal(12, 2)": {Kind: Numeric, HasScale: true, Scale: 2, Precision: 12},
		"numeric(5,-2)":  {Kind: Numeric, HasScale: true, Scale: -2, Precision: 5},
	}
	for in, want := range cases {
		got, err := ParseKeyType(in)
		if err != nil || got != want {
			t.Errorf("ParseKeyType(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"float8", "numeric(0)", "numeric(10,1001)", "text(3)", ""} {
		if _, err := ParseKeyType(bad); err == nil {
			t.Errorf("ParseKeyType(%q) accepted", bad)
		}
	}
}

func TestSlotExpr(t *testing.T) {
	got := NumericSlotExpr("k", Bigint, 256)
	want := "coalesce(((hashint8extended(k, 8816678312871386365)::numeric + 5305509591434766563 + 18446744073709551616) % 18446744073709551616) % 256, 0)"
	if got != want {
		t.Errorf("NumericSlotExpr:\n got %s\nwant %s", got, want)
	}
	// 5305509591434766563 & 255 = 227.
	got = SlotExpr("k", Bigint, 256)
	want = "coalesce(((hashint8extended(k, 8816678312871386365) & 255) + 227) & 255, 0)"
	if got != want {
		t.Errorf("SlotExpr:\n got %s\nwant %s", got, want)
	}
	if got := SlotExpr("k", Bigint, 100); got != NumericSlotExpr("k", Bigint, 100) {
		t.Errorf("SlotExpr with 100 slots: %s", got)
	}
}

func TestHashAllocations(t *testing.T) {
	num := KeyType{Kind: Numeric}
	cases := map[string]func(){
		"int":     func() { _, _ = HashText(Bigint, "1234567890") },
		"text":    func() { _, _ = HashText(TextType, "some customer key") },
		"uuid":    func() { _, _ = HashText(KeyType{Kind: UUID}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11") },
		"numeric": func() { _, _ = HashText(num, "-12345.678900") },
	}
	for name, f := range cases {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per hash", name, n)
		}
	}
}

func BenchmarkHashInt(b *testing.B) {
	var sink uint64
	for i := range b.N {
		sink += HashInt(int64(i))
	}
	_ = sink
}

func BenchmarkHashTextInt8(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := HashText(Bigint, "1234567890"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHashString32(b *testing.B) {
	s := strings.Repeat("k", 32)
	b.ReportAllocs()
	for b.Loop() {
		HashString(s)
	}
}

func BenchmarkHashTextUUID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := HashText(KeyType{Kind: UUID}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHashTextNumeric(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := HashText(KeyType{Kind: Numeric}, "-12345.678900"); err != nil {
			b.Fatal(err)
		}
	}
}
