package merge

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// The differential test: table t holds every row; t0, t1 and t2 hold the
// rows of three "shards" (id % 3). For each case, the original query runs
// on t and the shard query (what the router would send) on each tN; the
// merged shard results must equal PostgreSQL's own answer, byte for byte,
// in text and in binary result format.

const schemaSQL = `
SET TimeZone = 'Asia/Kolkata';
DROP TABLE IF EXISTS t, t0, t1, t2;
CREATE TABLE t (
  id int PRIMARY KEY,
  g  int,
  h  smallint,
  i4 int,
  i8 bigint,
  n  numeric,
  n2 numeric(12,2),
  ns numeric,
  f8 float8,
  f4 real,
  fs float8,
  tx text COLLATE "C",
  c  char(4),
  d  date,
  ts timestamp,
  tz timestamptz,
  tm time,
  b  bool,
  u  uuid,
  by bytea
);
INSERT INTO t
SELECT id,
  CASE WHEN id % 17 = 0 THEN NULL ELSE id % 10 END,
  (id % 4)::smallint,
  CASE WHEN id % 13 = 0 THEN NULL ELSE (id * 7919) % 2001 - 1000 END,
  CASE WHEN id % 11 = 0 THEN NULL ELSE id::bigint * 3074457345618258 * (1 - 2 * (id % 2)) END,
  CASE WHEN id % 5 = 0 THEN NULL
       ELSE round(((((id * 37) % 1000) - 500) * 10 + (1 + id % 9))::numeric / (10::numeric ^ (id % 4)), id % 4) END,
  ((id * 12345) % 100000 - 50000) / 100.0,
  CASE id % 40 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity' WHEN 3 THEN NULL
       ELSE (id % 97)::numeric / 8 END,
  ((id * 31) % 4001 - 2000) * 0.25,
  ((id * 17) % 801 - 400) * 0.25,
  CASE id % 50 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity' WHEN 3 THEN '-0'
       WHEN 4 THEN NULL WHEN 5 THEN 0 ELSE (id % 211) / 7.0 * 10 ^ (id % 40 - 20) END,
  CASE id % 23 WHEN 0 THEN NULL WHEN 1 THEN ''
       ELSE (ARRAY['alpha','Beta','gamma','δέλτα','épsilon','zeta','日本','emoji😀','a','ab','a b'])[id % 11 + 1] || (id % 7)::text END,
  (ARRAY['a','b ','cc','d', NULL])[id % 5 + 1],
  CASE WHEN id % 97 = 0 THEN '0044-03-15 BC'::date WHEN id % 89 = 0 THEN 'infinity' WHEN id % 83 = 0 THEN '-infinity'
       ELSE date '2000-01-01' + ((id * 37) % 20000 - 10000) END,
  CASE WHEN id % 71 = 0 THEN NULL WHEN id % 73 = 0 THEN 'infinity'::timestamp
       ELSE timestamp '2000-01-01' + ((id * 7919) % 100000) * interval '1 minute 1.5 second' - interval '30 years' END,
  timestamptz '2020-01-01 00:00:00+00' + id * interval '13 hours 7.25 seconds',
  time '00:00' + id * interval '17 minutes 3.5 seconds',
  CASE id % 7 WHEN 0 THEN NULL ELSE id % 3 = 0 END,
  md5(id::text)::uuid,
  CASE id % 19 WHEN 0 THEN NULL ELSE substring(decode(md5(id::text), 'hex') from 1 for id % 5) END
FROM generate_series(1, 3000) id;
CREATE TABLE t0 (LIKE t); CREATE TABLE t1 (LIKE t); CREATE TABLE t2 (LIKE t);
INSERT INTO t0 SELECT * FROM t WHERE id % 3 = 0;
INSERT INTO t1 SELECT * FROM t WHERE id % 3 = 1;
INSERT INTO t2 SELECT * FROM t WHERE id % 3 = 2;
ANALYZE t, t0, t1, t2;
`

var (
	pgOnce sync.Once
	pgErr  error
)

// pgConn returns a connection to the loaded test database, with the
// session time zone set to one with a half-hour offset so timestamptz
// text carries "+05:30".
func pgConn(t testing.TB) *pgconn.PgConn {
	t.Helper()
	dsn := testDSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pgOnce.Do(func() {
		c, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			pgErr = err
			return
		}
		defer c.Close(context.Background())
		_, pgErr = c.Exec(ctx, schemaSQL).ReadAll()
	})
	if pgErr != nil {
		t.Fatalf("load test data: %v", pgErr)
	}
	c, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	if _, err := c.Exec(ctx, "SET TimeZone = 'Asia/Kolkata'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	return c
}

// result is one query's answer as raw protocol messages.
type result struct {
	rd   []byte
	rows [][]byte
	err  error
}

