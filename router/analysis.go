package router

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/shardproxy/shardproxy/plan"
)

// This file finds every table a statement touches and decides whether
// the rows it reads or writes can be pinned to shard-key values, and
// whether tables from different shards could ever meet in one result row.
//
// Two relations over table occurrences drive the decision:
//
//   - co-location: two sharded occurrences whose key columns are equated
//     in an AND-ed condition (WHERE, JOIN ON/USING/NATURAL, a correlated
//     subquery, `key IN (SELECT key ...)`). Rows joined that way always
//     live on the same shard, so each shard can compute its part alone.
//   - restriction: an occurrence is pinned when the rows it contributes
//     are limited to known key values: `key = 42`, `key IN (...)`,
//     `key = ANY($1)`, or an equality with a pinned occurrence that
//     limits it (an inner join in either direction, the preserved side of
//     an outer join towards the nullable side, an outer row towards a
//     correlated subquery, and back when the subquery is an AND-ed
//     EXISTS/IN condition).
//
// A statement is keyed when every sharded occurrence is pinned and they
// are all co-located (or pinned to the very same single value).

type relKind uint8

const (
	relSharded   relKind = iota + 1
	relReference         // on every shard, identical
	relOther             // an unsharded table: on the default shard only
	relCatalog           // pg_catalog / information_schema: on every server
	relDerived           // a subquery, function, VALUES or CTE in FROM
)

// rel is one occurrence of a FROM item.
type rel struct {
	kind    relKind
	name    string // the name that qualifies its columns: alias or relation name
	schema  string
	relname string
	aliased bool
	table   string // as shown in plans: lower-case, qualified if the SQL did
	key     string // shard-key column (sharded only)
	sc      *scope
	parent  *rel // union-find for co-location
	// nullable: on the nullable side of an outer join, so its columns
	// can be NULL on any shard.
	nullable bool
}

type scopeKind uint8

const (
	scopeTop     scopeKind = iota // the statement itself
	scopeArm                      // a branch of a top-level UNION
	scopeSublink                  // a subquery in an expression
	scopeFrom                     // a subquery in FROM
	scopeCTE                      // a WITH query
)

// scope is one query level (SELECT, or the target of UPDATE/DELETE).
type scope struct {
	parent *scope
	kind   scopeKind
	name   string // CTE name or FROM alias, for messages
	items  []*rel
	ctes   map[string]bool
	// positive: an EXISTS / IN subquery that is an AND-ed condition of
	// its parent's WHERE: rows of the parent survive only if it finds
	// rows, so its restrictions restrict the parent too.
	positive bool
	// top: the rows of this scope are the statement's own rows.
	top bool
}

func (s *scope) cteVisible(name string) bool {
	for ; s != nil; s = s.parent {
		if s.ctes[name] {
			return true
		}
	}
	return false
}

// analysis collects the tables of one statement.
type analysis struct {
	r      *Router
	rels   []*rel // table occurrences (not derived items), in order
	scopes []*scope
	pins   map[*rel][]plan.Key // restrictions by constants
	edges  map[*rel][]*rel     // restriction propagates from -> to
	// writes: a data-modifying statement appears inside (a WITH query).
	writes bool
	// outerJoin names an outer join at the top that would repeat rows of
	// tables present on every shard: "LEFT JOIN preserving countries".
	outerJoin string
	// positive is handed from sublink to the scope it creates next.
	positive bool
}

func newAnalysis(r *Router) *analysis {
	return &analysis{r: r, pins: map[*rel][]plan.Key{}, edges: map[*rel][]*rel{}}
}

func (a *analysis) newScope(parent *scope, kind scopeKind, name string) *scope {
	sc := &scope{parent: parent, kind: kind, name: name}
	switch kind {
	case scopeTop:
		sc.top = true
	case scopeArm:
		sc.top = parent == nil || parent.top
	case scopeSublink:
		sc.positive, a.positive = a.positive, false
	}
	a.scopes = append(a.scopes, sc)
	return sc
}

