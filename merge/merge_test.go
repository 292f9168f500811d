package merge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// Unit tests on hand-built messages; the differential tests against a
// real server are in pg_test.go.

type col struct {
	name   string
	oid    uint32
	binary bool
}

func rowDesc(t testing.TB, cols ...col) []byte {
	t.Helper()
	var rd pgproto3.RowDescription
	for _, c := range cols {
		f := pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: -1, TypeModifier: -1}
		if c.binary {
			f.Format = 1
		}
		rd.Fields = append(rd.Fields, f)
	}
	msg, err := rd.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// dataRow builds a DataRow from text values; "\x00NULL" stands for NULL.
func dataRow(t testing.TB, vals ...string) []byte {
	t.Helper()
	var dr pgproto3.DataRow
	for _, v := range vals {
		if v == null {
			dr.Values = append(dr.Values, nil)
		} else {
			dr.Values = append(dr.Values, []byte(v))
		}
	}
	msg, err := dr.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func binRow(t testing.TB, vals ...[]byte) []byte {
	t.Helper()
	msg, err := (&pgproto3.DataRow{Values: vals}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

const null = "\x00NULL"

// sink collects emitted rows as text values.
type sink struct {
	rows [][]string
	raw  [][]byte
}

func (s *sink) emit(row []byte) error {
	var dr pgproto3.DataRow
	if int(binary.BigEndian.Uint32(row[1:])) != len(row)-1 {
		return errors.New("bad length")
	}
	if err := dr.Decode(row[5:]); err != nil {
		return err
	}
	var vals []string
	for _, v := range dr.Values {
		if v == nil {
			vals = append(vals, null)
		} else {
			vals = append(vals, string(v))
		}
	}
	s.rows = append(s.rows, vals)
	s.raw = append(s.raw, bytes.Clone(row))
	return nil
}

func (s *sink) col(i int) []string {
	var out []string
	for _, r := range s.rows {
		out = append(out, r[i])
	}
	return out
}

func newMerger(t testing.TB, m *plan.Merge, p *plan.Params, rd []byte) (*Merger, *sink) {
	t.Helper()
	s := &sink{}
	mg, err := New(m, p, s.emit)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := mg.Describe(rd); err != nil {
		t.Fatalf("Describe: %v", err)
	}
	return mg, s
}

func mustFinish(t testing.TB, mg *Merger) int64 {
	t.Helper()
	n, err := mg.Finish()
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	return n
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPassthroughIsUntouchedAndAllocationFree(t *testing.T) {
	rd := rowDesc(t, col{"a", oidInt4, false}, col{"b", oidText, false})
	var last []byte
	mg, err := New(nil, nil, func(row []byte) error { last = row; return nil })
	if err != nil {
		t.Fatal(err)
	}
	out, err := mg.Describe(rd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, rd) {
		t.Errorf("RowDescription changed: %q -> %q", rd, out)
	}
	row := dataRow(t, "1", "x")
	if err := mg.Add(2, row); err != nil {
		t.Fatal(err)
	}
	if &last[0] != &row[0] {
		t.Error("passthrough copied the row")
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if err := mg.Add(0, row); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("passthrough allocates %v times per row", allocs)
	}
	if n := mustFinish(t, mg); n != 1002 {
		t.Errorf("Finish = %d, want 1002", n)
	}
}

func TestHiddenColumnsAreStripped(t *testing.T) {
	rd := rowDesc(t, col{"a", oidInt4, false}, col{"b", oidText, false}, col{"k", oidInt8, true})
	mg, s := newMerger(t, &plan.Merge{Visible: 2}, nil, rd)
	out, _ := mg.Describe(rd)
	var desc pgproto3.RowDescription
	if err := desc.Decode(out[5:]); err != nil || len(desc.Fields) != 2 {
		t.Fatalf("client RowDescription: %v, %d fields", err, len(desc.Fields))
	}
	row := binRow(t, []byte("7"), nil, binary.BigEndian.AppendUint64(nil, 9))
	if err := mg.Add(0, row); err != nil {
		t.Fatal(err)
	}
	if len(s.rows) != 1 || !equalStrings(s.rows[0], []string{"7", null}) {
		t.Fatalf("rows = %q", s.rows)
	}
	mg, err := New(&plan.Merge{Visible: 2}, nil, func([]byte) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mg.Describe(rd); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if err := mg.Add(0, row); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("stripping allocates %v times per row", allocs)
	}
}

func TestRelativePlanIsResolved(t *testing.T) {
	// SELECT * ... ORDER BY x, where x is a hidden helper named from the end.
	rd := rowDesc(t, col{"a", oidText, false}, col{"b", oidText, false}, col{"x", oidInt4, false})
	m := &plan.Merge{Visible: -1, Hidden: 1, Relative: true, OrderBy: []plan.SortKey{{Col: -1, Desc: true, NullsFirst: true}}}
	mg, s := newMerger(t, m, nil, rd)
	for i, x := range []string{"1", "3", "2"} {
		if err := mg.Add(i, dataRow(t, "a"+x, "b", x)); err != nil {
			t.Fatal(err)
		}
	}
	mustFinish(t, mg)
	if got := s.col(0); !equalStrings(got, []string{"a3", "a2", "a1"}) || len(s.rows[0]) != 2 {
		t.Errorf("rows %q", s.rows)
	}
}

func TestStreamingLimitOffsetAndDone(t *testing.T) {
	rd := rowDesc(t, col{"a", oidInt4, false})
	mg, s := newMerger(t, &plan.Merge{Visible: 1, Limit: &plan.Count{Value: 2}, Offset: &plan.Count{Value: 1}}, nil, rd)
	for i := range 5 {
		if mg.Done() {
			if i != 3 {
				t.Errorf("Done after %d rows, want 3", i)
			}
			break
		}
		if err := mg.Add(i%2, dataRow(t, strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := mustFinish(t, mg); n != 2 || !equalStrings(s.col(0), []string{"1", "2"}) {
		t.Errorf("got %d rows %q", n, s.col(0))
	}
}

func TestOrderTiesKeepShardThenArrivalOrder(t *testing.T) {
	rd := rowDesc(t, col{"k", oidInt4, false}, col{"tag", oidText, false})
	mg, s := newMerger(t, &plan.Merge{Visible: 2, OrderBy: []plan.SortKey{{Col: 0}}}, nil, rd)
	adds := []struct {
		shard int
		k     string
		tag   string
	}{{2, "1", "s2a"}, {1, "1", "s1a"}, {0, "2", "s0a"}, {1, "1", "s1b"}, {0, "1", "s0b"}, {2, "0", "s2b"}}
	for _, a := range adds {
		if err := mg.Add(a.shard, dataRow(t, a.k, a.tag)); err != nil {
			t.Fatal(err)
		}
	}
	mustFinish(t, mg)
	want := []string{"s2b", "s0b", "s1a", "s1b", "s2a", "s0a"}
	if got := s.col(1); !equalStrings(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
}

func TestOrderedLimitKeepsOnlyLimitPlusOffsetRows(t *testing.T) {
	rd := rowDesc(t, col{"k", oidInt8, true})
	m := &plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 0, Desc: true, NullsFirst: true}},
		Limit: &plan.Count{Value: 5}, Offset: &plan.Count{Value: 3}}
	mg, s := newMerger(t, m, nil, rd)
	for i := range 10000 {
		v := int64((i * 7919) % 10007)
		if err := mg.Add(i%4, binRow(t, binary.BigEndian.AppendUint64(nil, uint64(v)))); err != nil {
			t.Fatal(err)
		}
		if len(mg.rows) > 8 {
			t.Fatalf("kept %d rows, want at most 8", len(mg.rows))
		}
	}
	mustFinish(t, mg)
	var got []int64
	for _, r := range s.rows {
		got = append(got, int64(binary.BigEndian.Uint64([]byte(r[0]))))
	}
	// Values are distinct residues; the largest 8 of 0..10006 that occur.
	want := []int64{}
	seen := map[int64]bool{}
	for i := range 10000 {
		seen[int64((i*7919)%10007)] = true
	}
	for v := int64(10006); len(want) < 8; v-- {
		if seen[v] {
			want = append(want, v)
		}
	}
	want = want[3:]
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func f8(f float64) []byte { return binary.BigEndian.AppendUint64(nil, math.Float64bits(f)) }

func TestFloatOrderingBinary(t *testing.T) {
	rd := rowDesc(t, col{"f", oidFloat8, true})
	mg, s := newMerger(t, &plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 0}}}, nil, rd)
	in := [][]byte{f8(math.NaN()), f8(1), nil, f8(math.Inf(-1)), f8(math.Copysign(0, -1)), f8(math.Inf(1)), f8(0), f8(-2)}
	for i, v := range in {
		if err := mg.Add(0, binRow(t, v)); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
	mustFinish(t, mg)
	var got []string
	for _, r := range s.rows {
		if r[0] == null {
			got = append(got, "NULL")
			continue
		}
		got = append(got, string(appendPGFloat(nil, math.Float64frombits(binary.BigEndian.Uint64([]byte(r[0]))), 64)))
	}
	want := []string{"-Infinity", "-2", "-0", "0", "1", "Infinity", "NaN", "NULL"} // -0 = 0: arrival order
	if !equalStrings(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
}

func TestNumericOrderingText(t *testing.T) {
	rd := rowDesc(t, col{"n", oidNumeric, false})
	mg, s := newMerger(t, &plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 0, Desc: true, NullsFirst: true}}}, nil, rd)
	for _, v := range []string{"1.50", "NaN", "-Infinity", "1.5", null, "Infinity", "-0.001", "123456789012345678901234567890", "0"} {
		if err := mg.Add(0, dataRow(t, v)); err != nil {
			t.Fatal(err)
		}
	}
	mustFinish(t, mg)
	want := []string{null, "NaN", "Infinity", "123456789012345678901234567890", "1.50", "1.5", "0", "-0.001", "-Infinity"}
	if got := s.col(0); !equalStrings(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
}

func TestAggregatesWithoutRows(t *testing.T) {
	rd := rowDesc(t, col{"count", oidInt8, false}, col{"sum", oidInt8, false}, col{"avg", oidNumeric, false},
		col{"min", oidText, false}, col{"count", oidInt8, false})
	m := &plan.Merge{Visible: 4, Grouped: true, Aggregates: []plan.Aggregate{{Col: 0, Func: plan.AggCount},
		{Col: 1, Func: plan.AggSum}, {Col: 2, Func: plan.AggAvg, CountCol: 4}, {Col: 3, Func: plan.AggMin}}}
	mg, s := newMerger(t, m, nil, rd)
	if n := mustFinish(t, mg); n != 1 || !equalStrings(s.rows[0], []string{"0", null, null, null}) {
		t.Errorf("got %d rows %q", n, s.rows)
	}
}

func TestGroupedCombinesAcrossShards(t *testing.T) {
	rd := rowDesc(t, col{"g", oidNumeric, false}, col{"count", oidInt8, false}, col{"avg", oidInt8, false},
		col{"max", oidDate, false}, col{"ok", oidBool, false}, col{"sum", oidNumeric, false}, col{"count", oidInt8, false})
	m := &plan.Merge{Visible: 6, Grouped: true, GroupBy: []int{0}, OrderBy: []plan.SortKey{{Col: 0}},
		Aggregates: []plan.Aggregate{{Col: 1, Func: plan.AggCount}, {Col: 2, Func: plan.AggAvg, CountCol: 6},
			{Col: 3, Func: plan.AggMax}, {Col: 4, Func: plan.AggBoolAnd}, {Col: 5, Func: plan.AggSum}}}
	mg, s := newMerger(t, m, nil, rd)
	rows := [][]string{
		{"1.0", "2", "3", "2020-01-01", "t", "1.5", "2"},
		{"2", "1", "7", "1999-12-31", "f", "-2.25", "1"},
		{"1.00", "3", "2", "2021-06-01", "t", "0.125", "3"}, // same group as 1.0
		{null, "1", null, null, null, null, "0"},
	}
	for i, r := range rows {
		if err := mg.Add(i%3, dataRow(t, r...)); err != nil {
			t.Fatal(err)
		}
	}
	mustFinish(t, mg)
	want := [][]string{
		{"1.0", "5", "1.00000000000000000000", "2021-06-01", "t", "1.625"},
		{"2", "1", "7.0000000000000000", "1999-12-31", "f", "-2.25"},
		{null, "1", null, null, null, null},
	}
	if len(s.rows) != len(want) {
		t.Fatalf("rows %q", s.rows)
	}
	for i := range want {
		if !equalStrings(s.rows[i], want[i]) {
			t.Errorf("row %d = %q, want %q", i, s.rows[i], want[i])
		}
	}
}

func TestHavingAndDistinct(t *testing.T) {
	rd := rowDesc(t, col{"g", oidText, false}, col{"count", oidInt8, false})
	m := &plan.Merge{Visible: 1, Grouped: true, Distinct: true, GroupBy: []int{0},
		Aggregates: []plan.Aggregate{{Col: 1, Func: plan.AggCount}},
		Having:     []plan.Filter{{Col: 1, Op: ">", Value: "2.5"}}}
	mg, s := newMerger(t, m, nil, rd)
	for i, r := range [][]string{{"a", "2"}, {"b", "1"}, {"a", "1"}, {"b", "1"}, {"c", "9"}} {
		if err := mg.Add(i%2, dataRow(t, r...)); err != nil {
			t.Fatal(err)
		}
	}
	mustFinish(t, mg)
	if got := s.col(0); !equalStrings(got, []string{"a", "c"}) {
		t.Errorf("groups %q, want [a c]", got)
	}
}

func TestLimitParameterForms(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    plan.Params
		want int64
	}{
		{"text", plan.Params{Values: [][]byte{[]byte(" 5 ")}}, 5},
		{"binary-int8", plan.Params{Values: [][]byte{binary.BigEndian.AppendUint64(nil, 4)}, Formats: []int16{1}}, 4},
		{"binary-int4", plan.Params{Values: [][]byte{binary.BigEndian.AppendUint32(nil, 3)}, Formats: []int16{1}, OIDs: []uint32{oidInt4}}, 3},
		{"binary-int2", plan.Params{Values: [][]byte{{0, 2}}, Formats: []int16{1}}, 2},
		{"numeric-text-rounds-away", plan.Params{Values: [][]byte{[]byte("2.5")}, OIDs: []uint32{oidNumeric}}, 3},
		{"float8-binary-rounds-even", plan.Params{Values: [][]byte{f8(2.5)}, Formats: []int16{1}, OIDs: []uint32{oidFloat8}}, 2},
		{"float8-text", plan.Params{Values: [][]byte{[]byte("3.5")}, OIDs: []uint32{oidFloat8}}, 4},
		{"null-is-no-limit", plan.Params{Values: [][]byte{nil}}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveCount(&plan.Count{Param: 1}, &tc.p, true)
			if err != nil || got != tc.want {
				t.Errorf("got %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func wantCode(t *testing.T, err error, code, msg string) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v is not a *wire.Error (want %s)", err, code)
	}
	if we.Code != code || (msg != "" && we.Message != msg) {
		t.Errorf("got %s %q, want %s %q", we.Code, we.Message, code, msg)
	}
}

func TestErrors(t *testing.T) {
	emit := func([]byte) error { return nil }
	_, err := New(&plan.Merge{Limit: &plan.Count{Value: -1}}, nil, emit)
	wantCode(t, err, "2201W", "LIMIT must not be negative")
	_, err = New(&plan.Merge{Offset: &plan.Count{Param: 1}}, &plan.Params{Values: [][]byte{[]byte("-2")}}, emit)
	wantCode(t, err, "2201X", "OFFSET must not be negative")
	_, err = New(&plan.Merge{Limit: &plan.Count{Param: 2}}, &plan.Params{Values: [][]byte{[]byte("1")}}, emit)
	wantCode(t, err, "42P02", "there is no parameter $2")
	_, err = New(&plan.Merge{Limit: &plan.Count{Param: 1}}, &plan.Params{Values: [][]byte{[]byte("ten")}}, emit)
	wantCode(t, err, "22P02", `invalid input syntax for type bigint: "ten"`)

	describe := func(m *plan.Merge, cols ...col) error {
		mg, err := New(m, nil, emit)
		if err != nil {
			return err
		}
		_, err = mg.Describe(rowDesc(t, cols...))
		return err
	}
	err = describe(&plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 0}}}, col{"i", oidInterval, false})
	wantCode(t, err, "0A000", "cannot merge ORDER BY on column of type interval across shards")
	err = describe(&plan.Merge{Visible: 1, Grouped: true, Aggregates: []plan.Aggregate{{Col: 0, Func: plan.AggSum}}}, col{"s", oidText, false})
	wantCode(t, err, "0A000", "cannot merge sum on column of type text across shards")
	err = describe(&plan.Merge{Visible: 1, Grouped: true, Aggregates: []plan.Aggregate{{Col: 0, Func: plan.AggMin}}}, col{"j", 3802, false})
	wantCode(t, err, "0A000", "cannot merge min on column of type jsonb across shards")
	err = describe(&plan.Merge{Visible: 1, Grouped: true, Aggregates: []plan.Aggregate{{Col: 0, Func: plan.AggCount}},
		Having: []plan.Filter{{Col: 0, Op: ">", Value: "many"}}}, col{"c", oidInt8, false})
	wantCode(t, err, "22P02", `invalid input syntax for type bigint: "many"`)
	err = describe(&plan.Merge{Visible: 1, Grouped: true, Aggregates: []plan.Aggregate{{Col: 0, Func: plan.AggMax}},
		Having: []plan.Filter{{Col: 0, Op: ">", Value: "2020-01-01 10:00"}}}, col{"t", oidTimestamptz, false})
	wantCode(t, err, "0A000", "")
	err = describe(&plan.Merge{Visible: 3}, col{"a", oidInt4, false})
	wantCode(t, err, wire.CodeInternalError, "")
	err = describe(&plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 4}}}, col{"a", oidInt4, false})
	wantCode(t, err, wire.CodeInternalError, "")

	mg, err := New(&plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 0}}}, nil, emit)
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, mg.Add(0, dataRow(t, "1")), wire.CodeInternalError, "merge: Add before Describe")
	if _, err := mg.Describe(rowDesc(t, col{"a", oidInt4, false})); err != nil {
		t.Fatal(err)
	}
	wantCode(t, mg.Add(0, dataRow(t, "1", "2")), wire.CodeInternalError, "")
	wantCode(t, mg.Add(1, []byte("D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x09x")), wire.CodeInternalError, "")
	wantCode(t, mg.Add(0, dataRow(t, "x")), wire.CodeInternalError, "")
}