func query(ctx context.Context, c *pgconn.PgConn, sql string, p *plan.Params, bin bool) result {
	rf := []int16{0}
	if bin {
		rf = []int16{1}
	}
	var vals [][]byte
	var oids []uint32
	var fmts []int16
	if p != nil {
		vals, oids, fmts = p.Values, p.OIDs, p.Formats
	}
	rr := c.ExecParams(ctx, sql, vals, oids, fmts, rf)
	var res result
	for rr.NextRow() {
		msg, err := (&pgproto3.DataRow{Values: rr.Values()}).Encode(nil)
		if err != nil {
			return result{err: err}
		}
		res.rows = append(res.rows, msg)
	}
	var desc pgproto3.RowDescription
	for _, f := range rr.FieldDescriptions() {
		desc.Fields = append(desc.Fields, pgproto3.FieldDescription{
			Name: []byte(f.Name), TableOID: f.TableOID, TableAttributeNumber: f.TableAttributeNumber,
			DataTypeOID: f.DataTypeOID, DataTypeSize: f.DataTypeSize, TypeModifier: f.TypeModifier, Format: f.Format,
		})
	}
	if _, err := rr.Close(); err != nil {
		return result{err: err}
	}
	var err error
	res.rd, err = desc.Encode(nil)
	if err != nil {
		return result{err: err}
	}
	return res
}

type check uint8

const (
	multiset  check = iota // ORDER BY absent or not total: same rows in any order
	exact                  // ORDER BY is total: same rows in the same order
	countOnly              // LIMIT without ORDER BY: which rows is unspecified
)

type qcase struct {
	name  string
	sql   string // the client's query over {T}
	shard string // ShardSQL over {T}; empty: same as sql
	m     plan.Merge
	check check
	// keys: with check multiset, these visible columns' sequence must
	// still match (ORDER BY with ties).
	keys   []int
	params []*int64 // LIMIT/OFFSET parameters, bound as int8
}

func asc(col int) plan.SortKey  { return plan.SortKey{Col: col} }
func desc(col int) plan.SortKey { return plan.SortKey{Col: col, Desc: true, NullsFirst: true} }
func nullsFirst(k plan.SortKey) plan.SortKey {
	k.NullsFirst = true
	return k
}
func nullsLast(k plan.SortKey) plan.SortKey {
	k.NullsFirst = false
	return k
}
func keys(k ...plan.SortKey) []plan.SortKey { return k }
func agg(col int, fn plan.AggFunc) plan.Aggregate {
	return plan.Aggregate{Col: col, Func: fn}
}
func avgOf(col, countCol int) plan.Aggregate {
	return plan.Aggregate{Col: col, Func: plan.AggAvg, CountCol: countCol}
}
func aggs(a ...plan.Aggregate) []plan.Aggregate { return a }
func lim(n int64) *plan.Count                   { return &plan.Count{Value: n} }
func param(n int) *plan.Count                   { return &plan.Count{Param: n} }
func i64(n int64) *int64                        { return &n }

// cols returns 0..n-1, for GroupBy lists.
func cols(c ...int) []int { return c }

