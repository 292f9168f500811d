package router

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/shardproxy/shardproxy/plan"
)

// planCopy routes COPY: FROM STDIN into a sharded table is split by row,
// into a reference table goes to every shard; TO STDOUT of a sharded
// table (or query) concatenates every shard's output.
func (r *Router) planCopy(c *pg_query.CopyStmt) *plan.Statement {
	st := &plan.Statement{Command: "COPY", Write: c.IsFrom}
	opts := copyOptions(c.Options)
	if c.Query != nil {
		return r.planCopyQuery(c, opts)
	}
	kind, key := r.classify(c.Relation.Schemaname, c.Relation.Relname)
	table := c.Relation.Relname
	if c.Relation.Schemaname != "" {
		table = c.Relation.Schemaname + "." + table
	}
	st.Table = table
	serverFile := c.Filename != "" || c.IsProgram
	if kind != relSharded && kind != relReference {
		st.Kind = plan.Default
		return st
	}
	if serverFile {
		what, dir := "a server file", "FROM"
		if c.IsProgram {
			what = "a server program"
		}
		if !c.IsFrom {
			dir = "TO"
		}
		return refuse("COPY", false, "Use COPY ... "+map[bool]string{true: "FROM STDIN", false: "TO STDOUT"}[c.IsFrom]+" (psql's \\copy) instead.",
			"COPY %s %s %s is not supported for %s table %s: the proxy cannot tell which server's file to use",
			table, dir, what, kindWord(kind), table)
	}
	if !c.IsFrom {
		if kind == relReference {
			st.Kind = plan.AnyShard
			return st
		}
		if err := copyOutConcatenates("COPY", table, opts); err != nil {
			return err
		}
		st.Kind = plan.FanOut
		return st
	}
	if kind == relReference {
		st.Kind = plan.Broadcast
		return st
	}
	cp := &plan.Copy{Table: table, KeyColumn: key, Format: "text"}
	for _, a := range c.Attlist {
		if s := a.GetString_(); s != nil {
			cp.Columns = append(cp.Columns, s.Sval)
		}
	}
	if cp.Columns != nil && !containsStr(cp.Columns, key) {
		return refuse("COPY", false,
			"List the shard key "+key+" among the COPY columns.",
			"COPY into sharded table %s without its shard key column %s is not supported", table, key)
	}
	for _, o := range opts {
		switch o.name {
		case "format":
			cp.Format = strings.ToLower(o.value)
		case "delimiter":
			cp.Delimiter = o.value
		case "quote":
			cp.Quote = o.value
		case "escape":
			cp.Escape = o.value
		case "null":
			cp.Null = o.value
		case "header":
			cp.Header = isOn(o.value)
		}
	}
	st.Kind, st.Copy = plan.CopyIn, cp
	return st
}

func kindWord(k relKind) string {
	if k == relSharded {
		return "sharded"
	}
	return "reference"
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// copyOutConcatenates checks that every shard's COPY output can simply
// be joined: text or CSV without a header line.
func copyOutConcatenates(cmd, what string, opts []copyOption) *plan.Statement {
	for _, o := range opts {
		switch {
		case o.name == "format" && strings.EqualFold(o.value, "binary"):
			return refuse(cmd, true, "Use FORMAT text or csv, or "+oneShardHint,
				"COPY %s TO STDOUT in binary format across shards is not supported: each shard's output has its own header", what)
		case o.name == "header" && isOn(o.value):
			return refuse(cmd, true, "Leave out HEADER, or "+oneShardHint,
				"COPY %s TO STDOUT with HEADER across shards is not supported: each shard would send a header line", what)
		}
	}
	return nil
}

// planCopyQuery routes COPY (query) TO STDOUT by its query.
func (r *Router) planCopyQuery(c *pg_query.CopyStmt, opts []copyOption) *plan.Statement {
	inner := r.plan(c.Query)
	if c.Filename != "" || c.IsProgram {
		if inner.Kind == plan.Default || inner.Kind == plan.AnyShard {
			return &plan.Statement{Kind: inner.Kind, Command: "COPY", Table: inner.Table}
		}
		return refuse("COPY", false, "Use COPY (...) TO STDOUT (psql's \\copy) instead.",
			"COPY (query) TO a server file is not supported for sharded tables: the proxy cannot tell which server's file to use")
	}
	st := &plan.Statement{Command: "COPY", Table: inner.Table, Write: inner.Write}
	switch inner.Kind {
	case plan.Refused:
		out := *inner
		out.Command = "COPY"
		return &out
	case plan.Keyed:
		if len(inner.Keys) > 1 || inner.Keys[0].ArrayParam > 0 {
			if err := copyOutConcatenates("COPY", "(query)", opts); err != nil {
				return err
			}
		}
		st.Kind, st.Keys = plan.Keyed, inner.Keys
		return st
	case plan.FanOut:
		if inner.Merge != nil {
			return refuse("COPY", true, "Run the query as a SELECT, or "+oneShardHint,
				"COPY (query) TO STDOUT across shards is not supported when the query sorts, limits, aggregates or removes duplicates: COPY output cannot be merged")
		}
		if err := copyOutConcatenates("COPY", "(query)", opts); err != nil {
			return err
		}
		st.Kind, st.Keys = plan.FanOut, inner.Keys
		return st
	default:
		st.Kind = inner.Kind
		return st
	}
}

type copyOption struct{ name, value string }

// isOn reads a boolean option as PostgreSQL does (HEADER MATCH is on).
func isOn(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "0", "no", "f", "n":
		return false
	}
	return true
}

// copyOptions reads COPY options, old and new syntax alike (the parser
// turns CSV HEADER into format=csv, header=true).
func copyOptions(nodes []*pg_query.Node) []copyOption {
	var out []copyOption
	for _, n := range nodes {
		d := n.GetDefElem()
		if d == nil {
			continue
		}
		out = append(out, copyOption{name: d.Defname, value: defValue(d.Arg)})
	}
	return out
}

// defValue renders an option argument; a bare option (HEADER) is true.
func defValue(n *pg_query.Node) string {
	if n == nil {
		return "true"
	}
	switch v := n.Node.(type) {
	case *pg_query.Node_String_:
		return v.String_.Sval
	case *pg_query.Node_Boolean:
		return strconv.FormatBool(v.Boolean.Boolval)
	case *pg_query.Node_Integer:
		return strconv.Itoa(int(v.Integer.Ival))
	case *pg_query.Node_List:
		return strings.Join(strs(v.List.Items), ",")
	}
	return ""
}
