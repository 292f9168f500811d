package router

import (
	"reflect"
	"strings"
	"unicode"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/shardproxy/shardproxy/plan"
)

// ddl collects what a utility statement acts on.
type ddl struct {
	tables []*pg_query.RangeVar // tables it changes
	// global: schema-wide objects (types, functions, extensions, schemas,
	// roles) that statements on sharded tables may depend on: every shard
	// needs them.
	global bool
	// dropMissingOK: a DROP of an index or view or global object: the
	// router cannot tell which shards have it, so every shard runs it
	// with IF EXISTS.
	dropMissingOK bool
	noTx          bool
}

// planDDL routes utility statements: to every shard when they touch a
// sharded or reference table (or a schema-wide object), else to the
// default shard.
func (r *Router) planDDL(n *pg_query.Node) *plan.Statement {
	st := &plan.Statement{Command: commandTag(n), Write: true}
	d := ddlTargets(n)
	st.NoTxBlock = d.noTx
	var configured, other, child *pg_query.RangeVar
	if cs := n.GetCreateStmt(); cs != nil && len(cs.InhRelations) > 0 {
		// CREATE TABLE ... PARTITION OF (or INHERITS): the new table
		// lives wherever its parent does.
		child = cs.Relation
	}
	for _, rv := range d.tables {
		if rv.Relpersistence == "t" || rv == child {
			continue // temporary tables belong to one connection
		}
		switch k, _ := r.classify(rv.Schemaname, rv.Relname); k {
		case relSharded, relReference:
			if configured == nil {
				configured = rv
			}
		case relOther:
			if other == nil {
				other = rv
			}
		}
	}
	switch {
	case configured != nil && other != nil:
		return refuse(st.Command, false, "Run a separate statement for the unsharded table.",
			"%s of sharded or reference table %s together with unsharded table %s is not supported: %s lives only on the default shard",
			st.Command, relDisplay(configured), relDisplay(other), relDisplay(other))
	case configured != nil:
		st.Kind, st.Table = plan.Broadcast, relDisplay(configured)
	case d.global:
		st.Kind = plan.Broadcast
		if d.dropMissingOK {
			if drop := n.GetDropStmt(); drop != nil && !drop.MissingOk {
				c := proto.Clone(n).(*pg_query.Node)
				c.GetDropStmt().MissingOk = true
				if sql, err := deparse(c); err == nil {
					st.ShardSQL = sql
				}
			}
		}
	default:
		st.Kind = plan.Default
	}
	return st
}