var cases = []qcase{
	// Concatenation and ORDER BY on every supported type.
	{name: "plain", sql: `SELECT id, tx, n FROM {T} WHERE id < 200`, m: plan.Merge{Visible: 3}},
	{name: "plain-all-columns", sql: `SELECT * FROM {T}`, m: plan.Merge{Visible: 20}},
	{name: "order-id", sql: `SELECT id, g FROM {T} ORDER BY id`, m: plan.Merge{Visible: 2, OrderBy: keys(asc(0))}, check: exact},
	{name: "order-int-desc", sql: `SELECT id, i4 FROM {T} ORDER BY i4 DESC, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(desc(1), asc(0))}, check: exact},
	{name: "order-int-nulls-first", sql: `SELECT id, i4 FROM {T} ORDER BY i4 NULLS FIRST, id DESC`,
		m: plan.Merge{Visible: 2, OrderBy: keys(nullsFirst(asc(1)), desc(0))}, check: exact},
	{name: "order-smallint-ties", sql: `SELECT h, id FROM {T} ORDER BY h DESC`,
		m: plan.Merge{Visible: 2, OrderBy: keys(desc(0))}, keys: cols(0)},
	{name: "order-bigint", sql: `SELECT i8, id FROM {T} ORDER BY i8, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-text", sql: `SELECT tx, id FROM {T} ORDER BY tx, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-text-desc-nulls-last", sql: `SELECT tx, id FROM {T} ORDER BY tx DESC NULLS LAST, id DESC`,
		m: plan.Merge{Visible: 2, OrderBy: keys(nullsLast(desc(0)), desc(1))}, check: exact},
	{name: "order-numeric", sql: `SELECT n, id FROM {T} ORDER BY n, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-numeric-special", sql: `SELECT ns, id FROM {T} ORDER BY ns DESC, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(desc(0), asc(1))}, check: exact},
	{name: "order-numeric2", sql: `SELECT n2, id FROM {T} ORDER BY n2, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-float-special", sql: `SELECT fs, id FROM {T} ORDER BY fs, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-float4-desc", sql: `SELECT f4, id FROM {T} ORDER BY f4 DESC, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(desc(0), asc(1))}, check: exact},
	{name: "order-date", sql: `SELECT d, id FROM {T} ORDER BY d, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-timestamp-desc", sql: `SELECT ts, id FROM {T} ORDER BY ts DESC, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(desc(0), asc(1))}, check: exact},
	{name: "order-timestamptz", sql: `SELECT tz, id FROM {T} ORDER BY tz DESC`,
		m: plan.Merge{Visible: 2, OrderBy: keys(desc(0))}, check: exact},
	{name: "order-time", sql: `SELECT tm, id FROM {T} ORDER BY tm, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-bool", sql: `SELECT b, id FROM {T} ORDER BY b, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-uuid", sql: `SELECT u, id FROM {T} ORDER BY u`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0))}, check: exact},
	{name: "order-bytea", sql: `SELECT by, id FROM {T} ORDER BY by DESC, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(desc(0), asc(1))}, check: exact},
	{name: "order-bpchar", sql: `SELECT c, id FROM {T} ORDER BY c, id`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1))}, check: exact},
	{name: "order-hidden-column", sql: `SELECT id, tx FROM {T} ORDER BY i4, id`,
		shard: `SELECT id, tx, i4 FROM {T} ORDER BY i4, id`,
		m:     plan.Merge{Visible: 2, OrderBy: keys(asc(2), asc(0))}, check: exact},
	{name: "order-expression-hidden", sql: `SELECT id FROM {T} ORDER BY i4 % 7 DESC, id`,
		shard: `SELECT id, i4 % 7 FROM {T} ORDER BY i4 % 7 DESC, id`,
		m:     plan.Merge{Visible: 1, OrderBy: keys(desc(1), asc(0))}, check: exact},

	// LIMIT / OFFSET.
	{name: "limit", sql: `SELECT i8, id FROM {T} ORDER BY i8 LIMIT 10`,
		m: plan.Merge{Visible: 2, OrderBy: keys(asc(0)), Limit: lim(10)}, check: exact},
	{name: "limit-offset", sql: `SELECT n2, id FROM {T} ORDER BY n2 DESC, id LIMIT 20 OFFSET 15`,
		shard: `SELECT n2, id FROM {T} ORDER BY n2 DESC, id LIMIT 35`,
		m:     plan.Merge{Visible: 2, OrderBy: keys(desc(0), asc(1)), Limit: lim(20), Offset: lim(15)}, check: exact},
	{name: "limit-params", sql: `SELECT h, id FROM {T} ORDER BY h, id LIMIT $1 OFFSET $2`,
		shard:  `SELECT h, id FROM {T} ORDER BY h, id LIMIT $1 + $2`,
		m:      plan.Merge{Visible: 2, OrderBy: keys(asc(0), asc(1)), Limit: param(1), Offset: param(2)},
		params: []*int64{i64(7), i64(3)}, check: exact},
	{name: "limit-null-param", sql: `SELECT id FROM {T} WHERE id > 2900 ORDER BY id LIMIT $1 OFFSET $2`,
		shard:  `SELECT id FROM {T} WHERE id > 2900 ORDER BY id`,
		m:      plan.Merge{Visible: 1, OrderBy: keys(asc(0)), Limit: param(1), Offset: param(2)},
		params: []*int64{nil, nil}, check: exact},
	{name: "limit-all-offset", sql: `SELECT id FROM {T} ORDER BY id LIMIT ALL OFFSET 2990`,
		shard: `SELECT id FROM {T} ORDER BY id`,
		m:     plan.Merge{Visible: 1, OrderBy: keys(asc(0)), Limit: &plan.Count{All: true}, Offset: lim(2990)}, check: exact},
	{name: "offset-past-end", sql: `SELECT id FROM {T} ORDER BY id OFFSET 5000`,
		shard: `SELECT id FROM {T} ORDER BY id`,
		m:     plan.Merge{Visible: 1, OrderBy: keys(asc(0)), Offset: lim(5000)}, check: exact},
	{name: "limit-0", sql: `SELECT id FROM {T} ORDER BY id LIMIT 0`,
		m: plan.Merge{Visible: 1, OrderBy: keys(asc(0)), Limit: lim(0)}, check: exact},
	{name: "limit-unordered", sql: `SELECT id FROM {T} LIMIT 37`, m: plan.Merge{Visible: 1, Limit: lim(37)}, check: countOnly},
	{name: "limit-unordered-offset", sql: `SELECT id FROM {T} LIMIT 5 OFFSET 2998`,
		shard: `SELECT id FROM {T} LIMIT 3003`,
		m:     plan.Merge{Visible: 1, Limit: lim(5), Offset: lim(2998)}, check: countOnly},
	{name: "limit-hidden-order", sql: `SELECT id FROM {T} ORDER BY tz DESC LIMIT 25`,
		shard: `SELECT id, tz FROM {T} ORDER BY tz DESC LIMIT 25`,
		m:     plan.Merge{Visible: 1, OrderBy: keys(desc(1)), Limit: lim(25)}, check: exact},

	// DISTINCT.
	{name: "distinct", sql: `SELECT DISTINCT g, h FROM {T}`, m: plan.Merge{Visible: 2, Distinct: true}},
	{name: "distinct-ordered", sql: `SELECT DISTINCT tx FROM {T} ORDER BY tx`,
		m: plan.Merge{Visible: 1, Distinct: true, OrderBy: keys(asc(0))}, check: exact},
	{name: "distinct-numeric-limit", sql: `SELECT DISTINCT n FROM {T} ORDER BY n DESC LIMIT 15`,
		shard: `SELECT DISTINCT n FROM {T} ORDER BY n DESC LIMIT 15`,
		m:     plan.Merge{Visible: 1, Distinct: true, OrderBy: keys(desc(0)), Limit: lim(15)}, check: exact},
	{name: "distinct-bool", sql: `SELECT DISTINCT b FROM {T}`, m: plan.Merge{Visible: 1, Distinct: true}},
	{name: "distinct-bpchar-date", sql: `SELECT DISTINCT c, d < '2000-01-01' FROM {T}`, m: plan.Merge{Visible: 2, Distinct: true}},

	// Aggregates without GROUP BY.
	{name: "count", sql: `SELECT count(*) FROM {T}`, m: plan.Merge{Visible: 1, Grouped: true, Aggregates: aggs(agg(0, plan.AggCount))}},
	{name: "aggregates", sql: `SELECT count(*), sum(i4), min(tx), max(d), avg(i4) FROM {T}`,
		shard: `SELECT count(*), sum(i4), min(tx), max(d), sum(i4) AS avg, count(i4) FROM {T}`,
		m: plan.Merge{Visible: 5, Grouped: true, Aggregates: aggs(agg(0, plan.AggCount), agg(1, plan.AggSum),
			agg(2, plan.AggMin), agg(3, plan.AggMax), avgOf(4, 5))}},
	{name: "aggregates-empty", sql: `SELECT count(*), sum(i4), min(tx), avg(n), bool_or(b), sum(f8) FROM {T} WHERE false`,
		shard: `SELECT count(*), sum(i4), min(tx), sum(n) AS avg, bool_or(b), sum(f8), count(n) FROM {T} WHERE false`,
		m: plan.Merge{Visible: 6, Grouped: true, Aggregates: aggs(agg(0, plan.AggCount), agg(1, plan.AggSum),
			agg(2, plan.AggMin), avgOf(3, 6), agg(4, plan.AggBoolOr), agg(5, plan.AggSum))}},
	{name: "sum-avg-bigint", sql: `SELECT sum(i8), avg(i8), min(i8), max(i8) FROM {T}`,
		shard: `SELECT sum(i8), sum(i8) AS avg, min(i8), max(i8), count(i8) FROM {T}`,
		m: plan.Merge{Visible: 4, Grouped: true, Aggregates: aggs(agg(0, plan.AggSum), avgOf(1, 4),
			agg(2, plan.AggMin), agg(3, plan.AggMax))}},
	{name: "sum-avg-smallint", sql: `SELECT sum(h), avg(h) FROM {T}`,
		shard: `SELECT sum(h), sum(h) AS avg, count(h) FROM {T}`,
		m:     plan.Merge{Visible: 2, Grouped: true, Aggregates: aggs(agg(0, plan.AggSum), avgOf(1, 2))}},
	{name: "numeric-specials", sql: `SELECT sum(ns), avg(ns), min(ns), max(ns), min(fs), max(fs), sum(fs) FROM {T}`,
		shard: `SELECT sum(ns), sum(ns) AS avg, min(ns), max(ns), min(fs), max(fs), sum(fs), count(ns) FROM {T}`,
		m: plan.Merge{Visible: 7, Grouped: true, Aggregates: aggs(agg(0, plan.AggSum), avgOf(1, 7), agg(2, plan.AggMin),
			agg(3, plan.AggMax), agg(4, plan.AggMin), agg(5, plan.AggMax), agg(6, plan.AggSum))}},
	{name: "having-no-group-by", sql: `SELECT count(*) FROM {T} HAVING count(*) > 5000`,
		shard: `SELECT count(*) FROM {T}`,
		m: plan.Merge{Visible: 1, Grouped: true, Aggregates: aggs(agg(0, plan.AggCount)),
			Having: []plan.Filter{{Col: 0, Op: ">", Value: "5000"}}}},
	{name: "limit-after-aggregate", sql: `SELECT count(*) FROM {T} OFFSET 1`,
		shard: `SELECT count(*) FROM {T}`,
		m:     plan.Merge{Visible: 1, Grouped: true, Aggregates: aggs(agg(0, plan.AggCount)), Offset: lim(1)}},

	// GROUP BY.
	{name: "group-count", sql: `SELECT g, count(*) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggCount))}},
	{name: "group-ordered", sql: `SELECT g, count(*), count(i4), sum(i4) FROM {T} GROUP BY g ORDER BY g`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0), OrderBy: keys(asc(0)),
			Aggregates: aggs(agg(1, plan.AggCount), agg(2, plan.AggCount), agg(3, plan.AggSum))}, check: exact},
	{name: "group-two-keys-bigint", sql: `SELECT g, h, sum(i8), avg(i8) FROM {T} GROUP BY g, h ORDER BY g DESC, h`,
		shard: `SELECT g, h, sum(i8), sum(i8) AS avg, count(i8) FROM {T} GROUP BY g, h`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0, 1), OrderBy: keys(desc(0), asc(1)),
			Aggregates: aggs(agg(2, plan.AggSum), avgOf(3, 4))}, check: exact},
	{name: "group-numeric", sql: `SELECT h, sum(n), avg(n), min(n), max(n) FROM {T} GROUP BY h ORDER BY h`,
		shard: `SELECT h, sum(n), sum(n) AS avg, min(n), max(n), count(n) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 5, Grouped: true, GroupBy: cols(0), OrderBy: keys(asc(0)),
			Aggregates: aggs(agg(1, plan.AggSum), avgOf(2, 5), agg(3, plan.AggMin), agg(4, plan.AggMax))}, check: exact},
	{name: "group-numeric-scale", sql: `SELECT g, sum(n2), avg(n2), avg(n2 / 1000) FROM {T} GROUP BY g`,
		shard: `SELECT g, sum(n2), sum(n2) AS avg, sum(n2 / 1000) AS avg, count(n2), count(n2 / 1000) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0),
			Aggregates: aggs(agg(1, plan.AggSum), avgOf(2, 4), avgOf(3, 5))}},
	{name: "group-float8", sql: `SELECT h, sum(f8), avg(f8), min(f8), max(f8) FROM {T} GROUP BY h`,
		shard: `SELECT h, sum(f8), sum(f8) AS avg, min(f8), max(f8), count(f8) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 5, Grouped: true, GroupBy: cols(0),
			Aggregates: aggs(agg(1, plan.AggSum), avgOf(2, 5), agg(3, plan.AggMin), agg(4, plan.AggMax))}},
	{name: "group-float4", sql: `SELECT g, sum(f4), avg(f4), min(f4), max(f4) FROM {T} GROUP BY g`,
		shard: `SELECT g, sum(f4), sum(f4::float8) AS avg, min(f4), max(f4), count(f4) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 5, Grouped: true, GroupBy: cols(0),
			Aggregates: aggs(agg(1, plan.AggSum), avgOf(2, 5), agg(3, plan.AggMin), agg(4, plan.AggMax))}},
	// Float sums are only exact when every partial sum is (here: multiples
	// of powers of two); otherwise the order of additions shows in the
	// last bits, on one server as across shards.
	{name: "group-float-scaled", sql: `SELECT h, sum(f8 * 2^60), avg(f8 / 1024), sum(f4 / 64::real) FROM {T} GROUP BY h`,
		shard: `SELECT h, sum(f8 * 2^60), sum(f8 / 1024) AS avg, sum(f4 / 64::real), count(f8 / 1024) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0),
			Aggregates: aggs(agg(1, plan.AggSum), avgOf(2, 4), agg(3, plan.AggSum))}},
	{name: "group-bool", sql: `SELECT h, bool_and(b), bool_or(b), every(b), bool_and(b AND id > 0) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 5, Grouped: true, GroupBy: cols(0),
			Aggregates: aggs(agg(1, plan.AggBoolAnd), agg(2, plan.AggBoolOr), agg(3, plan.AggBoolAnd), agg(4, plan.AggBoolAnd))}},
	{name: "group-min-max-types", sql: `SELECT h, min(n2), max(ns), min(tx), max(f4), min(tm), max(tz), min(c), max(ts), min(d) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 10, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggMin), agg(2, plan.AggMax),
			agg(3, plan.AggMin), agg(4, plan.AggMax), agg(5, plan.AggMin), agg(6, plan.AggMax), agg(7, plan.AggMin),
			agg(8, plan.AggMax), agg(9, plan.AggMin))}},
	{name: "group-text", sql: `SELECT tx, count(*), min(id), max(n) FROM {T} GROUP BY tx ORDER BY count(*) DESC, tx LIMIT 5`,
		shard: `SELECT tx, count(*), min(id), max(n) FROM {T} GROUP BY tx`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0), OrderBy: keys(desc(1), asc(0)), Limit: lim(5),
			Aggregates: aggs(agg(1, plan.AggCount), agg(2, plan.AggMin), agg(3, plan.AggMax))}, check: exact},
	{name: "group-date", sql: `SELECT d < '1990-01-01', count(*), sum(i4) FROM {T} GROUP BY 1 ORDER BY 1`,
		m: plan.Merge{Visible: 3, Grouped: true, GroupBy: cols(0), OrderBy: keys(asc(0)),
			Aggregates: aggs(agg(1, plan.AggCount), agg(2, plan.AggSum))}, check: exact},
	{name: "group-bool-key", sql: `SELECT b, count(*), sum(i8) FROM {T} GROUP BY b`,
		m: plan.Merge{Visible: 3, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggCount), agg(2, plan.AggSum))}},
	{name: "group-bpchar", sql: `SELECT c, count(*), avg(f8) FROM {T} GROUP BY c ORDER BY c`,
		shard: `SELECT c, count(*), sum(f8) AS avg, count(f8) FROM {T} GROUP BY c`,
		m: plan.Merge{Visible: 3, Grouped: true, GroupBy: cols(0), OrderBy: keys(asc(0)),
			Aggregates: aggs(agg(1, plan.AggCount), avgOf(2, 3))}, check: exact},
	{name: "group-bytea", sql: `SELECT by, count(*) FROM {T} WHERE length(by) < 2 GROUP BY by`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggCount))}},
	{name: "group-numeric-key", sql: `SELECT n2 > 0, round(n, 0), count(*) FROM {T} GROUP BY 1, 2`,
		m: plan.Merge{Visible: 3, Grouped: true, GroupBy: cols(0, 1), Aggregates: aggs(agg(2, plan.AggCount))}},
	{name: "group-no-aggregates", sql: `SELECT g FROM {T} GROUP BY g ORDER BY g DESC`,
		m: plan.Merge{Visible: 1, Grouped: true, GroupBy: cols(0), OrderBy: keys(desc(0))}, check: exact},
	{name: "group-avg-empty-groups", sql: `SELECT g, avg(i4), sum(i4), count(i4) FROM {T} WHERE i4 IS NULL OR g = 3 GROUP BY g`,
		shard: `SELECT g, sum(i4) AS avg, sum(i4), count(i4) FROM {T} WHERE i4 IS NULL OR g = 3 GROUP BY g`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0),
			Aggregates: aggs(avgOf(1, 3), agg(2, plan.AggSum), agg(3, plan.AggCount))}},
	{name: "group-avg-zero-sum", sql: `SELECT h, avg(i4 * 0), avg(n2 * 0), avg(0.5::numeric) FROM {T} GROUP BY h`,
		shard: `SELECT h, sum(i4 * 0) AS avg, sum(n2 * 0) AS avg, sum(0.5::numeric) AS avg, count(i4 * 0), count(n2 * 0), count(0.5::numeric) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0),
			Aggregates: aggs(avgOf(1, 4), avgOf(2, 5), avgOf(3, 6))}},
	{name: "group-constant-column", sql: `SELECT g, count(*), 'x'::text AS k, 42 AS answer FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 4, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggCount))}},
	{name: "group-limit-offset", sql: `SELECT g, sum(i4) FROM {T} GROUP BY g ORDER BY g LIMIT 3 OFFSET 2`,
		shard: `SELECT g, sum(i4) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), OrderBy: keys(asc(0)), Limit: lim(3), Offset: lim(2),
			Aggregates: aggs(agg(1, plan.AggSum))}, check: exact},
	{name: "group-distinct", sql: `SELECT DISTINCT count(*) FROM {T} GROUP BY h`,
		shard: `SELECT count(*), h FROM {T} GROUP BY h`,
		m:     plan.Merge{Visible: 1, Grouped: true, Distinct: true, GroupBy: cols(1), Aggregates: aggs(agg(0, plan.AggCount))}},

	// ORDER BY combined values.
	{name: "order-by-count", sql: `SELECT g, count(*) FROM {T} GROUP BY g ORDER BY 2 DESC, 1`,
		shard: `SELECT g, count(*) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), OrderBy: keys(desc(1), asc(0)),
			Aggregates: aggs(agg(1, plan.AggCount))}, check: exact},
	{name: "order-by-avg", sql: `SELECT g, avg(n) FROM {T} GROUP BY g ORDER BY avg(n) DESC`,
		shard: `SELECT g, sum(n) AS avg, count(n) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), OrderBy: keys(desc(1)),
			Aggregates: aggs(avgOf(1, 2))}, check: exact},
	{name: "order-by-hidden-sum", sql: `SELECT g FROM {T} GROUP BY g ORDER BY sum(i8) DESC NULLS LAST, g`,
		shard: `SELECT g, sum(i8) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 1, Grouped: true, GroupBy: cols(0), OrderBy: keys(nullsLast(desc(1)), asc(0)),
			Aggregates: aggs(agg(1, plan.AggSum))}, check: exact},
	{name: "order-by-avg-float", sql: `SELECT h, avg(f8) FROM {T} GROUP BY h ORDER BY 2`,
		shard: `SELECT h, sum(f8) AS avg, count(f8) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), OrderBy: keys(asc(1)),
			Aggregates: aggs(avgOf(1, 2))}, check: exact},

	// HAVING.
	{name: "having-count", sql: `SELECT g, count(*) FROM {T} GROUP BY g HAVING count(*) > 280`,
		shard: `SELECT g, count(*) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggCount)),
			Having: []plan.Filter{{Col: 1, Op: ">", Value: "280"}}}},
	{name: "having-hidden-sum", sql: `SELECT g FROM {T} GROUP BY g HAVING sum(i4) < 0`,
		shard: `SELECT g, sum(i4) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 1, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggSum)),
			Having: []plan.Filter{{Col: 1, Op: "<", Value: "0"}}}},
	{name: "having-avg", sql: `SELECT g, avg(i4) FROM {T} GROUP BY g HAVING avg(i4) >= 1.5`,
		shard: `SELECT g, sum(i4) AS avg, count(i4) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(avgOf(1, 2)),
			Having: []plan.Filter{{Col: 1, Op: ">=", Value: "1.5"}}}},
	{name: "having-count-fraction", sql: `SELECT h, count(*) FROM {T} GROUP BY h HAVING count(*) <> 750.0 AND count(*) <= 750.5`,
		shard: `SELECT h, count(*) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggCount)),
			Having: []plan.Filter{{Col: 1, Op: "<>", Value: "750.0"}, {Col: 1, Op: "<=", Value: "750.5"}}}},
	{name: "having-text", sql: `SELECT h, max(tx) FROM {T} GROUP BY h HAVING max(tx) = '日本6'`,
		shard: `SELECT h, max(tx) FROM {T} GROUP BY h`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggMax)),
			Having: []plan.Filter{{Col: 1, Op: "=", Value: "日本6"}}}},
	{name: "having-date", sql: `SELECT tx, min(d) FROM {T} GROUP BY tx HAVING min(d) > '1975-01-01'`,
		shard: `SELECT tx, min(d) FROM {T} GROUP BY tx`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggMin)),
			Having: []plan.Filter{{Col: 1, Op: ">", Value: "1975-01-01"}}}},
	{name: "having-timestamptz", sql: `SELECT g, max(tz) FROM {T} GROUP BY g HAVING max(tz) < '2024-06-01 00:00:00+00'`,
		shard: `SELECT g, max(tz) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggMax)),
			Having: []plan.Filter{{Col: 1, Op: "<", Value: "2024-06-01 00:00:00+00"}}}},
	{name: "having-float", sql: `SELECT g, sum(f8) FROM {T} GROUP BY g HAVING sum(f8) > 100.5`,
		shard: `SELECT g, sum(f8) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggSum)),
			Having: []plan.Filter{{Col: 1, Op: ">", Value: "100.5"}}}},
	{name: "having-null", sql: `SELECT g, min(ts) FROM {T} GROUP BY g HAVING min(ts) IS NOT NULL AND max(i4) IS NOT NULL`,
		shard: `SELECT g, min(ts), max(i4) FROM {T} GROUP BY g`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggMin), agg(2, plan.AggMax)),
			Having: []plan.Filter{{Col: 1, Op: "<>", Null: true}, {Col: 2, Op: "<>", Null: true}}}},
	{name: "having-is-null", sql: `SELECT h, count(*) FROM {T} WHERE i4 IS NULL GROUP BY h HAVING sum(i4) IS NULL`,
		shard: `SELECT h, count(*), sum(i4) FROM {T} WHERE i4 IS NULL GROUP BY h`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), Aggregates: aggs(agg(1, plan.AggCount), agg(2, plan.AggSum)),
			Having: []plan.Filter{{Col: 2, Op: "=", Null: true}}}},
	{name: "having-order-limit", sql: `SELECT tx, sum(n2) FROM {T} GROUP BY tx HAVING count(*) >= 5 ORDER BY sum(n2) DESC, tx LIMIT 7`,
		shard: `SELECT tx, sum(n2), count(*) FROM {T} GROUP BY tx`,
		m: plan.Merge{Visible: 2, Grouped: true, GroupBy: cols(0), OrderBy: keys(desc(1), asc(0)), Limit: lim(7),
			Aggregates: aggs(agg(1, plan.AggSum), agg(2, plan.AggCount)),
			Having:     []plan.Filter{{Col: 2, Op: ">=", Value: "5"}}}, check: exact},
}

