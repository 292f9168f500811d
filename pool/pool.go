// Package pool keeps pooled server connections, one pool per
// (node, user, database), and hands them to client sessions for a
// transaction (transaction pooling) or for the whole session.
package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/wire"
)

// Key names a pool.
type Key struct {
	Node     string // host:port
	User     string
	Database string
}

// Options configure every pool.
type Options struct {
	// MaxSize, WaitTimeout, ConnectTimeout and IdleTimeout may change
	// while the pools run (SetLimits).
	MaxSize        int
	WaitTimeout    time.Duration
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	// ServerParams are startup parameters every new server connection
	// gets (the limits forwarded to the servers); fixed at start.
	ServerParams map[string]string
	// OnConnect, OnWait and OnWaitTimeout feed metrics; all optional.
	OnConnect     func(err error)
	OnWait        func(d time.Duration)
	OnWaitTimeout func()
}

// Pool is the set of server connections for one Key.
type Pool struct {
	Key   Key
	Shard string
	Role  string

	mu      sync.Mutex // guards the fields below, opts' limits and cfg
	opts    Options
	cfg     *pgconn.Config
	idle    []*Conn // LIFO: the warmest connection is reused first
	total   int     // idle + handed out + being created
	waiters []chan grant
	closed  bool
	// dials is canceled by AbortDials: connects in progress give up.
	dials      context.Context
	abortDials context.CancelFunc
}

// grant is what a waiting client receives: a connection, or the right to
// create one (conn nil, slot already counted in total).
type grant struct{ conn *Conn }

// ErrClosed is returned once the pool has been shut down.
var ErrClosed = errors.New("pool closed")

// New makes a pool. cfg is the connection config for (node, user, database).
func New(key Key, shard, role string, cfg *pgconn.Config, opts Options) *Pool {
	p := &Pool{Key: key, Shard: shard, Role: role, cfg: cfg, opts: opts}
	p.dials, p.abortDials = context.WithCancel(context.Background())
	return p
}

// AbortDials makes every connect in progress fail now: the node was seen
// down, and a stalled server would hold each for the whole connect
// timeout. Later connects try again.
func (p *Pool) AbortDials() {
	p.mu.Lock()
	abort := p.abortDials
	p.dials, p.abortDials = context.WithCancel(context.Background())
	p.mu.Unlock()
	abort()
}

// Acquire returns a server connection, waiting up to WaitTimeout for one
// to free up when the pool is at MaxSize.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	c, err := p.acquire(ctx)
	if c != nil && !c.inUse.CompareAndSwap(false, true) {
		// Two sessions on one server connection would read each other's
		// results; refuse rather than risk it.
		return nil, wire.Errorf(wire.CodeInternalError, "internal error: server connection %s handed out twice", c.Addr())
	}
	return c, err
}

func (p *Pool) acquire(ctx context.Context) (*Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if time.Since(c.lastUsed) < idleCheckAfter {
			p.mu.Unlock()
			return c, nil
		}
		p.mu.Unlock()
		if c.alive() {
			return c, nil
		}
		_ = c.CloseSocket()
		p.mu.Lock()
		p.total--
	}
	if p.total < p.opts.MaxSize {
		p.total++
		p.mu.Unlock()
		return p.create(ctx)
	}
	ch := make(chan grant, 1)
	p.waiters = append(p.waiters, ch)
	waitTimeout, maxSize := p.opts.WaitTimeout, p.opts.MaxSize
	p.mu.Unlock()

	start := time.Now()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	var g grant
	select {
	case g = <-ch:
	case <-timer.C:
		if !p.dropWaiter(ch) {
			g = <-ch // granted while timing out: take it
			break
		}
		if p.opts.OnWaitTimeout != nil {
			p.opts.OnWaitTimeout()
		}
		return nil, wire.Errorf(wire.CodeConfigLimitExceeded,
			"timed out after %s waiting for a server connection to %s (database %q, user %q): all %d in use",
			waitTimeout, p.Shard, p.Key.Database, p.Key.User, maxSize).
			WithHint("Raise pool.size or pool.wait_timeout, or shorten transactions.")
	case <-ctx.Done():
		if !p.dropWaiter(ch) {
			g = <-ch
			p.Release(g.conn) // nil conn releases the creation slot
		}
		return nil, ctx.Err()
	}
	if p.opts.OnWait != nil {
		p.opts.OnWait(time.Since(start))
	}
	if g.conn != nil {
		return g.conn, nil
	}
	return p.create(ctx)
}