func TestOverflow(t *testing.T) {
	rd := rowDesc(t, col{"count", oidInt8, false}, col{"sum", oidFloat8, true})
	m := &plan.Merge{Visible: 2, Grouped: true, Aggregates: []plan.Aggregate{{Col: 0, Func: plan.AggCount}, {Col: 1, Func: plan.AggSum}}}
	mg, _ := newMerger(t, m, nil, rd)
	if err := mg.Add(0, binRow(t, []byte(strconv.FormatInt(math.MaxInt64, 10)), f8(1))); err != nil {
		t.Fatal(err)
	}
	wantCode(t, mg.Add(1, binRow(t, []byte("1"), f8(1))), "22003", "bigint out of range")

	mg, _ = newMerger(t, m, nil, rd)
	if err := mg.Add(0, binRow(t, []byte("1"), f8(math.MaxFloat64))); err != nil {
		t.Fatal(err)
	}
	wantCode(t, mg.Add(1, binRow(t, []byte("1"), f8(math.MaxFloat64))), "22003", "value out of range: overflow")
}

func TestEmitErrorIsWrapped(t *testing.T) {
	boom := errors.New("client gone")
	mg, err := New(nil, nil, func([]byte) error { return boom })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mg.Describe(rowDesc(t, col{"a", oidInt4, false})); err != nil {
		t.Fatal(err)
	}
	if err := mg.Add(0, dataRow(t, "1")); !errors.Is(err, boom) {
		t.Errorf("Add error %v does not wrap the emit error", err)
	}
}

