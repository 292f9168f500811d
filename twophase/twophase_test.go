package twophase

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/localcluster"
)

// recoverBudget is what the product promises for "nothing prepared after a
// restart"; a single pass must fit well inside it.
const recoverBudget = 10 * time.Second

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"shardproxy", "proxy-1", "eu_west.a", strings.Repeat("x", 63)} {
		if err := validateName(ok); err != nil {
			t.Errorf("validateName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "a:b", "it's", "a b", "ä", strings.Repeat("x", 64)} {
		if err := validateName(bad); err == nil {
			t.Errorf("validateName(%q) = nil, want an error", bad)
		}
	}
}

func TestGIDFormat(t *testing.T) {
	inc, err := newIncarnation()
	if err != nil {
		t.Fatal(err)
	}
	c := &Coordinator{name: strings.Repeat("n", 63), incarnation: inc, active: map[string]*txn{}}
	c.prefix = gidPrefix + c.name + ":"
	c.seq.Store(^uint64(0) - 1) // the longest sequence number
	gid := c.Begin()
	if len(gid) >= 200 {
		t.Errorf("gid %q is %d bytes; PostgreSQL allows fewer than 200", gid, len(gid))
	}
	p, ok := parseGID(gid)
	if !ok || p.name != c.name || p.incarnation != inc || p.seq != ^uint64(0) {
		t.Errorf("parseGID(%q) = %+v, %v", gid, p, ok)
	}
	if !c.isActive(gid) {
		t.Error("Begin did not mark the gid active")
	}
	for _, bad := range []string{"x:shardproxy:a:b:1", "shardproxy:a:b", "shardproxy:a:b:c", "shardproxy:a:b:1:2", "shardproxy:a b:c:1", "shardproxy:a:b':1"} {
		if _, ok := parseGID(bad); ok {
			t.Errorf("parseGID(%q) accepted a gid Begin cannot make", bad)
		}
	}
}

// --- helpers for the tests against real PostgreSQL ---

func needCluster(t *testing.T) {
	t.Helper()
	if cluster == nil {
		t.Skip("starts PostgreSQL servers; skipped with -short")
	}
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("TWOPHASE_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

var nameUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// proxyName gives each test its own name, so its recovery passes never see
// another test's transactions.
func proxyName(t *testing.T) string {
	n := nameUnsafe.ReplaceAllString(t.Name(), "-")
	if len(n) > 60 {
		n = n[len(n)-60:]
	}
	return n
}

func metaDSN() string { return cluster.Primary("shard0").DSN(metaDB) }

func open(t *testing.T, name string) *Coordinator {
	t.Helper()
	c, err := Open(t.Context(), metaDSN(), name, testLogger())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func shards() []Shard {
	var out []Shard
	for _, s := range cluster.ShardNames() {
		out = append(out, Shard{Name: s, DSN: cluster.Primary(s).DSN(localcluster.AppDatabase)})
	}
	return out
}

var both = []string{"shard0", "shard1"}

var nextID atomic.Int64

func newID() int64 { return nextID.Add(1) }

func connect(t *testing.T, shard, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), cluster.Primary(shard).DSN(db))
	if err != nil {
		t.Fatalf("connect %s/%s: %v", shard, db, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// prepare inserts row id in db on shard and prepares that transaction as
// gid, as the proxy's executor would.
func prepare(t *testing.T, shard, db, gid string, id int64) {
	t.Helper()
	conn := connect(t, shard, db)
	mustExec(t, conn, "BEGIN")
	mustExec(t, conn, "INSERT INTO "+itemTable+" (id) VALUES ($1)", id)
	mustExec(t, conn, "PREPARE TRANSACTION "+quoteLiteral(gid))
}

// finishPrepared runs COMMIT or ROLLBACK PREPARED as the proxy would.
func finishPrepared(t *testing.T, shard, db, gid string, commit bool) {
	t.Helper()
	verb := "ROLLBACK PREPARED "
	if commit {
		verb = "COMMIT PREPARED "
	}
	mustExec(t, connect(t, shard, db), verb+quoteLiteral(gid))
}

// visible reports whether row id is committed in db on shard.
func visible(t *testing.T, shard, db string, id int64) bool {
	t.Helper()
	var n int
	if err := connect(t, shard, db).QueryRow(t.Context(), "SELECT count(*) FROM "+itemTable+" WHERE id = $1", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// preparedGIDs lists the transactions prepared on shard whose GID starts with
// prefix, in any database.
func preparedGIDs(t *testing.T, shard, prefix string) []string {
	t.Helper()
	rows, err := connect(t, shard, "postgres").Query(t.Context(),
		"SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, $1) ORDER BY gid", prefix)
	if err != nil {
		t.Fatal(err)
	}
	gids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return gids
}

// decisions returns the decision-log rows whose GID starts with prefix:
// gid -> committed.
func decisions(t *testing.T, prefix string) map[string]bool {
	t.Helper()
	rows, err := connect(t, "shard0", metaDB).Query(t.Context(),
		"SELECT gid, committed FROM "+decisionsTable+" WHERE starts_with(gid, $1)", prefix)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	var gid string
	var committed bool
	if _, err := pgx.ForEachRow(rows, []any{&gid, &committed}, func() error {
		out[gid] = committed
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func recoverOK(t *testing.T, c *Coordinator) Report {
	t.Helper()
	start := time.Now()
	rep, err := c.Recover(t.Context(), shards())
	if err != nil {
		t.Fatalf("Recover: %v (report %+v)", err, rep)
	}
	if d := time.Since(start); d > recoverBudget/2 {
		t.Errorf("Recover took %s; it must fit well inside %s", d, recoverBudget)
	}
	return rep
}

// wantCounts compares the counters that say what recovery did.
func wantCounts(t *testing.T, got Report, committed, rolledBack, active int) {
	t.Helper()
	if got.Committed != committed || got.RolledBack != rolledBack || got.Active != active || got.Errors != 0 || got.Busy != 0 {
		t.Errorf("report %+v: want committed=%d rolled_back=%d active=%d and no errors", got, committed, rolledBack, active)
	}
}

func wantVisible(t *testing.T, id int64, want bool, places ...[2]string) {
	t.Helper()
	for _, p := range places {
		if got := visible(t, p[0], p[1], id); got != want {
			t.Errorf("row %d on %s/%s: visible=%v, want %v", id, p[0], p[1], got, want)
		}
	}
}

func wantNothingPrepared(t *testing.T, prefix string) {
	t.Helper()
	for _, s := range both {
		if gids := preparedGIDs(t, s, prefix); len(gids) > 0 {
			t.Errorf("%s still has prepared transactions %v", s, gids)
		}
	}
}

var (
	app0 = [2]string{"shard0", localcluster.AppDatabase}
	app1 = [2]string{"shard1", localcluster.AppDatabase}
)

// --- tests ---

// TestCommitFlow is the normal path: prepare on both shards, decide, commit
// on both, finish; the decision is forgotten and recovery finds nothing.
func TestCommitFlow(t *testing.T) {
	needCluster(t)
	c := open(t, proxyName(t))
	id := newID()
	gid := c.Begin()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, gid, id)
	}
	if err := c.Decide(t.Context(), gid, both); err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if got := decisions(t, gid); !got[gid] {
		t.Fatalf("decision log after Decide = %v, want a commit row for %s", got, gid)
	}
	// Deciding again (a retry) is harmless.
	if err := c.Decide(t.Context(), gid, both); err != nil {
		t.Fatalf("second Decide: %v", err)
	}
	for _, s := range both {
		finishPrepared(t, s, localcluster.AppDatabase, gid, true)
	}
	c.Finish(gid, true)
	if err := c.Decide(t.Context(), gid, both); !errors.Is(err, ErrNotActive) {
		t.Errorf("Decide after Finish = %v, want ErrNotActive", err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for len(decisions(t, gid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("decision not forgotten within 5s of Finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	wantVisible(t, id, true, app0, app1)
	wantCounts(t, recoverOK(t, c), 0, 0, 0)
	if c.ActiveCount() != 0 || c.DecidedCount() != 1 {
		t.Errorf("ActiveCount=%d DecidedCount=%d, want 0 and 1", c.ActiveCount(), c.DecidedCount())
	}
}

// TestRecoverCrashedIncarnation leaves transactions of an earlier incarnation
// of the same proxy in each state a crash can leave them, and checks that one
// pass of the next incarnation finishes all of them the right way.
func TestRecoverCrashedIncarnation(t *testing.T) {
	needCluster(t)
	name := proxyName(t)
	dead := open(t, name)

	// Crashed after preparing on both shards, before deciding: roll back.
	noDecision, idNoDecision := dead.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, noDecision, idNoDecision)
	}
	// Crashed after preparing on one shard only: roll back.
	half, idHalf := dead.Begin(), newID()
	prepare(t, "shard0", localcluster.AppDatabase, half, idHalf)
	// Crashed after deciding, before any COMMIT PREPARED: commit both.
	decided, idDecided := dead.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, decided, idDecided)
	}
	if err := dead.Decide(t.Context(), decided, both); err != nil {
		t.Fatal(err)
	}
	// Crashed after committing on shard0: commit shard1.
	partial, idPartial := dead.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, partial, idPartial)
	}
	if err := dead.Decide(t.Context(), partial, both); err != nil {
		t.Fatal(err)
	}
	finishPrepared(t, "shard0", localcluster.AppDatabase, partial, true)
	// Prepared in another database than the shard DSN's, decided and not:
	// recovery must switch databases to finish them.
	otherDecided, idOtherDecided := dead.Begin(), newID()
	otherUndecided, idOtherUndecided := dead.Begin(), newID()
	for _, s := range both {
		prepare(t, s, otherDB, otherDecided, idOtherDecided)
		prepare(t, s, otherDB, otherUndecided, idOtherUndecided)
	}
	if err := dead.Decide(t.Context(), otherDecided, both); err != nil {
		t.Fatal(err)
	}
	// Crashed after committing everywhere, before forgetting: nothing to
	// do but delete the decision.
	done, idDone := dead.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, done, idDone)
	}
	if err := dead.Decide(t.Context(), done, both); err != nil {
		t.Fatal(err)
	}
	for _, s := range both {
		finishPrepared(t, s, localcluster.AppDatabase, done, true)
	}
	dead.Close() // the crash: no Finish for anything

	live := open(t, name)
	rep := recoverOK(t, live)
	// decided 2 + partial 1 + otherDecided 2; noDecision 2 + half 1 + otherUndecided 2.
	wantCounts(t, rep, 5, 5, 0)
	wantNothingPrepared(t, gidPrefix+name+":")

	other0, other1 := [2]string{"shard0", otherDB}, [2]string{"shard1", otherDB}
	wantVisible(t, idNoDecision, false, app0, app1)
	wantVisible(t, idHalf, false, app0)
	wantVisible(t, idDecided, true, app0, app1)
	wantVisible(t, idPartial, true, app0, app1)
	wantVisible(t, idOtherDecided, true, other0, other1)
	wantVisible(t, idOtherUndecided, false, other0, other1)
	wantVisible(t, idDone, true, app0, app1)

	// Commit decisions are gone; abort claims of the dead incarnation are
	// kept for abortRetention, then go too.
	for gid, committed := range decisions(t, gidPrefix+name+":") {
		if committed {
			t.Errorf("commit decision %s still logged after recovery", gid)
		}
	}
	if got := rep.Forgotten; got != 4 {
		t.Errorf("Forgotten = %d, want 4 (decided, partial, otherDecided, done)", got)
	}
	live.abortRetention = 0
	recoverOK(t, live)
	if got := decisions(t, gidPrefix+name+":"); len(got) > 0 {
		t.Errorf("decision log after retention = %v, want empty", got)
	}
}

// TestRecoverCurrentIncarnation checks that recovery leaves active GIDs of its
// own process alone and resolves them once Finish reports them unresolved.
func TestRecoverCurrentIncarnation(t *testing.T) {
	needCluster(t)
	c := open(t, proxyName(t))

	undecided, idUndecided := c.Begin(), newID()
	decided, idDecided := c.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, undecided, idUndecided)
		prepare(t, s, localcluster.AppDatabase, decided, idDecided)
	}
	if err := c.Decide(t.Context(), decided, both); err != nil {
		t.Fatal(err)
	}
	finishPrepared(t, "shard0", localcluster.AppDatabase, decided, true)

	// Both are active: untouched.
	wantCounts(t, recoverOK(t, c), 0, 0, 3)
	if got := len(preparedGIDs(t, "shard0", undecided)) + len(preparedGIDs(t, "shard1", undecided)); got != 2 {
		t.Fatalf("active undecided transaction: %d of 2 still prepared", got)
	}
	if !decisions(t, decided)[decided] {
		t.Fatal("recovery dropped the decision of an active transaction")
	}

	// The proxy lost shard1 while committing, and both shards while
	// rolling back: recovery finishes the job.
	c.Finish(decided, false)
	c.Finish(undecided, false)
	wantCounts(t, recoverOK(t, c), 1, 2, 0)
	wantNothingPrepared(t, gidPrefix+c.Name()+":")
	wantVisible(t, idDecided, true, app0, app1)
	wantVisible(t, idUndecided, false, app0, app1)
	if got := decisions(t, gidPrefix+c.Name()+":"); len(got) > 0 {
		t.Errorf("decision log after recovery = %v, want empty (own incarnation, nothing active)", got)
	}
	if err := c.Decide(t.Context(), undecided, both); !errors.Is(err, ErrNotActive) {
		t.Errorf("Decide after Finish = %v, want ErrNotActive", err)
	}
}

// TestRecoverLeavesOthersAlone checks that other proxies' GIDs, including one
// whose name matches ours as a LIKE pattern, and foreign GIDs survive.
func TestRecoverLeavesOthersAlone(t *testing.T) {
	needCluster(t)
	c := open(t, "leave_alone")
	other := open(t, "leaveXalone") // 'leave_alone' LIKE-matches this name
	otherGID, id1 := other.Begin(), newID()
	foreign, id2 := "manual-"+c.Incarnation(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, otherGID, id1)
		prepare(t, s, localcluster.AppDatabase, foreign, id2)
	}
	other.Close() // crashed; only its own name may recover it
	wantCounts(t, recoverOK(t, c), 0, 0, 0)
	for _, s := range both {
		for _, gid := range []string{otherGID, foreign} {
			if len(preparedGIDs(t, s, gid)) != 1 {
				t.Errorf("%s: %s was touched by another proxy's recovery", s, gid)
			}
		}
	}
	for _, s := range both {
		finishPrepared(t, s, localcluster.AppDatabase, otherGID, false)
		finishPrepared(t, s, localcluster.AppDatabase, foreign, false)
	}
}

// TestDecideLosesToRecovery makes the invariant explicit: once recovery has
// rolled a GID back, Decide for it fails with ErrAborted, and once Decide has
// logged a commit, recovery commits. Two live coordinators share a name here,
// which only a misconfiguration does, because that is the one way a live
// transaction can be in doubt for someone else's recovery.
func TestDecideLosesToRecovery(t *testing.T) {
	needCluster(t)
	name := proxyName(t)
	a, b := open(t, name), open(t, name)

	lost, idLost := a.Begin(), newID()
	won, idWon := a.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, lost, idLost)
		prepare(t, s, localcluster.AppDatabase, won, idWon)
	}
	if err := a.Decide(t.Context(), won, both); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, recoverOK(t, b), 2, 2, 0)
	if err := a.Decide(t.Context(), lost, both); !errors.Is(err, ErrAborted) {
		t.Fatalf("Decide after another recovery rolled the gid back = %v, want ErrAborted", err)
	}
	a.Finish(lost, true)
	a.Finish(won, true)
	wantVisible(t, idLost, false, app0, app1)
	wantVisible(t, idWon, true, app0, app1)
}

