package shard

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/plan"
)

const testConfig = `
users: [{name: app, password: app}]
shards:
  - {name: s0, primary: "postgres://h0/app"}
  - {name: s1, primary: "postgres://h1/app"}
  - {name: s2, primary: "postgres://h2/app"}
  - {name: s3, primary: "postgres://h3/app"}
sharding:
  default_shard: s3
  reference_tables: [countries, public.currencies]
  tables:
    - {name: accounts, key: id}
    - {name: Public.Users, key: email, type: text}
    - {name: devices, key: id, type: uuid}
    - {name: payments, key: amount, type: numeric}
    - {name: prices, key: amount, type: "numeric(10,2)"}
    - {name: small, key: id, type: smallint}
    - name: events
      key: day
      type: integer
      method: range
      ranges:
        - {to: 100, shard: s0}
        - {from: 200, to: 300, shard: s2}
        - {from: 100, to: 200, shard: s1}
    - name: grades
      key: score
      type: numeric
      method: range
      ranges:
        - {from: "1.5", to: "2.25", shard: s1}
        - {from: "2.25", shard: s2}
    - name: names
      key: name
      type: text
      method: range
      ranges:
        - {to: m, shard: s0}
        - {from: m, shard: s1}
    - name: customers
      key: country
      type: text
      method: list
      lists:
        - {values: [de, fr], shard: s0}
        - {values: [us], shard: s1}
    - name: rates
      key: rate
      type: numeric
      method: list
      lists:
        - {values: ["1.50", "NaN"], shard: s2}
`