func TestAvgScale(t *testing.T) {
	for _, tc := range []struct {
		sum   string
		count int64
		want  string
	}{
		{"5", 2, "2.5000000000000000"},
		{"0", 3, "0.00000000000000000000"},
		{"1.25", 2, "0.62500000000000000000"},
		{"-7", 3, "-2.3333333333333333"},
		{"20000", 3, "6666.6666666666666667"},
		{"-0.0000000001", 3, "-0.0000000000333333333333333333"},
		{"NaN", 3, "NaN"},
		{"-Infinity", 3, "-Infinity"},
	} {
		var s, q decimal
		if err := parseDecimal([]byte(tc.sum), &s); err != nil {
			t.Fatal(err)
		}
		q.divAvg(&s, tc.count)
		if got := q.String(); got != tc.want {
			t.Errorf("%s / %d = %s, want %s", tc.sum, tc.count, got, tc.want)
		}
	}
}

var tenth = 0.1 // a variable, so 0.1 + 0.2 is computed in float64, not exactly

func TestFloatText(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		bits int
		want string
	}{
		{1e15, 64, "1e+15"}, {123456789012345, 64, "123456789012345"}, {1e-4, 64, "0.0001"}, {1e-5, 64, "1e-05"},
		{math.Copysign(0, -1), 64, "-0"}, {math.NaN(), 64, "NaN"}, {math.Inf(-1), 64, "-Infinity"},
		{tenth + 0.2, 64, "0.30000000000000004"}, {-7.25e21, 64, "-7.249999999999999e+21"},
		{1e6, 32, "1e+06"}, {1234567, 32, "1.234567e+06"}, {float64(float32(0.1)), 32, "0.1"},
	} {
		if got := string(appendPGFloat(nil, tc.f, tc.bits)); got != tc.want {
			t.Errorf("%v (float%d) = %s, want %s", tc.f, tc.bits/8, got, tc.want)
		}
	}
}

