package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/cupwriter"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/shardproxy/shardproxy/admin"
)

// Timing of the watch; tests shorten them.
var (
	// barInterval is how often the bars poll the admin API.
	barInterval = 500 * time.Millisecond
	// lineInterval is how often a plain progress line is printed when
	// stdout is not a terminal.
	lineInterval = time.Second
	// watchGrace is how long the watch rides out an admin API that does
	// not answer (a proxy restart, which the rebalance survives).
	watchGrace = time.Minute
	// isTerminal tells whether w is a terminal, to draw bars on.
	isTerminal = func(w io.Writer) bool { return cupwriter.New(w, false).IsTerminal() }
)

// progressView shows a rebalance's progress while it runs.
type progressView interface {
	// update shows a fresh status.
	update(st admin.RebalanceStatus)
	// problem shows that the admin API did not answer; the watch retries.
	problem(err error)
	// stop ends the view; st is the last status seen.
	stop(st admin.RebalanceStatus)
}

// watchRebalance follows the rebalance until it is no longer running.
// first is the status that rebalance start got back, nil for status
// --watch. The error is nil only if the rebalance is done, or if status
// --watch found none running.
func watchRebalance(cmd *cobra.Command, g *globals, first *admin.RebalanceStatus) error {
	ctx := cmd.Context()
	c := g.client()
	w := cmd.OutOrStdout()

	var st admin.RebalanceStatus
	var raw []byte
	if first != nil {
		st = *first
	} else {
		var err error
		if raw, st, err = pollRebalance(ctx, c); err != nil {
			return err
		}
		if !running(st.State) {
			// Nothing to follow: the plain status, judging nothing.
			if g.json {
				return printIndented(w, raw)
			}
			return printRebalance(w, st, time.Now())
		}
	}

	var view progressView
	interval := barInterval
	switch {
	case g.json:
		view = nopView{}
	case isTerminal(w):
		view = newBarView(w)
	default:
		view = &lineView{w: w}
		interval = lineInterval
	}

	lastOK := time.Now()
	view.update(st)
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for running(st.State) {
		select {
		case <-ctx.Done():
			view.stop(st)
			return fmt.Errorf("stopped watching; rebalance %d goes on in the proxy (follow it with 'shardctl rebalance status --watch', stop it with 'shardctl rebalance cancel')", st.ID)
		case <-timer.C:
		}
		timer.Reset(interval)
		r, next, err := pollRebalance(ctx, c)
		if err != nil {
			if ctx.Err() != nil {
				continue // reported above
			}
			if permanent(err) || time.Since(lastOK) > watchGrace {
				view.stop(st)
				return fmt.Errorf("lost track of rebalance %d, which goes on in the proxy: %w", st.ID, err)
			}
			view.problem(err)
			continue
		}
		lastOK = time.Now()
		raw, st = r, next
		view.update(st)
	}
	view.stop(st)

	if g.json {
		if raw == nil { // ended before the first poll
			b, err := json.Marshal(st)
			if err != nil {
				return err
			}
			raw = b
		}
		if err := printIndented(w, raw); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(w, summary(st))
	}
	return outcome(st)
}

// pollRebalance fetches the status, keeping the server's bytes for --json.
func pollRebalance(ctx context.Context, c *admin.Client) ([]byte, admin.RebalanceStatus, error) {
	var st admin.RebalanceStatus
	raw, err := c.Get(ctx, admin.RebalancePath)
	if err != nil {
		return nil, st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, st, fmt.Errorf("admin API at %s: decode %s: %w", c.Addr, admin.RebalancePath, err)
	}
	return raw, st, nil
}

// permanent errors will not go away by retrying: a wrong token, a proxy
// that lost its operator, an endpoint that is not there.
func permanent(err error) bool {
	var he *admin.HTTPError
	if !errors.As(err, &he) {
		return false // unreachable: the proxy may be restarting
	}
	switch he.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed:
		return true
	}
	return false
}

// outcome is nil only for a rebalance that is done.
func outcome(st admin.RebalanceStatus) error {
	switch st.State {
	case "done":
		return nil
	case "failed":
		msg := st.Error
		if msg == "" {
			msg = "no error given"
		}
		where := ""
		for i, m := range st.Moves {
			if m.Phase == "failed" || m.Phase == "rolled_back" || m.Phase == "rollback" {
				where = fmt.Sprintf(" in move %d (%s -> %s)", i+1, m.From, m.To)
				break
			}
		}
		return fmt.Errorf("rebalance %d failed%s: %s (see its steps with 'shardctl rebalance status'; once the cause is fixed, run 'shardctl rebalance start' again)", st.ID, where, msg)
	case "cancelled":
		return fmt.Errorf("rebalance %d was cancelled (see what is left to move with 'shardctl rebalance plan')", st.ID)
	default:
		return fmt.Errorf("rebalance %d ended in state %q, not done (see 'shardctl rebalance status')", st.ID, st.State)
	}
}