func testMap(t testing.TB) *Map {
	t.Helper()
	cfg, err := config.Parse([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	m, err := FromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// hashOwner is the shard that owns a hash key, computed the long way.
func hashOwner(t testing.TB, m *Map, typ KeyType, text string) int {
	t.Helper()
	h, err := HashText(typ, text)
	if err != nil {
		t.Fatal(err)
	}
	return m.Slots[SlotOfHash(h, len(m.Slots))]
}

func lit(table, v string) plan.Key { return plan.Key{Table: table, Value: v, IsValue: true} }

func locate(t *testing.T, m *Map, k plan.Key, p *plan.Params) []int {
	t.Helper()
	got, err := m.Locate(k, p)
	if err != nil {
		t.Fatalf("Locate(%+v): %v", k, err)
	}
	return got
}

func be16(v int16) []byte { return binary.BigEndian.AppendUint16(nil, uint16(v)) }
func be32(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
func be64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// numericSend encodes numeric_send's format from NBASE digits.
func numericSend(weight int16, sign uint16, dscale int16, digits ...int16) []byte {
	b := be16(int16(len(digits)))
	b = append(b, be16(weight)...)
	b = binary.BigEndian.AppendUint16(b, sign)
	b = append(b, be16(dscale)...)
	for _, d := range digits {
		b = append(b, be16(d)...)
	}
	return b
}

// arraySend encodes a one-dimensional array_send; nil elements are NULL.
func arraySend(elemOID uint32, elems ...[]byte) []byte {
	hasNull := int32(0)
	for _, e := range elems {
		if e == nil {
			hasNull = 1
		}
	}
	b := append(be32(1), be32(hasNull)...)
	b = binary.BigEndian.AppendUint32(b, elemOID)
	b = append(b, be32(int32(len(elems)))...)
	b = append(b, be32(1)...)
	for _, e := range elems {
		if e == nil {
			b = append(b, be32(-1)...)
			continue
		}
		b = append(b, be32(int32(len(e)))...)
		b = append(b, e...)
	}
	return b
}

func TestLocateScalars(t *testing.T) {
	m := testMap(t)
	want := hashOwner(t, m, Bigint, "42")
	uuid := "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
	u, _ := parseUUID(uuid)
	cases := []struct {
		name string
		key  plan.Key
		p    *plan.Params
		want int
	}{
		{"literal", lit("accounts", "42"), nil, want},
		{"literal, other spellings", lit("ACCOUNTS", " +42 "), nil, want},
		{"public-qualified", lit("public.accounts", "42"), nil, want},
		{"literal numeric rounds", lit("accounts", "41.5"), nil, want},
		{"literal beyond integer", lit("small", "3000000000"), nil, hashOwner(t, m, Bigint, "3000000000")},
		{"text param", plan.Key{Table: "accounts", Param: 2}, &plan.Params{Values: [][]byte{nil, []byte("42")}}, want},
		{"binary int8", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{be64(42)}, Formats: []int16{1}}, want},
		{"binary int4", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{be32(42)}, Formats: []int16{1}}, want},
		{"binary int2", plan.Key{Table: "accounts", Param: 2}, &plan.Params{Values: [][]byte{[]byte("x"), be16(42)}, Formats: []int16{0, 1}}, want},
		{"binary numeric declared", plan.Key{Table: "accounts", Param: 1},
			&plan.Params{Values: [][]byte{numericSend(0, 0, 1, 42)}, Formats: []int16{1}, OIDs: []uint32{oidNumeric}}, want},
		{"text declared numeric", plan.Key{Table: "accounts", Param: 1},
			&plan.Params{Values: [][]byte{[]byte("42.4")}, OIDs: []uint32{oidNumeric}}, want},
		{"binary text declared", plan.Key{Table: "accounts", Param: 1},
			&plan.Params{Values: [][]byte{[]byte("42")}, Formats: []int16{1}, OIDs: []uint32{oidText}}, want},
		{"null literal", plan.Key{Table: "accounts", Null: true}, nil, m.Slots[0]},
		{"null param", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{nil}}, m.Slots[0]},
		{"text key", lit("users", "ann@example.com"), nil, hashOwner(t, m, TextType, "ann@example.com")},
		{"text key binary", plan.Key{Table: "users", Param: 1},
			&plan.Params{Values: [][]byte{[]byte("ann@example.com")}, Formats: []int16{1}}, hashOwner(t, m, TextType, "ann@example.com")},
		{"text key spaces kept", lit("users", " x "), nil, hashOwner(t, m, TextType, " x ")},
		{"uuid literal", lit("devices", strings.ToUpper(uuid)), nil, hashOwner(t, m, KeyType{Kind: UUID}, uuid)},
		{"uuid binary", plan.Key{Table: "devices", Param: 1},
			&plan.Params{Values: [][]byte{u[:]}, Formats: []int16{1}}, hashOwner(t, m, KeyType{Kind: UUID}, uuid)},
		{"numeric literal", lit("payments", "1.50"), nil, hashOwner(t, m, KeyType{Kind: Numeric}, "1.5")},
		{"numeric binary", plan.Key{Table: "payments", Param: 1},
			&plan.Params{Values: [][]byte{numericSend(0, 0x4000, 2, 1, 5000)}, Formats: []int16{1}}, hashOwner(t, m, KeyType{Kind: Numeric}, "-1.5")},
		// numeric_recv truncates digits beyond dscale.
		{"numeric binary truncated", plan.Key{Table: "payments", Param: 1},
			&plan.Params{Values: [][]byte{numericSend(0, 0, 0, 7, 5000)}, Formats: []int16{1}}, hashOwner(t, m, KeyType{Kind: Numeric}, "7")},
		{"numeric from int8 binary", plan.Key{Table: "payments", Param: 1},
			&plan.Params{Values: [][]byte{be64(10000)}, Formats: []int16{1}, OIDs: []uint32{oidInt8}}, hashOwner(t, m, KeyType{Kind: Numeric}, "10000")},
		{"numeric(10,2) rounds", lit("prices", "1.005"), nil, hashOwner(t, m, KeyType{Kind: Numeric}, "1.01")},
		{"not sharded: default", lit("nope", "1"), nil, 3},
	}
	for _, c := range cases {
		got := locate(t, m, c.key, c.p)
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("%s: Locate = %v, want [%d]", c.name, got, c.want)
		}
	}
}

