package router

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"strconv"
	"strings"

	"github.com/shardproxy/shardproxy/plan"
)

// planSelect routes a SELECT (or VALUES, or a UNION of them).
func (r *Router) planSelect(node *pg_query.Node, s *pg_query.SelectStmt) *plan.Statement {
	a := newAnalysis(r)
	top := a.selectStmt(s, nil, scopeTop, "")
	st := &plan.Statement{Command: "SELECT"}
	st.Write = a.writes || hasLocking(s) || callsAny(s, writeFunctions) != ""
	rt := a.decide(st.Command, s.Op != pg_query.SetOperation_SETOP_NONE)
	switch rt.kind {
	case routeRefuse:
		return rt.err
	case routeNone:
		return r.unsharded(a, st)
	case routeOne:
		st.Kind, st.Keys, st.Table = plan.Keyed, rt.keys, rt.table
		return st
	}
	if a.writes {
		return refuse(st.Command, true, hintShard(a.sharded()[0]),
			"data-modifying WITH query across shards is not supported")
	}
	res := buildMerge(a, top, node, s, rt.kind == routeKeys)
	if res.err != nil {
		return res.err
	}
	st.Table = rt.table
	if rt.kind == routeKeys {
		st.Keys = rt.keys
		if res.merge == nil {
			// Rows of several shards only need concatenating.
			st.Kind = plan.Keyed
			return st
		}
	}
	st.Kind, st.Merge, st.ShardSQL = plan.FanOut, res.merge, res.shardSQL
	return st
}

// unsharded routes a statement that touches no sharded table.
func (r *Router) unsharded(a *analysis, st *plan.Statement) *plan.Statement {
	ref := a.first(relReference)
	if ref == nil || a.first(relOther) != nil || a.writes {
		st.Kind = plan.Default
		if a.writes && ref != nil {
			return refuse(st.Command, false,
				"Write reference tables with a statement of their own, so that every shard runs it.",
				"data-modifying WITH query on reference table %s is not supported", ref.table)
		}
		return st
	}
	st.Kind, st.Table = plan.AnyShard, ref.table
	return st
}

func hasLocking(s *pg_query.SelectStmt) bool {
	if s == nil {
		return false
	}
	return len(s.LockingClause) > 0 || hasLocking(s.Larg) || hasLocking(s.Rarg)
}

// mergeResult is how a multi-shard read is combined: merge nil means
// plain concatenation.
type mergeResult struct {
	merge    *plan.Merge
	shardSQL string
	err      *plan.Statement
}

// buildMerge plans how to combine the results of a read spread over
// several shards, rewriting the statement for the shards as needed.
func buildMerge(a *analysis, top *scope, node *pg_query.Node, s *pg_query.SelectStmt, keyed bool) mergeResult {
	b := &mergeBuilder{a: a, sc: top, s: s, m: &plan.Merge{}, star: -1, keyed: keyed}
	if s.Op != pg_query.SetOperation_SETOP_NONE {
		b.setOp()
	} else {
		b.build()
	}
	if b.err != nil {
		return mergeResult{err: b.err}
	}
	b.finish()
	if b.trivial() {
		return mergeResult{}
	}
	res := mergeResult{merge: b.m}
	if b.changed {
		sql, err := deparse(node)
		if err != nil {
			return mergeResult{err: refuse("SELECT", true, hintShard(b.keyRel()),
				"rewriting the statement for the shards failed: %v", err)}
		}
		res.shardSQL = sql
	}
	return res
}

// mergeBuilder fills a plan.Merge for one SELECT and rewrites it in
// place into the shards' statement.
type mergeBuilder struct {
	a       *analysis
	sc      *scope
	s       *pg_query.SelectStmt
	m       *plan.Merge
	err     *plan.Statement
	changed bool

	targets []*pg_query.ResTarget // the client's select list
	orig    []*pg_query.Node      // their expressions before rewriting
	star    int                   // index of the first * item, -1 if none
	keyed   bool                  // restricted to key values (not every shard)
	grouped bool
	hidden  []hiddenCol
	// avgs maps the client's spelling of avg aggregates that only exist
	// as hidden columns (rewritten to sum) to their column.
	avgs []avgHidden
}

// hiddenCol is a helper column appended to the shards' select list.
type hiddenCol struct {
	expr *pg_query.Node
	agg  bool
}

