package rebalance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/shard"
)

// errStopped: the proxy is shutting down; the journal keeps the phase and
// the next start resumes from it.
var errStopped = errors.New("rebalance stopped by the proxy shutting down; it resumes at the next start")

// Phases of a move, in order. A move is journaled in a phase before the
// phase's work starts, and every phase's work can run again.
const (
	phasePending    = "pending"
	phasePrepare    = "prepare"
	phaseCopy       = "copy"
	phaseCatchup    = "catchup"
	phaseVerify     = "verify"
	phaseCutover    = "cutover"
	phaseCleanup    = "cleanup"
	phaseDone       = "done"
	phaseRollback   = "rollback"
	phaseRolledBack = "rolled_back"
	phaseSkipped    = "skipped"
)

// moveOf is the move's PostgreSQL side.
func (o *Orchestrator) moveOf(rec *record, i int) Move {
	mr := rec.Moves[i]
	o.mu.Lock()
	src, dst := o.nodeOf(mr.From), o.nodeOf(mr.To)
	o.mu.Unlock()
	m := o.opts.Proxy.ShardMap()
	return Move{ID: fmt.Sprintf("r%dm%d", rec.ID, i), Source: src, Target: dst, Tables: tablesOf(m), Slots: mr.Slots, SlotCount: len(m.Slots)}
}

// lock takes the advisory lock that makes this proxy the one driving
// rebalances; the connection holds it until closed.
func (o *Orchestrator) lock(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, o.opts.MetaDSN)
	if err != nil {
		return nil, fmt.Errorf("metadata database: %w", err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", runLockKey).Scan(&ok); err != nil || !ok {
		conn.Close(context.Background())
		if err == nil {
			err = errors.New("another proxy is driving the rebalance")
		}
		return nil, err
	}
	return conn, nil
}