// errorCases must fail like PostgreSQL does.
var errorCases = []qcase{
	{name: "negative-limit", sql: `SELECT id FROM {T} ORDER BY id LIMIT -1`,
		shard: `SELECT id FROM {T} ORDER BY id`,
		m:     plan.Merge{Visible: 1, OrderBy: keys(asc(0)), Limit: lim(-1)}},
	{name: "negative-offset-param", sql: `SELECT id FROM {T} ORDER BY id OFFSET $1`,
		shard:  `SELECT id FROM {T} ORDER BY id`,
		m:      plan.Merge{Visible: 1, OrderBy: keys(asc(0)), Offset: param(1)},
		params: []*int64{i64(-3)}},
}

func (q *qcase) bind(bin bool) *plan.Params {
	if q.params == nil {
		return nil
	}
	p := &plan.Params{}
	for _, v := range q.params {
		p.OIDs = append(p.OIDs, oidInt8)
		switch {
		case v == nil:
			p.Values = append(p.Values, nil)
		case bin:
			p.Values = append(p.Values, binary.BigEndian.AppendUint64(nil, uint64(*v)))
		default:
			p.Values = append(p.Values, []byte(strconv.FormatInt(*v, 10)))
		}
	}
	if bin {
		p.Formats = []int16{1}
	}
	return p
}