// Hidden columns get provisional numbers from hiddenBase until finish
// knows how many there are and whether the row width is known.
const hiddenBase = 1 << 20

func (b *mergeBuilder) fail(format string, args ...any) {
	if b.err == nil {
		b.err = refuse("SELECT", true, hintShard(b.keyRel()), format, args...)
	}
}

// keyRel is the sharded table the statement reads, for hints.
func (b *mergeBuilder) keyRel() *rel {
	for _, r := range b.a.sharded() {
		if r.sc.top {
			return r
		}
	}
	if sh := b.a.sharded(); len(sh) > 0 {
		return sh[0]
	}
	return nil
}

func (b *mergeBuilder) build() {
	s := b.s
	for i, t := range s.TargetList {
		rt := t.GetResTarget()
		b.targets = append(b.targets, rt)
		b.orig = append(b.orig, cloneNode(rt.Val))
		if b.star < 0 && isStar(rt.Val) {
			b.star = i
		}
	}
	if len(s.DistinctClause) > 0 && s.DistinctClause[0].GetNode() != nil {
		b.fail("DISTINCT ON across shards is not supported")
		return
	}
	if w := b.firstWindow(); w != "" {
		b.fail("window function across shards is not supported: %s", w)
		return
	}
	// Locking rows of a few keys on their shards is exact, unless a
	// LIMIT makes each shard lock rows the client will not get.
	if len(s.LockingClause) > 0 && (!b.keyed || s.LimitCount != nil || s.LimitOffset != nil) {
		b.fail("%s across shards is not supported", lockingName(s.LockingClause[0].GetLockingClause()))
		return
	}
	if s.LimitOption == pg_query.LimitOption_LIMIT_OPTION_WITH_TIES {
		b.fail("FETCH FIRST ... WITH TIES across shards is not supported")
		return
	}
	for _, g := range s.GroupClause {
		if g.GetGroupingSet() != nil {
			b.fail("GROUPING SETS, ROLLUP and CUBE across shards are not supported")
			return
		}
	}
	hasAgg := s.HavingClause != nil
	for _, t := range b.orig {
		hasAgg = hasAgg || containsAggregate(t)
	}
	for _, sb := range s.SortClause {
		hasAgg = hasAgg || containsAggregate(sb.GetSortBy().GetNode())
	}
	grouping := hasAgg || len(s.GroupClause) > 0
	shardLocal := len(s.GroupClause) > 0 && b.groupHasKey()
	b.grouped = grouping && !shardLocal
	b.m.Grouped = b.grouped
	b.m.Distinct = len(s.DistinctClause) > 0
	if b.grouped {
		if b.star >= 0 {
			b.fail("SELECT * with aggregates across shards is not supported")
			return
		}
		b.aggregates()
		b.groupBy()
		b.having()
	}
	if b.err != nil {
		return
	}
	b.orderBy()
	b.limit()
}

func isStar(n *pg_query.Node) bool {
	cr := n.GetColumnRef()
	return cr != nil && len(cr.Fields) > 0 && cr.Fields[len(cr.Fields)-1].GetAStar() != nil
}

func lockingName(lc *pg_query.LockingClause) string {
	if lc == nil {
		return "FOR UPDATE"
	}
	switch lc.Strength {
	case pg_query.LockClauseStrength_LCS_FORKEYSHARE:
		return "SELECT ... FOR KEY SHARE"
	case pg_query.LockClauseStrength_LCS_FORSHARE:
		return "SELECT ... FOR SHARE"
	case pg_query.LockClauseStrength_LCS_FORNOKEYUPDATE:
		return "SELECT ... FOR NO KEY UPDATE"
	}
	return "SELECT ... FOR UPDATE"
}

func (b *mergeBuilder) firstWindow() string {
	if len(b.s.WindowClause) > 0 {
		if w := b.s.WindowClause[0].GetWindowDef(); w != nil && w.Name != "" {
			return "WINDOW " + w.Name
		}
		return "WINDOW clause"
	}
	nodes := append([]*pg_query.Node{}, b.orig...)
	nodes = append(nodes, b.s.HavingClause)
	for _, sb := range b.s.SortClause {
		nodes = append(nodes, sb.GetSortBy().GetNode())
	}
	for _, n := range nodes {
		if fc := windowCall(n); fc != nil {
			name, _ := funcName(fc)
			return name + "() OVER (...)"
		}
	}
	return ""
}