func (o *Orchestrator) drive(ctx context.Context, rec *record, r *running) {
	bg := context.Background()
	var lockConn *pgx.Conn
	for {
		var err error
		if lockConn, err = o.lock(ctx); err == nil {
			break
		}
		o.log.Warn("rebalance waits for the run lock", "id", rec.ID, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	defer lockConn.Close(bg)
	o.m.running.Set(1)
	defer o.m.running.Set(0)

	var failure error
	cancelled := false
	for i := range rec.Moves {
		mr := &rec.Moves[i]
		switch mr.Phase {
		case phaseDone, phaseRolledBack, phaseSkipped:
			continue
		case phasePending:
			if r.cancelRequested || isClosed(r.cancelCh) {
				cancelled = true
				o.setPhase(rec, r, i, phaseSkipped, "skipped: the rebalance was cancelled")
				continue
			}
			if failure != nil {
				o.setPhase(rec, r, i, phaseSkipped, "skipped: an earlier move failed")
				continue
			}
		}
		if failure != nil {
			continue
		}
		err := o.runMove(ctx, rec, r, i)
		switch {
		case err == nil:
		case errors.Is(err, errStopped):
			o.log.Info("rebalance paused by shutdown", "id", rec.ID, "move", i, "phase", rec.Moves[i].Phase)
			return
		case errors.Is(err, errCancelled):
			cancelled = true
		default:
			failure = err
			o.log.Error("rebalance move failed", "id", rec.ID, "move", i, "err", err)
		}
	}
	state, msg := "done", ""
	switch {
	case failure != nil:
		state, msg = "failed", failure.Error()
	case cancelled || r.cancelRequested || isClosed(r.cancelCh):
		state = "cancelled"
	}
	_ = o.j.finish(bg, rec.ID, state, msg)
	now := time.Now()
	o.mu.Lock()
	r.status.State, r.status.Error, r.status.Phase, r.status.FinishedAt = state, msg, "", now
	o.last = r.status
	o.last.Moves = slices.Clone(r.status.Moves)
	o.mu.Unlock()
	o.log.Info("rebalance ended", "id", rec.ID, "state", state, "err", msg)
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// setPhase journals and publishes a move's phase.
func (o *Orchestrator) setPhase(rec *record, r *running, i int, phase, msg string) error {
	rec.Moves[i].Phase = phase
	o.update(r, func(st *admin.RebalanceStatus) {
		st.Moves[i].Phase = phase
		st.Phase = phase
	})
	o.m.phase(phase)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return o.j.setPhase(ctx, rec.ID, i, phase, fmt.Sprintf("move %d (%s -> %s, %d slots): %s", i+1, rec.Moves[i].From, rec.Moves[i].To, len(rec.Moves[i].Slots), msg))
}

func (o *Orchestrator) saveMove(rec *record, i int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.j.updateMove(ctx, rec.ID, rec.Moves[i]); err != nil {
		o.log.Warn("journal move counters", "err", err)
	}
}

// runMove takes one move from its journaled phase to done (or rolled
// back). Before the cutover switches the slots a cancel request rolls
// the move back; after it, the move always finishes.
func (o *Orchestrator) runMove(ctx context.Context, rec *record, r *running, i int) error {
	mr := &rec.Moves[i]
	mv := o.moveOf(rec, i)
	// pre: cancelled by a shutdown or a cancel request.
	pre, cancelPre := context.WithCancel(ctx)
	defer cancelPre()
	go func() {
		select {
		case <-r.cancelCh:
			cancelPre()
		case <-pre.Done():
		}
	}()
	rollback := func(cause error) error {
		if ctx.Err() != nil && !isClosed(r.cancelCh) {
			return errStopped
		}
		o.setPhase(rec, r, i, phaseRollback, "rolling back: "+cause.Error())
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := Rollback(rctx, mv); err != nil {
			return fmt.Errorf("move %d: roll back after %v: %w", i+1, cause, err)
		}
		o.setPhase(rec, r, i, phaseRolledBack, "rolled back; nothing of the move is left on either node")
		return cause
	}
	stopped := func(err error) error {
		if isClosed(r.cancelCh) {
			return rollback(errCancelled)
		}
		if ctx.Err() != nil {
			return errStopped
		}
		return rollback(fmt.Errorf("move %d: %w", i+1, err))
	}
	for {
		switch mr.Phase {
		case phasePending, phasePrepare:
			o.setPhase(rec, r, i, phasePrepare, "preparing the target and the publication")
			if err := Prepare(pre, mv); err != nil {
				return stopped(err)
			}
			o.setPhase(rec, r, i, phaseCopy, "copying rows through a subscription")
		case phaseCopy:
			if err := StartCopy(pre, mv); err != nil {
				return stopped(err)
			}
			if err := o.followCopy(pre, rec, r, i, mv); err != nil {
				return stopped(err)
			}
			o.setPhase(rec, r, i, phaseCatchup, "copy done; streaming the changes made since")
		case phaseCatchup:
			cctx, cancel := context.WithTimeout(pre, 2*time.Minute)
			d, err := WaitCaughtUp(cctx, mv)
			cancel()
			if err != nil {
				return stopped(err)
			}
			next := phaseVerify
			if mr.Verified {
				next = phaseCutover // verified before an interrupted cutover
			}
			o.setPhase(rec, r, i, next, fmt.Sprintf("caught up (marker round trip %s)", d.Round(time.Millisecond)))
		case phaseVerify:
			checks, pause, err := o.verifyPoint(pre, rec, i, mv)
			if err != nil {
				return stopped(err)
			}
			o.m.pause.Observe(pause.Seconds())
			bad := badChecks(checks)
			mr.Verified, mr.VerifyError = len(bad) == 0, strings.Join(bad, "; ")
			o.update(r, func(st *admin.RebalanceStatus) {
				st.Moves[i].Verified, st.Moves[i].VerifyError = mr.Verified, mr.VerifyError
			})
			o.saveMove(rec, i)
			if !mr.Verified {
				return rollback(fmt.Errorf("move %d: the copy differs from the source, nothing was switched: %s", i+1, mr.VerifyError))
			}
			o.setPhase(rec, r, i, phaseCutover, fmt.Sprintf("verified %d slot checks (count and checksum per table and slot) at a consistent point; writes held %s", len(checks), pause.Round(time.Microsecond)))
		case phaseCutover:
			version, pause, err := o.cutover(pre, rec, i, mv)
			if err != nil {
				return stopped(err)
			}
			mr.MapVersion, mr.PauseMillis = version, float64(pause.Microseconds())/1000
			o.m.pause.Observe(pause.Seconds())
			o.update(r, func(st *admin.RebalanceStatus) { st.Moves[i].PauseMillis = mr.PauseMillis })
			o.saveMove(rec, i)
			o.setPhase(rec, r, i, phaseCleanup, fmt.Sprintf("slots switched in shard map version %d; writes held %s; deleting the moved rows from %s",
				version, pause.Round(time.Microsecond), mr.From))
		case phaseCleanup:
			if err := StopReplication(ctx, mv); err != nil {
				return o.stopOrFail(ctx, i, err)
			}
			err := Cleanup(ctx, mv, 10000, func(n int64) {
				mr.RowsCleaned += n
				o.update(r, func(st *admin.RebalanceStatus) { st.Moves[i].RowsCleaned = mr.RowsCleaned })
			})
			o.saveMove(rec, i)
			if err != nil {
				return o.stopOrFail(ctx, i, err)
			}
			o.setPhase(rec, r, i, phaseDone, fmt.Sprintf("done: %d rows cleaned from %s", mr.RowsCleaned, mr.From))
			return nil
		case phaseRollback:
			return rollback(errCancelled)
		case phaseDone, phaseRolledBack, phaseSkipped:
			return nil
		default:
			return fmt.Errorf("move %d: unknown phase %q in the journal", i+1, mr.Phase)
		}
	}
}

func (o *Orchestrator) stopOrFail(ctx context.Context, i int, err error) error {
	if ctx.Err() != nil {
		return errStopped
	}
	return fmt.Errorf("move %d: %w", i+1, err)
}

func badChecks(checks []SlotCheck) []string {
	var bad []string
	for _, c := range checks {
		if !c.OK {
			bad = append(bad, fmt.Sprintf("%s slot %d: source %d rows (sum %s), target %d rows (sum %s)", c.Table, c.Slot, c.SourceRows, c.SourceSum, c.TargetRows, c.TargetSum))
		}
	}
	if len(bad) > 5 {
		bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
	}
	return bad
}

// followCopy polls the copy until every table streams.
func (o *Orchestrator) followCopy(ctx context.Context, rec *record, r *running, i int, mv Move) error {
	mr := &rec.Moves[i]
	last := time.Now()
	for {
		p, err := CopyProgress(ctx, mv)
		if err != nil {
			return err
		}
		mr.RowsCopied, mr.BytesCopied = min(p.RowsCopied, max(mr.Rows, p.RowsCopied)), p.BytesCopied
		o.update(r, func(st *admin.RebalanceStatus) {
			ms := &st.Moves[i]
			ms.RowsCopied, ms.BytesCopied, ms.LagBytes = mr.RowsCopied, mr.BytesCopied, p.LagBytes
			ms.TablesSynced, ms.TablesTotal = p.TablesSynced, p.TablesTotal
		})
		if p.Ready {
			mr.RowsCopied = max(mr.RowsCopied, mr.Rows)
			o.update(r, func(st *admin.RebalanceStatus) { st.Moves[i].RowsCopied = mr.RowsCopied })
			o.saveMove(rec, i)
			return nil
		}
		if time.Since(last) > 5*time.Second {
			o.saveMove(rec, i)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// retry runs attempt up to CutoverAttempts times, noting each abandoned
// try in the journal: a freeze that overruns CutoverTimeout is undone and
// tried again a little later.
func (o *Orchestrator) retry(ctx context.Context, rec *record, i int, what string, attempt func() error) error {
	var lastErr error
	for n := 1; n <= o.opts.CutoverAttempts; n++ {
		if n > 1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(n) * 500 * time.Millisecond):
			}
		}
		err := attempt()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		lastErr = err
		o.j.note(context.Background(), rec.ID, i, rec.Moves[i].Phase, fmt.Sprintf("%s attempt %d abandoned, writes released: %v", what, n, err))
		o.log.Warn(what+" attempt abandoned", "move", rec.Moves[i].Idx, "attempt", n, "err", err)
	}
	return fmt.Errorf("%s failed %d times, last: %w", what, o.opts.CutoverAttempts, lastErr)
}

// pointConns are the connections a consistent point uses, opened before
// the freeze so the pause pays for no connection set-up.
type pointConns struct {
	src, tgt *pgx.Conn
}

// It first waits for the target to catch up with the source, so the
// freeze that follows covers only the last few transactions.
func openPointConns(ctx context.Context, mv Move) (*pointConns, error) {
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err := WaitCaughtUp(wctx, mv)
	cancel()
	if err != nil {
		return nil, err
	}
	src, err := pgConnect(ctx, mv.Source.DSN)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", mv.Source.Name, err)
	}
	tgt, err := pgConnect(ctx, mv.Target.DSN)
	if err != nil {
		pgClose(src)
		return nil, fmt.Errorf("%s: %w", mv.Target.Name, err)
	}
	return &pointConns{src: src, tgt: tgt}, nil
}

func (c *pointConns) close() {
	pgClose(c.src)
	pgClose(c.tgt)
}

// atConsistentPoint holds every statement touching the move's slots,
// waits until the target has applied everything the source committed
// (transactions begun before the freeze end first), then runs fn while
// the slots are still held, and releases them to the map fn returns (nil:
// the map from before). It returns how long statements were held and the
// time each step took.
func (o *Orchestrator) atConsistentPoint(ctx context.Context, mv Move, src int, conns *pointConns, holdMulti bool,
	fn func(ctx context.Context, hold Hold, step func(string, func() error)) (*shard.Map, error)) (time.Duration, []string, error) {
	cctx, cancel := context.WithTimeout(ctx, o.opts.CutoverTimeout)
	defer cancel()
	start := time.Now()
	hold, err := o.opts.Proxy.Freeze(cctx, src, mv.Slots)
	if err != nil {
		return 0, nil, fmt.Errorf("freeze: %w", err)
	}
	timings := []string{fmt.Sprintf("freeze %s", time.Since(start).Round(10*time.Microsecond))}
	// Statements spanning shards (which the flip must not cut through)
	// drain while the waits below run, rather than after them.
	waitMulti := func(context.Context) error { return nil }
	if holdMulti {
		waitMulti = hold.StartHoldMulti()
	}
	step := func(name string, f func() error) {
		if err == nil {
			t0 := time.Now()
			if err = f(); err != nil {
				err = fmt.Errorf("%s: %w", name, err)
			}
			timings = append(timings, fmt.Sprintf("%s %s", name, time.Since(t0).Round(10*time.Microsecond)))
		}
	}
	step("wait for transactions begun before the freeze", func() error { return hold.WaitTransactions(cctx) })
	step("wait for prepared transactions on the source", func() error { return waitPrepared(cctx, conns.src) })
	step("wait for the target to catch up", func() error { return waitMarker(cctx, conns.src, conns.tgt, mv) })
	step("wait for statements spanning shards", func() error { return waitMulti(cctx) })
	var next *shard.Map
	if err == nil {
		next, err = fn(cctx, hold, step)
	}
	if err != nil {
		hold.Release(nil)
		return time.Since(start), timings, err
	}
	hold.Release(next)
	return time.Since(start), timings, nil
}

// verifyPoint compares both sides at one consistent point before the
// switch: with the slots held for a moment, a snapshot is taken on each
// node, then counts and checksums are computed from the snapshots while
// the application goes on. A restart simply verifies again: nothing has
// switched yet.
func (o *Orchestrator) verifyPoint(ctx context.Context, rec *record, i int, mv Move) ([]SlotCheck, time.Duration, error) {
	src, ok := o.opts.Proxy.ShardMap().ShardIndex(mv.Source.Name)
	if !ok {
		return nil, 0, fmt.Errorf("shard %s is not in the shard map", mv.Source.Name)
	}
	var srcSnap, tgtSnap *Snapshot
	defer func() { srcSnap.Close(); tgtSnap.Close() }()
	var pause time.Duration
	err := o.retry(ctx, rec, i, "verification point", func() error {
		srcSnap.Close()
		tgtSnap.Close()
		srcSnap, tgtSnap = nil, nil
		conns, err := openPointConns(ctx, mv)
		if err != nil {
			return err
		}
		defer conns.close()
		sc, err := pgConnect(ctx, mv.Source.DSN)
		if err != nil {
			return err
		}
		srcSnap = &Snapshot{node: mv.Source, conn: sc}
		tc, err := pgConnect(ctx, mv.Target.DSN)
		if err != nil {
			return err
		}
		tgtSnap = &Snapshot{node: mv.Target, conn: tc}
		var timings []string
		pause, timings, err = o.atConsistentPoint(ctx, mv, src, conns, false, func(cctx context.Context, _ Hold, step func(string, func() error)) (*shard.Map, error) {
			var err error
			step("snapshot both nodes", func() error {
				if err := srcSnap.begin(cctx); err != nil {
					return err
				}
				return tgtSnap.begin(cctx)
			})
			return nil, err
		})
		if err == nil {
			o.log.Info("verification point taken", "move", mv.ID, "pause", pause, "steps", strings.Join(timings, ", "))
		}
		return err
	})
	if err != nil {
		return nil, pause, err
	}
	checks, err := verifyAt(ctx, mv, srcSnap, tgtSnap)
	return checks, pause, err
}

// begin opens the snapshot's REPEATABLE READ transaction; the snapshot is
// taken by its first statement.
func (s *Snapshot) begin(ctx context.Context) error {
	tx, err := s.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	s.tx = tx
	_, err = tx.Exec(ctx, "SELECT 1")
	return err
}

// verifyAt compares, per table and slot, count and checksum in two
// snapshots taken at the same consistent point.
func verifyAt(ctx context.Context, mv Move, src, tgt *Snapshot) ([]SlotCheck, error) {
	sums := func(s *Snapshot) (map[string]map[int]pgSlotSum, error) {
		out := map[string]map[int]pgSlotSum{}
		for _, t := range mv.Tables {
			m, err := pgSlotSums(ctx, s.tx, t, mv.Slots, mv.SlotCount)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", s.node.Name, t.Name, err)
			}
			out[t.Name] = m
		}
		return out, nil
	}
	// Both sides at once: each scans its own node.
	var b map[string]map[int]pgSlotSum
	var berr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, berr = sums(tgt)
	}()
	a, err := sums(src)
	<-done
	if err != nil {
		return nil, err
	}
	if berr != nil {
		return nil, berr
	}
	return compareSums(mv, a, b), nil
}

