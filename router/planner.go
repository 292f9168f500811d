package router

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/shardproxy/shardproxy/plan"
)

// plan routes one parsed statement.
func (r *Router) plan(n *pg_query.Node) *plan.Statement {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		if into := v.SelectStmt.IntoClause; into != nil {
			return r.planCreateAs(into, n, "SELECT")
		}
		return r.planSelect(n, v.SelectStmt)
	case *pg_query.Node_InsertStmt:
		return r.planInsert(n, v.InsertStmt)
	case *pg_query.Node_UpdateStmt:
		return r.planUpdate(v.UpdateStmt)
	case *pg_query.Node_DeleteStmt:
		return r.planDelete(v.DeleteStmt)
	case *pg_query.Node_MergeStmt:
		return r.planMerge(v.MergeStmt)
	case *pg_query.Node_CopyStmt:
		return r.planCopy(v.CopyStmt)
	case *pg_query.Node_ExplainStmt:
		return r.planExplain(v.ExplainStmt)
	case *pg_query.Node_TransactionStmt:
		return planTransaction(v.TransactionStmt)
	case *pg_query.Node_VariableSetStmt:
		return planSet(v.VariableSetStmt)
	case *pg_query.Node_VariableShowStmt:
		return planShow(v.VariableShowStmt)
	case *pg_query.Node_DiscardStmt:
		return session(discardCommand(v.DiscardStmt))
	case *pg_query.Node_DeallocateStmt:
		if v.DeallocateStmt.Isall {
			return session("DEALLOCATE ALL")
		}
		return session("DEALLOCATE")
	case *pg_query.Node_ConstraintsSetStmt:
		return session("SET CONSTRAINTS")
	case *pg_query.Node_ListenStmt:
		return &plan.Statement{Kind: plan.Default, Command: "LISTEN"}
	case *pg_query.Node_UnlistenStmt:
		return &plan.Statement{Kind: plan.Default, Command: "UNLISTEN"}
	case *pg_query.Node_NotifyStmt:
		return &plan.Statement{Kind: plan.Default, Command: "NOTIFY"}
	case *pg_query.Node_PrepareStmt:
		return r.planPrepare(v.PrepareStmt)
	case *pg_query.Node_ExecuteStmt:
		// Only statements of the default shard can be PREPAREd by name
		// (see planPrepare), so EXECUTE goes there too; it may write.
		return &plan.Statement{Kind: plan.Default, Command: "EXECUTE", Write: true}
	case *pg_query.Node_DeclareCursorStmt:
		return r.planDeclare(v.DeclareCursorStmt)
	case *pg_query.Node_FetchStmt:
		cmd := "FETCH"
		if v.FetchStmt.Ismove {
			cmd = "MOVE"
		}
		return &plan.Statement{Kind: plan.Default, Command: cmd}
	case *pg_query.Node_ClosePortalStmt:
		return &plan.Statement{Kind: plan.Default, Command: "CLOSE CURSOR"}
	case *pg_query.Node_DoStmt:
		return r.planDo(v.DoStmt)
	case *pg_query.Node_CallStmt:
		return &plan.Statement{Kind: plan.Default, Command: "CALL", Write: true}
	case *pg_query.Node_CreateTableAsStmt:
		cmd := "SELECT"
		if v.CreateTableAsStmt.Objtype == pg_query.ObjectType_OBJECT_MATVIEW {
			cmd = "CREATE MATERIALIZED VIEW"
		}
		return r.planCreateAs(v.CreateTableAsStmt.Into, v.CreateTableAsStmt.Query, cmd)
	case *pg_query.Node_ViewStmt:
		return r.planView(v.ViewStmt)
	}
	return r.planDDL(n)
}

// planExplain routes EXPLAIN like the statement it explains, as long as
// that runs on one shard: a plan from each of several shards is not the
// plan of the whole statement.
func (r *Router) planExplain(e *pg_query.ExplainStmt) *plan.Statement {
	inner := r.plan(e.Query)
	analyze := false
	for _, o := range e.Options {
		if d := o.GetDefElem(); d != nil && d.Defname == "analyze" {
			analyze = isOn(defValue(d.Arg))
		}
	}
	st := &plan.Statement{Command: "EXPLAIN", Table: inner.Table, Write: inner.Write && analyze}
	switch inner.Kind {
	case plan.Refused:
		out := *inner
		out.Command = "EXPLAIN"
		return &out
	case plan.Keyed:
		st.Kind, st.Keys = plan.Keyed, inner.Keys
	case plan.Default, plan.AnyShard:
		st.Kind = inner.Kind
	default:
		return refuse("EXPLAIN", true,
			"EXPLAIN it with a WHERE condition on the shard key to see one shard's plan, or "+oneShardHint,
			"EXPLAIN of a statement that runs on several shards (%s) is not supported", inner.Kind)
	}
	return st
}