// mergeShards runs the shard query on t0..t2 and merges the results,
// feeding rows round-robin as a concurrent executor might.
func mergeShards(ctx context.Context, t *testing.T, c *pgconn.PgConn, q *qcase, bin bool) (result, int64) {
	shardSQL := q.shard
	if shardSQL == "" {
		shardSQL = q.sql
	}
	p := q.bind(bin)
	var shards []result
	for i := range 3 {
		r := query(ctx, c, strings.ReplaceAll(shardSQL, "{T}", fmt.Sprintf("t%d", i)), p, bin)
		if r.err != nil {
			t.Fatalf("shard %d query: %v", i, r.err)
		}
		shards = append(shards, r)
	}
	var got result
	mg, err := New(&q.m, p, func(row []byte) error {
		got.rows = append(got.rows, bytes.Clone(row))
		return nil
	})
	if err != nil {
		return result{err: err}, 0
	}
	if got.rd, err = mg.Describe(shards[0].rd); err != nil {
		return result{err: err}, 0
	}
	for i := 0; ; i++ {
		added := false
		for s := range shards {
			if i < len(shards[s].rows) {
				added = true
				if err := mg.Add(s, shards[s].rows[i]); err != nil {
					return result{err: err}, 0
				}
			}
		}
		if !added {
			break
		}
	}
	n, err := mg.Finish()
	if err != nil {
		return result{err: err}, 0
	}
	return got, n
}