// groupHasKey reports whether GROUP BY includes the shard key: then every
// group lives on one shard and the shards' groups are final.
func (b *mergeBuilder) groupHasKey() bool {
	for _, g := range b.s.GroupClause {
		e := b.groupExpr(g)
		if e == nil {
			continue
		}
		// A key from the nullable side of an outer join can be NULL on
		// every shard: that group would not be shard-local.
		if r := b.a.resolveKey(b.sc, stripCasts(e)); r != nil && !r.nullable {
			return true
		}
	}
	return false
}

// groupExpr resolves a GROUP BY item written as a position or an output
// name to the select-list expression it means.
func (b *mergeBuilder) groupExpr(g *pg_query.Node) *pg_query.Node {
	if pos, ok := position(g); ok {
		if pos >= 1 && pos <= len(b.orig) {
			return b.orig[pos-1]
		}
		return nil
	}
	if name, ok := bareName(g); ok {
		for i, t := range b.targets {
			if t.Name == name {
				if n, ok := bareName(b.orig[i]); ok && n == name {
					return g
				}
				if mentionsColumn(b.orig[i], name) {
					// Input or output column: see groupBy, which
					// refuses it.
					return nil
				}
				return b.orig[i]
			}
		}
	}
	return g
}

// mentionsColumn reports whether expression e refers to a column called
// name: then "GROUP BY name" with e aliased as name is ambiguous (the
// input column or the output column). An alias that names no column the
// expression reads (date_trunc('day', created_at) AS day) is taken to
// mean the output column, as it does unless the table also has a column
// of that name, which the router cannot see.
func mentionsColumn(e *pg_query.Node, name string) bool {
	found := false
	inspect(e, func(m proto.Message) bool {
		if cr, ok := m.(*pg_query.ColumnRef); ok && len(cr.Fields) > 0 {
			if s := cr.Fields[len(cr.Fields)-1].GetString_(); s != nil && s.Sval == name {
				found = true
			}
		}
		return !found
	})
	return found
}

func position(n *pg_query.Node) (int, bool) {
	c := n.GetAConst()
	if c == nil {
		return 0, false
	}
	if v, ok := c.Val.(*pg_query.A_Const_Ival); ok {
		return int(v.Ival.Ival), true
	}
	return 0, false
}

func bareName(n *pg_query.Node) (string, bool) {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) != 1 {
		return "", false
	}
	s := cr.Fields[0].GetString_()
	if s == nil {
		return "", false
	}
	return s.Sval, true
}

// aggOf returns the aggregate call of a select-list item that is an
// aggregate, allowing a cast around count (count(*)::int stays a count).
func aggOf(n *pg_query.Node) *pg_query.FuncCall {
	if fc := n.GetFuncCall(); fc != nil && isAggCall(fc) {
		return fc
	}
	if tc := n.GetTypeCast(); tc != nil && integerType(tc.TypeName) {
		if fc := tc.Arg.GetFuncCall(); fc != nil && isAggCall(fc) {
			if name, _ := funcName(fc); name == "count" {
				return fc
			}
		}
	}
	return nil
}

// integerType reports int2/int4/int8 by any of their names: a count cast
// to one of them still adds up as a count.
func integerType(t *pg_query.TypeName) bool {
	if t == nil || len(t.Names) == 0 || len(t.ArrayBounds) > 0 {
		return false
	}
	s := t.Names[len(t.Names)-1].GetString_()
	if s == nil {
		return false
	}
	switch s.Sval {
	case "int2", "int4", "int8", "smallint", "integer", "int", "bigint":
		return true
	}
	return false
}

// aggregates classifies the select list of a grouped fan-out.
func (b *mergeBuilder) aggregates() {
	for i, rt := range b.targets {
		orig := b.orig[i]
		if aggOf(orig) != nil {
			// Rewrite the shards' item (rt.Val), keep orig for matching.
			b.aggregate(i, rt, aggOf(rt.Val), orig)
			if b.err != nil {
				return
			}
			continue
		}
		if containsAggregate(orig) {
			b.fail("aggregate inside an expression across shards is not supported: %s", exprSQL(orig))
			return
		}
	}
}

