package merge

import (
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/shardproxy/shardproxy/plan"
)

// Benchmarks report the cost per shard row (b.N rows through one merge).

func discard([]byte) error { return nil }

// benchRows pre-builds n distinct DataRows, so the loop measures merging only.
func benchRows(b *testing.B, n int, mk func(i int) []byte) [][]byte {
	b.Helper()
	rows := make([][]byte, n)
	for i := range rows {
		rows[i] = mk(i)
	}
	return rows
}

func runMerge(b *testing.B, m *plan.Merge, rd []byte, rows [][]byte) {
	b.Helper()
	mg, err := New(m, nil, discard)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := mg.Describe(rd); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := mg.Add(i%3, rows[i%len(rows)]); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := mg.Finish(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkPassthrough(b *testing.B) {
	rd := rowDesc(b, col{"id", oidInt4, false}, col{"name", oidText, false})
	rows := benchRows(b, 1024, func(i int) []byte { return dataRow(b, strconv.Itoa(i), "some text value") })
	runMerge(b, nil, rd, rows)
}

func BenchmarkStripHidden(b *testing.B) {
	rd := rowDesc(b, col{"id", oidInt4, false}, col{"name", oidText, false}, col{"k", oidInt8, true})
	rows := benchRows(b, 1024, func(i int) []byte {
		return binRow(b, []byte(strconv.Itoa(i)), []byte("some text value"), binary.BigEndian.AppendUint64(nil, uint64(i)))
	})
	runMerge(b, &plan.Merge{Visible: 2, Limit: &plan.Count{Value: 1 << 40}}, rd, rows)
}

func BenchmarkOrderByInt8Binary(b *testing.B) {
	rd := rowDesc(b, col{"k", oidInt8, true}, col{"name", oidText, false})
	rows := benchRows(b, 4096, func(i int) []byte {
		return binRow(b, binary.BigEndian.AppendUint64(nil, uint64(i*7919%4096)), []byte("some text value"))
	})
	runMerge(b, &plan.Merge{Visible: 2, OrderBy: []plan.SortKey{{Col: 0}}}, rd, rows)
}

func BenchmarkOrderByTextLimit100(b *testing.B) {
	rd := rowDesc(b, col{"name", oidText, false}, col{"id", oidInt4, false})
	rows := benchRows(b, 4096, func(i int) []byte {
		return dataRow(b, "name-"+strconv.Itoa(i*7919%4096), strconv.Itoa(i))
	})
	runMerge(b, &plan.Merge{Visible: 2, OrderBy: []plan.SortKey{{Col: 0, Desc: true, NullsFirst: true}}, Limit: &plan.Count{Value: 100}}, rd, rows)
}

func BenchmarkOrderByNumericText(b *testing.B) {
	rd := rowDesc(b, col{"n", oidNumeric, false})
	rows := benchRows(b, 4096, func(i int) []byte { return dataRow(b, strconv.Itoa(i*7919%4096)+".25") })
	runMerge(b, &plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 0}}}, rd, rows)
}

func BenchmarkOrderByTimestamptzText(b *testing.B) {
	rd := rowDesc(b, col{"ts", oidTimestamptz, false})
	rows := benchRows(b, 4096, func(i int) []byte {
		return dataRow(b, "2024-0"+strconv.Itoa(1+i%9)+"-1"+strconv.Itoa(i%10)+" 12:34:56.789+05:30")
	})
	runMerge(b, &plan.Merge{Visible: 1, OrderBy: []plan.SortKey{{Col: 0}}, Limit: &plan.Count{Value: 10}}, rd, rows)
}

func BenchmarkGroupByCountSumAvg(b *testing.B) {
	rd := rowDesc(b, col{"g", oidInt4, false}, col{"count", oidInt8, false}, col{"sum", oidInt8, false},
		col{"avg", oidInt8, false}, col{"count", oidInt8, false})
	rows := benchRows(b, 4096, func(i int) []byte {
		return dataRow(b, strconv.Itoa(i%100), "17", strconv.Itoa(i*31), strconv.Itoa(i*31), "17")
	})
	m := &plan.Merge{Visible: 4, Grouped: true, GroupBy: []int{0}, Aggregates: []plan.Aggregate{
		{Col: 1, Func: plan.AggCount}, {Col: 2, Func: plan.AggSum}, {Col: 3, Func: plan.AggAvg, CountCol: 4}}}
	runMerge(b, m, rd, rows)
}

func BenchmarkGroupByNumericSum(b *testing.B) {
	rd := rowDesc(b, col{"g", oidText, false}, col{"sum", oidNumeric, true})
	rows := benchRows(b, 4096, func(i int) []byte {
		var d decimal
		if err := parseDecimal([]byte(strconv.Itoa(i*7919)+".125"), &d); err != nil {
			b.Fatal(err)
		}
		return binRow(b, []byte("group-"+strconv.Itoa(i%100)), d.appendBinary(nil))
	})
	m := &plan.Merge{Visible: 2, Grouped: true, GroupBy: []int{0}, Aggregates: []plan.Aggregate{{Col: 1, Func: plan.AggSum}}}
	runMerge(b, m, rd, rows)
}

func BenchmarkDistinct(b *testing.B) {
	rd := rowDesc(b, col{"a", oidText, false}, col{"b", oidInt4, false})
	rows := benchRows(b, 4096, func(i int) []byte { return dataRow(b, "v"+strconv.Itoa(i%500), strconv.Itoa(i%7)) })
	runMerge(b, &plan.Merge{Visible: 2, Distinct: true}, rd, rows)
}