// cutover switches the move's slots to the target at a consistent point:
// the rows' visibility flips on both nodes and the new shard map version
// is stored (the commit point) while statements to the slots are held.
func (o *Orchestrator) cutover(ctx context.Context, rec *record, i int, mv Move) (int64, time.Duration, error) {
	m := o.opts.Proxy.ShardMap()
	src, ok1 := m.ShardIndex(mv.Source.Name)
	tgt, ok2 := m.ShardIndex(mv.Target.Name)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("shards %s and %s must both be in the shard map", mv.Source.Name, mv.Target.Name)
	}
	var version int64
	var pause time.Duration
	err := o.retry(ctx, rec, i, "cutover", func() error {
		conns, err := openPointConns(ctx, mv)
		if err != nil {
			return err
		}
		defer conns.close()
		flipped := false
		var timings []string
		pause, timings, err = o.atConsistentPoint(ctx, mv, src, conns, true, func(cctx context.Context, _ Hold, step func(string, func() error)) (*shard.Map, error) {
			var next *shard.Map
			var err error
			step("flip visibility", func() error {
				flipped = true
				if err := pgHideSlots(cctx, conns.src, mv); err != nil {
					return err
				}
				return pgUnhideSlots(cctx, conns.tgt, mv.ID)
			})
			// Replication stops for good before the switch: once the
			// target owns the rows, a restarted apply worker must never
			// replay old changes over new writes (PostgreSQL 15 loses a
			// subscription's origin progress when a DROP SUBSCRIPTION
			// fails, and then streams again from the slot's older
			// confirmed position).
			disabled := false
			step("stop replication", func() error {
				disabled = true
				return disableSubscription(cctx, conns.tgt, mv)
			})
			step("store the shard map", func() error { var err error; next, err = o.switchMap(cctx, mv); return err })
			if err != nil {
				// A save that failed on the way back may have committed.
				if n, ok := o.committed(context.Background(), mv); ok {
					next, err = n, nil
				}
			}
			if err != nil {
				uctx, c := context.WithTimeout(context.Background(), 10*time.Second)
				defer c()
				if flipped {
					if uerr := Unflip(uctx, mv); uerr != nil {
						err = fmt.Errorf("%w; undoing the flip failed too (retried on the next attempt): %v", err, uerr)
					}
				}
				if disabled {
					if eerr := enableSubscription(uctx, mv); eerr != nil {
						err = fmt.Errorf("%w; enabling the subscription again failed too: %v", err, eerr)
					}
				}
				return nil, err
			}
			var lsn string
			if qerr := conns.tgt.QueryRow(cctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); qerr == nil {
				if v, perr := parseLSN(lsn); perr == nil {
					o.opts.Proxy.SetReadFloor(tgt, v)
				}
			}
			version = next.Version
			return next, nil
		})
		if err == nil {
			o.log.Info("cutover done", "move", mv.ID, "slots", len(mv.Slots), "from", mv.Source.Name, "to", mv.Target.Name,
				"version", version, "pause", pause, "steps", strings.Join(timings, ", "))
		}
		return err
	})
	return version, pause, err
}