// query walks a statement nested anywhere (subquery, CTE, set branch).
func (a *analysis) query(n *pg_query.Node, parent *scope, kind scopeKind, name string) *scope {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		return a.selectStmt(v.SelectStmt, parent, kind, name)
	case *pg_query.Node_UpdateStmt:
		a.writes = true
		sc := a.newScope(parent, kind, name)
		a.with(sc, v.UpdateStmt.WithClause)
		a.addItem(sc, a.tableRef(sc, v.UpdateStmt.Relation))
		for _, f := range v.UpdateStmt.FromClause {
			a.fromItem(sc, f)
		}
		a.where(sc, v.UpdateStmt.WhereClause)
		a.exprs(sc, v.UpdateStmt.TargetList...)
		a.exprs(sc, v.UpdateStmt.ReturningList...)
		return sc
	case *pg_query.Node_DeleteStmt:
		a.writes = true
		sc := a.newScope(parent, kind, name)
		a.with(sc, v.DeleteStmt.WithClause)
		a.addItem(sc, a.tableRef(sc, v.DeleteStmt.Relation))
		for _, f := range v.DeleteStmt.UsingClause {
			a.fromItem(sc, f)
		}
		a.where(sc, v.DeleteStmt.WhereClause)
		a.exprs(sc, v.DeleteStmt.ReturningList...)
		return sc
	case *pg_query.Node_InsertStmt:
		// An INSERT inside WITH: its target counts as a table the
		// statement touches, never pinned (the router only splits rows
		// of a top-level INSERT).
		a.writes = true
		sc := a.newScope(parent, kind, name)
		a.with(sc, v.InsertStmt.WithClause)
		a.addItem(sc, a.tableRef(sc, v.InsertStmt.Relation))
		if v.InsertStmt.SelectStmt != nil {
			a.query(v.InsertStmt.SelectStmt, sc, scopeFrom, "")
		}
		a.exprs(sc, v.InsertStmt.ReturningList...)
		return sc
	default:
		sc := a.newScope(parent, kind, name)
		if n != nil {
			a.exprs(sc, n)
		}
		return sc
	}
}

func (a *analysis) with(sc *scope, w *pg_query.WithClause) {
	if w == nil {
		return
	}
	if sc.ctes == nil {
		sc.ctes = map[string]bool{}
	}
	for _, c := range w.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		if w.Recursive {
			sc.ctes[cte.Ctename] = true // visible in its own body
		}
		a.query(cte.Ctequery, sc, scopeCTE, cte.Ctename)
		sc.ctes[cte.Ctename] = true
	}
}

func (a *analysis) selectStmt(s *pg_query.SelectStmt, parent *scope, kind scopeKind, name string) *scope {
	sc := a.newScope(parent, kind, name)
	a.with(sc, s.WithClause)
	if s.Op != pg_query.SetOperation_SETOP_NONE {
		armKind := kind
		if kind == scopeTop || kind == scopeArm {
			armKind = scopeArm
		}
		if s.Larg != nil {
			a.selectStmt(s.Larg, sc, armKind, name)
		}
		if s.Rarg != nil {
			a.selectStmt(s.Rarg, sc, armKind, name)
		}
		a.exprs(sc, s.SortClause...)
		a.exprs(sc, s.LimitCount, s.LimitOffset)
		return sc
	}
	for _, f := range s.FromClause {
		a.fromItem(sc, f)
	}
	a.where(sc, s.WhereClause)
	a.exprs(sc, s.TargetList...)
	a.exprs(sc, s.DistinctClause...)
	a.exprs(sc, s.GroupClause...)
	a.exprs(sc, s.HavingClause)
	a.exprs(sc, s.WindowClause...)
	a.exprs(sc, s.SortClause...)
	a.exprs(sc, s.LimitCount, s.LimitOffset)
	for _, row := range s.ValuesLists {
		a.exprs(sc, row)
	}
	return sc
}

