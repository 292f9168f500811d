package pool

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/wire"
)

// fakeConn gives the pool connections without a server, for testing the
// pool's bookkeeping: waiting, timeouts, hand-over and double release.
func fakePool(max int, wait time.Duration) *Pool {
	cfg, _ := pgconn.ParseConfig("postgres://u@127.0.0.1:1/db")
	return New(Key{Node: "n", User: "u", Database: "db"}, "s0", "primary", cfg, Options{MaxSize: max, WaitTimeout: wait, ConnectTimeout: time.Second})
}

// seed puts n connections in the pool as if they had been created.
func seed(p *Pool, n int) {
	for i := 0; i < n; i++ {
		c := &Conn{pool: p, lastUsed: time.Now(), prepared: map[string]*list.Element{}}
		c.inUse.Store(true)
		p.mu.Lock()
		p.total++
		p.mu.Unlock()
		p.Release(c)
	}
}

func TestWaitTimeoutNamesThePool(t *testing.T) {
	p := fakePool(1, 50*time.Millisecond)
	seed(p, 1)
	c, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = p.Acquire(context.Background())
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeConfigLimitExceeded {
		t.Fatalf("got %v, want 53400", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > time.Second {
		t.Fatalf("timed out after %s, want about 50ms", d)
	}
	p.Release(c)
	if st := p.Stats(); st.Idle != 1 || st.Active != 0 || st.Waiting != 0 {
		t.Fatalf("stats after release: %+v", st)
	}
}

func TestReleaseHandsToWaiter(t *testing.T) {
	p := fakePool(1, time.Second)
	seed(p, 1)
	c, _ := p.Acquire(context.Background())
	got := make(chan *Conn)
	go func() {
		c2, err := p.Acquire(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- c2
	}()
	for p.Stats().Waiting == 0 {
		time.Sleep(time.Millisecond)
	}
	p.Release(c)
	if c2 := <-got; c2 != c {
		t.Fatal("waiter did not receive the released connection")
	}
}

func TestDoubleReleaseIsHarmless(t *testing.T) {
	p := fakePool(2, time.Second)
	seed(p, 1)
	c, _ := p.Acquire(context.Background())
	p.Release(c)
	p.Release(c)
	if st := p.Stats(); st.Idle != 1 {
		t.Fatalf("double release left %d idle entries, want 1", st.Idle)
	}
}

// TestAbortDials: a server that accepts the TCP connection and then says
// nothing (stalled, SIGSTOP) holds a connect for the whole connect
// timeout; AbortDials, called when the node is seen down, ends it now.
func TestAbortDials(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accept and never answer
		}
	}()
	cfg, err := pgconn.ParseConfig("postgres://u@" + ln.Addr().String() + "/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	p := New(Key{Node: ln.Addr().String(), User: "u", Database: "db"}, "s0", "replica", cfg, Options{MaxSize: 2, WaitTimeout: time.Second, ConnectTimeout: 30 * time.Second})
	m := &Manager{pools: map[Key]*Pool{p.Key: p}}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := p.Acquire(context.Background())
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	m.AbortDials(ln.Addr().String())
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("connect to a silent server succeeded")
		}
		t.Logf("connect ended %s after it began: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("AbortDials did not end a connect to a silent server")
	}
	// The pool's slot came back and later connects are not pre-aborted.
	if s := p.Stats(); s.Active != 0 {
		t.Fatalf("after the aborted connect: %+v", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(fmt.Sprint(err), "timeout") {
		t.Fatalf("a later connect ended with %v, want it to run until its own deadline", err)
	}
}