// FuzzAdd feeds arbitrary bytes as DataRows to mergers that decode every
// supported type in both formats: bad input must give errors, not panics.
func FuzzAdd(f *testing.F) {
	f.Add([]byte("D\x00\x00\x00\x0e\x00\x01\x00\x00\x00\x041.50"), uint8(0))
	f.Add(binRow(f, []byte{0, 1, 0, 0, 0, 0, 0, 2, 0, 7}), uint8(1))
	f.Add(dataRow(f, "2024-01-01 10:00:00+05:30"), uint8(2))
	types := []uint32{oidInt2, oidInt4, oidInt8, oidOID, oidFloat4, oidFloat8, oidNumeric, oidText, oidBpchar,
		oidBytea, oidUUID, oidBool, oidDate, oidTime, oidTimestamp, oidTimestamptz}
	f.Fuzz(func(t *testing.T, row []byte, pick uint8) {
		typ := types[int(pick>>1)%len(types)]
		rd := rowDesc(t, col{"v", typ, pick&1 == 1})
		for _, m := range []*plan.Merge{
			{Visible: 1, OrderBy: []plan.SortKey{{Col: 0}}},
			{Visible: 1, Distinct: true},
			{Visible: 1, Grouped: true, Aggregates: []plan.Aggregate{{Col: 0, Func: plan.AggMax}}},
		} {
			mg, err := New(m, nil, discard)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := mg.Describe(rd); err != nil {
				t.Fatal(err)
			}
			_ = mg.Add(0, row)
			_ = mg.Add(1, row)
			_, _ = mg.Finish()
		}
	})
}