func (a *analysis) addItem(sc *scope, r *rel) {
	if r != nil {
		sc.items = append(sc.items, r)
	}
}

// tableRef classifies a relation name as the schema configures it.
func (a *analysis) tableRef(sc *scope, rv *pg_query.RangeVar) *rel {
	if rv == nil {
		return nil
	}
	r := &rel{schema: rv.Schemaname, relname: rv.Relname, name: rv.Relname, sc: sc}
	if rv.Alias != nil && rv.Alias.Aliasname != "" {
		r.name, r.aliased = rv.Alias.Aliasname, true
	}
	if rv.Schemaname == "" && sc.cteVisible(rv.Relname) {
		r.kind = relDerived
		return r
	}
	r.table = rv.Relname
	if rv.Schemaname != "" {
		r.table = rv.Schemaname + "." + rv.Relname
	}
	r.kind, r.key = a.r.classify(rv.Schemaname, rv.Relname)
	r.parent = r
	a.rels = append(a.rels, r)
	return r
}

// classify says what the schema makes of a table name.
func (r *Router) classify(schema, name string) (relKind, string) {
	lookup := name
	if schema != "" && schema != "public" {
		lookup = schema + "." + name
	}
	if k, ok := r.sharded[lookup]; ok {
		return relSharded, k
	}
	if r.reference[lookup] {
		return relReference, ""
	}
	if schema == "pg_catalog" || schema == "information_schema" {
		return relCatalog, ""
	}
	return relOther, ""
}

// fromItem registers a FROM item and returns the table occurrences it
// holds directly (through joins, not subqueries).
func (a *analysis) fromItem(sc *scope, n *pg_query.Node) []*rel {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_RangeVar:
		r := a.tableRef(sc, v.RangeVar)
		a.addItem(sc, r)
		if r.kind == relDerived {
			return nil
		}
		return []*rel{r}
	case *pg_query.Node_JoinExpr:
		return a.join(sc, v.JoinExpr)
	case *pg_query.Node_RangeSubselect:
		name := ""
		if v.RangeSubselect.Alias != nil {
			name = v.RangeSubselect.Alias.Aliasname
		}
		a.query(v.RangeSubselect.Subquery, sc, scopeFrom, name)
		a.addItem(sc, &rel{kind: relDerived, name: name, sc: sc})
		return nil
	case *pg_query.Node_RangeFunction:
		a.exprs(sc, v.RangeFunction.Functions...)
		name := ""
		if v.RangeFunction.Alias != nil {
			name = v.RangeFunction.Alias.Aliasname
		}
		a.addItem(sc, &rel{kind: relDerived, name: name, sc: sc})
		return nil
	case *pg_query.Node_RangeTableSample:
		a.exprs(sc, v.RangeTableSample.Args...)
		a.exprs(sc, v.RangeTableSample.Repeatable)
		return a.fromItem(sc, v.RangeTableSample.Relation)
	default:
		a.exprs(sc, n)
		a.addItem(sc, &rel{kind: relDerived, sc: sc})
		return nil
	}
}