func TestLocateArrays(t *testing.T) {
	m := testMap(t)
	owners := func(keys ...string) []int {
		var s []int
		for _, k := range keys {
			s = append(s, hashOwner(t, m, Bigint, k))
		}
		slices.Sort(s)
		return slices.Compact(s)
	}
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprint(i))
	}
	arr := func(text string) *plan.Params { return &plan.Params{Values: [][]byte{[]byte(text)}} }
	cases := []struct {
		name string
		p    *plan.Params
		want []int
	}{
		{"text", arr("{1,2,3}"), owners("1", "2", "3")},
		{"spaces and quotes", arr(` { "1" , 2 ,3 } `), owners("1", "2", "3")},
		{"NULL elements skipped", arr("{NULL, 7, null}"), owners("7")},
		{"quoted NULL is a value", &plan.Params{Values: [][]byte{[]byte(`{"NULL"}`)}, OIDs: []uint32{1009}}, nil},
		{"nested", arr("{{1,2},{3,4}}"), owners("1", "2", "3", "4")},
		{"bounds", arr("[0:1]={5,6}"), owners("5", "6")},
		{"escapes", arr(`{\4\2}`), owners("42")},
		{"many", arr("{" + strings.Join(many, ",") + "}"), owners(many...)},
		{"empty", arr("{}"), []int{m.Slots[0]}},
		{"all NULL", arr("{NULL}"), []int{m.Slots[0]}},
		{"NULL array", &plan.Params{Values: [][]byte{nil}}, []int{m.Slots[0]}},
		{"binary int8", &plan.Params{Values: [][]byte{arraySend(oidInt8, be64(1), be64(2), nil, be64(3))}, Formats: []int16{1}}, owners("1", "2", "3")},
		{"binary int4", &plan.Params{Values: [][]byte{arraySend(oidInt4, be32(5), be32(6))}, Formats: []int16{1}}, owners("5", "6")},
		{"binary text", &plan.Params{Values: [][]byte{arraySend(oidText, []byte("8"), []byte("9"))}, Formats: []int16{1}}, owners("8", "9")},
		{"binary empty", &plan.Params{Values: [][]byte{append(append(be32(0), be32(0)...), be32(oidInt8)...)}, Formats: []int16{1}}, []int{m.Slots[0]}},
	}
	for _, c := range cases {
		got, err := m.Locate(plan.Key{Table: "accounts", ArrayParam: 1}, c.p)
		if c.want == nil {
			// "NULL" quoted is the string NULL: not a bigint.
			if err == nil || asWireError(t, err).Code != "22P02" {
				t.Errorf("%s: Locate = %v, %v; want 22P02", c.name, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: Locate = %v, want %v", c.name, got, c.want)
		}
	}
	// Text keys: quoted elements keep their spaces and commas.
	got := locate(t, m, plan.Key{Table: "users", ArrayParam: 1}, arr(`{"a, b", " c ",d\,e}`))
	var want []int
	for _, k := range []string{"a, b", " c ", "d,e"} {
		want = append(want, hashOwner(t, m, TextType, k))
	}
	slices.Sort(want)
	if want = slices.Compact(want); !slices.Equal(got, want) {
		t.Errorf("text array: Locate = %v, want %v", got, want)
	}
}

func TestLocateErrors(t *testing.T) {
	m := testMap(t)
	cases := []struct {
		name      string
		key       plan.Key
		p         *plan.Params
		code, msg string
	}{
		{"bad literal", lit("accounts", "abc"), nil, "22P02", `invalid input syntax for type bigint: "abc"`},
		{"bad literal smallint", lit("small", "12x"), nil, "22P02", `invalid input syntax for type smallint: "12x"`},
		{"literal too big", lit("accounts", "99999999999999999999"), nil, "22003", "bigint out of range"},
		{"bad text param", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{[]byte("1.5")}}, "22P02", `invalid input syntax for type bigint: "1.5"`},
		{"param out of range", plan.Key{Table: "small", Param: 1}, &plan.Params{Values: [][]byte{[]byte("40000")}}, "22003", `value "40000" is out of range for type smallint`},
		{"bad uuid", lit("devices", "xyz"), nil, "22P02", `invalid input syntax for type uuid: "xyz"`},
		{"bad numeric", lit("payments", "1.2.3"), nil, "22P02", `invalid input syntax for type numeric: "1.2.3"`},
		{"binary wrong length", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{{1, 2, 3}}, Formats: []int16{1}}, "22P03", "incorrect binary data format in bind parameter 1"},
		{"binary uuid length", plan.Key{Table: "devices", Param: 1}, &plan.Params{Values: [][]byte{{1, 2, 3}}, Formats: []int16{1}}, "22P03", "incorrect binary data format in bind parameter 1"},
		{"binary numeric sign", plan.Key{Table: "payments", Param: 1}, &plan.Params{Values: [][]byte{numericSend(0, 0x1234, 0, 1)}, Formats: []int16{1}}, "22P03", `invalid sign in external "numeric" value`},
		{"binary numeric digit", plan.Key{Table: "payments", Param: 1}, &plan.Params{Values: [][]byte{numericSend(0, 0, 0, 10000)}, Formats: []int16{1}}, "22P03", `invalid digit in external "numeric" value`},
		{"binary numeric short", plan.Key{Table: "payments", Param: 1}, &plan.Params{Values: [][]byte{{0, 1, 0}}, Formats: []int16{1}}, "22P03", "incorrect binary data format in bind parameter 1"},
		{"binary undecodable type", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{be64(0)}, Formats: []int16{1}, OIDs: []uint32{701}}, "0A000", "cannot route by a binary parameter of type OID 701: the shard key is bigint"},
		{"uuid for bigint", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{make([]byte, 16)}, Formats: []int16{1}, OIDs: []uint32{oidUUID}}, "42883", "operator does not exist: bigint = uuid"},
		{"NaN for bigint", plan.Key{Table: "accounts", Param: 1}, &plan.Params{Values: [][]byte{[]byte("NaN")}, OIDs: []uint32{oidNumeric}}, "0A000", "cannot convert NaN to bigint"},
		{"missing param", plan.Key{Table: "accounts", Param: 3}, &plan.Params{Values: [][]byte{nil}}, "08P01", "bind message supplies 1 parameters, but the shard key is $3"},
		{"no params", plan.Key{Table: "accounts", Param: 1}, nil, "08P01", "no value bound for parameter $1"},
		{"malformed array", plan.Key{Table: "accounts", ArrayParam: 1}, &plan.Params{Values: [][]byte{[]byte("{1,2")}}, "22P02", `malformed array literal: "{1,2"`},
		{"array empty element", plan.Key{Table: "accounts", ArrayParam: 1}, &plan.Params{Values: [][]byte{[]byte("{1,,2}")}}, "22P02", `malformed array literal: "{1,,2}"`},
		{"array not braced", plan.Key{Table: "accounts", ArrayParam: 1}, &plan.Params{Values: [][]byte{[]byte("1,2")}}, "22P02", `malformed array literal: "1,2"`},
		{"array junk after", plan.Key{Table: "accounts", ArrayParam: 1}, &plan.Params{Values: [][]byte{[]byte("{1} x")}}, "22P02", `malformed array literal: "{1} x"`},
		{"array bad element", plan.Key{Table: "accounts", ArrayParam: 1}, &plan.Params{Values: [][]byte{[]byte("{1,x}")}}, "22P02", `invalid input syntax for type bigint: "x"`},
		{"binary array truncated", plan.Key{Table: "accounts", ArrayParam: 1}, &plan.Params{Values: [][]byte{arraySend(oidInt8, be64(1))[:25]}, Formats: []int16{1}}, "22P03", "incorrect binary data format in bind parameter 1"},
		{"binary array dims", plan.Key{Table: "accounts", ArrayParam: 1}, &plan.Params{Values: [][]byte{append(be32(7), make([]byte, 8)...)}, Formats: []int16{1}}, "22023", "invalid number of dimensions: 7"},
		{"no value at all", plan.Key{Table: "accounts"}, nil, "XX000", "shard key of table accounts carries no value"},
	}
	for _, c := range cases {
		got, err := m.Locate(c.key, c.p)
		if err == nil {
			t.Errorf("%s: Locate = %v, want error %s", c.name, got, c.code)
			continue
		}
		we := asWireError(t, err)
		if we.Code != c.code || we.Message != c.msg || we.Severity != "ERROR" {
			t.Errorf("%s: error %s %q, want %s %q", c.name, we.Code, we.Message, c.code, c.msg)
		}
	}
}