// summary is the line printed when a watched rebalance ends.
func summary(st admin.RebalanceStatus) string {
	took := ""
	if !st.StartedAt.IsZero() && !st.FinishedAt.IsZero() {
		took = " after " + st.FinishedAt.Sub(st.StartedAt).Round(time.Second).String()
	}
	if st.State != "done" {
		return fmt.Sprintf("rebalance %d %s%s", st.ID, st.State, took)
	}
	var slots, verifiedMoves int
	var maxPause float64
	for _, m := range st.Moves {
		slots += len(m.Slots)
		if m.Verified {
			verifiedMoves++
		}
		maxPause = math.Max(maxPause, m.PauseMillis)
	}
	s := fmt.Sprintf("rebalance %d done%s: %s, %s, %d rows copied, %s, longest write pause %s, %d/%d moves verified",
		st.ID, took, plural(len(st.Moves), "move", "moves"), plural(slots, "slot", "slots"),
		st.Totals.RowsCopied, humanBytes(st.Totals.BytesCopied), pause(maxPause), verifiedMoves, len(st.Moves))
	return s
}

// currentMove is the index of the move under way, -1 if none is.
func currentMove(st admin.RebalanceStatus) int {
	for i, m := range st.Moves {
		switch m.Phase {
		case "pending", "done", "failed", "rolled_back":
		default:
			return i
		}
	}
	return -1
}

// moveFraction is how far a move is, from 0 to 1: copied bytes (or rows)
// over the estimate, kept under 1 until the move is done.
func moveFraction(m admin.MoveStatus) float64 {
	switch m.Phase {
	case "done":
		return 1
	case "pending":
		return 0
	}
	var f float64
	switch {
	case m.BytesTotal > 0:
		f = float64(m.BytesCopied) / float64(m.BytesTotal)
	case m.RowsTotal > 0:
		f = float64(m.RowsCopied) / float64(m.RowsTotal)
	}
	return math.Min(f, 0.999)
}

// totalFraction weighs each move by its estimated size.
func totalFraction(st admin.RebalanceStatus) float64 {
	if st.State == "done" {
		return 1
	}
	var sum, weights float64
	for _, m := range st.Moves {
		w := float64(m.BytesTotal)
		if w <= 0 {
			w = 1
		}
		sum += w * moveFraction(m)
		weights += w
	}
	if weights == 0 {
		return 0
	}
	return math.Min(sum/weights, 0.999)
}

func moveLabel(st admin.RebalanceStatus, i int) string {
	m := st.Moves[i]
	return fmt.Sprintf("%d/%d %s->%s", i+1, len(st.Moves), m.From, m.To)
}

// lineView prints one plain line per poll: for logs and pipes.
type lineView struct {
	w io.Writer
}

func (v *lineView) update(st admin.RebalanceStatus) {
	fmt.Fprintln(v.w, progressLine(st, time.Now()))
}

func (v *lineView) problem(err error) {
	fmt.Fprintf(v.w, "admin API did not answer, retrying: %v\n", err)
}

func (v *lineView) stop(admin.RebalanceStatus) {}

// progressLine is one plain progress line:
// [1m2s] running  move 2/3 s1->s2 copy  rows 54.0k/120.0k (45%)  bytes 12.0 MiB/26.0 MiB  lag 0 B  ETA 40s
func progressLine(st admin.RebalanceStatus, now time.Time) string {
	elapsed := time.Duration(0)
	if !st.FinishedAt.IsZero() {
		now = st.FinishedAt
	}
	if !st.StartedAt.IsZero() {
		elapsed = max(now.Sub(st.StartedAt), 0).Round(time.Second)
	}
	t := st.Totals
	lag := t.LagBytes
	done := 0
	for _, m := range st.Moves {
		if m.Phase == "done" {
			done++
		}
	}
	where := fmt.Sprintf("moves %d/%d done", done, len(st.Moves))
	if i := currentMove(st); i >= 0 {
		where = fmt.Sprintf("move %s %s", moveLabel(st, i), st.Moves[i].Phase)
		lag = st.Moves[i].LagBytes
	}
	return fmt.Sprintf("[%s] %s  %s  rows %s/%s (%s)  bytes %s/%s  lag %s  ETA %s",
		elapsed, st.State, where, humanCount(t.RowsCopied), humanCount(t.RowsTotal), percent(t.RowsCopied, t.RowsTotal),
		humanBytes(t.BytesCopied), humanBytes(t.BytesTotal), humanBytes(lag), seconds(st.ETASeconds))
}