// combineFunc checks that an aggregate call can be combined from the
// shards' partial results.
func (b *mergeBuilder) combineFunc(fc *pg_query.FuncCall) (plan.AggFunc, bool) {
	name, builtin := funcName(fc)
	f, ok := combinable[name]
	switch {
	case fc.AggWithinGroup:
		b.fail("ordered-set aggregate %s() across shards is not supported", name)
		return 0, false
	case !builtin || !ok:
		b.fail("aggregate %s() across shards is not supported: the proxy can only combine count, sum, min, max, avg, bool_and and bool_or", name)
		return 0, false
	case fc.AggDistinct && (f == plan.AggCount || f == plan.AggSum || f == plan.AggAvg):
		// Distinct values of the shard key never repeat across shards,
		// so per-shard distinct counts and sums add up exactly.
		if f == plan.AggAvg || len(fc.Args) != 1 || b.a.resolveKey(b.sc, fc.Args[0]) == nil {
			b.fail("%s(DISTINCT ...) across shards is not supported unless its argument is the shard key: %s", name, exprSQL(&pg_query.Node{Node: &pg_query.Node_FuncCall{FuncCall: fc}}))
			return 0, false
		}
	}
	return f, true
}

func (b *mergeBuilder) aggregate(col int, rt *pg_query.ResTarget, fc *pg_query.FuncCall, orig *pg_query.Node) {
	f, ok := b.combineFunc(fc)
	if !ok {
		return
	}
	agg := plan.Aggregate{Col: col, Func: f}
	if f == plan.AggAvg {
		// Shards return sum(x) in place of avg(x), under the same name,
		// plus a hidden count(x); the executor divides.
		if rt.Name == "" {
			rt.Name = outputName(&pg_query.ResTarget{Val: orig})
		}
		fc.Funcname = []*pg_query.Node{pg_query.MakeStrNode("sum")}
		agg.CountCol = b.addHidden(countOf(fc), true)
		b.changed = true
	}
	b.m.Aggregates = append(b.m.Aggregates, agg)
}

// countOf builds count(x) with the same FILTER as an aggregate call.
func countOf(fc *pg_query.FuncCall) *pg_query.Node {
	c := &pg_query.FuncCall{
		Funcname:   []*pg_query.Node{pg_query.MakeStrNode("count")},
		Funcformat: pg_query.CoercionForm_COERCE_EXPLICIT_CALL,
		Location:   -1,
	}
	for _, a := range fc.Args {
		c.Args = append(c.Args, cloneNode(a))
	}
	if fc.AggFilter != nil {
		c.AggFilter = cloneNode(fc.AggFilter)
	}
	return &pg_query.Node{Node: &pg_query.Node_FuncCall{FuncCall: c}}
}

// aggCol returns the column holding an aggregate, adding hidden columns
// for aggregates that the select list does not show.
func (b *mergeBuilder) aggCol(n *pg_query.Node) int {
	for i, o := range b.orig {
		if equalNodes(o, n) {
			return i
		}
	}
	for j, h := range b.hidden {
		if h.agg && equalNodes(h.expr, n) {
			return hiddenBase + j
		}
	}
	for _, h := range b.avgs {
		if equalNodes(h.orig, n) {
			return h.col
		}
	}
	f, ok := b.combineFunc(aggOf(n))
	if !ok {
		return -1
	}
	shard := cloneNode(n)
	col := b.addHidden(shard, true)
	agg := plan.Aggregate{Col: col, Func: f}
	if f == plan.AggAvg {
		inner := aggOf(shard)
		agg.CountCol = b.addHidden(countOf(inner), true)
		inner.Funcname = []*pg_query.Node{pg_query.MakeStrNode("sum")}
		b.avgs = append(b.avgs, avgHidden{orig: n, col: col})
	}
	b.m.Aggregates = append(b.m.Aggregates, agg)
	return col
}

type avgHidden struct {
	orig *pg_query.Node
	col  int
}

// addHidden appends a helper column to the shards' select list.
func (b *mergeBuilder) addHidden(expr *pg_query.Node, agg bool) int {
	b.hidden = append(b.hidden, hiddenCol{expr: expr, agg: agg})
	b.s.TargetList = append(b.s.TargetList, &pg_query.Node{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{Val: expr, Location: -1}}})
	b.changed = true
	return hiddenBase + len(b.hidden) - 1
}

