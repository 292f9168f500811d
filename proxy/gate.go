package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/shard"
	"github.com/shardproxy/shardproxy/wire"
)

// A cutover hands slots from one shard to another. For its few
// milliseconds the proxy holds (queues, does not fail) every statement
// that touches those slots: the freeze installs a shard map in which the
// slots belong to no shard (shard.Frozen), sessions whose batch routes
// into one wait until the freeze is released, then plan the batch again
// against the map of that moment.
//
// Batches that were already routing when the freeze began may still send
// to the old owner; the freeze waits them out with a grace period: every
// session publishes the freeze epoch it started its batch in (inBatch),
// and the freeze waits until no session is still in an earlier one.

// maxFrozenWait bounds how long a statement waits for a freeze, as a
// last resort: a cutover that overruns its own timeout releases first.
const maxFrozenWait = 30 * time.Second

// Freeze is a running cutover's hold on a set of slots.
type Freeze struct {
	srv    *Server
	source int   // the shard the slots leave
	slots  []int // sorted
	base   *shard.Map
	thawed chan struct{}
	// multi holds every batch that spans shards too (while the rows'
	// visibility flips on both sides, where a fan-out read could see a
	// row twice or not at all).
	multi    atomic.Bool
	released atomic.Bool
	// epoch is the first freeze epoch: transactions that began before it
	// are let through (to the source) and waited for.
	epoch uint64
}

// FreezeSlots starts holding every statement that touches slots (owned by
// shard index source), and returns once no statement routed before the
// freeze is still running. On error (ctx done) nothing stays frozen.
func (s *Server) FreezeSlots(ctx context.Context, source int, slots []int) (*Freeze, error) {
	s.topoMu.Lock()
	if s.gate.Load() != nil {
		s.topoMu.Unlock()
		return nil, errors.New("another cutover is running")
	}
	base := s.smap.Load()
	f := &Freeze{srv: s, source: source, slots: slices.Sorted(slices.Values(slots)), base: base, thawed: make(chan struct{})}
	f.epoch = s.epoch.Load() + 1 // the one grace starts below
	s.gate.Store(f)
	s.smap.Store(base.WithFrozen(slots))
	s.topoMu.Unlock()
	if err := s.grace(ctx); err != nil {
		f.Release(nil)
		return nil, fmt.Errorf("wait for statements routed before the freeze: %w", err)
	}
	return f, nil
}

// WaitTransactions waits until every transaction that began before the
// freeze has ended. Those are let through to the source, where they may
// hold row locks that statements routed before the freeze wait on;
// transactions begun since are held at their first frozen statement.
func (f *Freeze) WaitTransactions(ctx context.Context) error {
	err := f.srv.waitSessions(ctx, func(ss *session) bool { v := ss.txEpoch.Load(); return v != 0 && v < f.epoch })
	if err != nil {
		return fmt.Errorf("transactions begun before the freeze are still open: %w", err)
	}
	return nil
}

// noteTxEpoch publishes whether a transaction is open, and since when.
func (ss *session) noteTxEpoch() {
	inTx := ss.tx.open || ss.txStatus == 'T' || ss.txStatus == 'E'
	switch {
	case !inTx:
		ss.txEpoch.Store(0)
	case ss.txEpoch.Load() == 0:
		ss.txEpoch.Store(ss.srv.epoch.Load())
	}
}

// HoldMulti extends the freeze to every statement that spans shards, and
// returns once those already running are done.
func (f *Freeze) HoldMulti(ctx context.Context) error {
	return f.StartHoldMulti()(ctx)
}

// StartHoldMulti starts holding statements that span shards and returns
// the wait for those already running, so a caller can let them drain
// while it waits for other things.
func (f *Freeze) StartHoldMulti() func(context.Context) error {
	f.multi.Store(true)
	e := f.srv.epoch.Add(1)
	return func(ctx context.Context) error { return f.srv.graceMulti(ctx, e) }
}

// graceMulti waits until no session runs a batch spanning shards that it
// began before epoch e.
func (s *Server) graceMulti(ctx context.Context, e uint64) error {
	return s.waitSessions(ctx, func(ss *session) bool { v := ss.inMulti.Load(); return v != 0 && v < e })
}

// waitSessions polls the sessions until none is busy, or ctx ends.
func (s *Server) waitSessions(ctx context.Context, busy func(*session) bool) error {
	tick := time.NewTicker(200 * time.Microsecond)
	defer tick.Stop()
	for {
		n := 0
		s.mu.Lock()
		for _, ss := range s.sessions {
			if busy(ss) {
				n++
			}
		}
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d sessions still busy: %w", n, ctx.Err())
		case <-tick.C:
		}
	}
}

