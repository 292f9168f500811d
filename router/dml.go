package router

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/shardproxy/shardproxy/plan"
)

// planUpdate routes an UPDATE by the WHERE restriction on its target's
// shard key, refusing assignments that would move rows between shards.
func (r *Router) planUpdate(u *pg_query.UpdateStmt) *plan.Statement {
	a := newAnalysis(r)
	sc := a.newScope(nil, scopeTop, "")
	a.with(sc, u.WithClause)
	target := a.tableRef(sc, u.Relation)
	a.addItem(sc, target)
	for _, f := range u.FromClause {
		a.fromItem(sc, f)
	}
	a.where(sc, u.WhereClause)
	a.exprs(sc, u.TargetList...)
	a.exprs(sc, u.ReturningList...)
	st := &plan.Statement{Command: "UPDATE", Write: true}
	if target.kind == relSharded {
		for _, t := range u.TargetList {
			rt := t.GetResTarget()
			if rt == nil || rt.Name != target.key {
				continue
			}
			if !a.keepsKey(target, rt.Val) {
				return refuse("UPDATE", false,
					"DELETE the row and INSERT it with the new key value, in one transaction.",
					"UPDATE of the shard key column %s of %s would move rows between shards",
					target.key, target.table)
			}
		}
	}
	return r.planWrite(a, target, st, u)
}

// keepsKey reports whether assigning v to the key column leaves every
// updated row on its shard: v is the value the WHERE pins the key to.
func (a *analysis) keepsKey(target *rel, v *pg_query.Node) bool {
	k, ok := keyValue(v)
	pinned := a.pins[target]
	return ok && len(pinned) == 1 && sameKey(k, pinned[0])
}

// planDelete routes a DELETE like an UPDATE.
func (r *Router) planDelete(d *pg_query.DeleteStmt) *plan.Statement {
	a := newAnalysis(r)
	sc := a.newScope(nil, scopeTop, "")
	a.with(sc, d.WithClause)
	target := a.tableRef(sc, d.Relation)
	a.addItem(sc, target)
	for _, f := range d.UsingClause {
		a.fromItem(sc, f)
	}
	a.where(sc, d.WhereClause)
	a.exprs(sc, d.ReturningList...)
	return r.planWrite(a, target, &plan.Statement{Command: "DELETE", Write: true}, d)
}

// planWrite finishes an UPDATE or DELETE once its tables are known.
func (r *Router) planWrite(a *analysis, target *rel, st *plan.Statement, stmt proto.Message) *plan.Statement {
	cmd := st.Command
	switch target.kind {
	case relSharded:
		rt := a.decide(cmd, false)
		switch rt.kind {
		case routeRefuse:
			return rt.err
		case routeOne, routeKeys:
			// Several keys: each owner changes its own rows; RETURNING
			// rows and counts only need adding up.
			st.Kind, st.Keys, st.Table = plan.Keyed, rt.keys, target.table
		default:
			st.Kind, st.Table = plan.FanOut, target.table
		}
		return st
	case relReference:
		if s := a.first(relSharded); s != nil {
			return refuse(cmd, false, "Read the sharded rows first, then write the reference table with the values.",
				"%s of reference table %s reading sharded table %s is not supported: every shard must apply the same change",
				cmd, target.table, s.table)
		}
		if o := a.first(relOther); o != nil {
			return refuse(cmd, false, "Make "+o.table+" a reference table too, or write with literal values.",
				"%s of reference table %s reading unsharded table %s is not supported: %s lives only on the default shard",
				cmd, target.table, o.table, o.table)
		}
		if f := callsAny(stmt, volatileFunctions); f != "" {
			return volatileRefusal(cmd, f, target.table)
		}
		st.Kind, st.Table = plan.Broadcast, target.table
		return st
	default:
		if s := a.first(relSharded); s != nil {
			return refuse(cmd, true, hintShard(s),
				"%s of unsharded table %s reading sharded table %s across shards is not supported",
				cmd, target.table, s.table)
		}
		st.Kind = plan.Default
		return st
	}
}

func volatileRefusal(cmd, fn, table string) *plan.Statement {
	return refuse(cmd, false,
		"Compute the value in the application and pass it as a literal or parameter, so that every shard stores the same value.",
		"volatile function %s() in a write to reference table %s is not supported: each shard would compute a different value",
		fn, table)
}