// groupBy maps GROUP BY items to columns.
func (b *mergeBuilder) groupBy() {
	for _, g := range b.s.GroupClause {
		col := -1
		if pos, ok := position(g); ok {
			if pos < 1 || pos > len(b.orig) || aggOf(b.orig[pos-1]) != nil {
				b.fail("GROUP BY position %d across shards is not supported", pos)
				return
			}
			col = pos - 1
		}
		if col < 0 {
			for i, o := range b.orig {
				if aggOf(o) == nil && equalNodes(o, g) {
					col = i
					break
				}
			}
		}
		if col < 0 {
			// PostgreSQL prefers an input column of that name over an
			// output column; the router cannot see the table's columns,
			// so a name that is also an output alias of something else
			// is ambiguous here: refused rather than guessed.
			if name, ok := bareName(g); ok {
				for i, t := range b.targets {
					if t.Name == name && !mentionsColumn(b.orig[i], name) && aggOf(b.orig[i]) == nil {
						col = i
						break
					}
					if t.Name == name {
						b.fail("GROUP BY %s across shards is ambiguous: it names an output column and may also name an input column; GROUP BY the expression or its position instead", name)
						return
					}
				}
			}
		}
		if col < 0 {
			col = b.addHidden(cloneNode(g), false)
		}
		b.m.GroupBy = append(b.m.GroupBy, col)
	}
}

// having moves aggregate conditions to the executor and keeps group-key
// conditions in the shards' HAVING.
func (b *mergeBuilder) having() {
	if b.s.HavingClause == nil {
		return
	}
	var keep []*pg_query.Node
	for _, c := range conjuncts(b.s.HavingClause) {
		if !containsAggregate(c) {
			keep = append(keep, c)
			continue
		}
		if hasParams(c) {
			b.fail("HAVING condition with a parameter across shards is not supported: %s", exprSQL(c))
			return
		}
		f, ok := b.filter(c)
		if !ok {
			if b.err == nil {
				b.fail("HAVING condition across shards is not supported: %s (only aggregate comparisons with constants, AND-ed, can be merged)", exprSQL(c))
			}
			return
		}
		b.m.Having = append(b.m.Having, f)
	}
	b.s.HavingClause = andOf(keep)
	b.changed = true
}

var flipped = map[string]string{"=": "=", "<>": "<>", "!=": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}

func (b *mergeBuilder) filter(c *pg_query.Node) (plan.Filter, bool) {
	switch v := c.GetNode().(type) {
	case *pg_query.Node_AExpr:
		e := v.AExpr
		op := opName(e)
		if e.Kind != pg_query.A_Expr_Kind_AEXPR_OP || flipped[op] == "" {
			return plan.Filter{}, false
		}
		if op == "!=" {
			op = "<>"
		}
		aggSide, constSide := e.Lexpr, e.Rexpr
		if aggOf(aggSide) == nil {
			aggSide, constSide, op = e.Rexpr, e.Lexpr, flipped[op]
		}
		if aggOf(aggSide) == nil {
			return plan.Filter{}, false
		}
		text, null, ok := constText(constSide)
		if !ok || null {
			return plan.Filter{}, false
		}
		col := b.aggCol(aggSide)
		if col < 0 {
			return plan.Filter{}, false
		}
		return plan.Filter{Col: col, Op: op, Value: text}, true
	case *pg_query.Node_NullTest:
		if aggOf(v.NullTest.Arg) == nil {
			return plan.Filter{}, false
		}
		col := b.aggCol(v.NullTest.Arg)
		if col < 0 {
			return plan.Filter{}, false
		}
		op := "="
		if v.NullTest.Nulltesttype == pg_query.NullTestType_IS_NOT_NULL {
			op = "<>"
		}
		return plan.Filter{Col: col, Op: op, Null: true}, true
	case *pg_query.Node_FuncCall:
		// HAVING bool_or(x): a boolean aggregate on its own.
		if name, _ := funcName(v.FuncCall); name != "bool_and" && name != "bool_or" && name != "every" {
			return plan.Filter{}, false
		}
		col := b.aggCol(c)
		if col < 0 {
			return plan.Filter{}, false
		}
		return plan.Filter{Col: col, Op: "=", Value: "true"}, true
	}
	return plan.Filter{}, false
}

