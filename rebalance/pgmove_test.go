package rebalance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/localcluster"
	"github.com/shardproxy/shardproxy/shard"
)

// One two-shard cluster (primaries only) serves every test of the
// package; each test uses its own tables and move id.
var pgTestCluster = localcluster.Shared{Name: "rebalance", Options: localcluster.Options{Shards: 2}}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pgTestCluster.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "rebalance: stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

type pgTestEnv struct {
	src, dst       Node
	srcApp, dstApp string // app role DSNs
}

func pgEnv(t testing.TB) pgTestEnv {
	t.Helper()
	c := pgTestCluster.Get(t)
	a, b := c.Primary("shard0"), c.Primary("shard1")
	db := localcluster.AppDatabase
	return pgTestEnv{
		src:    Node{Name: "shard0", DSN: a.DSN(db)},
		dst:    Node{Name: "shard1", DSN: b.DSN(db)},
		srcApp: a.AppDSN(db),
		dstApp: b.AppDSN(db),
	}
}

func pgTestConn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pgClose(conn) })
	return conn
}

// pgTestConnOnce is a connection the caller closes (with pgClose).
func pgTestConnOnce(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func pgTestExec(t testing.TB, dsn, sql string) {
	t.Helper()
	conn := pgTestConnOnce(t, dsn)
	defer pgClose(conn)
	if _, err := conn.PgConn().Exec(context.Background(), sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func pgTestInt(t testing.TB, dsn, sql string) int64 {
	t.Helper()
	conn := pgTestConnOnce(t, dsn)
	defer pgClose(conn)
	var n int64
	if err := conn.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func pgTestStr(t testing.TB, dsn, sql string) string {
	t.Helper()
	conn := pgTestConnOnce(t, dsn)
	defer pgClose(conn)
	var s string
	if err := conn.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// pgTestSchema creates pgbench-like accounts (primary key on the shard key)
// and history (no primary key) tables on the source, owned by app, fills
// them, and copies the schema to the target.
func pgTestSchema(t *testing.T, e pgTestEnv, prefix string, accounts int) []Table {
	t.Helper()
	pgTestExec(t, e.srcApp, fmt.Sprintf(`
DROP TABLE IF EXISTS %[1]s_accounts, %[1]s_history;
CREATE TABLE %[1]s_accounts (aid bigint PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL DEFAULT 0, filler char(84));
CREATE TABLE %[1]s_history (tid int, bid int, aid bigint, delta int, mtime timestamp DEFAULT now(), filler char(22));
INSERT INTO %[1]s_accounts SELECT g, g %% 10, 0, 'x' FROM generate_series(1, %[2]d) g;
INSERT INTO %[1]s_history (tid, bid, aid, delta) SELECT g %% 7, g %% 10, g, g %% 100 FROM generate_series(1, %[2]d / 2) g;
ANALYZE %[1]s_accounts, %[1]s_history;`, prefix, accounts))
	pgTestExec(t, e.dstApp, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s_accounts, %[1]s_history", prefix))
	names := []string{prefix + "_accounts", "public." + prefix + "_history"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 {
		if err := CopySchema(ctx, e.src, e.dst, names); err != nil {
			t.Fatalf("CopySchema: %v", err)
		}
	}
	if owner := pgTestStr(t, e.dst.DSN, fmt.Sprintf("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = '%s_accounts'::regclass", prefix)); owner != "app" {
		t.Fatalf("owner on target = %s", owner)
	}
	return []Table{
		{Name: names[0], Key: "aid", Type: shard.Bigint},
		{Name: names[1], Key: "aid", Type: shard.Bigint},
	}
}

// pgTestSums is count and checksum per table of the rows in slots
// (superuser: every row, hidden or not).
func pgTestSums(t testing.TB, dsn string, tables []Table, slots []int, slotCount int) map[string]string {
	t.Helper()
	conn := pgTestConnOnce(t, dsn)
	defer pgClose(conn)
	out := map[string]string{}
	for _, tb := range tables {
		expr := pgSlotExpr(tb, slotCount, "t")
		var s string
		err := conn.QueryRow(context.Background(), fmt.Sprintf(`SELECT count(*) || '/' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)
			FROM %s t WHERE %s IN (%s)`, pgTableIdent(tb.Name), expr, pgIntList(slots))).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		out[tb.Name] = s
	}
	return out
}

// pgTestAppCount counts the rows of tb in slots as the app role sees them.
func pgTestAppCount(t testing.TB, dsn string, tb Table, slots []int, slotCount int) int64 {
	t.Helper()
	return pgTestInt(t, dsn, fmt.Sprintf("SELECT count(*) FROM %s t WHERE %s IN (%s)",
		pgTableIdent(tb.Name), pgSlotExpr(tb, slotCount, "t"), pgIntList(slots)))
}

func allSlots(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func otherSlots(n int, moving []int) []int {
	var s []int
	for i := range n {
		if !slices.Contains(moving, i) {
			s = append(s, i)
		}
	}
	return s
}

// pgTestWriter runs app transactions on the source: inserts, updates and
// deletes on both tables. Once moving is false it only touches keys of
// non-moving slots.
type pgTestWriter struct {
	moving  atomic.Bool
	stop    chan struct{}
	done    sync.WaitGroup
	ops     atomic.Int64
	err     atomic.Value
	slots   []int
	nslots  int
	prefix  string
	nextAID atomic.Int64
}

func (w *pgTestWriter) run(t *testing.T, dsn string, accounts int) {
	conn := pgTestConn(t, dsn)
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		pick := func() int64 {
			for {
				aid := int64(rng.IntN(accounts) + 1)
				if w.moving.Load() {
					return aid
				}
				s, _ := shard.SlotOfText(shard.Bigint, strconv.FormatInt(aid, 10), w.nslots)
				if !slices.Contains(w.slots, s) {
					return aid
				}
			}
		}
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			aid := pick()
			var sql string
			switch rng.IntN(7) {
			case 0:
				n := w.nextAID.Add(1)
				for !w.moving.Load() {
					s, _ := shard.SlotOfText(shard.Bigint, strconv.FormatInt(n, 10), w.nslots)
					if !slices.Contains(w.slots, s) {
						break
					}
					n = w.nextAID.Add(1)
				}
				sql = fmt.Sprintf("INSERT INTO %s_accounts VALUES (%d, 1, 0, 'new')", w.prefix, n)
			case 1, 2:
				sql = fmt.Sprintf("UPDATE %s_accounts SET abalance = abalance + 1 WHERE aid = %d", w.prefix, aid)
			case 3:
				sql = fmt.Sprintf("DELETE FROM %s_accounts WHERE aid = %d", w.prefix, aid)
			case 4:
				sql = fmt.Sprintf("INSERT INTO %s_history (tid, bid, aid, delta) VALUES (1, 1, %d, 5)", w.prefix, aid)
			case 5:
				sql = fmt.Sprintf("UPDATE %s_history SET delta = delta + 1 WHERE aid = %d", w.prefix, aid)
			case 6:
				sql = fmt.Sprintf("BEGIN; UPDATE %[1]s_accounts SET abalance = abalance - 1 WHERE aid = %[2]d; DELETE FROM %[1]s_history WHERE aid = %[2]d; COMMIT", w.prefix, aid)
			}
			if _, err := conn.PgConn().Exec(ctx, sql).ReadAll(); err != nil {
				w.err.Store(fmt.Errorf("%s: %w", sql, err))
				return
			}
			w.ops.Add(1)
		}
	}()
}

func (w *pgTestWriter) finish(t *testing.T) {
	t.Helper()
	close(w.stop)
	w.done.Wait()
	if err, _ := w.err.Load().(error); err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// pgTestLeftovers is Leftovers on both nodes, restricted to the lines
// about a move id or table prefix (so one failed test does not fail the
// others) and tablesync slots.
func pgTestLeftovers(t *testing.T, e pgTestEnv, moveID, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := Leftovers(ctx, []Node{e.src, e.dst})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range l {
		if strings.Contains(s, moveID) || strings.Contains(s, "."+prefix+"_") || strings.Contains(s, "tablesync") {
			out = append(out, s)
		}
	}
	return out
}

func pgTestWaitReady(t *testing.T, mv Move) Progress {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var maxRows int64
	for {
		p, err := CopyProgress(ctx, mv)
		if err != nil {
			t.Fatalf("CopyProgress: %v", err)
		}
		if p.RowsCopied > maxRows && !p.Ready {
			maxRows = p.RowsCopied
			t.Logf("progress: %+v", p)
		}
		if p.Ready {
			t.Logf("ready: %+v", p)
			return p
		}
		if err := pgSleep(ctx, 20*time.Millisecond); err != nil {
			t.Fatalf("not ready in time: %+v", p)
		}
	}
}

func TestMoveOnline(t *testing.T) {
	e := pgEnv(t)
	const accounts = 20000
	tables := pgTestSchema(t, e, "mo", accounts)
	const slotCount = 16
	moving := []int{1, 4, 7, 10, 13}
	others := otherSlots(slotCount, moving)
	mv := Move{ID: "online1", Source: e.src, Target: e.dst, Tables: tables, Slots: moving, SlotCount: slotCount}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	step := func(name string, fn func() error) {
		t.Helper()
		for i := range 2 { // every step twice: idempotency
			start := time.Now()
			if err := fn(); err != nil {
				t.Fatalf("%s (call %d): %v", name, i+1, err)
			}
			t.Logf("%s (call %d): %v", name, i+1, time.Since(start).Round(time.Millisecond))
		}
	}

	est, err := Estimate(ctx, e.src, tables, slotCount)
	if err != nil {
		t.Fatal(err)
	}
	var estRows int64
	for _, s := range moving {
		estRows += est[s].Rows
	}
	if want := pgTestInt(t, e.src.DSN, fmt.Sprintf("SELECT (SELECT count(*) FROM mo_accounts t WHERE %[1]s IN (%[2]s)) + (SELECT count(*) FROM mo_history t WHERE %[1]s IN (%[2]s))",
		pgSlotExpr(tables[0], slotCount, "t"), pgIntList(moving))); estRows != want || est[1].Bytes <= 0 {
		t.Fatalf("Estimate: %d rows in moving slots, want %d (%+v)", estRows, want, est[1])
	}

	// Leftovers of an earlier attempt on the target are deleted by Prepare.
	pgTestExec(t, e.dst.DSN, fmt.Sprintf("INSERT INTO mo_accounts SELECT * FROM (SELECT g::bigint AS aid, 0, 0, 'stale' FROM generate_series(1, 100) g) s WHERE %s IN (%s)",
		pgSlotExpr(tables[0], slotCount, ""), pgIntList(moving)))
	step("Prepare", func() error { return Prepare(ctx, mv) })
	if n := pgTestInt(t, e.dst.DSN, "SELECT count(*) FROM mo_accounts"); n != 0 {
		t.Fatalf("target keeps %d stale rows", n)
	}
	if ri := pgTestStr(t, e.src.DSN, "SELECT relreplident::text FROM pg_class WHERE oid = 'mo_history'::regclass"); ri != "f" {
		t.Fatalf("history replica identity %s, want f", ri)
	}
	if ri := pgTestStr(t, e.src.DSN, "SELECT relreplident::text FROM pg_class WHERE oid = 'mo_accounts'::regclass"); ri != "d" {
		t.Fatalf("accounts replica identity %s, want d", ri)
	}
	// CopySchema from a source in the middle of a move copies neither the
	// move's policy nor its replica identity change.
	{
		pgTestExec(t, e.dst.DSN, "DROP DATABASE IF EXISTS copytest")
		pgTestExec(t, e.dst.DSN, "CREATE DATABASE copytest OWNER app")
		other := Node{Name: "copytest", DSN: strings.Replace(e.dst.DSN, "/app?", "/copytest?", 1)}
		if err := CopySchema(ctx, e.src, other, []string{"mo_accounts", "mo_history"}); err != nil {
			t.Fatalf("CopySchema during a move: %v", err)
		}
		if got := pgTestStr(t, other.DSN, `SELECT string_agg(relname || ':' || relreplident::text || ':' || relrowsecurity || ':' || relforcerowsecurity
			|| ':' || pg_get_userbyid(relowner), ',' ORDER BY relname) FROM pg_class WHERE relname IN ('mo_accounts', 'mo_history')`); got != "mo_accounts:d:false:false:app,mo_history:d:false:false:app" {
			t.Fatalf("CopySchema during a move made %s", got)
		}
		if n := pgTestInt(t, other.DSN, "SELECT count(*) FROM pg_policy"); n != 0 {
			t.Fatalf("CopySchema copied %d policies", n)
		}
	}
	// The policy plans as a hashed SubPlan (and an InitPlan short-circuit).
	{
		conn := pgTestConn(t, e.dstApp)
		rows, err := conn.Query(ctx, "EXPLAIN SELECT count(*) FROM mo_accounts")
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		plan := strings.Join(lines, "\n")
		if !strings.Contains(plan, "hashed SubPlan") {
			t.Fatalf("policy does not use a hashed SubPlan:\n%s", plan)
		}
		t.Logf("plan as app:\n%s", plan)
	}

	w := &pgTestWriter{stop: make(chan struct{}), slots: moving, nslots: slotCount, prefix: "mo"}
	w.nextAID.Store(1_000_000)
	w.moving.Store(true)
	w.run(t, e.srcApp, accounts)

	step("StartCopy", func() error { return StartCopy(ctx, mv) })
	pgTestWaitReady(t, mv)
	// Prepare again once the copy exists must not touch the copy (checked
	// by the checksums below).
	if err := Prepare(ctx, mv); err != nil {
		t.Fatal(err)
	}

	// Before Flip the app sees the copies nowhere on the target, and
	// cannot write them there.
	for _, tb := range tables {
		if n := pgTestAppCount(t, e.dstApp, tb, allSlots(slotCount), slotCount); n != 0 {
			t.Fatalf("app sees %d rows of %s on the target before Flip", n, tb.Name)
		}
	}
	{
		conn := pgTestConn(t, e.dstApp)
		_, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO mo_accounts VALUES (%d, 1, 1, 'x')", pgTestAIDIn(moving, slotCount)))
		if pgSQLState(err) != "42501" {
			t.Fatalf("app insert of a hidden slot on the target: %v", err)
		}
	}

	// Pause writes to the moving slots, catch up.
	time.Sleep(300 * time.Millisecond)
	w.moving.Store(false)
	time.Sleep(50 * time.Millisecond) // the writer's in-flight transaction
	step("WaitCaughtUp", func() error {
		d, err := WaitCaughtUp(ctx, mv)
		t.Logf("marker round trip %v", d)
		return err
	})
	ref := pgTestSums(t, e.src.DSN, tables, moving, slotCount)
	if got := pgTestSums(t, e.dst.DSN, tables, moving, slotCount); !maps2Equal(got, ref) {
		t.Fatalf("after catch-up target %v, source %v", got, ref)
	}
	snap, err := TakeSnapshot(ctx, mv)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	step("Flip", func() error { return Flip(ctx, mv) })
	for _, tb := range tables {
		srcN := pgTestAppCount(t, e.srcApp, tb, moving, slotCount)
		dstN := pgTestAppCount(t, e.dstApp, tb, moving, slotCount)
		want := pgTestAppCount(t, e.src.DSN, tb, moving, slotCount)
		if srcN != 0 || dstN != want {
			t.Fatalf("after Flip app sees %s moving rows: source %d target %d, want 0 and %d", tb.Name, srcN, dstN, want)
		}
		if n := pgTestAppCount(t, e.dstApp, tb, others, slotCount); n != 0 {
			t.Fatalf("target shows %d rows of other slots", n)
		}
	}
	{
		// A stale write to a moved slot on the source is rejected.
		aid := pgTestAIDIn(moving, slotCount)
		conn := pgTestConn(t, e.srcApp)
		_, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO mo_history (aid) VALUES (%d)", aid))
		if pgSQLState(err) != "42501" {
			t.Fatalf("stale insert into a moved slot on the source: %v", err)
		}
	}

	var stopTook time.Duration
	step("StopReplication", func() error {
		start := time.Now()
		err := StopReplication(ctx, mv)
		if stopTook == 0 {
			stopTook = time.Since(start)
		}
		return err
	})
	for _, l := range pgTestLeftovers(t, e, mv.ID, "mo") {
		if strings.Contains(l, "publication") || strings.Contains(l, "subscription ") || strings.Contains(l, "replication slot") {
			t.Fatalf("after StopReplication: %s", l)
		}
	}
	for _, s := range []*Snapshot{snap, nil} {
		checks, err := Verify(ctx, mv, s)
		if err != nil {
			t.Fatal(err)
		}
		if len(checks) != len(tables)*len(moving) {
			t.Fatalf("%d checks", len(checks))
		}
		for _, c := range checks {
			if !c.OK || c.SourceRows == 0 {
				t.Fatalf("Verify: %+v", c)
			}
		}
	}
	snap.Close()

	// Cleanup refuses while a subscription exists: checked by recreating
	// nothing; instead check the refusal before Flip in the rollback test.
	var deleted atomic.Int64
	want := pgTestInt(t, e.src.DSN, fmt.Sprintf("SELECT (SELECT count(*) FROM mo_accounts t WHERE %[1]s IN (%[2]s)) + (SELECT count(*) FROM mo_history t WHERE %[1]s IN (%[2]s))",
		pgSlotExpr(tables[0], slotCount, "t"), pgIntList(moving)))
	step("Cleanup", func() error { return Cleanup(ctx, mv, 500, func(n int64) { deleted.Add(n) }) })
	if deleted.Load() != want {
		t.Fatalf("Cleanup reported %d deleted rows, want %d", deleted.Load(), want)
	}
	w.finish(t)
	t.Logf("writer: %d transactions", w.ops.Load())

	// Every row of the moved slots is on the target only, none lost.
	if got := pgTestSums(t, e.dst.DSN, tables, moving, slotCount); !maps2Equal(got, ref) {
		t.Fatalf("target %v, reference %v", got, ref)
	}
	for _, tb := range tables {
		if n := pgTestAppCount(t, e.src.DSN, tb, moving, slotCount); n != 0 {
			t.Fatalf("source keeps %d rows of %s", n, tb.Name)
		}
		if n := pgTestAppCount(t, e.dst.DSN, tb, others, slotCount); n != 0 {
			t.Fatalf("target has %d rows of other slots of %s", n, tb.Name)
		}
		// The app sees each row once: app counts equal superuser counts.
		all := allSlots(slotCount)
		app := pgTestAppCount(t, e.srcApp, tb, all, slotCount) + pgTestAppCount(t, e.dstApp, tb, all, slotCount)
		su := pgTestAppCount(t, e.src.DSN, tb, all, slotCount) + pgTestAppCount(t, e.dst.DSN, tb, all, slotCount)
		if app != su {
			t.Fatalf("%s: app sees %d rows, there are %d", tb.Name, app, su)
		}
	}
	if ri := pgTestStr(t, e.src.DSN, "SELECT relreplident::text FROM pg_class WHERE oid = 'mo_history'::regclass"); ri != "d" {
		t.Fatalf("history replica identity %s after Cleanup, want d", ri)
	}
	if l := pgTestLeftovers(t, e, mv.ID, "mo"); len(l) != 0 {
		t.Fatalf("leftovers: %v", l)
	}
	t.Logf("DROP SUBSCRIPTION path (StopReplication first call): %v", stopTook)
}

// pgTestAIDIn returns the smallest key whose slot is in slots.
func pgTestAIDIn(slots []int, slotCount int) int64 {
	for aid := int64(1); ; aid++ {
		s, _ := shard.SlotOfText(shard.Bigint, strconv.FormatInt(aid, 10), slotCount)
		if slices.Contains(slots, s) {
			return aid
		}
	}
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestRollback(t *testing.T) {
	e := pgEnv(t)
	tables := pgTestSchema(t, e, "rb", 40000)
	const slotCount = 8
	moving := []int{0, 3, 5}
	// The target owns slot 1 already: Rollback must keep those rows.
	pgTestExec(t, e.dst.DSN, fmt.Sprintf("INSERT INTO rb_accounts SELECT * FROM (SELECT g::bigint AS aid, 0, 0, 'mine' FROM generate_series(100001, 101000) g) s WHERE %s = 1",
		pgSlotExpr(tables[0], slotCount, "")))
	pgTestExec(t, e.src.DSN, "ALTER TABLE rb_accounts REPLICA IDENTITY FULL")
	all := allSlots(slotCount)
	before := func() (map[string]string, map[string]string) {
		return pgTestSums(t, e.src.DSN, tables, all, slotCount), pgTestSums(t, e.dst.DSN, tables, all, slotCount)
	}
	src0, dst0 := before()
	mv := Move{ID: "rb1", Source: e.src, Target: e.dst, Tables: tables, Slots: moving, SlotCount: slotCount}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	check := func(stage string) {
		t.Helper()
		src, dst := before()
		if !maps2Equal(src, src0) || !maps2Equal(dst, dst0) {
			t.Fatalf("%s: source %v (was %v), target %v (was %v)", stage, src, src0, dst, dst0)
		}
		if l := pgTestLeftovers(t, e, mv.ID, "rb"); len(l) != 0 {
			t.Fatalf("%s: leftovers %v", stage, l)
		}
		for _, n := range []Node{e.src, e.dst} {
			if c := pgTestInt(t, n.DSN, "SELECT count(*) FROM pg_class WHERE relname IN ('rb_accounts', 'rb_history') AND (relrowsecurity OR relforcerowsecurity)"); c != 0 {
				t.Fatalf("%s: %s: row-level security still on", stage, n.Name)
			}
		}
		if ri := pgTestStr(t, e.src.DSN, "SELECT string_agg(relreplident::text, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('rb_accounts', 'rb_history')"); ri != "f,d" {
			t.Fatalf("%s: replica identities %s, want f,d", stage, ri)
		}
	}

	// 1: rollback in the middle of the copy.
	if err := Prepare(ctx, mv); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(ctx, mv, 100, nil); err == nil {
		t.Fatal("Cleanup before Flip did not refuse")
	}
	if err := StartCopy(ctx, mv); err != nil {
		t.Fatal(err)
	}
	sawCopy := false
	for i := 0; i < 1000; i++ {
		p, err := CopyProgress(ctx, mv)
		if err != nil {
			t.Fatal(err)
		}
		if p.RowsCopied > 0 && !p.Ready {
			t.Logf("mid-copy: %+v", p)
			sawCopy = true
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !sawCopy {
		t.Log("did not catch the copy in progress")
	}
	for i := range 2 {
		start := time.Now()
		if err := Rollback(ctx, mv); err != nil {
			t.Fatalf("Rollback %d: %v", i+1, err)
		}
		t.Logf("Rollback mid-copy (call %d): %v", i+1, time.Since(start).Round(time.Millisecond))
	}
	check("after mid-copy rollback")

	// 2: rollback after Flip needs Unflip first.
	if err := Prepare(ctx, mv); err != nil {
		t.Fatal(err)
	}
	if err := StartCopy(ctx, mv); err != nil {
		t.Fatal(err)
	}
	pgTestWaitReady(t, mv)
	if _, err := WaitCaughtUp(ctx, mv); err != nil {
		t.Fatal(err)
	}
	if err := Flip(ctx, mv); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(ctx, mv, 100, nil); err == nil || !strings.Contains(err.Error(), "StopReplication") {
		t.Fatalf("Cleanup with a subscription: %v", err)
	}
	if err := Prepare(ctx, mv); err == nil || !strings.Contains(err.Error(), "flipped") {
		t.Fatalf("Prepare after Flip: %v", err)
	}
	if err := Rollback(ctx, mv); err == nil || !strings.Contains(err.Error(), "Unflip") {
		t.Fatalf("Rollback after Flip: %v", err)
	}
	for range 2 {
		if err := Unflip(ctx, mv); err != nil {
			t.Fatal(err)
		}
	}
	for _, tb := range tables {
		if n := pgTestAppCount(t, e.dstApp, tb, moving, slotCount); n != 0 {
			t.Fatalf("after Unflip the app sees %d copied rows on the target", n)
		}
	}
	if err := Rollback(ctx, mv); err != nil {
		t.Fatal(err)
	}
	check("after unflip and rollback")
}

func TestCopyData(t *testing.T) {
	e := pgEnv(t)
	pgTestExec(t, e.srcApp, `DROP TABLE IF EXISTS cd_branches;
CREATE TABLE cd_branches (bid int PRIMARY KEY, bbalance int, filler text, total int GENERATED ALWAYS AS (bid + bbalance) STORED);
INSERT INTO cd_branches (bid, bbalance, filler) SELECT g, g * 2, 'b' || g FROM generate_series(1, 1000) g;`)
	pgTestExec(t, e.dstApp, "DROP TABLE IF EXISTS cd_branches")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := CopySchema(ctx, e.src, e.dst, []string{"cd_branches"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		n, err := CopyData(ctx, e.src, e.dst, "cd_branches")
		if err != nil || n != 1000 {
			t.Fatalf("CopyData: %d, %v", n, err)
		}
	}
	q := "SELECT sum(hashtextextended(t::text, 0)::numeric)::text FROM cd_branches t"
	if a, b := pgTestStr(t, e.src.DSN, q), pgTestStr(t, e.dst.DSN, q); a != b {
		t.Fatalf("checksums differ: %s vs %s", a, b)
	}
	if _, err := CopyData(ctx, e.src, e.dst, "no_such_table"); err == nil {
		t.Fatal("CopyData of a missing table succeeded")
	}
}

// TestCopyBench compares a move's copy (Prepare + StartCopy until Ready)
// with a plain filtered COPY pipe between the same nodes, for 1M
// pgbench_accounts-like rows of which half the slots move. Run with
// REBALANCE_BENCH=1.
func TestCopyBench(t *testing.T) {
	if os.Getenv("REBALANCE_BENCH") == "" {
		t.Skip("set REBALANCE_BENCH=1")
	}
	e := pgEnv(t)
	rows := 1_000_000
	if s := os.Getenv("REBALANCE_BENCH_ROWS"); s != "" {
		rows, _ = strconv.Atoi(s)
	}
	pgTestExec(t, e.srcApp, fmt.Sprintf(`DROP TABLE IF EXISTS bench_accounts;
CREATE TABLE bench_accounts (aid bigint PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL DEFAULT 0, filler char(84));
INSERT INTO bench_accounts SELECT g, g / 100000, 0, '' FROM generate_series(1, %d) g;`, rows))
	pgTestExec(t, e.srcApp, "VACUUM ANALYZE bench_accounts")
	pgTestExec(t, e.dstApp, "DROP TABLE IF EXISTS bench_accounts")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := CopySchema(ctx, e.src, e.dst, []string{"bench_accounts"}); err != nil {
		t.Fatal(err)
	}
	const slotCount = 256
	var moving []int
	for s := 0; s < slotCount; s += 2 {
		moving = append(moving, s)
	}
	tb := Table{Name: "bench_accounts", Key: "aid", Type: shard.Bigint}
	filter := fmt.Sprintf("%s IN (%s)", pgSlotExpr(tb, slotCount, ""), pgIntList(moving))

	// Plain COPY pipe.
	src, dst := pgTestConn(t, e.src.DSN), pgTestConn(t, e.dst.DSN)
	start := time.Now()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		_, err := src.PgConn().CopyTo(ctx, pw, "COPY (SELECT * FROM bench_accounts WHERE "+filter+") TO STDOUT")
		pw.CloseWithError(err)
		errc <- err
	}()
	tag, err := dst.PgConn().CopyFrom(ctx, pr, "COPY bench_accounts FROM STDIN")
	if err := errors.Join(err, <-errc); err != nil {
		t.Fatal(err)
	}
	plain := time.Since(start)
	n := tag.RowsAffected()
	if _, err := dst.Exec(ctx, "TRUNCATE bench_accounts; CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}

	mv := Move{ID: "bench1", Source: e.src, Target: e.dst, Tables: []Table{tb}, Slots: moving, SlotCount: slotCount}
	start = time.Now()
	if err := Prepare(ctx, mv); err != nil {
		t.Fatal(err)
	}
	prep := time.Since(start)
	if err := StartCopy(ctx, mv); err != nil {
		t.Fatal(err)
	}
	var sawRows int64
	var kinds []string
	for {
		p, err := CopyProgress(ctx, mv)
		if err != nil {
			t.Fatal(err)
		}
		if p.Ready {
			break
		}
		if p.RowsCopied > sawRows {
			sawRows = p.RowsCopied
		}
		if len(kinds) < 3 {
			var k string
			_ = dst.QueryRow(ctx, "SELECT string_agg(command || '/' || type || ' tuples=' || tuples_processed || ' bytes=' || bytes_processed || ' total=' || bytes_total, '; ') FROM pg_stat_progress_copy").Scan(&k)
			if k != "" {
				kinds = append(kinds, k)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	logical := time.Since(start)
	wait, err := WaitCaughtUp(ctx, mv)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := StopReplication(ctx, mv); err != nil {
		t.Fatal(err)
	}
	stop := time.Since(start)
	got := pgTestInt(t, e.dst.DSN, "SELECT count(*) FROM bench_accounts")
	if got != n {
		t.Fatalf("logical copy has %d rows, plain %d", got, n)
	}
	if err := Flip(ctx, mv); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := Cleanup(ctx, mv, 10000, nil); err != nil {
		t.Fatal(err)
	}
	cleanup := time.Since(start)
	t.Logf("pg_stat_progress_copy during the copy: %v (max RowsCopied seen %d)", kinds, sawRows)
	t.Logf("rows moved: %d of %d", n, rows)
	t.Logf("plain COPY pipe: %v (%.0f rows/s)", plain.Round(time.Millisecond), float64(n)/plain.Seconds())
	t.Logf("Prepare+StartCopy until Ready: %v (Prepare %v) (%.0f rows/s)", logical.Round(time.Millisecond), prep.Round(time.Millisecond), float64(n)/logical.Seconds())
	t.Logf("ratio logical/plain: %.2fx the time", logical.Seconds()/plain.Seconds())
	t.Logf("WaitCaughtUp %v, StopReplication %v, Cleanup (delete %d rows, batch 10000) %v", wait, stop, n, cleanup)
	if l := pgTestLeftovers(t, e, mv.ID, "bench"); len(l) != 0 {
		t.Fatalf("leftovers: %v", l)
	}
	pgTestExec(t, e.src.DSN, "DROP TABLE bench_accounts")
	pgTestExec(t, e.dst.DSN, "DROP TABLE bench_accounts")
}

// TestStopReplicationSourceUnreachable: when DROP SUBSCRIPTION cannot reach
// the source, the subscription is detached from its slots and dropped, and
// the slots (main and tablesync) are dropped on the source directly.
func TestStopReplicationSourceUnreachable(t *testing.T) {
	e := pgEnv(t)
	tables := pgTestSchema(t, e, "su", 40000)
	mv := Move{ID: "unreach1", Source: e.src, Target: e.dst, Tables: tables, Slots: []int{1, 2, 3}, SlotCount: 8}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := Prepare(ctx, mv); err != nil {
		t.Fatal(err)
	}
	if err := StartCopy(ctx, mv); err != nil {
		t.Fatal(err)
	}
	// Wait until a tablesync slot exists on the source.
	for i := 0; ; i++ {
		if n := pgTestInt(t, e.src.DSN, `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pg\_%\_sync\_%'`); n > 0 {
			break
		}
		if i > 500 {
			t.Fatal("no tablesync slot appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The source "goes away" for the target.
	pgTestExec(t, e.dst.DSN, "ALTER SUBSCRIPTION shardproxy_unreach1 CONNECTION 'postgres://postgres@127.0.0.1:1/app?connect_timeout=2'")
	if l := pgTestLeftovers(t, e, mv.ID, "su"); !slices.ContainsFunc(l, func(s string) bool { return strings.Contains(s, "tablesync replication slot") }) {
		t.Logf("leftovers before stop (no tablesync slot listed): %v", l)
	}
	{
		// The plain DROP SUBSCRIPTION fails: the fallback is needed.
		conn := pgTestConnOnce(t, e.dst.DSN)
		err := pgExec(ctx, conn, "DROP SUBSCRIPTION shardproxy_unreach1")
		pgClose(conn)
		if err == nil {
			t.Fatal("DROP SUBSCRIPTION with an unreachable source succeeded")
		}
		t.Logf("plain DROP SUBSCRIPTION: %v", err)
	}
	start := time.Now()
	if err := StopReplication(ctx, mv); err != nil {
		t.Fatal(err)
	}
	t.Logf("StopReplication with an unreachable source: %v", time.Since(start).Round(time.Millisecond))
	for _, l := range pgTestLeftovers(t, e, mv.ID, "su") {
		if strings.Contains(l, "publication") || strings.Contains(l, "subscription") || strings.Contains(l, "replication slot") {
			t.Fatalf("after StopReplication: %s", l)
		}
	}
	if err := Rollback(ctx, mv); err != nil {
		t.Fatal(err)
	}
	if l := pgTestLeftovers(t, e, mv.ID, "su"); len(l) != 0 {
		t.Fatalf("leftovers: %v", l)
	}
	if n := pgTestInt(t, e.dst.DSN, "SELECT count(*) FROM su_accounts"); n != 0 {
		t.Fatalf("target keeps %d copied rows", n)
	}
}