func TestRangeAndList(t *testing.T) {
	m := testMap(t)
	def := m.Default()
	cases := []struct {
		table, key string
		want       int
	}{
		{"events", "-1000000", 0}, {"events", "99", 0}, {"events", "100", 1}, {"events", "199", 1},
		{"events", "200", 2}, {"events", "299", 2}, {"events", "300", def}, {"events", "2147483647", def},
		{"grades", "1.4999", def}, {"grades", "1.5", 1}, {"grades", "1.50", 1}, {"grades", "2.2499999", 1},
		{"grades", "2.25", 2}, {"grades", "1e100", 2}, {"grades", "Infinity", 2}, {"grades", "NaN", 2}, {"grades", "-Infinity", def},
		{"names", "", 0}, {"names", "lzzz", 0}, {"names", "m", 1}, {"names", "zebra", 1}, {"names", "Zebra", 0},
		{"customers", "de", 0}, {"customers", "fr", 0}, {"customers", "us", 1}, {"customers", "US", def}, {"customers", "", def},
		{"rates", "1.5", 2}, {"rates", "1.500", 2}, {"rates", "nan", 2}, {"rates", "-1.5", def}, {"rates", "15", def},
	}
	for _, c := range cases {
		got := locate(t, m, lit(c.table, c.key), nil)
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("%s %q: Locate = %v, want [%d]", c.table, c.key, got, c.want)
		}
		if s, err := m.ShardOfText(c.table, c.key); err != nil || s != c.want {
			t.Errorf("%s %q: ShardOfText = %d, %v; want %d", c.table, c.key, s, err, c.want)
		}
	}
	for _, table := range []string{"events", "customers"} {
		if got := locate(t, m, plan.Key{Table: table, Null: true}, nil); got[0] != def {
			t.Errorf("%s NULL: Locate = %v, want default %d", table, got, def)
		}
		if s := m.ShardOfNull(table); s != def {
			t.Errorf("%s: ShardOfNull = %d", table, s)
		}
	}
	got := locate(t, m, plan.Key{Table: "events", ArrayParam: 1}, &plan.Params{Values: [][]byte{[]byte("{5,150,250,1000}")}})
	if want := []int{0, 1, 2, def}; !slices.Equal(got, want) {
		t.Errorf("range array: %v, want %v", got, want)
	}
}