// planInsert routes an INSERT: by the shard key of its single VALUES row,
// split by row for several rows, to every shard for a reference table.
func (r *Router) planInsert(node *pg_query.Node, ins *pg_query.InsertStmt) *plan.Statement {
	a := newAnalysis(r)
	sc := a.newScope(nil, scopeTop, "")
	a.with(sc, ins.WithClause)
	target := a.tableRef(sc, ins.Relation)
	sel := ins.SelectStmt.GetSelectStmt()
	values := sel != nil && len(sel.ValuesLists) > 0 && len(sel.FromClause) == 0 && sel.Op == pg_query.SetOperation_SETOP_NONE
	switch {
	case values:
		for _, row := range sel.ValuesLists {
			a.exprs(sc, row)
		}
	case ins.SelectStmt != nil:
		a.query(ins.SelectStmt, sc, scopeFrom, "")
	}
	a.addItem(sc, target) // RETURNING and ON CONFLICT name it
	if oc := ins.OnConflictClause; oc != nil {
		a.exprs(sc, oc.TargetList...)
		a.exprs(sc, oc.WhereClause)
	}
	a.exprs(sc, ins.ReturningList...)
	st := &plan.Statement{Command: "INSERT", Write: true, Table: target.table}

	// Tables read by the statement, besides the target.
	var readSharded, readOther *rel
	for _, x := range a.rels {
		if x == target {
			continue
		}
		if x.kind == relSharded && readSharded == nil {
			readSharded = x
		}
		if x.kind == relOther && readOther == nil {
			readOther = x
		}
	}

	switch target.kind {
	case relReference:
		if readSharded != nil {
			return refuse("INSERT", false, "Read the sharded rows first, then insert the values.",
				"INSERT into reference table %s reading sharded table %s is not supported: every shard must insert the same rows",
				target.table, readSharded.table)
		}
		if readOther != nil {
			return refuse("INSERT", false, "Make "+readOther.table+" a reference table too, or insert literal values.",
				"INSERT into reference table %s reading unsharded table %s is not supported: %s lives only on the default shard",
				target.table, readOther.table, readOther.table)
		}
		if f := callsAny(ins, volatileFunctions); f != "" {
			return volatileRefusal("INSERT", f, target.table)
		}
		st.Kind = plan.Broadcast
		return st
	case relSharded:
	default:
		if readSharded != nil {
			return refuse("INSERT", true, hintShard(readSharded),
				"INSERT into unsharded table %s reading sharded table %s across shards is not supported",
				target.table, readSharded.table)
		}
		st.Kind = plan.Default
		return st
	}

	listHint := fmt.Sprintf("List the columns, including the shard key %s: INSERT INTO %s (%s, ...) VALUES (...).",
		target.key, target.table, target.key)
	switch {
	case ins.SelectStmt == nil:
		return refuse("INSERT", false, listHint,
			"INSERT ... DEFAULT VALUES into sharded table %s is not supported: the shard key %s must be given", target.table, target.key)
	case !values:
		return refuse("INSERT", false,
			"Insert the rows with INSERT ... VALUES or COPY, so that the proxy can send each row to its shard.",
			"INSERT ... SELECT into sharded table %s is not supported: the proxy cannot see which shard each row belongs to", target.table)
	case readSharded != nil:
		return refuse("INSERT", true, hintShard(readSharded),
			"subquery over sharded table %s in an INSERT into sharded table %s is not supported across shards",
			readSharded.table, target.table)
	case readOther != nil:
		return refuse("INSERT", true, oneShardHint,
			"subquery over unsharded table %s in an INSERT into sharded table %s is not supported: %s lives only on the default shard",
			readOther.table, target.table, readOther.table)
	case len(ins.Cols) == 0:
		return refuse("INSERT", false, listHint,
			"INSERT into sharded table %s without a column list is not supported: the proxy must see the shard key %s", target.table, target.key)
	}
	keyIdx := -1
	for i, c := range ins.Cols {
		if rt := c.GetResTarget(); rt != nil && rt.Name == target.key && len(rt.Indirection) == 0 {
			keyIdx = i
		}
	}
	if keyIdx < 0 {
		return refuse("INSERT", false, listHint,
			"INSERT into sharded table %s without its shard key column %s is not supported", target.table, target.key)
	}
	if oc := ins.OnConflictClause; oc != nil {
		for _, t := range oc.TargetList {
			if rt := t.GetResTarget(); rt != nil && rt.Name == target.key {
				return refuse("INSERT", false, "Leave the shard key out of DO UPDATE SET.",
					"INSERT ... ON CONFLICT DO UPDATE of the shard key column %s of %s would move rows between shards",
					target.key, target.table)
			}
		}
	}
	rows := make([]plan.Key, len(sel.ValuesLists))
	for i, row := range sel.ValuesLists {
		items := row.GetList().GetItems()
		if keyIdx >= len(items) {
			return refuse("INSERT", false, listHint, "INSERT into sharded table %s with a VALUES row shorter than its column list is not supported", target.table)
		}
		v := items[keyIdx]
		if v.GetSetToDefault() != nil {
			return refuse("INSERT", false,
				"Generate the key in the application and pass it as a literal or parameter.",
				"INSERT into sharded table %s with DEFAULT for its shard key %s is not supported: the proxy must know the key before the row exists",
				target.table, target.key)
		}
		k, ok := keyValue(v)
		if !ok {
			return refuse("INSERT", false,
				"Compute the key in the application and pass it as a literal or parameter.",
				"INSERT into sharded table %s computing its shard key %s with an expression is not supported: %s",
				target.table, target.key, exprSQL(v))
		}
		rows[i] = stamp(target, k)[0]
	}
	if len(rows) == 1 {
		st.Kind, st.Keys = plan.Keyed, rows
		return st
	}
	render := newInsertRender(node)
	if _, _, err := render.render([]int{0}); err != nil {
		return refuse("INSERT", false, "Send the rows as separate INSERT statements.",
			"splitting this multi-row INSERT across shards failed: %v", err)
	}
	st.Kind = plan.InsertSplit
	st.Insert = &plan.Insert{Rows: rows, Render: render.Render}
	return st
}

