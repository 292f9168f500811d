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
	phaseCutover    = "cutover"
	phaseVerify     = "verify"
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
	var snap *Snapshot
	defer func() { snap.Close() }()
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
			o.setPhase(rec, r, i, phaseCutover, fmt.Sprintf("caught up (marker round trip %s); cutting over", d.Round(time.Millisecond)))
		case phaseCutover:
			version, pause, s, err := o.cutover(pre, rec, i, mv)
			if err != nil {
				return stopped(err)
			}
			snap = s
			mr.MapVersion, mr.PauseMillis = version, float64(pause.Microseconds())/1000
			o.m.pause.Observe(pause.Seconds())
			o.update(r, func(st *admin.RebalanceStatus) { st.Moves[i].PauseMillis = mr.PauseMillis })
			o.saveMove(rec, i)
			o.setPhase(rec, r, i, phaseVerify, fmt.Sprintf("slots switched in shard map version %d; writes paused %s", version, pause.Round(time.Microsecond)))
		case phaseVerify:
			// Past the switch: only a shutdown stops what follows.
			if err := StopReplication(ctx, mv); err != nil {
				return o.stopOrFail(ctx, i, err)
			}
			checks, err := Verify(ctx, mv, snap)
			snap.Close()
			if err != nil {
				return o.stopOrFail(ctx, i, err)
			}
			bad := badChecks(checks)
			mr.Verified = len(bad) == 0
			mr.VerifyError = ""
			if !mr.Verified {
				mr.VerifyError = strings.Join(bad, "; ")
				if snap == nil {
					// Resumed after a restart: the snapshot of the target at
					// the cutover died with the proxy and the target took
					// writes since, so differences are expected.
					mr.VerifyError = "not verifiable after a proxy restart (the target changed since the cutover): " + mr.VerifyError
				}
			}
			o.update(r, func(st *admin.RebalanceStatus) {
				st.Moves[i].Verified, st.Moves[i].VerifyError = mr.Verified, mr.VerifyError
			})
			o.saveMove(rec, i)
			if !mr.Verified && snap != nil {
				return fmt.Errorf("move %d: verification failed, the source keeps its copy of the rows (hidden from the application): %s", i+1, mr.VerifyError)
			}
			o.setPhase(rec, r, i, phaseCleanup, fmt.Sprintf("verified %d slot checks; deleting the moved rows from %s", len(checks), mr.From))
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

// cutover switches the move's slots to the target with writes to them
// held at the proxy: freeze, wait out the transactions in flight on the
// source, wait for the target to apply everything, flip the rows'
// visibility on both nodes, store the new shard map version (the commit
// point), release. An attempt that overruns CutoverTimeout is undone and
// tried again.
func (o *Orchestrator) cutover(ctx context.Context, rec *record, i int, mv Move) (int64, time.Duration, *Snapshot, error) {
	m := o.opts.Proxy.ShardMap()
	src, ok1 := m.ShardIndex(mv.Source.Name)
	tgt, ok2 := m.ShardIndex(mv.Target.Name)
	if !ok1 || !ok2 {
		return 0, 0, nil, fmt.Errorf("shards %s and %s must both be in the shard map", mv.Source.Name, mv.Target.Name)
	}
	var lastErr error
	for attempt := 1; attempt <= o.opts.CutoverAttempts; attempt++ {
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return 0, 0, nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		version, pause, snap, err := o.cutoverOnce(ctx, mv, src, tgt)
		if err == nil {
			return version, pause, snap, nil
		}
		if ctx.Err() != nil {
			return 0, 0, nil, ctx.Err()
		}
		lastErr = err
		o.j.note(context.Background(), rec.ID, i, phaseCutover, fmt.Sprintf("cutover attempt %d abandoned, writes released: %v", attempt, err))
		o.log.Warn("cutover attempt abandoned", "move", mv.ID, "attempt", attempt, "err", err)
	}
	return 0, 0, nil, fmt.Errorf("cutover failed %d times, last: %w", o.opts.CutoverAttempts, lastErr)
}

