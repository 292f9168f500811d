package router

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/shardproxy/shardproxy/plan"
)

// Describe renders a plan as one stable line: kind, command, table,
// keys, merge spec, shard SQL, error. Golden files and the
// shardproxy.explain NOTICE use it, so keep the format stable.
//
//	keyed SELECT table=pgbench_accounts keys=[aid=$1]
//	fan-out SELECT table=users merge{visible=2 group=[#1] aggs=[count(#0)] order=[#0 desc nulls first] limit=10} shard_sql="..."
//	refused SELECT error=0A000 "window function across shards ..." hint="..."
func Describe(s *plan.Statement) string {
	if s == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString(s.Kind.String())
	if s.Command != "" {
		b.WriteByte(' ')
		b.WriteString(s.Command)
	}
	if s.Table != "" {
		b.WriteString(" table=")
		b.WriteString(s.Table)
	}
	if s.Write {
		b.WriteString(" write")
	}
	if s.NoTxBlock {
		b.WriteString(" no-tx-block")
	}
	if len(s.Keys) > 0 {
		b.WriteString(" keys=")
		writeKeys(&b, s.Keys)
	}
	if s.Control != nil {
		b.WriteByte(' ')
		writeControl(&b, s.Control)
	}
	if s.Copy != nil {
		b.WriteByte(' ')
		writeCopy(&b, s.Copy)
	}
	if s.Insert != nil {
		b.WriteString(" rows=")
		writeKeys(&b, s.Insert.Rows)
		if s.Insert.Render != nil && len(s.Insert.Rows) > 1 {
			// Show the split of every row but the first: it exercises
			// the parameter renumbering.
			rows := make([]int, 0, len(s.Insert.Rows)-1)
			for i := 1; i < len(s.Insert.Rows); i++ {
				rows = append(rows, i)
			}
			sql, params := s.Insert.Render(rows)
			fmt.Fprintf(&b, " split(rows 2..%d)=%s", len(s.Insert.Rows), strconv.Quote(sql))
			if len(params) > 0 {
				b.WriteString(" params=")
				writeInts(&b, params, "$")
			}
		}
	}
	if s.Kind == plan.FanOut || s.Merge != nil {
		b.WriteByte(' ')
		writeMerge(&b, s.Merge)
	}
	if s.ShardSQL != "" {
		b.WriteString(" shard_sql=")
		b.WriteString(strconv.Quote(s.ShardSQL))
	}
	if h := s.Hints; h != (plan.Hints{}) {
		b.WriteString(" hints{")
		var parts []string
		if h.Shard != "" {
			parts = append(parts, "shard="+h.Shard)
		}
		if h.Target != "" {
			parts = append(parts, "target="+h.Target)
		}
		if h.MaxReplicaLag != "" {
			parts = append(parts, "max_replica_lag="+h.MaxReplicaLag)
		}
		if h.Explain {
			parts = append(parts, "explain=on")
		}
		b.WriteString(strings.Join(parts, " "))
		b.WriteByte('}')
	}
	if s.CrossShard {
		b.WriteString(" cross-shard")
	}
	if s.Err != nil {
		fmt.Fprintf(&b, " error=%s %s", s.Err.Code, strconv.Quote(s.Err.Message))
		if s.Err.Hint != "" {
			fmt.Fprintf(&b, " hint=%s", strconv.Quote(s.Err.Hint))
		}
	}
	return b.String()
}

// KeyString renders one key: aid=$1, aid='42', aid=any($1), aid=NULL.
func KeyString(k plan.Key) string {
	var v string
	switch {
	case k.Param > 0:
		v = "$" + strconv.Itoa(k.Param)
	case k.ArrayParam > 0:
		v = "any($" + strconv.Itoa(k.ArrayParam) + ")"
	case k.Null:
		v = "NULL"
	default:
		v = "'" + strings.ReplaceAll(k.Value, "'", "''") + "'"
	}
	return k.Column + "=" + v
}

func writeKeys(b *strings.Builder, keys []plan.Key) {
	b.WriteByte('[')
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(KeyString(k))
	}
	b.WriteByte(']')
}

func writeInts(b *strings.Builder, xs []int, prefix string) {
	b.WriteByte('[')
	for i, x := range xs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(prefix)
		b.WriteString(strconv.Itoa(x))
	}
	b.WriteByte(']')
}

var controlNames = map[plan.ControlKind]string{
	plan.Begin: "begin", plan.Commit: "commit", plan.Rollback: "rollback", plan.Savepoint: "savepoint",
	plan.Release: "release", plan.RollbackTo: "rollback-to", plan.SetProxy: "set-proxy",
	plan.ResetProxy: "reset-proxy", plan.ShowProxy: "show-proxy", plan.Session: "session",
}

