package pool

import (
	"container/list"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/rawsock"
	"github.com/shardproxy/shardproxy/wire"
)

// Conn is one server connection. The proxy owns its socket after login
// (pgconn authenticates, then the connection is hijacked) and relays raw
// messages through R and W.
type Conn struct {
	net  net.Conn
	R    *wire.Reader
	W    *wire.Writer
	pool *Pool

	// PID and Secret are this server connection's cancel key.
	PID    uint32
	Secret []byte

	// Reported holds the server's latest ParameterStatus values.
	Reported map[string]string
	// Params holds session settings the proxy has applied with SET, as
	// SQL text, so a client's settings are applied only when they differ.
	Params map[string]string
	// SyncTag identifies the set of client settings last applied here
	// (sessions with equal settings share a tag), so a client whose
	// settings are already in place skips the comparison.
	SyncTag uint64

	// prepared is the LRU of server-side prepared statement names this
	// connection holds; front is the most recently used.
	prepared    map[string]*list.Element
	preparedLRU list.List

	// TxStatus is the server's transaction status from its last
	// ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed transaction.
	TxStatus byte

	// Broken marks a connection whose protocol state is unknown (I/O
	// error, client vanished mid-query); Release closes it.
	Broken bool

	// inUse guards against a connection handed to two sessions at once.
	inUse atomic.Bool

	createdAt time.Time
	lastUsed  time.Time
}

// connect logs in to the node as user on database and hijacks the socket.
func connect(ctx context.Context, cfg *pgconn.Config) (*Conn, error) {
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// pgconn may still have a background read in flight after login; one
	// left running would steal the answers to the proxy's first messages.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("sync server connection: %w", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("hijack server connection: %w", err)
	}
	if tc, ok := hc.Conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	nc := rawsock.Wrap(hc.Conn)
	now := time.Now()
	c := &Conn{
		net:       nc,
		R:         wire.NewReader(nc, 32<<10),
		W:         wire.NewWriter(nc, 16<<10),
		PID:       hc.PID,
		Secret:    hc.SecretKey,
		Reported:  hc.ParameterStatuses,
		TxStatus:  'I',
		Params:    map[string]string{},
		prepared:  map[string]*list.Element{},
		createdAt: now,
		lastUsed:  now,
	}
	return c, nil
}

// idleCheckAfter is how long a connection may sit idle before Acquire
// checks that the server has not closed it meanwhile (a restart, an
// idle_session_timeout, pg_terminate_backend). Busy connections skip the check.
const idleCheckAfter = time.Second

// alive reports whether an idle connection is still usable: the server
// has sent nothing (an idle server only speaks to say goodbye, as with the
// FATAL it sends when shutting down) and has not closed the socket.
func (c *Conn) alive() bool {
	if c.R.Buffered() > 0 {
		return false
	}
	raw := c.net
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	// A non-blocking peek: a read deadline in the past would not do, as
	// Go's poller reports the timeout without looking at the socket.
	var rerr error
	var buf [1]byte
	if err := rc.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}); err != nil {
		return false
	}
	if rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK {
		return true // nothing to read: the server is idle and connected
	}
	return false // data, EOF (n == 0) or an error
}

// Addr is the server's address, where cancel requests go.
func (c *Conn) Addr() string { return c.net.RemoteAddr().String() }

// Pool returns the pool the connection belongs to.
func (c *Conn) Pool() *Pool { return c.pool }

// Close closes the socket, telling the server goodbye first.
func (c *Conn) Close() error {
	_ = c.net.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.net.Write([]byte{'X', 0, 0, 0, 4})
	return c.net.Close()
}

// SetReadDeadline sets the read deadline; a past time wakes a blocked reader.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.net.SetReadDeadline(t) }

// SetDeadline sets the socket deadline (zero clears it).
func (c *Conn) SetDeadline(t time.Time) error { return c.net.SetDeadline(t) }

// HasPrepared reports whether the server holds statement name, marking it used.
func (c *Conn) HasPrepared(name string) bool {
	e, ok := c.prepared[name]
	if ok {
		c.preparedLRU.MoveToFront(e)
	}
	return ok
}

// AddPrepared records that the server now holds statement name.
func (c *Conn) AddPrepared(name string) {
	if e, ok := c.prepared[name]; ok {
		c.preparedLRU.MoveToFront(e)
		return
	}
	c.prepared[name] = c.preparedLRU.PushFront(name)
}

// ForgetPrepared drops name (its Parse failed or it was closed).
func (c *Conn) ForgetPrepared(name string) {
	if e, ok := c.prepared[name]; ok {
		c.preparedLRU.Remove(e)
		delete(c.prepared, name)
	}
}

// ForgetAllPrepared is for DISCARD ALL / DEALLOCATE ALL on the server.
func (c *Conn) ForgetAllPrepared() {
	clear(c.prepared)
	c.preparedLRU.Init()
}

// EvictPrepared returns the least recently used statement names beyond
// limit and forgets them; the caller closes them on the server.
func (c *Conn) EvictPrepared(limit int) []string {
	var out []string
	for len(c.prepared) > limit {
		e := c.preparedLRU.Back()
		name := e.Value.(string)
		c.preparedLRU.Remove(e)
		delete(c.prepared, name)
		out = append(out, name)
	}
	return out
}

// PreparedCount is the number of statements held on the server.
func (c *Conn) PreparedCount() int { return len(c.prepared) }

// Cancel asks the server to cancel whatever this connection is running,
// over a new connection, as the protocol requires.
func (c *Conn) Cancel(ctx context.Context) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", c.Addr())
	if err != nil {
		return fmt.Errorf("cancel: dial %s: %w", c.Addr(), err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	msg, err := (&pgproto3.CancelRequest{ProcessID: c.PID, SecretKey: c.Secret}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := nc.Write(msg); err != nil {
		return fmt.Errorf("cancel: write to %s: %w", c.Addr(), err)
	}
	// The server closes the socket when done; waiting for that keeps the
	// cancel from racing the client's next query.
	var b [1]byte
	_, _ = nc.Read(b[:])
	return nil
}

// CloseSocket closes the socket without the goodbye message; safe to call
// from another goroutine to wake a session blocked on this connection.
func (c *Conn) CloseSocket() error { return c.net.Close() }