func TestDifferential(t *testing.T) {
	c := pgConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if len(cases) < 60 {
		t.Fatalf("only %d cases", len(cases))
	}
	for i := range cases {
		q := &cases[i]
		for _, bin := range []bool{false, true} {
			name := q.name + "/text"
			if bin {
				name = q.name + "/binary"
			}
			t.Run(name, func(t *testing.T) {
				want := query(ctx, c, strings.ReplaceAll(q.sql, "{T}", "t"), q.bind(bin), bin)
				if want.err != nil {
					t.Fatalf("reference query: %v", want.err)
				}
				got, n := mergeShards(ctx, t, c, q, bin)
				if got.err != nil {
					t.Fatalf("merge: %v", got.err)
				}
				if n != int64(len(got.rows)) {
					t.Errorf("Finish returned %d, emitted %d rows", n, len(got.rows))
				}
				compareDescriptions(t, want.rd, got.rd)
				compareRows(t, q, want.rows, got.rows)
			})
		}
	}
}

func TestDifferentialErrors(t *testing.T) {
	c := pgConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range errorCases {
		q := &errorCases[i]
		for _, bin := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%v", q.name, bin), func(t *testing.T) {
				want := query(ctx, c, strings.ReplaceAll(q.sql, "{T}", "t"), q.bind(bin), bin)
				var pe *pgconn.PgError
				if !errors.As(want.err, &pe) {
					t.Fatalf("reference query did not fail: %v", want.err)
				}
				got, _ := mergeShards(ctx, t, c, q, bin)
				var we *wire.Error
				if !errors.As(got.err, &we) {
					t.Fatalf("merge error = %v, want *wire.Error %s", got.err, pe.Code)
				}
				if we.Code != pe.Code || we.Message != pe.Message {
					t.Errorf("merge error %s %q, PostgreSQL %s %q", we.Code, we.Message, pe.Code, pe.Message)
				}
			})
		}
	}
}