// orderBy maps ORDER BY items to columns, adding hidden ones for sort
// expressions the client does not select.
func (b *mergeBuilder) orderBy() {
	for _, n := range b.s.SortClause {
		sb := n.GetSortBy()
		if sb.GetNode().GetCollateClause() != nil {
			b.fail("ORDER BY ... COLLATE across shards is not supported: the proxy merges text in byte order")
			return
		}
		key := plan.SortKey{}
		switch sb.SortbyDir {
		case pg_query.SortByDir_SORTBY_DESC:
			key.Desc = true
		case pg_query.SortByDir_SORTBY_USING:
			op := ""
			if names := strs(sb.UseOp); len(names) > 0 {
				op = names[len(names)-1]
			}
			switch op {
			case "<", "~<~":
			case ">", "~>~":
				key.Desc = true
			default:
				b.fail("ORDER BY ... USING %s across shards is not supported", op)
				return
			}
		}
		switch sb.SortbyNulls {
		case pg_query.SortByNulls_SORTBY_NULLS_FIRST:
			key.NullsFirst = true
		case pg_query.SortByNulls_SORTBY_NULLS_LAST:
			key.NullsFirst = false
		default:
			key.NullsFirst = key.Desc // PostgreSQL: NULLs sort as larger than any value
		}
		key.Col = b.sortCol(sb.Node)
		if b.err != nil {
			return
		}
		b.m.OrderBy = append(b.m.OrderBy, key)
	}
}

func (b *mergeBuilder) known(i int) bool { return b.star < 0 || i < b.star }

func (b *mergeBuilder) sortCol(e *pg_query.Node) int {
	if pos, ok := position(e); ok {
		// A position counts output columns, * expanded: the same index
		// in the shards' rows since helpers only go at the end.
		if pos < 1 || (b.star < 0 && pos > len(b.targets)) {
			b.fail("ORDER BY position %d is not in the select list", pos)
			return 0
		}
		return pos - 1
	}
	if name, ok := bareName(e); ok {
		for i, t := range b.targets {
			if b.known(i) && outputName(t) == name && (t.Name != "" || !isStar(b.orig[i])) {
				return i
			}
		}
	}
	for i, o := range b.orig {
		if b.known(i) && equalNodes(o, e) {
			return i
		}
	}
	if b.grouped {
		if aggOf(e) != nil {
			return b.aggCol(e)
		}
		if containsAggregate(e) {
			b.fail("ORDER BY with an aggregate inside an expression across shards is not supported: %s", exprSQL(e))
			return 0
		}
		for j, h := range b.hidden {
			if !h.agg && equalNodes(h.expr, e) {
				return hiddenBase + j
			}
		}
	}
	return b.addHidden(cloneNode(e), false)
}

// limit records LIMIT/OFFSET for the executor and asks each shard for
// enough rows: LIMIT limit+offset without OFFSET, or every row when
// groups are combined after the shards return them.
func (b *mergeBuilder) limit() {
	s := b.s
	lim, ok := parseCount(s.LimitCount)
	if !ok {
		b.fail("LIMIT expression across shards is not supported: %s (use a constant or a parameter)", exprSQL(s.LimitCount))
		return
	}
	off, ok := parseCount(s.LimitOffset)
	if !ok {
		b.fail("OFFSET expression across shards is not supported: %s (use a constant or a parameter)", exprSQL(s.LimitOffset))
		return
	}
	if off != nil && off.Param == 0 && (off.All || off.Value == 0) {
		off = nil // OFFSET 0 / OFFSET NULL skip nothing
	}
	b.m.Limit, b.m.Offset = lim, off
	var keep []int // parameters the shards' text must still mention
	for _, c := range []*plan.Count{lim, off} {
		if c != nil && c.Param > 0 {
			keep = append(keep, c.Param)
		}
	}
	switch {
	case b.grouped:
		if lim == nil && off == nil {
			return
		}
		s.LimitCount, s.LimitOffset = nil, keepParams(keep)
		s.LimitOption = pg_query.LimitOption_LIMIT_OPTION_DEFAULT
		b.changed = true
	case off == nil:
		// LIMIT n alone is already right for each shard.
	case lim == nil || lim.All:
		s.LimitCount, s.LimitOffset = nil, keepParams(keep)
		s.LimitOption = pg_query.LimitOption_LIMIT_OPTION_DEFAULT
		b.changed = true
	case lim.Param == 0 && off.Param == 0 && lim.Value <= 1<<62 && off.Value <= 1<<62:
		s.LimitCount, s.LimitOffset = constInt(lim.Value+off.Value), nil
		s.LimitOption = pg_query.LimitOption_LIMIT_OPTION_COUNT
		b.changed = true
	default:
		s.LimitCount, s.LimitOffset = binOp("+", countExpr(lim), countExpr(off)), nil
		s.LimitOption = pg_query.LimitOption_LIMIT_OPTION_COUNT
		b.changed = true
	}
}