// waitPrepared waits until the transactions prepared on the source when
// the freeze began (two-phase commits in flight) are resolved: their rows
// are then in the WAL the marker follows.
func waitPrepared(ctx context.Context, conn *pgx.Conn) error {
	var gids []string
	if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(gid), '{}') FROM pg_prepared_xacts WHERE database = current_database()`).Scan(&gids); err != nil {
		return err
	}
	for wait := 200 * time.Microsecond; len(gids) > 0; wait = min(wait*2, 5*time.Millisecond) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d prepared transactions still open on the source: %w", len(gids), ctx.Err())
		case <-time.After(wait):
		}
		if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(gid), '{}') FROM pg_prepared_xacts WHERE gid = ANY($1)`, gids).Scan(&gids); err != nil {
			return err
		}
	}
	return nil
}

// waitMarker is WaitCaughtUp on open connections: bump the marker on the
// source, poll the target until it shows it.
func waitMarker(ctx context.Context, src, tgt *pgx.Conn, mv Move) error {
	var seq int64
	if err := src.QueryRow(ctx, fmt.Sprintf("INSERT INTO %[1]s AS m VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = m.seq + 1 RETURNING seq",
		pgMarkerIdent(mv.ID))).Scan(&seq); err != nil {
		return err
	}
	q := fmt.Sprintf("SELECT coalesce((SELECT seq FROM %s WHERE id = 1), -1)", pgMarkerIdent(mv.ID))
	for wait := 200 * time.Microsecond; ; wait = min(wait*2, 4*time.Millisecond) {
		var got int64
		if err := tgt.QueryRow(ctx, q).Scan(&got); err != nil {
			return err
		}
		if got >= seq {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("marker %d not applied on %s: %w", seq, mv.Target.Name, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// switchMap stores the shard map version that gives the move's slots to
// the target: the cutover's commit point.
func (o *Orchestrator) switchMap(ctx context.Context, mv Move) (*shard.Map, error) {
	a, err := o.opts.Store.Load(ctx)
	if err != nil {
		return nil, err
	}
	if a == nil {
		return nil, errors.New("no shard map is stored")
	}
	names := slices.Clone(a.Slots)
	for _, s := range mv.Slots {
		if names[s] != mv.Source.Name && names[s] != mv.Target.Name {
			return nil, fmt.Errorf("slot %d belongs to %s, not %s", s, names[s], mv.Source.Name)
		}
		names[s] = mv.Target.Name
	}
	v, err := o.opts.Store.Save(ctx, names, a.Version)
	if err != nil {
		return nil, err
	}
	return o.opts.Proxy.ShardMap().WithAssignment(v, names)
}

// committed reports whether the stored map already gives every slot of
// the move to the target, and returns that map.
func (o *Orchestrator) committed(ctx context.Context, mv Move) (*shard.Map, bool) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	a, err := o.opts.Store.Load(ctx)
	if err != nil || a == nil {
		return nil, false
	}
	for _, s := range mv.Slots {
		if s >= len(a.Slots) || a.Slots[s] != mv.Target.Name {
			return nil, false
		}
	}
	m, err := o.opts.Proxy.ShardMap().WithAssignment(a.Version, a.Slots)
	return m, err == nil
}

// settleCutover resolves, at startup, a cutover the previous run was in
// the middle of: switched (the stored map says so) goes on to verify,
// otherwise the flip is undone and the move catches up again.
func (o *Orchestrator) settleCutover(ctx context.Context, rec *record) error {
	for i := range rec.Moves {
		if rec.Moves[i].Phase != phaseCutover {
			continue
		}
		mv := o.moveOf(rec, i)
		next := phaseCatchup
		msg := "resumed: the cutover had not switched the slots; visibility restored, catching up again"
		if _, ok := o.committed(ctx, mv); ok {
			next = phaseCleanup
			msg = "resumed: the cutover had switched the slots"
		} else if err := Unflip(ctx, mv); err != nil {
			return fmt.Errorf("resume rebalance %d: undo the interrupted cutover of move %d: %w", rec.ID, i+1, err)
		} else if err := enableSubscription(ctx, mv); err != nil {
			return fmt.Errorf("resume rebalance %d: resume the replication of move %d: %w", rec.ID, i+1, err)
		}
		rec.Moves[i].Phase = next
		if err := o.j.setPhase(ctx, rec.ID, i, next, fmt.Sprintf("move %d: %s", i+1, msg)); err != nil {
			return err
		}
	}
	return nil
}

func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	var h, l uint64
	if _, err := fmt.Sscanf(hi+" "+lo, "%x %x", &h, &l); err != nil {
		return 0, fmt.Errorf("bad LSN %q: %w", s, err)
	}
	return h<<32 | l, nil
}

// disableSubscription stops the move's subscription and waits until its
// apply worker has exited, so nothing more is applied on the target.
func disableSubscription(ctx context.Context, tgt *pgx.Conn, mv Move) error {
	name := pgObjName(mv.ID)
	if _, err := tgt.Exec(ctx, "ALTER SUBSCRIPTION "+pgx.Identifier{name}.Sanitize()+" DISABLE"); err != nil {
		return err
	}
	// An idle apply worker notices the change only at its next wake-up
	// (up to a second): end it now; disabled, it is not restarted.
	if _, err := tgt.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL", name); err != nil {
		return err
	}
	for wait := 200 * time.Microsecond; ; wait = min(wait*2, 5*time.Millisecond) {
		var running bool
		if err := tgt.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL)", name).Scan(&running); err != nil {
			return err
		}
		if !running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("apply worker of %s still running: %w", name, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// enableSubscription lets the move's subscription stream again (a
// cutover that did not switch). No-op when it does not exist.
func enableSubscription(ctx context.Context, mv Move) error {
	return pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error {
		oid, err := pgSubscriptionOID(ctx, conn, mv.ID)
		if err != nil || oid == 0 {
			return err
		}
		_, err = conn.Exec(ctx, "ALTER SUBSCRIPTION "+pgx.Identifier{pgObjName(mv.ID)}.Sanitize()+" ENABLE")
		return err
	})
}