func (a *analysis) join(sc *scope, j *pg_query.JoinExpr) []*rel {
	left := a.fromItem(sc, j.Larg)
	right := a.fromItem(sc, j.Rarg)
	inner := j.Jointype == pg_query.JoinType_JOIN_INNER
	type eq struct{ x, y *rel }
	var eqs []eq
	sameKeyPairs := func(col string) {
		for _, x := range left {
			for _, y := range right {
				if x.kind == relSharded && y.kind == relSharded && x.key == y.key && (col == "" || x.key == col) {
					eqs = append(eqs, eq{x, y})
				}
			}
		}
	}
	if j.IsNatural {
		// NATURAL joins on every common column name, so the keys are
		// equated whenever both tables name their key alike.
		sameKeyPairs("")
	}
	for _, u := range strs(j.UsingClause) {
		sameKeyPairs(u)
	}
	for _, c := range conjuncts(j.Quals) {
		if x, y := a.keyEq(sc, c); x != nil {
			eqs = append(eqs, eq{x, y})
			continue
		}
		if inner {
			a.pinFrom(sc, c)
		}
	}
	a.exprs(sc, j.Quals)
	in := func(rs []*rel, r *rel) bool {
		for _, x := range rs {
			if x == r {
				return true
			}
		}
		return false
	}
	for _, e := range eqs {
		a.union(e.x, e.y)
		l, r := e.x, e.y
		if in(left, r) && in(right, l) {
			l, r = r, l
		}
		opposite := in(left, l) && in(right, r)
		switch {
		case inner:
			a.edge(l, r)
			a.edge(r, l)
		case !opposite:
			// Both columns on one side of an outer join: co-located,
			// but which rows survive is not restricted.
		case j.Jointype == pg_query.JoinType_JOIN_LEFT:
			a.edge(l, r)
		case j.Jointype == pg_query.JoinType_JOIN_RIGHT:
			a.edge(r, l)
		}
	}
	switch j.Jointype {
	case pg_query.JoinType_JOIN_LEFT:
		markNullable(right)
	case pg_query.JoinType_JOIN_RIGHT:
		markNullable(left)
	case pg_query.JoinType_JOIN_FULL:
		markNullable(left)
		markNullable(right)
	}
	if sc.top && !inner && a.outerJoin == "" {
		ls, rs := firstOf(left, relSharded), firstOf(right, relSharded)
		lo, ro := firstNonSharded(left), firstNonSharded(right)
		switch j.Jointype {
		case pg_query.JoinType_JOIN_LEFT:
			if rs != nil && ls == nil && lo != nil {
				a.outerJoin = "LEFT JOIN preserving rows of " + lo.table
			}
		case pg_query.JoinType_JOIN_RIGHT:
			if ls != nil && rs == nil && ro != nil {
				a.outerJoin = "RIGHT JOIN preserving rows of " + ro.table
			}
		case pg_query.JoinType_JOIN_FULL:
			if (ls == nil) != (rs == nil) {
				o := lo
				if o == nil {
					o = ro
				}
				if o != nil {
					a.outerJoin = "FULL JOIN preserving rows of " + o.table
				}
			}
		}
	}
	return append(left, right...)
}

func markNullable(rs []*rel) {
	for _, r := range rs {
		r.nullable = true
	}
}

func firstOf(rs []*rel, k relKind) *rel {
	for _, r := range rs {
		if r.kind == k {
			return r
		}
	}
	return nil
}

func firstNonSharded(rs []*rel) *rel {
	for _, r := range rs {
		if r.kind != relSharded {
			return r
		}
	}
	return nil
}

// where reads the AND-ed conditions of a scope's WHERE.
func (a *analysis) where(sc *scope, n *pg_query.Node) {
	if n == nil {
		return
	}
	handled := map[*pg_query.SubLink]bool{}
	for _, c := range conjuncts(n) {
		if x, y := a.keyEq(sc, c); x != nil {
			a.union(x, y)
			a.restrictEq(sc, x, y)
			continue
		}
		a.pinFrom(sc, c)
		if sl := c.GetSubLink(); sl != nil {
			switch sl.SubLinkType {
			case pg_query.SubLinkType_EXISTS_SUBLINK, pg_query.SubLinkType_ANY_SUBLINK:
				handled[sl] = true
				a.sublink(sc, sl, true)
			}
		}
	}
	a.walkExprs(sc, handled, n)
}

// restrictEq records how an equality of two key columns restricts rows.
func (a *analysis) restrictEq(sc *scope, x, y *rel) {
	inX, inY := x.sc == sc, y.sc == sc
	switch {
	case inX && inY:
		a.edge(x, y)
		a.edge(y, x)
	case inX != inY:
		inner, outer := x, y
		if inY {
			inner, outer = y, x
		}
		a.edge(outer, inner)
		if sc.positive && outer.sc == sc.parent {
			a.edge(inner, outer)
		}
	default:
		if sc.positive && x.sc == sc.parent && y.sc == sc.parent {
			a.edge(x, y)
			a.edge(y, x)
		}
	}
}

