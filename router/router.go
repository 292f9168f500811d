package router

import (
	"strings"
	"sync/atomic"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// Schema tells the router which tables are sharded and which are
// reference tables. Names are as PostgreSQL stores them: lower-case for
// unquoted identifiers, the exact spelling for quoted ones. A name may be
// qualified with its schema; "public." is optional (pgbench_accounts and
// public.pgbench_accounts are the same table).
type Schema struct {
	// Sharded maps a table to its shard-key column.
	Sharded map[string]string
	// Reference lists tables that live, whole, on every shard.
	Reference map[string]bool
}

// Part is one statement of a simple-query string.
type Part struct {
	// SQL is the statement's own text (comments kept, the separating
	// semicolon and surrounding blanks removed).
	SQL string
	// Stmt is the routing plan. It is shared through the cache: never
	// modify it.
	Stmt *plan.Statement
}

// Router turns SQL text into routing plans. It is safe for concurrent use.
type Router struct {
	sharded   map[string]string
	reference map[string]bool
	cache     *cache
	// Plan cache lookups, for metrics. Sessions keep their own caches in
	// front of this one, so these are not counted on every statement.
	hits, misses atomic.Uint64
}

// CacheStats returns the plan cache's hits and misses since start.
func (r *Router) CacheStats() (hits, misses uint64) { return r.hits.Load(), r.misses.Load() }

// maxCachedText bounds the statements the cache keeps: longer texts are
// typically generated bulk INSERTs that are rarely repeated and would
// crowd out the statements that are.
const maxCachedText = 32 << 10

// New returns a router for the schema with a plan cache of about
// cacheSize statement texts (0 or less disables the cache).
func New(s Schema, cacheSize int) *Router {
	r := &Router{
		sharded:   make(map[string]string, len(s.Sharded)),
		reference: make(map[string]bool, len(s.Reference)),
		cache:     newCache(cacheSize),
	}
	// Store names without "public." so that lookups by the unqualified
	// name and by public.name both find them.
	for t, k := range s.Sharded {
		r.sharded[strings.TrimPrefix(t, "public.")] = k
	}
	for t, ok := range s.Reference {
		if ok {
			r.reference[strings.TrimPrefix(t, "public.")] = true
		}
	}
	return r
}

// Analyze returns one Part per statement of sql, in order. An empty
// string (or one holding only comments and semicolons) yields no parts.
// A string that does not parse yields a single Refused part carrying
// PostgreSQL's syntax error (SQLSTATE 42601): PostgreSQL runs none of the
// statements of such a string either.
//
// Plans are cached by the exact text; a cache hit does not allocate.
// The returned slice and plans are shared: do not modify them.
func (r *Router) Analyze(sql string) []Part {
	if parts, ok := r.cache.get(sql); ok {
		r.hits.Add(1)
		return parts
	}
	r.misses.Add(1)
	parts, ok := r.analyze(sql)
	if ok && len(sql) <= maxCachedText {
		r.cache.put(sql, parts)
	}
	return parts
}

// analyze parses and plans sql; ok is false when the text did not parse
// (such results are not cached: junk must not evict useful plans).
func (r *Router) analyze(sql string) (parts []Part, ok bool) {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return []Part{{SQL: sql, Stmt: syntaxError(err)}}, false
	}
	parts = make([]Part, 0, len(tree.Stmts))
	for _, raw := range tree.Stmts {
		text := statementText(sql, raw)
		st := r.safePlan(raw.Stmt)
		if st.Kind == plan.Default {
			st.Table = "" // Table names sharded and reference tables only
		}
		st.Hints = parseHints(text)
		parts = append(parts, Part{SQL: text, Stmt: st})
	}
	return parts, true
}

// safePlan plans one statement; a bug in the router refuses that
// statement with an internal error instead of taking the proxy down.
func (r *Router) safePlan(n *pg_query.Node) (st *plan.Statement) {
	defer func() {
		if p := recover(); p != nil {
			st = &plan.Statement{Kind: plan.Refused, Err: wire.Errorf(wire.CodeInternalError,
				"shardproxy could not route this statement: %v", p)}
		}
	}()
	return r.plan(n)
}

// statementText cuts one statement out of a multi-statement string.
// Locations are byte offsets; a zero length means "to the end".
func statementText(sql string, raw *pg_query.RawStmt) string {
	start := int(raw.StmtLocation)
	end := len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > end || end > len(sql) {
		return strings.TrimSpace(sql)
	}
	return strings.TrimSpace(sql[start:end])
}

// syntaxError turns a parser error into PostgreSQL's error.
func syntaxError(err error) *plan.Statement {
	msg := err.Error()
	if msg == "" {
		msg = "syntax error"
	}
	return &plan.Statement{Kind: plan.Refused, Err: wire.Errorf(wire.CodeSyntaxError, "%s", msg)}
}

// parseHints reads a leading /* shardproxy: name=value, ... */ comment.
// Unknown names are ignored: a comment must never make a statement fail.
func parseHints(text string) plan.Hints {
	var h plan.Hints
	s := text
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		switch {
		case strings.HasPrefix(s, "--"):
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				return h
			}
			s = s[i+1:]
			continue
		case strings.HasPrefix(s, "/*"):
		default:
			return h
		}
		end := strings.Index(s, "*/")
		if end < 0 {
			return h
		}
		body := strings.TrimSpace(s[2:end])
		s = s[end+2:]
		rest, ok := cutPrefixFold(body, "shardproxy:")
		if !ok {
			continue
		}
		for _, item := range strings.Split(rest, ",") {
			name, value, ok := strings.Cut(item, "=")
			if !ok {
				continue
			}
			name = strings.ToLower(strings.TrimSpace(name))
			name = strings.TrimPrefix(name, "shardproxy.")
			value = unquote(strings.TrimSpace(value))
			switch name {
			case "shard":
				h.Shard = value
			case "target":
				h.Target = strings.ToLower(value)
			case "max_replica_lag":
				h.MaxReplicaLag = value
			case "explain":
				h.Explain = isTrue(value)
			}
		}
	}
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') && v[len(v)-1] == v[0] {
		q := v[:1]
		return strings.ReplaceAll(v[1:len(v)-1], q+q, q)
	}
	return v
}

// isTrue accepts PostgreSQL's spellings of a true boolean setting.
func isTrue(v string) bool {
	switch strings.ToLower(v) {
	case "on", "true", "yes", "1", "t", "y":
		return true
	}
	return false
}