func countExpr(c *plan.Count) *pg_query.Node {
	if c.Param > 0 {
		return castBigint(paramNode(c.Param))
	}
	return constInt(c.Value)
}

// keepParams returns an OFFSET that skips nothing (0 or NULL) but still
// mentions the parameters the original LIMIT/OFFSET used: the shards'
// statement must take the client's parameters, all with their types.
func keepParams(params []int) *pg_query.Node {
	var e *pg_query.Node
	for _, p := range params {
		term := binOp("*", constInt(0), castBigint(paramNode(p)))
		if e == nil {
			e = term
		} else {
			e = binOp("+", e, term)
		}
	}
	return e
}

// parseCount reads a LIMIT or OFFSET value; ok is false for expressions.
func parseCount(n *pg_query.Node) (*plan.Count, bool) {
	if n == nil {
		return nil, true
	}
	inner := stripCasts(n)
	if p := inner.GetParamRef(); p != nil {
		return &plan.Count{Param: int(p.Number)}, true
	}
	c := inner.GetAConst()
	if c == nil {
		return nil, false
	}
	if c.Isnull {
		return &plan.Count{All: true}, true
	}
	if v, ok := c.Val.(*pg_query.A_Const_Ival); ok {
		return &plan.Count{Value: int64(v.Ival.Ival)}, true
	}
	// LIMIT '15': drivers that interpolate parameters client-side quote
	// every value; PostgreSQL reads the string as a bigint.
	if v, ok := c.Val.(*pg_query.A_Const_Sval); ok {
		if n, err := strconv.ParseInt(strings.TrimSpace(v.Sval.Sval), 10, 64); err == nil {
			return &plan.Count{Value: n}, true
		}
	}
	return nil, false
}

// setOp plans UNION [ALL] over shards: the union of every shard's rows
// is the union of the branches' rows when each branch returns rows of
// its sharded tables as they are.
func (b *mergeBuilder) setOp() {
	s := b.s
	distinct, ok := b.checkSetOp(s, true, true)
	if !ok {
		return
	}
	first := s
	for first.Op != pg_query.SetOperation_SETOP_NONE {
		first = first.Larg
	}
	for i, t := range first.TargetList {
		rt := t.GetResTarget()
		b.targets = append(b.targets, rt)
		b.orig = append(b.orig, rt.Val)
		if b.star < 0 && isStar(rt.Val) {
			b.star = i
		}
	}
	b.m.Distinct = distinct
	for _, n := range s.SortClause {
		sb := n.GetSortBy()
		key := plan.SortKey{Desc: sb.SortbyDir == pg_query.SortByDir_SORTBY_DESC}
		key.NullsFirst = key.Desc
		switch sb.SortbyNulls {
		case pg_query.SortByNulls_SORTBY_NULLS_FIRST:
			key.NullsFirst = true
		case pg_query.SortByNulls_SORTBY_NULLS_LAST:
			key.NullsFirst = false
		}
		col := -1
		if pos, ok := position(sb.Node); ok && pos >= 1 {
			col = pos - 1
		} else if name, ok := bareName(sb.Node); ok {
			for i, t := range b.targets {
				if b.known(i) && outputName(t) == name {
					col = i
					break
				}
			}
		}
		if col < 0 || sb.SortbyDir == pg_query.SortByDir_SORTBY_USING {
			b.fail("ORDER BY of a UNION across shards is not supported unless it names output columns: %s", exprSQL(sb.Node))
			return
		}
		key.Col = col
		b.m.OrderBy = append(b.m.OrderBy, key)
	}
	b.limit()
}