func compareDescriptions(t *testing.T, wantMsg, gotMsg []byte) {
	t.Helper()
	var want, got pgproto3.RowDescription
	if err := want.Decode(wantMsg[5:]); err != nil {
		t.Fatal(err)
	}
	if err := got.Decode(gotMsg[5:]); err != nil {
		t.Fatalf("merged RowDescription: %v", err)
	}
	if len(want.Fields) != len(got.Fields) {
		t.Fatalf("RowDescription has %d columns, want %d", len(got.Fields), len(want.Fields))
	}
	for i, w := range want.Fields {
		g := got.Fields[i]
		// Table OIDs differ: each "shard" is its own table, as on real shards.
		if string(w.Name) != string(g.Name) || w.DataTypeOID != g.DataTypeOID || w.DataTypeSize != g.DataTypeSize ||
			w.TypeModifier != g.TypeModifier || w.Format != g.Format {
			t.Errorf("column %d: got %s oid=%d size=%d typmod=%d format=%d, want %s oid=%d size=%d typmod=%d format=%d",
				i, g.Name, g.DataTypeOID, g.DataTypeSize, g.TypeModifier, g.Format,
				w.Name, w.DataTypeOID, w.DataTypeSize, w.TypeModifier, w.Format)
		}
	}
}

func decodeRows(t *testing.T, msgs [][]byte) [][][]byte {
	t.Helper()
	var rows [][][]byte
	for _, m := range msgs {
		var dr pgproto3.DataRow
		if m[0] != 'D' || int(binary.BigEndian.Uint32(m[1:])) != len(m)-1 {
			t.Fatalf("bad DataRow framing %q", m)
		}
		if err := dr.Decode(m[5:]); err != nil {
			t.Fatalf("bad DataRow: %v", err)
		}
		rows = append(rows, dr.Values)
	}
	return rows
}