// planCreateAs routes CREATE TABLE AS, SELECT INTO and CREATE
// MATERIALIZED VIEW: the new table lives where its name says it lives.
func (r *Router) planCreateAs(into *pg_query.IntoClause, query *pg_query.Node, cmd string) *plan.Statement {
	a := newAnalysis(r)
	if s := query.GetSelectStmt(); s != nil {
		// SELECT INTO: analyze the query without its INTO clause.
		c := proto.Clone(s).(*pg_query.SelectStmt)
		c.IntoClause = nil
		a.selectStmt(c, nil, scopeTop, "")
	} else {
		a.query(query, nil, scopeTop, "")
	}
	target, _ := r.classify(into.Rel.Schemaname, into.Rel.Relname)
	name := relDisplay(into.Rel)
	st := &plan.Statement{Command: cmd, Write: true, Table: name}
	sharded, other := a.first(relSharded), a.first(relOther)
	switch {
	case target == relSharded:
		return refuse(cmd, false,
			"CREATE TABLE "+name+" first (the proxy creates it on every shard), then fill it with INSERT ... VALUES or COPY.",
			"CREATE TABLE AS into sharded table %s is not supported: the proxy cannot see which shard each row belongs to", name)
	case target == relReference:
		if sharded != nil || other != nil {
			src := sharded
			if src == nil {
				src = other
			}
			return refuse(cmd, false,
				"CREATE TABLE "+name+" first, then fill it with INSERT ... VALUES or COPY.",
				"CREATE TABLE AS into reference table %s reading %s is not supported: every shard must store the same rows", name, src.table)
		}
		st.Kind = plan.Broadcast
	case sharded != nil:
		return refuse(cmd, true, hintShard(sharded),
			"CREATE TABLE AS over sharded table %s across shards is not supported: the new table would hold the default shard's rows only",
			sharded.table)
	default:
		st.Kind = plan.Default
	}
	return st
}

func relDisplay(rv *pg_query.RangeVar) string {
	if rv.Schemaname != "" {
		return rv.Schemaname + "." + rv.Relname
	}
	return rv.Relname
}

// planView routes CREATE VIEW: over reference tables every shard gets
// it; over sharded tables queries through it could not be routed.
func (r *Router) planView(v *pg_query.ViewStmt) *plan.Statement {
	a := newAnalysis(r)
	a.query(v.Query, nil, scopeTop, "")
	st := &plan.Statement{Command: "CREATE VIEW", Write: true, Table: relDisplay(v.View)}
	if s := a.first(relSharded); s != nil {
		return refuse("CREATE VIEW", true, "Query the sharded tables directly, or "+oneShardHint,
			"CREATE VIEW over sharded table %s is not supported: the proxy cannot route queries through a view", s.table)
	}
	if a.first(relReference) != nil && a.first(relOther) == nil {
		st.Kind = plan.Broadcast
		return st
	}
	st.Kind = plan.Default
	return st
}

// planPrepare routes SQL-level PREPARE: the EXECUTE that follows names no
// table, so only statements of the default shard can be prepared so.
func (r *Router) planPrepare(p *pg_query.PrepareStmt) *plan.Statement {
	inner := r.plan(p.Query)
	if inner.Kind == plan.Default {
		return &plan.Statement{Kind: plan.Default, Command: "PREPARE"}
	}
	return refuse("PREPARE", true,
		"Use the extended query protocol (your driver's prepared statements) instead of SQL PREPARE/EXECUTE.",
		"SQL PREPARE of a statement on sharded or reference table %s is not supported: EXECUTE could not be routed", inner.Table)
}

// planDeclare routes DECLARE CURSOR: FETCH names only the cursor, so the
// cursor must live on the default shard.
func (r *Router) planDeclare(d *pg_query.DeclareCursorStmt) *plan.Statement {
	inner := r.plan(d.Query)
	if inner.Kind == plan.Default || inner.Kind == plan.AnyShard {
		return &plan.Statement{Kind: plan.Default, Command: "DECLARE CURSOR"}
	}
	return refuse("DECLARE CURSOR", true,
		"Page with LIMIT/OFFSET or WHERE key > last_seen instead of a cursor, or "+oneShardHint,
		"DECLARE CURSOR over sharded table %s is not supported: FETCH could not be routed", inner.Table)
}

// planDo refuses DO blocks that mention sharded or reference tables: the
// statements inside run on the default shard without the proxy seeing
// them.
func (r *Router) planDo(d *pg_query.DoStmt) *plan.Statement {
	for _, a := range d.Args {
		de := a.GetDefElem()
		if de == nil || de.Defname != "as" {
			continue
		}
		body := defValue(de.Arg)
		if t := r.mentionsTable(body); t != "" {
			return refuse("DO", true, "Run the statements directly through the proxy, or "+oneShardHint,
				"DO block referencing sharded or reference table %s is not supported: the proxy cannot route the statements inside it", t)
		}
	}
	return &plan.Statement{Kind: plan.Default, Command: "DO", Write: true}
}

// mentionsTable finds a configured table name among the identifiers of a
// procedural body.
func (r *Router) mentionsTable(body string) string {
	words := strings.FieldsFunc(strings.ToLower(body), func(c rune) bool {
		return !(c == '_' || c == '.' || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
	})
	for _, w := range words {
		w = strings.TrimPrefix(w, "public.")
		if _, ok := r.sharded[w]; ok || r.reference[w] {
			return w
		}
	}
	return ""
}