// checkSetOp verifies a UNION tree; distinct reports whether the result
// is deduplicated as a whole. covered says a UNION above removes
// duplicates from everything below anyway.
func (b *mergeBuilder) checkSetOp(s *pg_query.SelectStmt, root, covered bool) (distinct, ok bool) {
	if s.Op == pg_query.SetOperation_SETOP_NONE {
		if !rowLocal(s) || len(s.SortClause) > 0 || len(s.LockingClause) > 0 {
			b.fail("UNION across shards is not supported when a branch aggregates, sorts, limits or removes duplicates")
			return false, false
		}
		if !b.fromHasSharded(s.FromClause) {
			b.fail("UNION across shards is not supported when a branch reads no sharded table: every shard would return its rows")
			return false, false
		}
		return false, true
	}
	switch s.Op {
	case pg_query.SetOperation_SETOP_INTERSECT:
		b.fail("INTERSECT across shards is not supported")
		return false, false
	case pg_query.SetOperation_SETOP_EXCEPT:
		b.fail("EXCEPT across shards is not supported")
		return false, false
	}
	if !covered && !s.All {
		b.fail("UNION inside UNION ALL across shards is not supported")
		return false, false
	}
	if !root && (len(s.SortClause) > 0 || s.LimitCount != nil || s.LimitOffset != nil) {
		b.fail("UNION across shards is not supported when a branch sorts or limits")
		return false, false
	}
	// Below a UNION (distinct) any mix of UNION and UNION ALL ends up
	// deduplicated, so only the top's flavour matters.
	if root {
		covered = !s.All
	}
	if _, ok := b.checkSetOp(s.Larg, false, covered); !ok {
		return false, false
	}
	if _, ok := b.checkSetOp(s.Rarg, false, covered); !ok {
		return false, false
	}
	return !s.All, true
}

// fromHasSharded reports whether a FROM list reads a sharded table
// directly (not through a subquery).
func (b *mergeBuilder) fromHasSharded(from []*pg_query.Node) bool {
	for _, n := range from {
		switch v := n.GetNode().(type) {
		case *pg_query.Node_RangeVar:
			if k, _ := b.a.r.classify(v.RangeVar.Schemaname, v.RangeVar.Relname); k == relSharded {
				return true
			}
		case *pg_query.Node_JoinExpr:
			if b.fromHasSharded([]*pg_query.Node{v.JoinExpr.Larg, v.JoinExpr.Rarg}) {
				return true
			}
		}
	}
	return false
}

// finish gives hidden columns their final numbers.
func (b *mergeBuilder) finish() {
	m := b.m
	m.Hidden = len(b.hidden)
	if b.star >= 0 {
		m.Relative, m.Visible = true, -1
	} else {
		m.Visible = len(b.targets)
	}
	fix := func(c int) int {
		if c < hiddenBase {
			return c
		}
		j := c - hiddenBase
		if m.Relative {
			return j - m.Hidden
		}
		return m.Visible + j
	}
	for i := range m.GroupBy {
		m.GroupBy[i] = fix(m.GroupBy[i])
	}
	for i := range m.Aggregates {
		m.Aggregates[i].Col = fix(m.Aggregates[i].Col)
		if m.Aggregates[i].Func == plan.AggAvg {
			m.Aggregates[i].CountCol = fix(m.Aggregates[i].CountCol)
		}
	}
	for i := range m.Having {
		m.Having[i].Col = fix(m.Having[i].Col)
	}
	for i := range m.OrderBy {
		m.OrderBy[i].Col = fix(m.OrderBy[i].Col)
	}
}

// trivial reports whether the rows only need concatenating.
func (b *mergeBuilder) trivial() bool {
	m := b.m
	return !b.changed && !m.Grouped && len(m.Aggregates) == 0 && len(m.Having) == 0 && !m.Distinct &&
		len(m.OrderBy) == 0 && m.Limit == nil && m.Offset == nil && m.Hidden == 0
}

func cloneNode(n *pg_query.Node) *pg_query.Node {
	if n == nil {
		return nil
	}
	return proto.Clone(n).(*pg_query.Node)
}