type nopView struct{}

func (nopView) update(admin.RebalanceStatus) {}
func (nopView) problem(error)                {}
func (nopView) stop(admin.RebalanceStatus)   {}

// barScale is a bar's total: bars count per mille of their move.
const barScale = 1000

// barView draws a progress bar per move and one for the total.
type barView struct {
	p *mpb.Progress

	mu   sync.Mutex
	st   admin.RebalanceStatus // read by the decorators
	note string                // a retried admin API failure

	moves []*mpb.Bar
	total *mpb.Bar
}

// barOptions are extra container options; tests force a fake terminal.
var barOptions []mpb.ContainerOption

func newBarView(w io.Writer) *barView {
	opts := append([]mpb.ContainerOption{mpb.WithOutput(w), mpb.WithRefreshRate(150 * time.Millisecond)}, barOptions...)
	v := &barView{p: mpb.New(opts...)}
	v.total = v.p.AddBar(barScale,
		mpb.BarPriority(math.MaxInt32), // below the moves, however many come
		mpb.PrependDecorators(
			decor.Name("total", decor.WCSyncSpaceR),
			decor.Any(func(decor.Statistics) string { return v.snapshot().State }, decor.WCSyncSpaceR),
		),
		mpb.AppendDecorators(
			decor.NewPercentage("%d", decor.WC{W: 5}),
			decor.Any(func(decor.Statistics) string {
				st, note := v.snapshotNote()
				t := st.Totals
				s := fmt.Sprintf("  rows %s/%s  %s/%s  ETA %s", humanCount(t.RowsCopied), humanCount(t.RowsTotal),
					humanBytes(t.BytesCopied), humanBytes(t.BytesTotal), seconds(st.ETASeconds))
				if note != "" {
					s += "  (" + note + ")"
				}
				return s
			}, decor.WCSyncWidthR),
		),
	)
	return v
}

func (v *barView) snapshot() admin.RebalanceStatus {
	st, _ := v.snapshotNote()
	return st
}

func (v *barView) snapshotNote() (admin.RebalanceStatus, string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st, v.note
}

func (v *barView) update(st admin.RebalanceStatus) {
	v.mu.Lock()
	v.st, v.note = st, ""
	v.mu.Unlock()
	for i := len(v.moves); i < len(st.Moves); i++ {
		v.moves = append(v.moves, v.addMoveBar(st, i))
	}
	for i, b := range v.moves {
		if i >= len(st.Moves) || b.Completed() || b.Aborted() {
			continue
		}
		switch st.Moves[i].Phase {
		case "done":
			b.SetCurrent(barScale)
		case "failed", "rolled_back":
			b.Abort(false)
		default:
			b.SetCurrent(int64(moveFraction(st.Moves[i]) * barScale))
		}
	}
	if !v.total.Completed() && !v.total.Aborted() {
		v.total.SetCurrent(int64(totalFraction(st) * barScale))
	}
}

func (v *barView) addMoveBar(st admin.RebalanceStatus, i int) *mpb.Bar {
	label := moveLabel(st, i)
	return v.p.AddBar(barScale,
		mpb.BarPriority(i),
		mpb.PrependDecorators(
			decor.Name(label, decor.WCSyncSpaceR),
			decor.Any(func(decor.Statistics) string {
				if st := v.snapshot(); i < len(st.Moves) {
					return st.Moves[i].Phase
				}
				return ""
			}, decor.WCSyncSpaceR),
		),
		mpb.AppendDecorators(
			decor.NewPercentage("%d", decor.WC{W: 5}),
			decor.Any(func(decor.Statistics) string {
				st := v.snapshot()
				if i >= len(st.Moves) {
					return ""
				}
				m := st.Moves[i]
				s := fmt.Sprintf("  rows %s/%s  %s/%s", humanCount(m.RowsCopied), humanCount(m.RowsTotal),
					humanBytes(m.BytesCopied), humanBytes(m.BytesTotal))
				if lag := moveLag(m); lag != "-" {
					s += "  lag " + lag
				}
				return s
			}, decor.WCSyncWidthR),
		),
	)
}

func (v *barView) problem(err error) {
	v.mu.Lock()
	v.note = "admin API did not answer, retrying: " + err.Error()
	v.mu.Unlock()
}

// stop completes the bars of a done rebalance, aborts the others (they
// stay on screen as they were) and waits for the last frame.
func (v *barView) stop(st admin.RebalanceStatus) {
	v.update(st)
	for _, b := range append(v.moves, v.total) {
		if b.Completed() || b.Aborted() {
			continue
		}
		if st.State == "done" {
			b.SetCurrent(barScale)
		} else {
			b.Abort(false)
		}
	}
	v.p.Wait()
}