// ddlTargets finds the tables and kind of objects a utility statement
// changes.
func ddlTargets(n *pg_query.Node) ddl {
	var d ddl
	add := func(rvs ...*pg_query.RangeVar) {
		for _, rv := range rvs {
			if rv != nil {
				d.tables = append(d.tables, rv)
			}
		}
	}
	addNodes := func(nodes []*pg_query.Node) {
		for _, x := range nodes {
			add(x.GetRangeVar())
		}
	}
	switch v := n.GetNode().(type) {
	case *pg_query.Node_CreateStmt:
		add(v.CreateStmt.Relation)
		addNodes(v.CreateStmt.InhRelations)
	case *pg_query.Node_CreateForeignTableStmt:
		add(v.CreateForeignTableStmt.BaseStmt.GetRelation())
	case *pg_query.Node_AlterTableStmt:
		switch v.AlterTableStmt.Objtype {
		case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_FOREIGN_TABLE:
			add(v.AlterTableStmt.Relation)
		case pg_query.ObjectType_OBJECT_TYPE:
			d.global = true
		}
	case *pg_query.Node_IndexStmt:
		add(v.IndexStmt.Relation)
		d.noTx = v.IndexStmt.Concurrent
	case *pg_query.Node_DropStmt:
		dropTargets(v.DropStmt, &d)
	case *pg_query.Node_TruncateStmt:
		addNodes(v.TruncateStmt.Relations)
	case *pg_query.Node_CommentStmt:
		names := strs(v.CommentStmt.Object.GetList().GetItems())
		switch v.CommentStmt.Objtype {
		case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_FOREIGN_TABLE:
			add(rangeVarOf(names))
		case pg_query.ObjectType_OBJECT_COLUMN:
			if len(names) > 1 {
				add(rangeVarOf(names[:len(names)-1]))
			}
		case pg_query.ObjectType_OBJECT_SCHEMA, pg_query.ObjectType_OBJECT_TYPE, pg_query.ObjectType_OBJECT_FUNCTION,
			pg_query.ObjectType_OBJECT_EXTENSION, pg_query.ObjectType_OBJECT_DOMAIN:
			d.global = true
		}
	case *pg_query.Node_GrantStmt:
		g := v.GrantStmt
		switch {
		case g.Targtype == pg_query.GrantTargetType_ACL_TARGET_ALL_IN_SCHEMA:
			d.global = true
		case g.Objtype == pg_query.ObjectType_OBJECT_TABLE:
			addNodes(g.Objects)
		case g.Objtype == pg_query.ObjectType_OBJECT_SCHEMA || g.Objtype == pg_query.ObjectType_OBJECT_FUNCTION ||
			g.Objtype == pg_query.ObjectType_OBJECT_TYPE || g.Objtype == pg_query.ObjectType_OBJECT_DOMAIN:
			d.global = true
		}
	case *pg_query.Node_VacuumStmt:
		for _, rel := range v.VacuumStmt.Rels {
			add(rel.GetVacuumRelation().GetRelation())
		}
		if len(v.VacuumStmt.Rels) == 0 {
			d.global = true // the whole database, on every shard
		}
		d.noTx = v.VacuumStmt.IsVacuumcmd
	case *pg_query.Node_ClusterStmt:
		add(v.ClusterStmt.Relation)
		if v.ClusterStmt.Relation == nil {
			d.global, d.noTx = true, true
		}
	case *pg_query.Node_ReindexStmt:
		for _, p := range v.ReindexStmt.Params {
			if de := p.GetDefElem(); de != nil && de.Defname == "concurrently" && isOn(defValue(de.Arg)) {
				d.noTx = true
			}
		}
		switch v.ReindexStmt.Kind {
		case pg_query.ReindexObjectType_REINDEX_OBJECT_TABLE:
			add(v.ReindexStmt.Relation)
		case pg_query.ReindexObjectType_REINDEX_OBJECT_SCHEMA, pg_query.ReindexObjectType_REINDEX_OBJECT_DATABASE,
			pg_query.ReindexObjectType_REINDEX_OBJECT_SYSTEM:
			d.noTx = true
		}
	case *pg_query.Node_LockStmt:
		addNodes(v.LockStmt.Relations)
	case *pg_query.Node_CreateTrigStmt:
		add(v.CreateTrigStmt.Relation)
	case *pg_query.Node_RuleStmt:
		add(v.RuleStmt.Relation)
	case *pg_query.Node_CreatePolicyStmt:
		add(v.CreatePolicyStmt.Table)
	case *pg_query.Node_AlterPolicyStmt:
		add(v.AlterPolicyStmt.Table)
	case *pg_query.Node_CreateStatsStmt:
		addNodes(v.CreateStatsStmt.Relations)
	case *pg_query.Node_RenameStmt:
		objectTargets(v.RenameStmt.RenameType, v.RenameStmt.Relation, &d)
		if v.RenameStmt.RenameType == pg_query.ObjectType_OBJECT_COLUMN ||
			v.RenameStmt.RenameType == pg_query.ObjectType_OBJECT_TABCONSTRAINT ||
			v.RenameStmt.RenameType == pg_query.ObjectType_OBJECT_TRIGGER ||
			v.RenameStmt.RenameType == pg_query.ObjectType_OBJECT_POLICY ||
			v.RenameStmt.RenameType == pg_query.ObjectType_OBJECT_RULE {
			add(v.RenameStmt.Relation)
		}
	case *pg_query.Node_AlterOwnerStmt:
		objectTargets(v.AlterOwnerStmt.ObjectType, v.AlterOwnerStmt.Relation, &d)
	case *pg_query.Node_AlterObjectSchemaStmt:
		objectTargets(v.AlterObjectSchemaStmt.ObjectType, v.AlterObjectSchemaStmt.Relation, &d)
	case *pg_query.Node_CreateFunctionStmt, *pg_query.Node_AlterFunctionStmt, *pg_query.Node_DefineStmt,
		*pg_query.Node_CreateExtensionStmt, *pg_query.Node_AlterExtensionStmt, *pg_query.Node_CreateSchemaStmt,
		*pg_query.Node_CreateEnumStmt, *pg_query.Node_CompositeTypeStmt, *pg_query.Node_CreateDomainStmt,
		*pg_query.Node_AlterEnumStmt, *pg_query.Node_AlterDomainStmt, *pg_query.Node_CreateRoleStmt,
		*pg_query.Node_AlterRoleStmt, *pg_query.Node_DropRoleStmt, *pg_query.Node_GrantRoleStmt:
		d.global = true
	case *pg_query.Node_CreatedbStmt, *pg_query.Node_DropdbStmt, *pg_query.Node_AlterSystemStmt,
		*pg_query.Node_CreateTableSpaceStmt, *pg_query.Node_DropTableSpaceStmt,
		*pg_query.Node_CreateSubscriptionStmt, *pg_query.Node_DropSubscriptionStmt:
		d.noTx = true
	}
	return d
}