// insertRender renders the statement of a multi-row INSERT restricted
// to some of its rows. It keeps a copy of the parse tree; every call
// works on a clone, so it is safe for concurrent use. Results are
// memoized: a prepared INSERT tends to split the same way again.
type insertRender struct {
	tree *pg_query.Node
	mu   sync.Mutex
	memo map[string]rendered
}

type rendered struct {
	sql    string
	params []int
}

const renderMemo = 64

func newInsertRender(node *pg_query.Node) *insertRender {
	return &insertRender{tree: proto.Clone(node).(*pg_query.Node), memo: map[string]rendered{}}
}

// Render implements plan.Insert.Render. On a failure (which planning has
// ruled out for this tree) it returns an empty statement, which the
// shards reject, rather than one that would insert the wrong rows.
func (ir *insertRender) Render(rows []int) (string, []int) {
	sql, params, err := ir.render(rows)
	if err != nil {
		return "", nil
	}
	return sql, params
}

func (ir *insertRender) render(rows []int) (string, []int, error) {
	var kb strings.Builder
	for _, r := range rows {
		kb.WriteString(strconv.Itoa(r))
		kb.WriteByte(',')
	}
	key := kb.String()
	ir.mu.Lock()
	if r, ok := ir.memo[key]; ok {
		ir.mu.Unlock()
		return r.sql, slices.Clone(r.params), nil
	}
	ir.mu.Unlock()

	c := proto.Clone(ir.tree).(*pg_query.Node)
	sel := c.GetInsertStmt().GetSelectStmt().GetSelectStmt()
	all := sel.ValuesLists
	picked := make([]*pg_query.Node, 0, len(rows))
	for _, i := range rows {
		if i < 0 || i >= len(all) {
			return "", nil, fmt.Errorf("row %d out of range (the INSERT has %d rows)", i, len(all))
		}
		picked = append(picked, all[i])
	}
	sel.ValuesLists = picked
	// Renumber parameters from $1 in order of appearance: the VALUES rows
	// come first in the tree's field order, then ON CONFLICT, RETURNING.
	newNum := map[int32]int32{}
	var params []int
	inspect(c, func(m proto.Message) bool {
		if p, ok := m.(*pg_query.ParamRef); ok {
			n, seen := newNum[p.Number]
			if !seen {
				params = append(params, int(p.Number))
				n = int32(len(params))
				newNum[p.Number] = n
			}
			p.Number = n
		}
		return true
	})
	sql, err := deparse(c)
	if err != nil {
		return "", nil, fmt.Errorf("rendering INSERT rows: %w", err)
	}
	ir.mu.Lock()
	if len(ir.memo) >= renderMemo {
		clear(ir.memo) // simple bound: start over
	}
	ir.memo[key] = rendered{sql: sql, params: params}
	ir.mu.Unlock()
	return sql, slices.Clone(params), nil
}

// planMerge routes MERGE: only into reference or unsharded tables.
func (r *Router) planMerge(m *pg_query.MergeStmt) *plan.Statement {
	a := newAnalysis(r)
	sc := a.newScope(nil, scopeTop, "")
	a.with(sc, m.WithClause)
	target := a.tableRef(sc, m.Relation)
	a.addItem(sc, target)
	a.fromItem(sc, m.SourceRelation)
	a.exprs(sc, m.JoinCondition)
	for _, w := range m.MergeWhenClauses {
		a.exprs(sc, w)
	}
	a.exprs(sc, m.ReturningList...)
	st := &plan.Statement{Command: "MERGE", Write: true}
	if target.kind == relSharded {
		return refuse("MERGE", false,
			"Use INSERT ... ON CONFLICT, UPDATE and DELETE with the shard key instead.",
			"MERGE into sharded table %s is not supported", target.table)
	}
	return r.planWrite(a, target, st, m)
}