func compareRows(t *testing.T, q *qcase, wantMsgs, gotMsgs [][]byte) {
	t.Helper()
	if len(wantMsgs) != len(gotMsgs) {
		t.Errorf("got %d rows, want %d", len(gotMsgs), len(wantMsgs))
		if q.check != countOnly {
			showDiff(t, decodeRows(t, wantMsgs), decodeRows(t, gotMsgs))
		}
		return
	}
	want, got := decodeRows(t, wantMsgs), decodeRows(t, gotMsgs)
	switch q.check {
	case countOnly:
		return
	case exact:
		for i := range want {
			if !rowEqual(want[i], got[i]) {
				t.Errorf("row %d: got %s, want %s", i, showRow(got[i]), showRow(want[i]))
				return
			}
		}
		return
	}
	for _, k := range q.keys {
		for i := range want {
			if !bytes.Equal(want[i][k], got[i][k]) || (want[i][k] == nil) != (got[i][k] == nil) {
				t.Errorf("row %d: sort key column %d is %q, want %q", i, k, got[i][k], want[i][k])
				return
			}
		}
	}
	sortRows(want)
	sortRows(got)
	for i := range want {
		if !rowEqual(want[i], got[i]) {
			showDiff(t, want, got)
			return
		}
	}
}

func rowEqual(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if (a[i] == nil) != (b[i] == nil) || !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func sortRows(rows [][][]byte) {
	slices.SortFunc(rows, func(a, b [][]byte) int { return strings.Compare(showRow(a), showRow(b)) })
}

func showRow(r [][]byte) string {
	var sb strings.Builder
	for i, v := range r {
		if i > 0 {
			sb.WriteString(" | ")
		}
		if v == nil {
			sb.WriteString("NULL")
		} else {
			fmt.Fprintf(&sb, "%q", v)
		}
	}
	return sb.String()
}

func showDiff(t *testing.T, want, got [][][]byte) {
	t.Helper()
	sortRows(want)
	sortRows(got)
	ws := map[string]int{}
	for _, r := range want {
		ws[showRow(r)]++
	}
	shown := 0
	for _, r := range got {
		s := showRow(r)
		if ws[s] > 0 {
			ws[s]--
			continue
		}
		if shown < 10 {
			t.Errorf("unexpected row: %s", s)
		}
		shown++
	}
	for s, n := range ws {
		if n > 0 && shown < 20 {
			t.Errorf("missing row (x%d): %s", n, s)
			shown++
		}
	}
}