func (o *Orchestrator) cutoverOnce(ctx context.Context, mv Move, src, tgt int) (int64, time.Duration, *Snapshot, error) {
	bg := context.Background()
	// Close to the source first, so the write pause covers only the
	// last few transactions.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err := WaitCaughtUp(wctx, mv)
	cancel()
	if err != nil {
		return 0, 0, nil, err
	}
	// Every connection the pause needs is opened before it starts.
	srcConn, err := pgConnect(ctx, mv.Source.DSN)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("%s: %w", mv.Source.Name, err)
	}
	defer pgClose(srcConn)
	tgtConn, err := pgConnect(ctx, mv.Target.DSN)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("%s: %w", mv.Target.Name, err)
	}
	defer pgClose(tgtConn)
	snapConn, err := pgConnect(ctx, mv.Target.DSN)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("%s: %w", mv.Target.Name, err)
	}
	snap := &Snapshot{node: mv.Target, conn: snapConn}
	defer func() {
		if snap.tx == nil {
			snap.Close()
		}
	}()

	cctx, cancel := context.WithTimeout(ctx, o.opts.CutoverTimeout)
	defer cancel()
	start := time.Now()
	hold, err := o.opts.Proxy.Freeze(cctx, src, mv.Slots)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("freeze: %w", err)
	}
	var (
		flipped bool
		next    *shard.Map
		timings []string
	)
	step := func(name string, fn func() error) {
		if err == nil {
			t0 := time.Now()
			if err = fn(); err != nil {
				err = fmt.Errorf("%s: %w", name, err)
			}
			timings = append(timings, fmt.Sprintf("%s %s", name, time.Since(t0).Round(10*time.Microsecond)))
		}
	}
	timings = append(timings, fmt.Sprintf("freeze %s", time.Since(start).Round(10*time.Microsecond)))
	step("wait for transactions begun before the freeze", func() error { return hold.WaitTransactions(cctx) })
	step("wait for prepared transactions on the source", func() error { return waitPrepared(cctx, srcConn) })
	step("wait for the target to catch up", func() error { return waitMarker(cctx, srcConn, tgtConn, mv) })
	step("snapshot the target", func() error {
		tx, err := snapConn.BeginTx(cctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err == nil {
			_, err = tx.Exec(cctx, "SELECT 1")
			snap.tx = tx
		}
		return err
	})
	step("hold reads spanning shards", func() error { return hold.HoldMulti(cctx) })
	step("flip visibility", func() error {
		flipped = true
		if err := pgHideSlots(cctx, srcConn, mv); err != nil {
			return err
		}
		return pgUnhideSlots(cctx, tgtConn, mv.ID)
	})
	step("store the shard map", func() error { var err error; next, err = o.switchMap(cctx, mv); return err })
	if err != nil {
		// A save that failed on the way back may have committed.
		if n, ok := o.committed(bg, mv); ok {
			next, err = n, nil
		}
	}
	if err != nil {
		if flipped {
			uctx, c := context.WithTimeout(bg, 10*time.Second)
			if uerr := Unflip(uctx, mv); uerr != nil {
				err = fmt.Errorf("%w; undoing the flip failed too (retried on the next attempt): %v", err, uerr)
			}
			c()
		}
		snap.Close()
		hold.Release(nil)
		return 0, time.Since(start), nil, err
	}
	var lsn string
	if qerr := tgtConn.QueryRow(cctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); qerr == nil {
		if v, perr := parseLSN(lsn); perr == nil {
			o.opts.Proxy.SetReadFloor(tgt, v)
		}
	}
	hold.Release(next)
	pause := time.Since(start)
	o.log.Info("cutover done", "move", mv.ID, "slots", len(mv.Slots), "from", mv.Source.Name, "to", mv.Target.Name, "version", next.Version, "pause", pause,
		"steps", strings.Join(timings, ", "))
	return next.Version, pause, snap, nil
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
			next = phaseVerify
			msg = "resumed: the cutover had switched the slots"
		} else if err := Unflip(ctx, mv); err != nil {
			return fmt.Errorf("resume rebalance %d: undo the interrupted cutover of move %d: %w", rec.ID, i+1, err)
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