func TestShardOfCopyFields(t *testing.T) {
	m := testMap(t)
	want := hashOwner(t, m, Bigint, "42")
	if s, err := m.ShardOfText("accounts", "42"); err != nil || s != want {
		t.Errorf("ShardOfText = %d, %v", s, err)
	}
	if s, err := m.ShardOfBinary("accounts", be64(42)); err != nil || s != want {
		t.Errorf("ShardOfBinary = %d, %v", s, err)
	}
	if s, err := m.ShardOfBinary("accounts", nil); err != nil || s != m.Slots[0] {
		t.Errorf("ShardOfBinary(NULL) = %d, %v", s, err)
	}
	// COPY reads with the input function: no numeric leniency.
	if _, err := m.ShardOfText("accounts", "41.5"); err == nil || asWireError(t, err).Code != "22P02" {
		t.Errorf("ShardOfText(41.5) = %v, want 22P02", err)
	}
	if _, err := m.ShardOfBinary("accounts", []byte{1}); err == nil || asWireError(t, err).Message != "incorrect binary data format in shard key" {
		t.Errorf("ShardOfBinary(short) = %v", err)
	}
	if slot, err := m.Slot("accounts", "42"); err != nil || m.Slots[slot] != want {
		t.Errorf("Slot = %d, %v", slot, err)
	}
	if _, err := m.Slot("events", "1"); err == nil {
		t.Error("Slot of a range table: no error")
	}
}

// The per-statement path allocates nothing for scalar keys.
func TestLocateAllocations(t *testing.T) {
	m := testMap(t)
	bin := &plan.Params{Values: [][]byte{be64(42)}, Formats: []int16{1}}
	txt := &plan.Params{Values: [][]byte{[]byte("ann@example.com")}}
	seven := be64(7)
	cases := map[string]func(){
		"int literal":   func() { _, _ = m.Locate(lit("accounts", "123456"), nil) },
		"int binary":    func() { _, _ = m.Locate(plan.Key{Table: "accounts", Param: 1}, bin) },
		"text param":    func() { _, _ = m.Locate(plan.Key{Table: "users", Param: 1}, txt) },
		"uuid literal":  func() { _, _ = m.Locate(lit("devices", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), nil) },
		"numeric":       func() { _, _ = m.Locate(lit("payments", "-1234.5678"), nil) },
		"range":         func() { _, _ = m.Locate(lit("events", "150"), nil) },
		"list":          func() { _, _ = m.Locate(lit("customers", "fr"), nil) },
		"copy text":     func() { _, _ = m.ShardOfText("accounts", "42") },
		"copy binary":   func() { _, _ = m.ShardOfBinary("accounts", seven) },
		"numeric(10,2)": func() { _, _ = m.Locate(lit("prices", "1.005"), nil) },
	}
	for name, f := range cases {
		if n := testing.AllocsPerRun(200, f); n != 0 {
			t.Errorf("%s: %v allocations per Locate", name, n)
		}
	}
}

func BenchmarkLocateIntLiteral(b *testing.B) {
	m := testMap(b)
	k := lit("accounts", "123456789")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Locate(k, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLocateIntBinaryParam(b *testing.B) {
	m := testMap(b)
	k := plan.Key{Table: "accounts", Param: 1}
	p := &plan.Params{Values: [][]byte{be64(123456789)}, Formats: []int16{1}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Locate(k, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLocateTextParam(b *testing.B) {
	m := testMap(b)
	k := plan.Key{Table: "users", Param: 1}
	p := &plan.Params{Values: [][]byte{[]byte("someone@example.com")}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Locate(k, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLocateArray10(b *testing.B) {
	m := testMap(b)
	k := plan.Key{Table: "accounts", ArrayParam: 1}
	p := &plan.Params{Values: [][]byte{[]byte("{1,2,3,4,5,6,7,8,9,10}")}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Locate(k, p); err != nil {
			b.Fatal(err)
		}
	}
}