// pinFrom records the constant restrictions a condition puts on key
// columns that it restricts.
func (a *analysis) pinFrom(sc *scope, c *pg_query.Node) {
	for _, p := range a.pinsOf(sc, c) {
		if p.r.sc == sc || (sc.positive && p.r.sc == sc.parent) {
			a.addPin(p.r, p.keys)
		}
	}
}

type pin struct {
	r    *rel
	keys []plan.Key
}

// pinsOf returns the key restrictions a condition implies.
func (a *analysis) pinsOf(sc *scope, n *pg_query.Node) []pin {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_AExpr:
		e := v.AExpr
		if opName(e) != "=" {
			return nil
		}
		switch e.Kind {
		case pg_query.A_Expr_Kind_AEXPR_OP:
			if r := a.resolveKey(sc, e.Lexpr); r != nil {
				if k, ok := keyValue(e.Rexpr); ok {
					return []pin{{r, stamp(r, k)}}
				}
			}
			if r := a.resolveKey(sc, e.Rexpr); r != nil {
				if k, ok := keyValue(e.Lexpr); ok {
					return []pin{{r, stamp(r, k)}}
				}
			}
		case pg_query.A_Expr_Kind_AEXPR_IN:
			r := a.resolveKey(sc, e.Lexpr)
			list := e.Rexpr.GetList()
			if r == nil || list == nil || len(list.Items) == 0 {
				return nil
			}
			keys := make([]plan.Key, 0, len(list.Items))
			for _, it := range list.Items {
				k, ok := keyValue(it)
				if !ok {
					return nil
				}
				keys = append(keys, k)
			}
			return []pin{{r, stamp(r, keys...)}}
		case pg_query.A_Expr_Kind_AEXPR_OP_ANY:
			r := a.resolveKey(sc, e.Lexpr)
			if r == nil {
				return nil
			}
			if keys, ok := arrayKeys(e.Rexpr); ok {
				return []pin{{r, stamp(r, keys...)}}
			}
		}
	case *pg_query.Node_BoolExpr:
		b := v.BoolExpr
		switch b.Boolop {
		case pg_query.BoolExprType_AND_EXPR:
			var out []pin
			for _, arg := range b.Args {
				out = append(out, a.pinsOf(sc, arg)...)
			}
			return out
		case pg_query.BoolExprType_OR_EXPR:
			// Every branch must restrict the same occurrence; the
			// restriction is then the union of the branches' keys.
			var out []pin
			for i, arg := range b.Args {
				ps := a.pinsOf(sc, arg)
				if i == 0 {
					out = dedupePins(ps)
					continue
				}
				var next []pin
				for _, p := range out {
					for _, q := range ps {
						if q.r == p.r {
							next = append(next, pin{p.r, unionKeys(p.keys, q.keys)})
							break
						}
					}
				}
				out = next
			}
			return out
		}
	}
	return nil
}

func dedupePins(ps []pin) []pin {
	var out []pin
	for _, p := range ps {
		found := false
		for i := range out {
			if out[i].r == p.r {
				if weight(p.keys) < weight(out[i].keys) {
					out[i].keys = p.keys
				}
				found = true
			}
		}
		if !found {
			out = append(out, p)
		}
	}
	return out
}

func stamp(r *rel, keys ...plan.Key) []plan.Key {
	out := make([]plan.Key, len(keys))
	for i, k := range keys {
		k.Table, k.Column = r.table, r.key
		out[i] = k
	}
	return out
}

// weight orders restrictions: fewer values are better; an array
// parameter may hold any number.
func weight(keys []plan.Key) int {
	w := 0
	for _, k := range keys {
		if k.ArrayParam > 0 {
			w += 1000
		} else {
			w++
		}
	}
	return w
}