// TestDecideCanceled checks that a Decide whose context is already done does
// not leave the outcome unknown while the metadata database is up: it
// records an abort, and recovery rolls back.
func TestDecideCanceled(t *testing.T) {
	needCluster(t)
	c := open(t, proxyName(t))
	gid, id := c.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, gid, id)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Decide(ctx, gid, both); !errors.Is(err, ErrAborted) {
		t.Fatalf("Decide with a canceled context = %v, want ErrAborted", err)
	}
	if committed, ok := decisions(t, gid)[gid]; !ok || committed {
		t.Fatalf("decision log = %v, want an abort row", decisions(t, gid))
	}
	c.Finish(gid, false)
	wantCounts(t, recoverOK(t, c), 0, 2, 0)
	wantVisible(t, id, false, app0, app1)

	// And a Begin older than the decide timeout is refused outright.
	c.decideTimeout = time.Nanosecond
	late := c.Begin()
	time.Sleep(time.Millisecond)
	if err := c.Decide(t.Context(), late, both); !errors.Is(err, ErrAborted) {
		t.Errorf("late Decide = %v, want ErrAborted", err)
	}
	c.Finish(late, true)
}

// TestConcurrentRecover runs many passes at once, in one process and in two
// (same name, so each sees the leftovers of a third, crashed incarnation),
// and checks that every transaction is finished exactly once, correctly.
func TestConcurrentRecover(t *testing.T) {
	needCluster(t)
	name := proxyName(t)
	dead := open(t, name)
	const n = 10
	var decided, undecided []int64
	for i := range 2 * n {
		gid, id := dead.Begin(), newID()
		for _, s := range both {
			prepare(t, s, localcluster.AppDatabase, gid, id)
		}
		if i%2 == 0 {
			if err := dead.Decide(t.Context(), gid, both); err != nil {
				t.Fatal(err)
			}
			decided = append(decided, id)
		} else {
			undecided = append(undecided, id)
		}
	}
	dead.Close()

	c1, c2 := open(t, name), open(t, name)
	var mu sync.Mutex
	var total Report
	var errs []error
	var wg sync.WaitGroup
	for i := range 6 {
		c := c1
		if i%2 == 1 {
			c = c2
		}
		wg.Go(func() {
			rep, err := c.Recover(t.Context(), shards())
			mu.Lock()
			defer mu.Unlock()
			total.add(rep)
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	// A pass that found a transaction busy in another leaves it for the
	// next; finish that now.
	total.add(recoverOK(t, c1))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Recover: %v", err)
	}
	t.Logf("concurrent passes: %+v", total)
	if total.Committed != 2*n || total.RolledBack != 2*n || total.Errors != 0 {
		t.Errorf("total %+v: want each of %d commits and %d rollbacks done exactly once", total, 2*n, 2*n)
	}
	wantNothingPrepared(t, gidPrefix+name+":")
	for _, id := range decided {
		wantVisible(t, id, true, app0, app1)
	}
	for _, id := range undecided {
		wantVisible(t, id, false, app0, app1)
	}
	for gid, committed := range decisions(t, gidPrefix+name+":") {
		if committed {
			t.Errorf("commit decision %s still logged", gid)
		}
	}
	if got := c1.Totals().Passes + c2.Totals().Passes; got != 7 {
		t.Errorf("Totals report %d passes, want 7", got)
	}
}

// TestRun checks the start-up pass (a crashed incarnation's leftovers are
// gone well within 10 s of the restart) and that Finish(gid, false) makes
// Run finish the transaction long before its next tick.
func TestRun(t *testing.T) {
	needCluster(t)
	name := proxyName(t)
	prefix := gidPrefix + name + ":"
	dead := open(t, name)
	crashed, idCrashed := dead.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, crashed, idCrashed)
	}
	if err := dead.Decide(t.Context(), crashed, both); err != nil {
		t.Fatal(err)
	}
	dead.Close()

	restart := time.Now()
	c := open(t, name)
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		c.Run(ctx, shards, time.Hour) // only the start-up pass and kicks
	}()
	waitUnprepared := func(what string, since time.Time) {
		t.Helper()
		for {
			n := len(preparedGIDs(t, "shard0", prefix)) + len(preparedGIDs(t, "shard1", prefix))
			if n == 0 {
				return
			}
			if time.Since(since) > recoverBudget {
				t.Fatalf("%s: %d transactions still prepared after %s", what, n, recoverBudget)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitUnprepared("after restart", restart)
	t.Logf("crashed incarnation recovered %s after restart", time.Since(restart).Round(time.Millisecond))
	wantVisible(t, idCrashed, true, app0, app1)

	gid, id := c.Begin(), newID()
	for _, s := range both {
		prepare(t, s, localcluster.AppDatabase, gid, id)
	}
	finished := time.Now()
	c.Finish(gid, false)
	waitUnprepared("after Finish(gid, false)", finished)
	if d := time.Since(finished); d > 3*time.Second {
		t.Errorf("Finish(gid, false) was followed by recovery only after %s", d)
	}
	wantVisible(t, id, false, app0, app1)

	cancel()
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context was canceled")
	}
	if tot := c.Totals(); tot.Committed != 2 || tot.RolledBack != 2 || tot.Passes < 2 {
		t.Errorf("Totals = %+v, want 2 committed, 2 rolled back over at least 2 passes", tot)
	}
}

// TestRunStopsOnClose checks that Close ends Run, so the pool is not closed
// under a running pass.
func TestRunStopsOnClose(t *testing.T) {
	needCluster(t)
	c, err := Open(t.Context(), metaDSN(), proxyName(t), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		c.Run(context.Background(), shards, 10*time.Millisecond)
	}()
	time.Sleep(100 * time.Millisecond)
	c.Close()
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

// TestOpenConcurrently checks that several proxies starting at once all
// create (or find) the schema.
func TestOpenConcurrently(t *testing.T) {
	needCluster(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			c, err := Open(t.Context(), metaDSN(), fmt.Sprintf("%s-%d", proxyName(t), i), testLogger())
			if err == nil {
				c.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), metaDSN(), "bad:name", nil); err == nil {
		t.Error("Open accepted a proxy name with ':'")
	}
}