// dropWaiter removes ch from the queue; false means it was already granted.
func (p *Pool) dropWaiter(ch chan grant) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, w := range p.waiters {
		if w == ch {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// create opens a connection in a slot already counted in total.
func (p *Pool) create(ctx context.Context) (*Conn, error) {
	p.mu.Lock()
	timeout, cfg, dials := p.opts.ConnectTimeout, p.cfg, p.dials
	p.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer context.AfterFunc(dials, cancel)()
	c, err := connect(cctx, cfg)
	if p.opts.OnConnect != nil {
		p.opts.OnConnect(err)
	}
	if err != nil {
		p.Release(nil)
		return nil, err
	}
	c.pool = p
	return c, nil
}

// Release returns c to the pool, or closes it if broken. A nil c gives
// back a creation slot whose connect failed.
func (p *Pool) Release(c *Conn) {
	if c != nil && !c.inUse.CompareAndSwap(true, false) {
		return // a second release must not put it in the idle list twice
	}
	if c != nil && c.Broken {
		_ = c.Close()
		c = nil
	}
	p.mu.Lock()
	if c != nil && p.closed {
		p.total--
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	if p.total > p.opts.MaxSize {
		// The pool was made smaller (SetLimits): this slot goes away.
		p.total--
		p.mu.Unlock()
		if c != nil {
			_ = c.Close()
		}
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		// A nil conn hands the waiter the slot, so it connects itself.
		w <- grant{conn: c}
		return
	}
	if c == nil {
		p.total--
	} else {
		c.lastUsed = time.Now()
		p.idle = append(p.idle, c)
	}
	p.mu.Unlock()
}

// Stats is a snapshot for metrics and the admin API.
type Stats struct {
	Idle, Active, Waiting, MaxSize int
}

// Stats reports the pool's current counts.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Idle: len(p.idle), Active: p.total - len(p.idle), Waiting: len(p.waiters), MaxSize: p.opts.MaxSize}
}

// CloseIdle closes connections idle for longer than the idle timeout.
func (p *Pool) CloseIdle(now time.Time) {
	p.mu.Lock()
	var stale []*Conn
	keep := p.idle[:0]
	for _, c := range p.idle {
		if now.Sub(c.lastUsed) > p.opts.IdleTimeout {
			stale = append(stale, c)
			p.total--
		} else {
			keep = append(keep, c)
		}
	}
	p.idle = keep
	p.mu.Unlock()
	for _, c := range stale {
		_ = c.Close()
	}
}

// Close closes idle connections and refuses new acquires; connections in
// use are closed when released.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.total -= len(idle)
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.Close()
	}
}

func (p *Pool) String() string {
	return fmt.Sprintf("%s/%s@%s", p.Key.User, p.Key.Database, p.Key.Node)
}

// Limits are the pool settings that may change at run time.
type Limits struct {
	MaxSize        int
	WaitTimeout    time.Duration
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
}

// SetLimits changes the pool's limits in place; no connection in use is
// touched. A larger MaxSize lets waiting clients connect at once; a
// smaller one closes idle connections above it now and the others as
// they are released. Waits and connects already started keep their
// timeouts.
func (p *Pool) SetLimits(l Limits) {
	p.mu.Lock()
	p.opts.MaxSize, p.opts.WaitTimeout, p.opts.ConnectTimeout, p.opts.IdleTimeout = l.MaxSize, l.WaitTimeout, l.ConnectTimeout, l.IdleTimeout
	var granted []chan grant
	for len(p.waiters) > 0 && p.total < p.opts.MaxSize {
		p.total++
		granted = append(granted, p.waiters[0])
		p.waiters = p.waiters[1:]
	}
	var excess []*Conn
	for p.total > p.opts.MaxSize && len(p.idle) > 0 {
		// The coldest first: idle is LIFO.
		excess = append(excess, p.idle[0])
		p.idle = p.idle[1:]
		p.total--
	}
	p.mu.Unlock()
	for _, w := range granted {
		w <- grant{} // the right to create a connection
	}
	for _, c := range excess {
		_ = c.Close()
	}
}

// setPassword makes the connections created from now on log in with
// password; open ones stay as they are.
func (p *Pool) setPassword(password string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Password != password {
		cfg := p.cfg.Copy()
		cfg.Password = password
		p.cfg = cfg
	}
}