func sameKey(a, b plan.Key) bool {
	switch {
	case a.Param > 0 || b.Param > 0:
		return a.Param == b.Param
	case a.ArrayParam > 0 || b.ArrayParam > 0:
		return a.ArrayParam == b.ArrayParam
	case a.Null || b.Null:
		return false // NULL equals nothing, not even NULL
	}
	return a.IsValue && b.IsValue && a.Value == b.Value
}

func unionKeys(a, b []plan.Key) []plan.Key {
	out := append([]plan.Key(nil), a...)
	for _, k := range b {
		dup := false
		for _, o := range out {
			if sameKey(o, k) || (o.Null && k.Null) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, k)
		}
	}
	return out
}

func (a *analysis) addPin(r *rel, keys []plan.Key) {
	if old, ok := a.pins[r]; !ok || weight(keys) < weight(old) {
		a.pins[r] = keys
	}
}

func (a *analysis) edge(from, to *rel) {
	if from != to {
		a.edges[from] = append(a.edges[from], to)
	}
}

// keyEq recognizes `x.key = y.key` between two sharded occurrences.
func (a *analysis) keyEq(sc *scope, n *pg_query.Node) (*rel, *rel) {
	e := n.GetAExpr()
	if e == nil || e.Kind != pg_query.A_Expr_Kind_AEXPR_OP || opName(e) != "=" {
		return nil, nil
	}
	x := a.resolveKey(sc, stripCasts(e.Lexpr))
	y := a.resolveKey(sc, stripCasts(e.Rexpr))
	if x == nil || y == nil {
		return nil, nil
	}
	return x, y
}

// resolveKey returns the sharded occurrence whose key column n names, if
// it does. Unqualified names are only looked up in the scope's own
// sharded tables: the scope's other items might have a column of that
// name, and then PostgreSQL would reject the name as ambiguous anyway.
func (a *analysis) resolveKey(sc *scope, n *pg_query.Node) *rel {
	cr := n.GetColumnRef()
	if cr == nil {
		return nil
	}
	f := strs(cr.Fields)
	if len(f) != len(cr.Fields) {
		return nil // a * somewhere
	}
	match := func(r *rel, col string) *rel {
		if r.kind == relSharded && r.key == col {
			return r
		}
		return nil
	}
	switch len(f) {
	case 1:
		for _, r := range sc.items {
			if m := match(r, f[0]); m != nil {
				return m
			}
		}
	case 2:
		for s := sc; s != nil; s = s.parent {
			for _, r := range s.items {
				if r.name == f[0] {
					return match(r, f[1])
				}
			}
		}
	case 3:
		for s := sc; s != nil; s = s.parent {
			for _, r := range s.items {
				if r.kind != relDerived && !r.aliased && r.relname == f[1] &&
					(r.schema == f[0] || (r.schema == "" && f[0] == "public")) {
					return match(r, f[2])
				}
			}
		}
	}
	return nil
}

// sublink walks a subquery used in an expression.
func (a *analysis) sublink(sc *scope, sl *pg_query.SubLink, positive bool) {
	a.exprs(sc, sl.Testexpr)
	a.positive = positive
	child := a.query(sl.Subselect, sc, scopeSublink, "")
	a.positive = false
	// `x.key IN (SELECT y.key FROM y ...)` joins on the key like a
	// correlated equality, provided the subquery returns rows of y as
	// they are (no LIMIT or aggregation mixing rows of several keys).
	if sl.SubLinkType != pg_query.SubLinkType_ANY_SUBLINK {
		return
	}
	if ops := strs(sl.OperName); len(ops) > 0 && ops[len(ops)-1] != "=" {
		return
	}
	outer := a.resolveKey(sc, stripCasts(sl.Testexpr))
	sub := sl.Subselect.GetSelectStmt()
	if outer == nil || sub == nil || !rowLocal(sub) || len(sub.TargetList) != 1 {
		return
	}
	inner := a.resolveKey(child, stripCasts(sub.TargetList[0].GetResTarget().GetVal()))
	if inner == nil {
		return
	}
	a.union(outer, inner)
	a.edge(outer, inner)
	if positive {
		a.edge(inner, outer)
	}
}

