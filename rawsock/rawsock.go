// Package rawsock reads and writes TCP and Unix sockets without
// announcing each call to the Go scheduler as a possibly blocking system
// call.
//
// The proxy relays small messages: a pgbench -S transaction costs it two
// reads and two writes of a few dozen bytes. net.Conn makes each of them a
// syscall.Syscall, which hands the goroutine's P back to the scheduler for
// the call's duration; a loopback write runs the receiver's whole TCP input
// path and wakeup inline, long enough that sysmon often retakes the P and
// starts another thread for it, and the writer then finds no P on return
// and parks its thread. Under pgbench load sysmon alone took 8% of the
// proxy's CPU, the thread hand-offs some more. The sockets are non-blocking (the runtime's poller
// owns them), so no call here can block: it either moves bytes or returns
// EAGAIN, and then the goroutine waits on the poller exactly as net.Conn
// does, with the same deadlines and the same wakeup on Close.
//
// The calls are recvfrom and sendto rather than read and write: on a socket
// they skip the file layer (position lock check, permission and fsnotify
// hooks) that read and write pass through, as PgBouncer's recv/send do, and
// MSG_NOSIGNAL turns a write to a closed peer into EPIPE without a SIGPIPE.
package rawsock

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Conn is a net.Conn whose Read and Write use raw system calls; every
// other method (deadlines, Close, addresses) is the wrapped connection's.
// Like net.Conn, one Read and one Write may run concurrently.
type Conn struct {
	net.Conn
	rc syscall.RawConn

	// The state of the call in progress, kept here rather than captured
	// by a closure so a call allocates nothing.
	rbuf    []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(fd uintptr) bool
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

// Wrap returns c with raw reads and writes when it is a TCP or Unix
// socket, and c itself otherwise (TLS, pipes, test doubles).
func Wrap(c net.Conn) net.Conn {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	x := &Conn{Conn: c, rc: rc}
	x.readFn = x.read
	x.writeFn = x.write
	return x
}

// SyscallConn exposes the socket, as net.TCPConn does.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Read reads like net.Conn.Read: io.EOF at the end of the stream.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr = b, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	if err := c.failure("read", err, errno); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (c *Conn) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)), 0, 0, 0)
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait on the poller, then call again
		default:
			c.rerr = e
			return true
		}
	}
}

// Write writes all of b unless an error stops it, like net.Conn.Write.
func (c *Conn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wbuf, c.wn, c.werr = b, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wbuf = nil
	return n, c.failure("write", err, errno)
}

func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)), syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // the socket buffer is full: wait until it drains
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// failure is the error of a call that ended with err from the poller
// (deadline, Close) or errno from the system call, or nil. It is dressed
// as net.Conn's own errors are, so callers that look for timeouts,
// net.ErrClosed or ECONNRESET see what they would anyway.
func (c *Conn) failure(op string, err error, errno syscall.Errno) error {
	switch {
	case err != nil:
		if oe, ok := err.(*net.OpError); ok {
			err = oe.Err // RawConn wrapped it as "raw-read"/"raw-write"
		}
	case errno != 0:
		err = os.NewSyscallError(op, errno)
	default:
		return nil
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