func writeControl(b *strings.Builder, c *plan.Control) {
	b.WriteString("control{")
	b.WriteString(controlNames[c.Kind])
	if c.Name != "" {
		b.WriteString(" name=")
		b.WriteString(c.Name)
	}
	if c.Value != "" || c.Kind == plan.SetProxy {
		b.WriteString(" value=")
		b.WriteString(strconv.Quote(c.Value))
	}
	if c.Local {
		b.WriteString(" local")
	}
	if c.Chain {
		b.WriteString(" chain")
	}
	b.WriteByte('}')
}

func writeCopy(b *strings.Builder, c *plan.Copy) {
	fmt.Fprintf(b, "copy{key=%s", c.KeyColumn)
	if c.Columns != nil {
		fmt.Fprintf(b, " cols=[%s]", strings.Join(c.Columns, ","))
	}
	fmt.Fprintf(b, " format=%s", c.Format)
	for _, o := range []struct{ n, v string }{{"delimiter", c.Delimiter}, {"quote", c.Quote}, {"escape", c.Escape}} {
		if o.v != "" {
			fmt.Fprintf(b, " %s=%s", o.n, strconv.Quote(o.v))
		}
	}
	if c.Null != "" {
		fmt.Fprintf(b, " null=%s", strconv.Quote(c.Null))
	}
	if c.Header {
		b.WriteString(" header")
	}
	b.WriteByte('}')
}

func col(c int) string { return "#" + strconv.Itoa(c) }

func writeMerge(b *strings.Builder, m *plan.Merge) {
	if m == nil {
		b.WriteString("merge=concat")
		return
	}
	b.WriteString("merge{")
	var parts []string
	if m.Relative {
		parts = append(parts, "visible=*")
	} else {
		parts = append(parts, "visible="+strconv.Itoa(m.Visible))
	}
	if m.Hidden > 0 {
		parts = append(parts, "hidden="+strconv.Itoa(m.Hidden))
	}
	if m.Grouped {
		g := make([]string, len(m.GroupBy))
		for i, c := range m.GroupBy {
			g[i] = col(c)
		}
		parts = append(parts, "group=["+strings.Join(g, " ")+"]")
	} else if len(m.GroupBy) > 0 {
		parts = append(parts, "groupby-not-grouped")
	}
	if len(m.Aggregates) > 0 {
		a := make([]string, len(m.Aggregates))
		for i, x := range m.Aggregates {
			if x.Func == plan.AggAvg {
				a[i] = fmt.Sprintf("avg(%s/%s)", col(x.Col), col(x.CountCol))
			} else {
				a[i] = fmt.Sprintf("%s(%s)", x.Func, col(x.Col))
			}
		}
		parts = append(parts, "aggs=["+strings.Join(a, " ")+"]")
	}
	if len(m.Having) > 0 {
		h := make([]string, len(m.Having))
		for i, f := range m.Having {
			switch {
			case f.Null && f.Op == "=":
				h[i] = col(f.Col) + " is null"
			case f.Null:
				h[i] = col(f.Col) + " is not null"
			default:
				h[i] = fmt.Sprintf("%s %s '%s'", col(f.Col), f.Op, strings.ReplaceAll(f.Value, "'", "''"))
			}
		}
		parts = append(parts, "having=["+strings.Join(h, ", ")+"]")
	}
	if m.Distinct {
		parts = append(parts, "distinct")
	}
	if len(m.OrderBy) > 0 {
		o := make([]string, len(m.OrderBy))
		for i, k := range m.OrderBy {
			s := col(k.Col)
			if k.Desc {
				s += " desc"
			}
			// Only show NULLS when it differs from PostgreSQL's default.
			if k.NullsFirst != k.Desc {
				if k.NullsFirst {
					s += " nulls first"
				} else {
					s += " nulls last"
				}
			}
			o[i] = s
		}
		parts = append(parts, "order=["+strings.Join(o, ", ")+"]")
	}
	if m.Limit != nil {
		parts = append(parts, "limit="+countString(m.Limit))
	}
	if m.Offset != nil {
		parts = append(parts, "offset="+countString(m.Offset))
	}
	b.WriteString(strings.Join(parts, " "))
	b.WriteByte('}')
}

func countString(c *plan.Count) string {
	switch {
	case c.All:
		return "all"
	case c.Param > 0:
		return "$" + strconv.Itoa(c.Param)
	}
	return strconv.FormatInt(c.Value, 10)
}
