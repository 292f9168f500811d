// Package plan holds the contract between the router, which reads SQL
// and decides where a statement goes, and the executor in the proxy,
// which talks to the shards and merges what they return. The router
// fills these types and never touches a socket; the executor reads them
// and never parses SQL.
package plan

import "github.com/shardproxy/shardproxy/wire"

// Kind says which shards a statement goes to.
type Kind uint8

const (
	// Default: no sharded or reference table is involved (catalog
	// queries, unsharded tables, SELECT 1): the default shard.
	Default Kind = iota
	// Keyed: the shards owning the values in Keys (one or a few).
	// If no key value can be resolved at Bind (a NULL), all shards.
	Keyed
	// FanOut: a read without a usable key: every shard, results merged
	// as Merge says.
	FanOut
	// Broadcast: DDL or a write to a reference table: every shard runs
	// it (atomically where PostgreSQL allows a transaction); the client
	// gets one answer.
	Broadcast
	// AnyShard: a read of reference tables only: any one shard can answer
	// (the executor picks the default shard or one the session already
	// uses in its transaction).
	AnyShard
	// InsertSplit: a multi-row INSERT ... VALUES into a sharded table:
	// rows are split by key (see Insert).
	InsertSplit
	// Refused: the proxy cannot answer this exactly; Err says why
	// (SQLSTATE 0A000 for unsupported cross-shard forms).
	Refused
	// Local: transaction control, session settings and other statements
	// the executor handles itself (see Control).
	Local
	// CopyIn: COPY ... FROM STDIN into a sharded table, split by row
	// (see Copy). COPY into other tables is Default or Broadcast.
	CopyIn
)