// rowLocal reports whether a simple SELECT returns its rows without
// combining rows (which could belong to different keys).
func rowLocal(s *pg_query.SelectStmt) bool {
	if s.Op != pg_query.SetOperation_SETOP_NONE || s.LimitCount != nil || s.LimitOffset != nil ||
		len(s.GroupClause) > 0 || s.HavingClause != nil || len(s.WindowClause) > 0 || len(s.DistinctClause) > 0 {
		return false
	}
	for _, t := range s.TargetList {
		if rt := t.GetResTarget(); rt != nil && (containsAggregate(rt.Val) || containsWindow(rt.Val)) {
			return false
		}
	}
	return true
}

// exprs walks expressions for subqueries.
func (a *analysis) exprs(sc *scope, nodes ...*pg_query.Node) {
	a.walkExprs(sc, nil, nodes...)
}

func (a *analysis) walkExprs(sc *scope, skip map[*pg_query.SubLink]bool, nodes ...*pg_query.Node) {
	for _, n := range nodes {
		if n == nil {
			continue
		}
		inspect(n, func(m proto.Message) bool {
			switch v := m.(type) {
			case *pg_query.SubLink:
				if !skip[v] {
					a.sublink(sc, v, false)
				}
				return false
			case *pg_query.SelectStmt:
				// A bare query in an expression position (ARRAY(...) is
				// a SubLink; this covers the odd remaining forms).
				a.selectStmt(v, sc, scopeSublink, "")
				return false
			}
			return true
		})
	}
}

// union joins two occurrences' co-location classes.
func (a *analysis) union(x, y *rel) {
	rx, ry := find(x), find(y)
	if rx != ry {
		ry.parent = rx
	}
}

func find(r *rel) *rel {
	for r.parent != r {
		r.parent = r.parent.parent
		r = r.parent
	}
	return r
}

// propagate returns the key restrictions of every pinned occurrence.
func (a *analysis) propagate() map[*rel][]plan.Key {
	pinned := make(map[*rel][]plan.Key, len(a.pins))
	var queue []*rel
	for _, r := range a.rels {
		if k, ok := a.pins[r]; ok {
			pinned[r] = k
			queue = append(queue, r)
		}
	}
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		for _, t := range a.edges[r] {
			if _, ok := pinned[t]; !ok {
				pinned[t] = pinned[r]
				queue = append(queue, t)
			}
		}
	}
	return pinned
}

func (a *analysis) sharded() []*rel {
	var out []*rel
	for _, r := range a.rels {
		if r.kind == relSharded {
			out = append(out, r)
		}
	}
	return out
}

func (a *analysis) first(k relKind) *rel {
	for _, r := range a.rels {
		if r.kind == k {
			return r
		}
	}
	return nil
}

// routeKind is the outcome of decide.
type routeKind uint8

const (
	routeNone routeKind = iota // no sharded table
	routeOne                   // keyed, one key value: one shard
	routeKeys                  // keyed, several values: their owners
	routeAll                   // every shard
	routeRefuse
)

type route struct {
	kind  routeKind
	keys  []plan.Key
	table string // the sharded table that decided
	err   *plan.Statement
}

