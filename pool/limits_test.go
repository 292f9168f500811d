package pool

import (
	"container/list"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/wire"
)

// pipeConn is a pooled connection over an in-memory pipe; closed reports
// whether the pool closed it.
func pipeConn(p *Pool) (c *Conn, closed func() bool) {
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, b); close(done) }()
	c = &Conn{net: a, pool: p, lastUsed: time.Now(), prepared: map[string]*list.Element{}}
	return c, func() bool {
		select {
		case <-done:
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}
}

// seedPipes puts n pipe connections in the pool, idle.
func seedPipes(p *Pool, n int) []func() bool {
	var closed []func() bool
	for range n {
		c, f := pipeConn(p)
		c.inUse.Store(true)
		p.mu.Lock()
		p.total++
		p.mu.Unlock()
		p.Release(c)
		closed = append(closed, f)
	}
	return closed
}

func limits(size int, wait time.Duration) Limits {
	return Limits{MaxSize: size, WaitTimeout: wait, ConnectTimeout: time.Second, IdleTimeout: time.Minute}
}

// A larger size lets a client already waiting go ahead and connect.
func TestSetLimitsGrowWakesWaiters(t *testing.T) {
	p := fakePool(1, 10*time.Second)
	seedPipes(p, 1)
	c, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := p.Acquire(context.Background())
		got <- err
	}()
	for p.Stats().Waiting == 0 {
		time.Sleep(time.Millisecond)
	}
	p.SetLimits(limits(2, 10*time.Second))
	select {
	case err := <-got:
		// It was given a slot and tried to connect (nothing listens on
		// port 1), rather than waiting for the held connection.
		var we *wire.Error
		if err == nil || errors.As(err, &we) {
			t.Fatalf("waiter after growing the pool: %v, want a connect error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter still waiting after the pool grew")
	}
	if st := p.Stats(); st.MaxSize != 2 || st.Active != 1 || st.Waiting != 0 {
		t.Fatalf("stats: %+v", st)
	}
	p.Release(c)
}

// A smaller size closes idle connections above it at once and the others
// when released, never one in use.
func TestSetLimitsShrink(t *testing.T) {
	p := fakePool(4, time.Second)
	closed := seedPipes(p, 4)
	// LIFO: the last seeded is handed out first.
	c1, _ := p.Acquire(context.Background())
	c2, _ := p.Acquire(context.Background())
	p.SetLimits(limits(1, time.Second))
	if st := p.Stats(); st.Idle != 0 || st.Active != 2 || st.MaxSize != 1 {
		t.Fatalf("after shrinking: %+v", st)
	}
	if !closed[0]() || !closed[1]() {
		t.Error("idle connections above the new size were not closed")
	}
	if closed[2]() || closed[3]() {
		t.Fatal("a connection in use was closed")
	}
	p.Release(c1)
	if st := p.Stats(); st.Idle != 0 || st.Active != 1 {
		t.Fatalf("after the first release: %+v", st)
	}
	p.Release(c2)
	if st := p.Stats(); st.Idle != 1 || st.Active != 0 {
		t.Fatalf("after the second release: %+v", st)
	}
	// c1 (the fourth seeded) went away at its release, c2 stays idle.
	if !closed[3]() || closed[2]() {
		t.Errorf("released connections closed: first %t, second %t; want true, false", closed[3](), closed[2]())
	}
}

func TestSetLimitsWaitTimeout(t *testing.T) {
	p := fakePool(1, 10*time.Second)
	seedPipes(p, 1)
	c, _ := p.Acquire(context.Background())
	p.SetLimits(limits(1, 30*time.Millisecond))
	start := time.Now()
	_, err := p.Acquire(context.Background())
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeConfigLimitExceeded {
		t.Fatalf("got %v, want 53400", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("waited %s: the new wait timeout was not used", d)
	}
	p.Release(c)
}

func TestManagerSetLimitsAndPasswords(t *testing.T) {
	m := NewManager(Options{MaxSize: 5, WaitTimeout: time.Second, ConnectTimeout: time.Second, IdleTimeout: time.Minute})
	defer m.Close()
	cfg, _ := pgconn.ParseConfig("postgres://x@127.0.0.1:1/db")
	n := &Node{Shard: "s0", Role: "primary", Config: cfg}
	p := m.Get(n, "app", "old", "app")
	m.SetLimits(limits(7, 2*time.Second))
	if st := p.Stats(); st.MaxSize != 7 {
		t.Errorf("existing pool: max %d, want 7", st.MaxSize)
	}
	if st := m.Get(n, "app", "old", "other").Stats(); st.MaxSize != 7 {
		t.Errorf("new pool: max %d, want 7", st.MaxSize)
	}
	m.SetPasswords(map[string]string{"app": "new"})
	if p.cfg.Password != "new" {
		t.Errorf("existing pool logs in with %q", p.cfg.Password)
	}
	// A session logged in before the reload passes the old password.
	if q := m.Get(n, "app", "old", "third"); q.cfg.Password != "new" {
		t.Errorf("new pool logs in with %q", q.cfg.Password)
	}
	if q := m.Get(n, "bob", "bobs", "app"); q.cfg.Password != "bobs" {
		t.Errorf("other user's pool logs in with %q", q.cfg.Password)
	}
}

// Limits change while clients acquire and release (run with -race).
func TestSetLimitsConcurrent(t *testing.T) {
	p := fakePool(3, 5*time.Millisecond)
	seedPipes(p, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := p.Acquire(ctx)
				if err == nil {
					time.Sleep(time.Millisecond)
					p.Release(c)
				}
			}
		}()
	}
	for i := 0; ctx.Err() == nil; i++ {
		p.SetLimits(limits(1+i%3, time.Duration(1+i%5)*time.Millisecond))
		p.CloseIdle(time.Now())
		time.Sleep(2 * time.Millisecond)
	}
	wg.Wait()
	p.SetLimits(limits(3, time.Second))
	if st := p.Stats(); st.Active != 0 || st.Waiting != 0 || st.Idle > 3 {
		t.Fatalf("after the storm: %+v", st)
	}
}
