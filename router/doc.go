// Package router reads SQL and decides where each statement runs: the
// plan.Statement the executor follows. It never touches a socket.
//
// # Input
//
// Analyze takes the text of a simple Query message (or of a Parse
// message) and returns one Part per statement, cut out of the text by
// the parser's statement locations. Parsing uses PostgreSQL's own grammar
// (pg_query, cgo). Plans are cached by exact text in a bounded cache
// (CLOCK eviction, bounded in entries and bytes); a hit costs a read
// lock and a map lookup and allocates nothing. Texts that do not parse
// are answered with PostgreSQL's syntax error (SQLSTATE 42601) and not
// cached. Plans are shared between sessions and must not be modified.
// Describe renders a plan as one line (golden files, shardproxy.explain).
//
// # Tables
//
// The Schema names sharded tables with their key column and reference
// tables. Every other table is unsharded and lives on the default shard.
// Names compare as PostgreSQL stores them (unquoted identifiers folded
// to lower case, quoted ones exact); "public." may be written or not.
//
// # Routing rules
//
// Keyed: a statement on sharded tables whose rows are restricted to
// known key values: key = literal, key = $N, key IN (...), key = ANY($N)
// (an array parameter), key = ANY('{...}') or ARRAY[...], possibly cast
// ($1::int), qualified (a.aid, public.t.aid) and AND-ed with anything;
// an OR of such restrictions on the same table unions their values.
// Joins between sharded tables must equate their key columns (ON, USING,
// NATURAL, a correlated subquery, key IN (SELECT key ...)): such tables
// are co-located, their rows always meet on one shard. A restriction
// spreads along an equality that limits the other side too (inner
// joins, outer joins towards the nullable side, outer query towards a
// correlated subquery). When every sharded table is restricted this way
// the statement is Keyed; with one value it runs on one shard and any
// construct is fine there (window functions, CTEs, subqueries, ...).
//
// Several key values: a read that needs no merging (rows are only
// concatenated) stays Keyed with several keys; one that needs merging
// (ORDER BY, LIMIT, aggregates, DISTINCT) becomes FanOut with Keys set:
// its rows can only come from the owners of Keys, so the executor may
// restrict the fan-out to them. Writes with several keys stay Keyed.
//
// FanOut: a read of sharded tables without a usable key, if exact:
// every sharded table co-located with a table of the top-level FROM
// list, no outer join that would repeat a reference table's rows on
// every shard. Merge says how to combine: ORDER BY (sort keys not in
// the select list become hidden trailing columns), LIMIT/OFFSET (each
// shard is asked for LIMIT limit+offset; with parameters LIMIT
// $1::bigint + $2::bigint), count/sum/min/max/avg/bool_and/bool_or (avg(x)
// becomes sum(x) under the same column name plus a hidden count(x)),
// GROUP BY (groups are combined, unless GROUP BY holds the shard key:
// then each group is on one shard and the shards' groups are final),
// HAVING (AND-ed comparisons of aggregates with constants move to the
// executor; conditions on group keys stay with the shards), DISTINCT,
// count(DISTINCT key) and UNION [ALL] of branches that return their
// sharded rows as they are. With SELECT * the row width is unknown:
// Merge.Relative is set and hidden columns are numbered from the end.
// A nil Merge means plain concatenation. Keyless UPDATE and DELETE are
// FanOut writes with a nil Merge (RETURNING rows concatenated).
//
// ShardSQL is the rewritten text when the shards must run something
// else than the client's text; it always mentions every parameter the
// client's text does, with the same types (parameters of a removed
// LIMIT/OFFSET survive as OFFSET 0 * $n::bigint), so the Bind can be
// forwarded unchanged.
//
// INSERT ... VALUES into a sharded table must list the key column: one
// row is Keyed, several rows are an InsertSplit whose Render returns the
// statement for a subset of rows with parameters renumbered from $1.
// A key given as DEFAULT or computed by an expression, INSERT ... SELECT
// and a missing column list are refused. ON CONFLICT and RETURNING are
// fine; ON CONFLICT DO UPDATE SET key is refused, like an UPDATE that
// assigns the key column (unless to the value the WHERE pins).
//
// Broadcast: DDL on sharded or reference tables (CREATE/ALTER/DROP
// TABLE, CREATE INDEX, TRUNCATE, COMMENT, GRANT, VACUUM, ANALYZE, ...),
// schema-wide objects every shard needs (types, domains, functions,
// extensions, schemas, roles), DROP INDEX/VIEW (sent with IF EXISTS:
// the name does not say which shards have it), and writes to reference
// tables. NoTxBlock marks what PostgreSQL will not run in a transaction
// block (VACUUM, CREATE INDEX CONCURRENTLY, ...). DDL mixing configured
// and unsharded tables is refused. Volatile functions (random(),
// gen_random_uuid(), nextval()) in a reference-table write are refused:
// every copy must store the same value.
//
// AnyShard: reads of reference tables only. Default: everything that
// touches neither sharded nor reference tables (catalog queries, psql's
// \d, SELECT 1, SHOW, LISTEN/NOTIFY, unsharded tables, sequences).
//
// CopyIn: COPY sharded [(cols)] FROM STDIN, with its options; the column
// list must hold the key. COPY sharded TO STDOUT and COPY (query) TO
// STDOUT of a fan-out concatenate (not in binary or with HEADER).
//
// Local: transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...),
// SET/RESET/SHOW shardproxy.<name> and session statements (SET, RESET,
// DISCARD, DEALLOCATE) that the executor forwards to its connections.
//
// Refused: SQLSTATE 0A000 with a message that starts with the construct
// ("window function across shards is not supported: ...") and a hint
// that says what to do. CrossShard marks refusals that a single shard
// forced by shardproxy.shard would run fine.
//
// Hints: a leading /* shardproxy: shard=s1, target=replica,
// max_replica_lag=1s, explain=on */ comment fills plan.Hints.
//
// # Keys of NULL
//
// key = NULL yields a Null key (matching nothing); the executor sends
// such a statement to the shard that stores NULL keys. key IS NULL is not
// a restriction (an outer join produces NULL keys on any shard).
//
// # Known limits
//
// The router sees no catalog: user-defined aggregates look like plain
// functions, unique constraints without the shard key are only unique
// per shard, serial/identity keys of sharded tables are generated per
// shard, and GROUP BY a name that is both a column and an output alias
// is taken as the output alias. Functions, procedures (CALL) and DO
// blocks run where the router sends them without it seeing what they
// read (DO blocks naming a configured table are refused). Text merged
// by ORDER BY/min/max compares in byte order (the C collation).
package router
