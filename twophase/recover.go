package twophase

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// DefaultRecoverInterval is Run's period when none is given. The
	// start-up pass runs at once; this only bounds how long a transaction
	// whose proxy lost a shard mid-commit stays prepared.
	DefaultRecoverInterval = 5 * time.Second
	// retryInterval is Run's period after a pass that left work behind
	// (an unreachable shard, a transaction busy in another session).
	retryInterval = time.Second
	// kickDelay lets a burst of Finish(gid, false) calls share one pass.
	kickDelay = 100 * time.Millisecond
	// shardTimeout bounds one shard's part of a pass, so a shard that hangs
	// cannot hold back the next pass for the others forever.
	shardTimeout = 20 * time.Second
)

// Report counts what one recovery pass did (or, from Totals, all passes).
// The counters are meant for metrics.
type Report struct {
	Passes     int // recovery passes (1 for a Recover result)
	Committed  int // COMMIT PREPARED run by recovery
	RolledBack int // ROLLBACK PREPARED run by recovery
	// AlreadyResolved counts transactions that were gone when recovery
	// resolved them: finished meanwhile by the proxy or another pass.
	AlreadyResolved int
	// Busy counts transactions another session was finishing at that
	// moment; the next pass looks again.
	Busy int
	// Active counts prepared transactions of this process still between
	// Begin and Finish, which recovery must not touch.
	Active    int
	Forgotten int // decision-log rows deleted
	Errors    int // failed shards and failed transactions; see the error
	Duration  time.Duration
}

func (r *Report) add(o Report) {
	r.Passes += o.Passes
	r.Committed += o.Committed
	r.RolledBack += o.RolledBack
	r.AlreadyResolved += o.AlreadyResolved
	r.Busy += o.Busy
	r.Active += o.Active
	r.Forgotten += o.Forgotten
	r.Errors += o.Errors
	r.Duration += o.Duration
}

// Totals sums the reports of every pass so far, for counters.
func (c *Coordinator) Totals() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.totals
}

// decisionRow is a decision-log row as read at the start of a pass.
type decisionRow struct {
	committed    bool
	participants []string
	expired      bool // older than abortRetention
}

// shardResult is one shard's part of a pass.
type shardResult struct {
	listed  bool            // pg_prepared_xacts was read
	pending map[string]bool // our GIDs still prepared there after the pass
	aborted []string        // GIDs whose abort row this pass claimed
	rep     Report
	err     error
}

// Recover makes one pass over shards: it commits every in-doubt transaction
// of this proxy name with a logged commit decision, rolls back the others,
// and deletes decisions no participant holds any more. A failing shard does
// not stop the others; the error joins every failure, and the Report counts
// what was done either way.
//
// Concurrent calls in this process run one after the other. Calls from
// different processes are safe too, because every outcome is read from, or
// claimed in, the decision log before it is applied.
func (c *Coordinator) Recover(ctx context.Context, shards []Shard) (Report, error) {
	select {
	case c.recoverSem <- struct{}{}:
	case <-ctx.Done():
		return Report{}, fmt.Errorf("twophase: recover: %w", ctx.Err())
	}
	defer func() { <-c.recoverSem }()

	start := time.Now()
	rep, err := c.recoverPass(ctx, shards)
	rep.Passes = 1
	rep.Duration = time.Since(start)

	c.mu.Lock()
	c.totals.add(rep)
	c.mu.Unlock()

	level := slog.LevelDebug
	if rep.Committed+rep.RolledBack+rep.Forgotten > 0 {
		level = slog.LevelInfo
	}
	if err != nil {
		level = slog.LevelWarn
		if ctx.Err() != nil {
			level = slog.LevelDebug // shutting down; nothing is wrong
		}
	}
	c.log.Log(ctx, level, "twophase: recovery pass",
		"committed", rep.Committed, "rolled_back", rep.RolledBack,
		"already_resolved", rep.AlreadyResolved, "busy", rep.Busy, "active", rep.Active,
		"forgotten", rep.Forgotten, "errors", rep.Errors,
		"duration", rep.Duration.Round(time.Millisecond), "err", err)
	return rep, err
}