// objectTargets handles ALTER ... OWNER/SET SCHEMA/RENAME by object type.
func objectTargets(t pg_query.ObjectType, rel *pg_query.RangeVar, d *ddl) {
	switch t {
	case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_FOREIGN_TABLE:
		if rel != nil {
			d.tables = append(d.tables, rel)
		}
	case pg_query.ObjectType_OBJECT_SCHEMA, pg_query.ObjectType_OBJECT_TYPE, pg_query.ObjectType_OBJECT_DOMAIN,
		pg_query.ObjectType_OBJECT_FUNCTION, pg_query.ObjectType_OBJECT_PROCEDURE, pg_query.ObjectType_OBJECT_ROUTINE,
		pg_query.ObjectType_OBJECT_EXTENSION, pg_query.ObjectType_OBJECT_AGGREGATE, pg_query.ObjectType_OBJECT_ROLE:
		d.global = true
	}
}

func dropTargets(drop *pg_query.DropStmt, d *ddl) {
	switch drop.RemoveType {
	case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_FOREIGN_TABLE:
		for _, o := range drop.Objects {
			d.tables = append(d.tables, rangeVarOf(strs(o.GetList().GetItems())))
		}
	case pg_query.ObjectType_OBJECT_INDEX, pg_query.ObjectType_OBJECT_VIEW:
		// An index or view name does not say which table it belongs to.
		d.global, d.dropMissingOK = true, true
		d.noTx = drop.Concurrent
	case pg_query.ObjectType_OBJECT_SCHEMA, pg_query.ObjectType_OBJECT_TYPE, pg_query.ObjectType_OBJECT_DOMAIN,
		pg_query.ObjectType_OBJECT_FUNCTION, pg_query.ObjectType_OBJECT_PROCEDURE, pg_query.ObjectType_OBJECT_ROUTINE,
		pg_query.ObjectType_OBJECT_EXTENSION, pg_query.ObjectType_OBJECT_AGGREGATE:
		d.global, d.dropMissingOK = true, true
	}
}

func rangeVarOf(names []string) *pg_query.RangeVar {
	switch len(names) {
	case 0:
		return nil
	case 1:
		return &pg_query.RangeVar{Relname: names[0]}
	}
	return &pg_query.RangeVar{Schemaname: names[len(names)-2], Relname: names[len(names)-1]}
}