var kindNames = [...]string{"default", "keyed", "fan-out", "broadcast", "any-shard", "insert-split", "refused", "local", "copy-in"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Statement is what the router knows about one SQL statement before any
// parameter is bound. It is computed once per distinct statement text and
// cached; it must not be modified after the router returns it.
type Statement struct {
	Kind Kind
	// Command is the statement's command tag word: SELECT, INSERT,
	// UPDATE, DELETE, CREATE TABLE, BEGIN, ... (for explain and metrics).
	Command string
	// Table is the sharded (or reference) table that decided the route,
	// lower-case, schema-qualified only if the SQL qualified it.
	Table string
	// Write is true when the statement may change data or schema:
	// transactions that write on more than one shard commit with 2PC.
	Write bool
	// Keys lists the shard-key values the statement is restricted to
	// (Kind Keyed): the statement touches the union of their owners.
	Keys []Key
	// ShardSQL, when not empty, is the statement text to send to the
	// shards instead of the client's (rewritten for a fan-out: avg split
	// into sum and count, LIMIT raised by OFFSET, hidden ORDER BY/GROUP
	// BY columns added). Parameters keep their numbers.
	ShardSQL string
	// Merge says how to combine the shards' results (Kind FanOut).
	Merge *Merge
	// Insert describes the rows of an InsertSplit.
	Insert *Insert
	// Copy describes a CopyIn.
	Copy *Copy
	// Control is set for Kind Local.
	Control *Control
	// Shard, when not empty, is a target forced by a
	// /* shardproxy: shard=NAME */ comment (see also Hints).
	Hints Hints
	// NoTxBlock marks statements PostgreSQL refuses inside a transaction
	// block (VACUUM, CREATE INDEX CONCURRENTLY, CREATE DATABASE, ...): a
	// Broadcast of one runs on each shard on its own.
	NoTxBlock bool
	// Err is the error to return for Kind Refused (and for statements
	// that do not parse: SQLSTATE 42601 with the parser's message).
	Err *wire.Error
	// CrossShard marks a Refused statement that is refused only because
	// it would span shards: on the one shard forced by shardproxy.shard
	// (session setting or hint) the executor may run the client's text
	// as it is. Refusals that hold on any shard (syntax errors, client
	// PREPARE TRANSACTION, COPY FROM a server file) leave it false.
	CrossShard bool
}

// Hints are per-statement settings from a leading
// /* shardproxy: name=value, ... */ comment, as in PRODUCT.md.
type Hints struct {
	Shard         string // shardproxy.shard
	Target        string // shardproxy.target: auto | primary | replica
	MaxReplicaLag string // shardproxy.max_replica_lag
	Explain       bool   // shardproxy.explain
}

// Key is one shard-key value a statement is restricted to.
type Key struct {
	// Table and Column name the sharded table and its key column.
	Table, Column string
	// Exactly one of the following is set:
	// Value is a literal key as SQL text without quotes ("42", "abc").
	// Null marks a NULL literal (owned by no shard's hash: see router docs).
	// Param is a 1-based $N whose bound value is the key.
	// ArrayParam is a 1-based $N bound to an array of keys (= ANY($1)).
	Value      string
	IsValue    bool
	Null       bool
	Param      int
	ArrayParam int
}

// Merge says how the executor combines fan-out results. Column numbers
// are 0-based positions in the rows the shards return for ShardSQL.
type Merge struct {
	// Visible is how many leading columns the client sees; columns from
	// Visible on are hidden helpers (sort keys, group keys, avg counts)
	// that the executor strips from RowDescription and every DataRow.
	Visible int
	// GroupBy lists the columns that identify a group when rows from
	// different shards must be combined (GROUP BY, or aggregates without
	// GROUP BY: then GroupBy is empty and Aggregates is not, and all rows
	// form one group). Columns neither grouped nor aggregated take the
	// value of the group's first row.
	GroupBy []int
	// Grouped is true when rows must be combined into groups (GROUP BY or
	// aggregates present and the groups are not known to be shard-local).
	Grouped bool
	// Aggregates combine per-shard partial results within a group.
	Aggregates []Aggregate
	// Having filters groups after combining; all conditions must hold.
	Having []Filter
	// Distinct removes duplicate visible rows (SELECT DISTINCT).
	Distinct bool
	// OrderBy is the final order; each shard's rows already come in this
	// order (the router keeps ORDER BY in ShardSQL), so without grouping
	// the executor merges sorted streams.
	OrderBy []SortKey
	// Limit and Offset apply after merging. ShardSQL asks each shard for
	// at most Limit+Offset rows when that is safe.
	Limit, Offset *Count
	// Hidden is how many trailing helper columns ShardSQL adds after the
	// client's columns.
	Hidden int
	// Relative is set when the client's select list has a * whose width
	// the router cannot know: Visible is then -1 and a negative Col in
	// GroupBy, Aggregates, Having and OrderBy counts from the end of the
	// row (-1 is the last column; only hidden helpers are named that
	// way). Resolve turns such a Merge into an absolute one once the
	// RowDescription says how many columns the shards return.
	Relative bool
}

// Resolve returns m with absolute column numbers for rows of the given
// width (the number of fields in the shards' RowDescription). A Merge
// that is not Relative is returned as it is, without copying.
func (m Merge) Resolve(columns int) Merge {
	if !m.Relative {
		return m
	}
	abs := func(c int) int {
		if c < 0 {
			return columns + c
		}
		return c
	}
	r := m
	r.Relative = false
	r.Visible = columns - m.Hidden
	r.GroupBy = make([]int, len(m.GroupBy))
	for i, c := range m.GroupBy {
		r.GroupBy[i] = abs(c)
	}
	r.Aggregates = make([]Aggregate, len(m.Aggregates))
	for i, a := range m.Aggregates {
		a.Col, a.CountCol = abs(a.Col), abs(a.CountCol)
		r.Aggregates[i] = a
	}
	r.Having = make([]Filter, len(m.Having))
	for i, f := range m.Having {
		f.Col = abs(f.Col)
		r.Having[i] = f
	}
	r.OrderBy = make([]SortKey, len(m.OrderBy))
	for i, s := range m.OrderBy {
		s.Col = abs(s.Col)
		r.OrderBy[i] = s
	}
	return r
}

// AggFunc is an aggregate the executor can combine.
type AggFunc uint8

const (
	AggCount AggFunc = iota + 1 // sum of partial counts; 0 when no rows
	AggSum                      // sum of partial sums; NULL when all NULL
	AggMin
	AggMax
	// AggAvg: Col holds sum(x) from each shard and CountCol count(x); the
	// result is sum/count with PostgreSQL's numeric division scale for
	// integer and numeric input (float8 for float input), and replaces
	// the column's type in RowDescription.
	AggAvg
	// AggBoolAnd / AggBoolOr: bool_and / bool_or (every / some).
	AggBoolAnd
	AggBoolOr
)

var aggNames = [...]string{"", "count", "sum", "min", "max", "avg", "bool_and", "bool_or"}

func (a AggFunc) String() string {
	if int(a) < len(aggNames) {
		return aggNames[a]
	}
	return "unknown"
}

// Aggregate is one aggregated output column.
type Aggregate struct {
	Col      int
	Func     AggFunc
	CountCol int // AggAvg only: the hidden count column
}

// Filter is one HAVING condition: column Col compared with a constant.
type Filter struct {
	Col int
	// Op is one of = <> < <= > >=.
	Op string
	// Value is the constant as SQL text without quotes; Null for IS NULL
	// (Op "=") / IS NOT NULL (Op "<>").
	Value string
	Null  bool
}

// SortKey is one ORDER BY item.
type SortKey struct {
	Col        int
	Desc       bool
	NullsFirst bool // resolved: PostgreSQL's default is NULLS LAST for ASC, FIRST for DESC
}

// Count is a LIMIT or OFFSET: a constant or a $N parameter.
type Count struct {
	Value int64
	Param int // 1-based $N when not zero
	// All marks LIMIT ALL / LIMIT NULL: no limit.
	All bool
}

// Insert describes a multi-row INSERT ... VALUES into a sharded table.
type Insert struct {
	// Rows holds each VALUES row's key, in order.
	Rows []Key
	// Render returns the statement restricted to the given rows (indexes
	// into Rows, ascending), with parameters renumbered from $1, and the
	// original 1-based parameter numbers in their new order, so the
	// executor can build the Bind for that shard.
	Render func(rows []int) (sql string, params []int)
}

// Copy describes COPY ... FROM STDIN into a sharded table.
type Copy struct {
	Table string
	// Columns as listed in the COPY (lower-case); nil means the table's
	// columns in order, which the executor looks up in the catalog.
	Columns []string
	// KeyColumn is the table's shard-key column.
	KeyColumn string
	// Format is text, csv or binary; Delimiter, Quote, Escape, Null and
	// Header are the options as given (empty = PostgreSQL's default).
	Format                         string
	Delimiter, Quote, Escape, Null string
	Header                         bool
}

// ControlKind is a statement the executor handles itself.
type ControlKind uint8

const (
	Begin ControlKind = iota + 1 // BEGIN / START TRANSACTION (Text is sent to each shard joined)
	Commit
	Rollback
	Savepoint
	Release
	RollbackTo
	// PrepareTransaction and friends from the client: refused for now by
	// the router (the proxy uses 2PC itself).
	SetProxy   // SET shardproxy.<Name> = Value (also SET LOCAL; Local true)
	ResetProxy // RESET shardproxy.<Name>
	ShowProxy  // SHOW shardproxy.<Name>
	// Session: SET, RESET, DISCARD, DEALLOCATE and other session-level
	// statements that must reach every server connection the session
	// uses; the executor applies them as it does today.
	Session
)

// Control is a statement the executor handles itself.
type Control struct {
	Kind ControlKind
	// Name is the savepoint name, or the shardproxy setting name (without
	// the "shardproxy." prefix, lower-case).
	Name  string
	Value string
	Local bool
	// Chain is set for COMMIT AND CHAIN / ROLLBACK AND CHAIN.
	Chain bool
}

// Params are the values bound to a statement's $N parameters (a Bind
// message), as sent by the client.
type Params struct {
	// Values[i] is $i+1; nil is SQL NULL.
	Values [][]byte
	// Formats are the Bind's parameter format codes: none (all text),
	// one (applies to all) or one per parameter; 0 text, 1 binary.
	Formats []int16
	// OIDs are the parameter types the client declared at Parse (0 =
	// unspecified), by position; may be shorter than Values.
	OIDs []uint32
}

// Binary reports whether $n (1-based) is sent in binary format.
func (p *Params) Binary(n int) bool {
	switch len(p.Formats) {
	case 0:
		return false
	case 1:
		return p.Formats[0] == 1
	default:
		return n-1 < len(p.Formats) && p.Formats[n-1] == 1
	}
}

// Value returns $n (1-based) and whether it exists.
func (p *Params) Value(n int) ([]byte, bool) {
	if n < 1 || n > len(p.Values) {
		return nil, false
	}
	return p.Values[n-1], true
}