func (c *Coordinator) recoverPass(ctx context.Context, shards []Shard) (Report, error) {
	var rep Report
	// The log is read before any shard is listed. A commit row is written
	// only after every participant prepared, so a row seen here whose GID
	// no participant lists afterwards is finished for good; reading the
	// rows after listing could delete a decision whose GID was prepared
	// after we looked.
	rows, err := c.loadDecisions(ctx)
	if err != nil {
		rep.Errors++
		return rep, err
	}
	commits := make(map[string]bool, len(rows))
	for gid, r := range rows {
		if r.committed {
			commits[gid] = true
		}
	}

	// Shards in parallel: one slow or dead shard must not delay the others
	// past the time the product promises (nothing prepared 10 s after a
	// restart).
	results := make([]shardResult, len(shards))
	var wg sync.WaitGroup
	for i, sh := range shards {
		wg.Go(func() { results[i] = c.recoverShard(ctx, sh, commits) })
	}
	wg.Wait()

	listed := map[string]bool{}
	pending := map[string]bool{}
	var errs []error
	for i, res := range results {
		rep.add(res.rep)
		if res.err != nil {
			errs = append(errs, res.err)
		}
		if res.listed {
			listed[shards[i].Name] = true
		}
		for gid := range res.pending {
			pending[gid] = true
		}
		// Only abort rows: a commit row missing from rows was written
		// after they were read, perhaps after another shard was listed,
		// and this pass cannot tell whether all its participants finished.
		for _, gid := range res.aborted {
			if _, ok := rows[gid]; !ok {
				rows[gid] = decisionRow{committed: false}
			}
		}
	}

	known := make(map[string]bool, len(shards))
	for _, sh := range shards {
		known[sh.Name] = true
	}
	forgotten, err := c.cleanup(ctx, rows, known, listed, pending)
	rep.Forgotten = forgotten
	if err != nil {
		rep.Errors++
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

func (c *Coordinator) loadDecisions(ctx context.Context) (map[string]decisionRow, error) {
	rows, err := c.pool.Query(ctx, `SELECT gid, committed, participants, decided_at < now() - make_interval(secs => $2)
		FROM `+decisionsTable+` WHERE starts_with(gid, $1)`, c.prefix, c.abortRetention.Seconds())
	if err != nil {
		return nil, fmt.Errorf("twophase: read decision log: %w", err)
	}
	out := map[string]decisionRow{}
	var gid string
	var r decisionRow
	_, err = pgx.ForEachRow(rows, []any{&gid, &r.committed, &r.participants, &r.expired}, func() error {
		out[gid] = r
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("twophase: read decision log: %w", err)
	}
	return out, nil
}

// cleanup deletes rows (read before listing, plus abort rows this pass
// claimed) that can no longer matter:
//   - a commit row once every participant was listed and none still holds
//     the GID: all committed, and a GID is never prepared twice;
//   - an abort row of this incarnation once the GID is not active (Decide
//     refuses inactive GIDs, so nothing can race it), or of another
//     incarnation after abortRetention (see defaultAbortRetention). Losing
//     an abort row never changes an outcome: no row also means abort.
func (c *Coordinator) cleanup(ctx context.Context, rows map[string]decisionRow, known, listed, pending map[string]bool) (int, error) {
	var delCommit, delAbort []string
	for gid, r := range rows {
		if pending[gid] || c.isActive(gid) {
			continue
		}
		if r.committed {
			all := true
			for _, p := range r.participants {
				if !listed[p] {
					all = false
					// A shard that failed to list already reported
					// an error; one missing from the shard list
					// would keep this row forever, so say so.
					if !known[p] {
						c.log.Warn("twophase: keeping a decision whose participant is not among the shards recovered", "gid", gid, "participant", p)
					}
					break
				}
			}
			if !all {
				continue
			}
			delCommit = append(delCommit, gid)
		} else if p, ok := parseGID(gid); r.expired || (ok && p.incarnation == c.incarnation) {
			delAbort = append(delAbort, gid)
		}
	}
	if len(delCommit)+len(delAbort) == 0 {
		return 0, nil
	}
	// Rows are never updated, only inserted and deleted; matching the
	// outcome too keeps this delete exact even so. Sorted, like every
	// multi-row change, so concurrent passes lock rows in the same order.
	slices.Sort(delCommit)
	slices.Sort(delAbort)
	tag, err := c.pool.Exec(ctx, `DELETE FROM `+decisionsTable+`
		WHERE (gid = ANY($1) AND committed) OR (gid = ANY($2) AND NOT committed)`, delCommit, delAbort)
	if err != nil {
		return 0, fmt.Errorf("twophase: delete %d finished decisions: %w", len(delCommit)+len(delAbort), err)
	}
	return int(tag.RowsAffected()), nil
}

// preparedXact is a row of pg_prepared_xacts.
type preparedXact struct {
	gid, database string
}

// recoverShard lists this proxy's prepared transactions on one shard and
// resolves those that are in doubt.
func (c *Coordinator) recoverShard(ctx context.Context, sh Shard, commits map[string]bool) shardResult {
	res := shardResult{pending: map[string]bool{}}
	fail := func(what string, err error) {
		res.rep.Errors++
		res.err = errors.Join(res.err, fmt.Errorf("twophase: shard %s: %s: %w", sh.Name, what, err))
	}
	ctx, cancel := context.WithTimeout(ctx, shardTimeout)
	defer cancel()

	cfg, err := pgx.ParseConfig(sh.DSN)
	if err != nil {
		fail("parse DSN", err)
		return res
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		fail("connect", err)
		return res
	}
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, cn := range conns {
			closeConn(cn)
		}
	}()

	var curDB string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&curDB); err != nil {
		closeConn(conn)
		fail("list prepared transactions", err)
		return res
	}
	conns[curDB] = conn
	// starts_with, not LIKE: '_' in a proxy name is a LIKE wildcard, and
	// proxy "a_b" must not recover the transactions of proxy "axb".
	rows, err := conn.Query(ctx, `SELECT gid, database FROM pg_prepared_xacts WHERE starts_with(gid, $1) ORDER BY prepared`, c.prefix)
	if err != nil {
		fail("list prepared transactions", err)
		return res
	}
	var all []preparedXact
	var x preparedXact
	if _, err := pgx.ForEachRow(rows, []any{&x.gid, &x.database}, func() error {
		all = append(all, x)
		return nil
	}); err != nil {
		fail("list prepared transactions", err)
		return res
	}
	res.listed = true

	var todo []preparedXact
	var claim []string
	for _, x := range all {
		p, ok := parseGID(x.gid)
		if !ok || p.name != c.name {
			c.log.Warn("twophase: leaving alone a prepared transaction with a malformed gid", "shard", sh.Name, "gid", x.gid)
			continue
		}
		// A GID of this incarnation that is not active was finished
		// (Finish) and can never become active again, so checking here,
		// once, is enough.
		if p.incarnation == c.incarnation && c.isActive(x.gid) {
			res.rep.Active++
			res.pending[x.gid] = true
			continue
		}
		todo = append(todo, x)
		if !commits[x.gid] {
			claim = append(claim, x.gid)
		}
	}

	outcome := make(map[string]bool, len(todo))
	for _, x := range todo {
		if commits[x.gid] {
			outcome[x.gid] = true
		}
	}
	if len(claim) > 0 {
		claimed, err := c.claimAbort(ctx, sh.Name, claim)
		if err != nil {
			fail("claim in-doubt transactions", err)
			for _, gid := range claim {
				res.pending[gid] = true
			}
		} else {
			for gid, committed := range claimed {
				outcome[gid] = committed
				if !committed {
					res.aborted = append(res.aborted, gid)
				}
			}
		}
	}

	dbErr := map[string]error{}
	for _, x := range todo {
		commit, known := outcome[x.gid]
		if !known {
			// Claim failed, or the row vanished between insert and read
			// (the commit finished and was forgotten): look next pass.
			res.pending[x.gid] = true
			continue
		}
		dconn, err := connFor(ctx, cfg, conns, dbErr, x.database)
		if err != nil {
			res.pending[x.gid] = true
			fail("connect to database "+x.database, err)
			continue
		}
		c.resolve(ctx, dconn, sh.Name, x, commit, &res)
	}
	return res
}

// claimAbort writes an abort row for each GID that has no row yet and
// returns the outcome every GID's row records. This is the point where
// recovery and a late Decide meet: whichever row lands first wins.
func (c *Coordinator) claimAbort(ctx context.Context, shard string, gids []string) (map[string]bool, error) {
	// Passes for other shards (or processes) claim overlapping sets at
	// the same time; inserting in one global order keeps them from
	// deadlocking on each other's row locks.
	gids = slices.Sorted(slices.Values(gids))
	if _, err := c.pool.Exec(ctx, `INSERT INTO `+decisionsTable+` (gid, participants, committed)
		SELECT g, ARRAY[$2::text], false FROM unnest($1::text[]) AS g
		ON CONFLICT (gid) DO NOTHING`, gids, shard); err != nil {
		return nil, fmt.Errorf("insert abort decisions: %w", err)
	}
	// A separate statement, so its snapshot includes commit rows whose
	// insert the one above waited for.
	rows, err := c.pool.Query(ctx, `SELECT gid, committed FROM `+decisionsTable+` WHERE gid = ANY($1)`, gids)
	if err != nil {
		return nil, fmt.Errorf("read decisions: %w", err)
	}
	out := make(map[string]bool, len(gids))
	var gid string
	var committed bool
	if _, err := pgx.ForEachRow(rows, []any{&gid, &committed}, func() error {
		out[gid] = committed
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read decisions: %w", err)
	}
	return out, nil
}

// resolve runs COMMIT PREPARED or ROLLBACK PREPARED for one transaction and
// counts the result.
func (c *Coordinator) resolve(ctx context.Context, conn *pgx.Conn, shard string, x preparedXact, commit bool, res *shardResult) {
	verb := "ROLLBACK PREPARED"
	if commit {
		verb = "COMMIT PREPARED"
	}
	// Simple protocol: these take no parameters, and each GID is used once,
	// so a prepared statement would only fill the cache.
	_, err := conn.PgConn().Exec(ctx, verb+" "+quoteLiteral(x.gid)).ReadAll()
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		if commit {
			res.rep.Committed++
		} else {
			res.rep.RolledBack++
		}
		c.log.Info("twophase: resolved in-doubt transaction", "shard", shard, "database", x.database, "gid", x.gid, "committed", commit)
	case errors.As(err, &pgErr) && pgErr.Code == "42704":
		// undefined_object: finished since we listed it. GIDs are never
		// reused and a GID with a commit row is never rolled back by
		// anyone, so whoever finished it chose the same outcome.
		res.rep.AlreadyResolved++
	case errors.As(err, &pgErr) && pgErr.Code == "55000":
		// "prepared transaction ... is busy": another session is
		// finishing it right now.
		res.rep.Busy++
		res.pending[x.gid] = true
	default:
		res.pending[x.gid] = true
		res.rep.Errors++
		res.err = errors.Join(res.err, fmt.Errorf("twophase: shard %s: %s %s in database %s: %w", shard, verb, x.gid, x.database, err))
	}
}

// connFor returns a connection to database db on the shard. COMMIT PREPARED
// must run in the database the transaction was prepared in, which need not
// be the one in the shard's DSN.
func connFor(ctx context.Context, base *pgx.ConnConfig, conns map[string]*pgx.Conn, failed map[string]error, db string) (*pgx.Conn, error) {
	if cn, ok := conns[db]; ok {
		return cn, nil
	}
	if err, ok := failed[db]; ok {
		return nil, err
	}
	cfg := base.Copy()
	cfg.Database = db
	cn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		failed[db] = err
		return nil, err
	}
	conns[db] = cn
	return cn, nil
}

// closeConn closes with its own short deadline: the pass's context may
// already be done, and a Terminate message should still be sent.
func closeConn(cn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = cn.Close(ctx)
}

// Run recovers at once and then every interval (DefaultRecoverInterval if
// not positive), sooner after a pass that left work behind or when Finish
// reports an unresolved transaction. shards is called before each pass, so
// shard map changes are picked up. Run returns when ctx is done or the
// coordinator is closed; start it with go.
func (c *Coordinator) Run(ctx context.Context, shards func() []Shard, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRecoverInterval
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.runWG.Add(1)
	c.mu.Unlock()
	defer c.runWG.Done()

	// Close must also end an in-flight pass, not just the wait between
	// passes, before it closes the pool that pass uses.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.closing:
			cancel()
		case <-ctx.Done():
		}
	}()

	for {
		rep, err := c.Recover(ctx, shards())
		if ctx.Err() != nil {
			return
		}
		wait := interval
		if err != nil || rep.Busy > 0 {
			wait = min(wait, retryInterval)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.kick:
			t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-time.After(kickDelay):
			}
		}
	}
}