// commandTag returns the command tag PostgreSQL reports for a utility
// statement.
func commandTag(n *pg_query.Node) string {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_CreateStmt:
		return "CREATE TABLE"
	case *pg_query.Node_AlterTableStmt:
		return "ALTER " + objectName(v.AlterTableStmt.Objtype)
	case *pg_query.Node_IndexStmt:
		return "CREATE INDEX"
	case *pg_query.Node_DropStmt:
		return "DROP " + objectName(v.DropStmt.RemoveType)
	case *pg_query.Node_TruncateStmt:
		return "TRUNCATE TABLE"
	case *pg_query.Node_CommentStmt:
		return "COMMENT"
	case *pg_query.Node_GrantStmt:
		if v.GrantStmt.IsGrant {
			return "GRANT"
		}
		return "REVOKE"
	case *pg_query.Node_GrantRoleStmt:
		if v.GrantRoleStmt.IsGrant {
			return "GRANT ROLE"
		}
		return "REVOKE ROLE"
	case *pg_query.Node_VacuumStmt:
		if v.VacuumStmt.IsVacuumcmd {
			return "VACUUM"
		}
		return "ANALYZE"
	case *pg_query.Node_CreateFunctionStmt:
		if v.CreateFunctionStmt.IsProcedure {
			return "CREATE PROCEDURE"
		}
		return "CREATE FUNCTION"
	case *pg_query.Node_DefineStmt:
		return "CREATE " + objectName(v.DefineStmt.Kind)
	case *pg_query.Node_CreateEnumStmt, *pg_query.Node_CompositeTypeStmt:
		return "CREATE TYPE"
	case *pg_query.Node_AlterEnumStmt:
		return "ALTER TYPE"
	case *pg_query.Node_CreateTrigStmt:
		return "CREATE TRIGGER"
	case *pg_query.Node_RuleStmt:
		return "CREATE RULE"
	case *pg_query.Node_CreateSeqStmt:
		return "CREATE SEQUENCE"
	case *pg_query.Node_AlterSeqStmt:
		return "ALTER SEQUENCE"
	case *pg_query.Node_CreateStatsStmt:
		return "CREATE STATISTICS"
	case *pg_query.Node_RenameStmt:
		t := v.RenameStmt.RenameType
		switch t {
		case pg_query.ObjectType_OBJECT_COLUMN, pg_query.ObjectType_OBJECT_TABCONSTRAINT, pg_query.ObjectType_OBJECT_ATTRIBUTE:
			t = v.RenameStmt.RelationType
		}
		return "ALTER " + objectName(t)
	case *pg_query.Node_AlterOwnerStmt:
		return "ALTER " + objectName(v.AlterOwnerStmt.ObjectType)
	case *pg_query.Node_AlterObjectSchemaStmt:
		return "ALTER " + objectName(v.AlterObjectSchemaStmt.ObjectType)
	case *pg_query.Node_LockStmt:
		return "LOCK TABLE"
	case *pg_query.Node_CreatedbStmt:
		return "CREATE DATABASE"
	case *pg_query.Node_DropdbStmt:
		return "DROP DATABASE"
	case *pg_query.Node_CheckPointStmt:
		return "CHECKPOINT"
	case *pg_query.Node_RefreshMatViewStmt:
		return "REFRESH MATERIALIZED VIEW"
	case *pg_query.Node_AlterDatabaseSetStmt:
		return "ALTER DATABASE"
	}
	// Everything else is named after its node: CreatePublicationStmt is
	// CREATE PUBLICATION, as PostgreSQL's tag.
	return tagFromType(n.GetNode())
}

func tagFromType(v any) string {
	if v == nil {
		return "UNKNOWN"
	}
	name := reflect.TypeOf(v).Elem().Name() // Node_CreatePublicationStmt
	name = strings.TrimPrefix(name, "Node_")
	name = strings.TrimSuffix(name, "Stmt")
	var words []string
	start := 0
	for i, c := range name {
		if i > 0 && unicode.IsUpper(c) {
			words = append(words, name[start:i])
			start = i
		}
	}
	words = append(words, name[start:])
	return strings.ToUpper(strings.Join(words, " "))
}

func objectName(t pg_query.ObjectType) string {
	switch t {
	case pg_query.ObjectType_OBJECT_MATVIEW:
		return "MATERIALIZED VIEW"
	case pg_query.ObjectType_OBJECT_STATISTIC_EXT:
		return "STATISTICS"
	case pg_query.ObjectType_OBJECT_TABCONSTRAINT:
		return "TABLE"
	case pg_query.ObjectType_OBJECT_FDW:
		return "FOREIGN DATA WRAPPER"
	case pg_query.ObjectType_OBJECT_FOREIGN_SERVER:
		return "SERVER"
	}
	return strings.ReplaceAll(strings.TrimPrefix(t.String(), "OBJECT_"), "_", " ")
}