// Release ends the freeze: next, when not nil, is the shard map to route
// by from now on (the slots' new owner), else the map from before the
// freeze is restored. Held statements then route again.
func (f *Freeze) Release(next *shard.Map) {
	if !f.released.CompareAndSwap(false, true) {
		return
	}
	s := f.srv
	s.topoMu.Lock()
	if next == nil || next.Version < f.base.Version {
		// f.base follows versions installed during the freeze.
		next = f.base
	}
	s.smap.Store(next)
	s.gate.Store(nil)
	s.topoMu.Unlock()
	close(f.thawed)
}

// grace bumps the freeze epoch and waits until every session that began
// its batch before is done with it.
func (s *Server) grace(ctx context.Context) error {
	e := s.epoch.Add(1)
	return s.waitSessions(ctx, func(ss *session) bool { v := ss.inBatch.Load(); return v != 0 && v < e })
}

// enterBatch publishes that the session routes a batch now.
func (ss *session) enterBatch() { ss.inBatch.Store(ss.srv.epoch.Load()) }

// leaveBatch publishes that it is done.
func (ss *session) leaveBatch() {
	ss.inBatch.Store(0)
	ss.inMulti.Store(0)
}

// heldByFreeze reports whether the planned batch must wait for the
// running freeze: it routes into a frozen slot (unless its transaction
// began before the freeze: the cutover waits for that one instead),
// copies rows in, or spans shards while the freeze holds those.
func (ss *session) heldByFreeze(f *Freeze) bool {
	v := ss.txEpoch.Load()
	pre := v != 0 && v < f.epoch
	if ss.frozenHit {
		ss.frozenHit = false
		if !pre {
			return true
		}
	}
	multi := false
	for i := range ss.ops {
		o := &ss.ops[i]
		if o.unit == nil {
			// A write forced onto the source (shardproxy.shard) may touch
			// the frozen slots without routing through them.
			if !pre && o.tgt == f.source && o.st != nil && o.st.Write && (ss.forceShard != "" || o.st.Hints.Shard != "") {
				return true
			}
			continue
		}
		multi = true
		// Statements spanning shards may write the frozen slots on the
		// source without routing through them.
		if !pre && (o.unit.pieces != nil || (o.st != nil && (o.st.Write || o.st.Kind == plan.CopyIn))) {
			return true
		}
	}
	if multi {
		// Published before looking at the flag; HoldMulti sets the flag
		// before looking at sessions: one of the two sees the other.
		ss.inMulti.Store(ss.srv.epoch.Load())
		if f.multi.Load() {
			ss.inMulti.Store(0)
			return true
		}
	}
	return false
}

// waitThaw waits, outside any batch, for the freeze to end.
func (ss *session) waitThaw(f *Freeze) *wire.Error {
	ss.leaveBatch()
	t := time.NewTimer(maxFrozenWait)
	defer t.Stop()
	select {
	case <-f.thawed:
	case <-t.C:
		return wire.Errorf(wire.CodeLockNotAvailable, "statement held for %s by a slot move that did not finish", maxFrozenWait).
			WithHint("Retry the statement; shardctl rebalance status shows the move.")
	}
	ss.enterBatch()
	return nil
}

// frozenOwner maps a Frozen owner back to the shard the slots leave (a
// statement let through goes there) and notes that the batch touched a
// frozen slot.
func (ss *session) frozenOwner(owners []int) []int {
	for i, o := range owners {
		if o != shard.Frozen {
			continue
		}
		ss.frozenHit = true
		src := ss.srv.defShard
		if f := ss.srv.gate.Load(); f != nil {
			src = f.source
		}
		out := slices.Clone(owners)
		out[i] = src
		for j := i + 1; j < len(out); j++ {
			if out[j] == shard.Frozen {
				out[j] = src
			}
		}
		return slices.Compact(slices.Sorted(slices.Values(out)))
	}
	return owners
}

// replanBatch routes the batch again, after a freeze it waited for.
func (ss *session) replanBatch() {
	for i := range ss.ops {
		o := &ss.ops[i]
		o.tgt, o.unit, o.err, o.implicit = 0, nil, nil, false
	}
	ss.frozenHit = false
	ss.planBatch()
}

// failBatch answers the batch's statements with e instead of running them.
func (ss *session) failBatch(e *wire.Error) {
	for i := range ss.ops {
		o := &ss.ops[i]
		switch o.typ {
		case 'Q', 'B':
			o.tgt, o.unit, o.err = tLocal, nil, e
		case 'E', 'D':
			o.tgt, o.unit = tLocal, nil
		}
	}
}
