package router

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/shardproxy/shardproxy/plan"
)

// planTransaction maps transaction control to the executor's Control.
func planTransaction(t *pg_query.TransactionStmt) *plan.Statement {
	local := func(cmd string, c plan.Control) *plan.Statement {
		return &plan.Statement{Kind: plan.Local, Command: cmd, Control: &c}
	}
	switch t.Kind {
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN:
		return local("BEGIN", plan.Control{Kind: plan.Begin})
	case pg_query.TransactionStmtKind_TRANS_STMT_START:
		return local("START TRANSACTION", plan.Control{Kind: plan.Begin})
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT:
		return local("COMMIT", plan.Control{Kind: plan.Commit, Chain: t.Chain})
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		return local("ROLLBACK", plan.Control{Kind: plan.Rollback, Chain: t.Chain})
	case pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		return local("SAVEPOINT", plan.Control{Kind: plan.Savepoint, Name: t.SavepointName})
	case pg_query.TransactionStmtKind_TRANS_STMT_RELEASE:
		return local("RELEASE", plan.Control{Kind: plan.Release, Name: t.SavepointName})
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		return local("ROLLBACK", plan.Control{Kind: plan.RollbackTo, Name: t.SavepointName})
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
		return refuse("PREPARE TRANSACTION", false,
			"Use COMMIT: the proxy commits transactions that span shards with two-phase commit itself.",
			"PREPARE TRANSACTION from a client is not supported through the proxy")
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		return refuse("COMMIT PREPARED", false,
			"The proxy resolves its own prepared transactions; run COMMIT PREPARED on the shard directly if you must.",
			"COMMIT PREPARED from a client is not supported through the proxy")
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		return refuse("ROLLBACK PREPARED", false,
			"The proxy resolves its own prepared transactions; run ROLLBACK PREPARED on the shard directly if you must.",
			"ROLLBACK PREPARED from a client is not supported through the proxy")
	}
	return &plan.Statement{Kind: plan.Default, Command: "BEGIN"}
}

const proxyPrefix = "shardproxy."

// planSet handles SET / RESET: shardproxy.* settings are the proxy's own,
// everything else is a session setting the executor forwards.
func planSet(v *pg_query.VariableSetStmt) *plan.Statement {
	cmd := "SET"
	if v.Kind == pg_query.VariableSetKind_VAR_RESET || v.Kind == pg_query.VariableSetKind_VAR_RESET_ALL {
		cmd = "RESET"
	}
	name := strings.ToLower(v.Name)
	if rest, ok := strings.CutPrefix(name, proxyPrefix); ok {
		c := plan.Control{Name: rest, Local: v.IsLocal}
		switch v.Kind {
		case pg_query.VariableSetKind_VAR_SET_VALUE:
			c.Kind, c.Value = plan.SetProxy, setValue(v.Args)
		default: // SET x TO DEFAULT, RESET x
			c.Kind = plan.ResetProxy
		}
		return &plan.Statement{Kind: plan.Local, Command: cmd, Control: &c}
	}
	c := plan.Control{Kind: plan.Session, Name: v.Name, Value: setValue(v.Args), Local: v.IsLocal}
	if v.Kind == pg_query.VariableSetKind_VAR_RESET_ALL {
		c.Name = "all"
	}
	return &plan.Statement{Kind: plan.Local, Command: cmd, Control: &c}
}

// setValue renders SET's value list as text without quotes.
func setValue(args []*pg_query.Node) string {
	vals := make([]string, 0, len(args))
	for _, a := range args {
		if text, null, ok := constText(a); ok && !null {
			vals = append(vals, text)
			continue
		}
		if d := a.GetDefElem(); d != nil { // SET TRANSACTION ISOLATION LEVEL ...
			vals = append(vals, d.Defname+"="+setValue([]*pg_query.Node{d.Arg}))
			continue
		}
		vals = append(vals, exprSQL(a))
	}
	return strings.Join(vals, ", ")
}

// planShow handles SHOW: the proxy answers SHOW shardproxy.*.
func planShow(v *pg_query.VariableShowStmt) *plan.Statement {
	name := strings.ToLower(v.Name)
	if rest, ok := strings.CutPrefix(name, proxyPrefix); ok {
		return &plan.Statement{Kind: plan.Local, Command: "SHOW", Control: &plan.Control{Kind: plan.ShowProxy, Name: rest}}
	}
	return &plan.Statement{Kind: plan.Default, Command: "SHOW"}
}

func session(cmd string) *plan.Statement {
	return &plan.Statement{Kind: plan.Local, Command: cmd, Control: &plan.Control{Kind: plan.Session}}
}

func discardCommand(d *pg_query.DiscardStmt) string {
	switch d.Target {
	case pg_query.DiscardMode_DISCARD_PLANS:
		return "DISCARD PLANS"
	case pg_query.DiscardMode_DISCARD_SEQUENCES:
		return "DISCARD SEQUENCES"
	case pg_query.DiscardMode_DISCARD_TEMP:
		return "DISCARD TEMP"
	}
	return "DISCARD ALL"
}
