package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// writers is a write load of pgx clients through the proxy, each keyed to
// one shard (its accounts all live there), so what happens to the
// transactions of each shard can be told apart. pgbench cannot do that: a
// tpcb-like transaction touches the shards of its account, teller and
// branch, and pgbench aborts a client on its first error other than a
// serialization failure or deadlock, so after a primary dies it would
// only say "client N aborted".
type writers struct {
	dsn  string
	tx   bool // pgbench -N's transaction (BEGIN; UPDATE; SELECT; INSERT; END), else one autocommit UPDATE
	stop chan struct{}
	wg   sync.WaitGroup

	mu  sync.Mutex
	ops []writeOp
}

// writeOp is one attempt: a transaction, or a connect that failed.
type writeOp struct {
	shard      string
	start, end time.Time
	err        error
}

func (o writeOp) took() time.Duration { return o.end.Sub(o.start) }

func startWriters(dsn string, tx bool, perShard int, aids map[string][]int64) *writers {
	w := &writers{dsn: dsn, tx: tx, stop: make(chan struct{})}
	for shard, keys := range aids {
		for range perShard {
			w.wg.Go(func() { w.run(shard, keys) })
		}
	}
	return w
}

func (w *writers) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *writers) halt() {
	close(w.stop)
	w.wg.Wait()
}

func (w *writers) record(o writeOp) {
	w.mu.Lock()
	w.ops = append(w.ops, o)
	w.mu.Unlock()
}

func (w *writers) run(shard string, aids []int64) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	for !w.stopped() {
		if conn == nil {
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := pgx.Connect(ctx, w.dsn)
			cancel()
			if err != nil {
				w.record(writeOp{shard: shard, start: start, end: time.Now(), err: fmt.Errorf("connect: %w", err)})
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
		}
		aid := aids[rand.IntN(len(aids))]
		delta := rand.IntN(10001) - 5000
		start := time.Now()
		// The bound only keeps a test from hanging forever; a statement
		// running this long is reported as such.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := w.once(ctx, conn, aid, delta)
		cancel()
		w.record(writeOp{shard: shard, start: start, end: time.Now(), err: err})
		if err != nil {
			_ = conn.Close(context.Background())
			conn = nil
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (w *writers) once(ctx context.Context, c *pgx.Conn, aid int64, delta int) error {
	if !w.tx {
		_, err := c.Exec(ctx, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", delta, aid)
		return err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", delta, aid); err != nil {
		return err
	}
	var bal int
	if err := tx.QueryRow(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", aid).Scan(&bal); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, 1, $2, $3, CURRENT_TIMESTAMP)",
		rand.IntN(10)+1, aid, delta); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// window summarizes the attempts of shard that started in [from, to).
type window struct {
	ok, failed int
	maxTook    time.Duration // longest attempt, successful or not
	maxFailed  time.Duration // longest failed attempt
	errors     map[string]int
}

func (w *writers) window(shard string, from, to time.Time) window {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := window{errors: map[string]int{}}
	for _, o := range w.ops {
		if o.shard != shard || o.start.Before(from) || !o.start.Before(to) {
			continue
		}
		s.maxTook = max(s.maxTook, o.took())
		if o.err == nil {
			s.ok++
			continue
		}
		s.failed++
		s.maxFailed = max(s.maxFailed, o.took())
		s.errors[errText(o.err)]++
	}
	return s
}

// firstOK is the end of the first successful attempt of shard started at or after from.
func (w *writers) firstOK(shard string, from time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var best time.Time
	for _, o := range w.ops {
		if o.shard == shard && o.err == nil && !o.start.Before(from) && (best.IsZero() || o.end.Before(best)) {
			best = o.end
		}
	}
	return best, !best.IsZero()
}

// inFlightAt lists the attempts of shard running at instant at.
func (w *writers) inFlightAt(shard string, at time.Time) []writeOp {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []writeOp
	for _, o := range w.ops {
		if o.shard == shard && !o.start.After(at) && o.end.After(at) {
			out = append(out, o)
		}
	}
	return out
}

// errText is an error with its SQLSTATE, without pgx's wrapping noise.
func errText(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s %s: %s", pe.Severity, pe.Code, pe.Message)
	}
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func (s window) String() string {
	var errs []string
	for e, n := range s.errors {
		errs = append(errs, fmt.Sprintf("%dx %q", n, e))
	}
	sort.Strings(errs)
	return fmt.Sprintf("%d ok, %d failed (longest attempt %s, longest failed %s) %s",
		s.ok, s.failed, s.maxTook.Round(time.Millisecond), s.maxFailed.Round(time.Millisecond), strings.Join(errs, "; "))
}