// decide routes the statement's sharded occurrences. setOp allows
// several co-location classes (independent UNION ALL branches).
func (a *analysis) decide(cmd string, setOp bool) route {
	sh := a.sharded()
	if len(sh) == 0 {
		return route{kind: routeNone}
	}
	if o := a.first(relOther); o != nil {
		return route{kind: routeRefuse, err: refuse(cmd, true, hintShard(sh[0]),
			"join between sharded table %s and unsharded table %s across shards is not supported: %s lives only on the default shard",
			sh[0].table, o.table, o.table)}
	}
	pinned := a.propagate()
	var classes []*rel
	for _, r := range sh {
		root := find(r)
		seen := false
		for _, c := range classes {
			if c == root {
				seen = true
			}
		}
		if !seen {
			classes = append(classes, root)
		}
	}
	allPinned := true
	for _, r := range sh {
		if _, ok := pinned[r]; !ok {
			allPinned = false
			break
		}
	}
	if allPinned {
		var keys []plan.Key
		var decider *rel
		for _, r := range sh {
			if decider == nil || weight(pinned[r]) < weight(pinned[decider]) {
				decider = r
			}
		}
		switch {
		case len(classes) == 1:
			keys = pinned[decider]
		case setOp:
			for _, r := range sh {
				keys = unionKeys(keys, pinned[r])
			}
		default:
			// Separate classes meet on one shard only if all are
			// pinned to the very same single value.
			k0 := pinned[sh[0]]
			same := len(k0) == 1 && k0[0].ArrayParam == 0
			for _, r := range sh[1:] {
				k := pinned[r]
				if !same || len(k) != 1 || !sameKey(k[0], k0[0]) {
					same = false
					break
				}
			}
			if same {
				keys = k0
			}
		}
		if keys != nil {
			if len(keys) == 1 && keys[0].ArrayParam == 0 {
				return route{kind: routeOne, keys: keys, table: keys[0].Table}
			}
			if err := a.multiShardOK(cmd, classes, setOp); err != nil {
				return route{kind: routeRefuse, err: err}
			}
			return route{kind: routeKeys, keys: keys, table: keys[0].Table}
		}
	}
	if err := a.multiShardOK(cmd, classes, setOp); err != nil {
		return route{kind: routeRefuse, err: err}
	}
	for _, r := range sh {
		if r.sc.top {
			return route{kind: routeAll, table: r.table}
		}
	}
	return route{kind: routeAll, table: sh[0].table}
}

// multiShardOK checks that a statement spread over several shards
// returns exactly what one database would: its sharded tables are
// co-located with a table whose rows are the statement's rows.
func (a *analysis) multiShardOK(cmd string, classes []*rel, setOp bool) *plan.Statement {
	sh := a.sharded()
	if len(classes) > 1 && !setOp {
		x := sh[0]
		var y *rel
		for _, r := range sh {
			if find(r) != find(x) {
				y = r
				break
			}
		}
		if !x.sc.top {
			x, y = y, x
		}
		if x.sc.top && y.sc.top {
			return refuse(cmd, true, hintShard(x),
				"join between sharded tables %s and %s on columns that are not their shard keys is not supported across shards",
				x.table, y.table)
		}
		return a.subqueryRefusal(cmd, y, x)
	}
	for _, root := range classes {
		var top, any *rel
		for _, r := range sh {
			if find(r) != root {
				continue
			}
			if any == nil {
				any = r
			}
			if r.sc.top && top == nil {
				top = r
			}
		}
		if top == nil {
			return a.subqueryRefusal(cmd, any, nil)
		}
	}
	if a.outerJoin != "" {
		return refuse(cmd, true, hintShard(sh[0]),
			"outer join across shards is not supported: %s, which every shard holds, would repeat its rows", a.outerJoin)
	}
	return nil
}

// subqueryRefusal explains why a sharded table inside a subquery or WITH
// query cannot be spread over shards.
func (a *analysis) subqueryRefusal(cmd string, inner, outer *rel) *plan.Statement {
	what := "subquery"
	for s := inner.sc; s != nil && !s.top; s = s.parent {
		if s.kind == scopeCTE {
			what = "WITH query " + quoteIdent(s.name)
			break
		}
		if s.kind == scopeFrom {
			what = "subquery in FROM"
		}
	}
	if outer != nil {
		return refuse(cmd, true, hintShard(inner),
			"%s over sharded table %s across shards is not supported: it is not joined to %s on the shard keys",
			what, inner.table, outer.table)
	}
	return refuse(cmd, true, hintShard(inner),
		"%s over sharded table %s across shards is not supported", what, inner.table)
}
