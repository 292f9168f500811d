package rawsock

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection: the dialled end
// and the accepted one.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-acc
	if a == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if got := Wrap(p1); got != p1 {
		t.Fatalf("Wrap(net.Pipe) = %T, want the pipe itself", got)
	}
	d, _ := tcpPair(t)
	w, ok := Wrap(d).(*Conn)
	if !ok {
		t.Fatalf("Wrap(*net.TCPConn) = %T, want *rawsock.Conn", Wrap(d))
	}
	if w.NetConn() != d {
		t.Fatal("NetConn does not return the wrapped connection")
	}
	if _, err := w.SyscallConn(); err != nil {
		t.Fatal(err)
	}
}

// TestLargeTransfer sends more than the socket buffers hold in both
// directions at once, so writes meet a full buffer (EAGAIN) and wait on
// the poller, and reads meet an empty one.
func TestLargeTransfer(t *testing.T) {
	d, a := tcpPair(t)
	c1, c2 := Wrap(d), Wrap(a)
	const size = 16 << 20
	src1 := make([]byte, size)
	src2 := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range src1 {
		src1[i], src2[i] = byte(rng.Uint32()), byte(rng.Uint32())
	}
	type res struct {
		got []byte
		err error
	}
	read := func(c net.Conn, ch chan<- res) {
		buf := make([]byte, 0, size)
		tmp := make([]byte, 7777) // odd size: reads end mid-chunk
		for len(buf) < size {
			n, err := c.Read(tmp)
			buf = append(buf, tmp[:n]...)
			if err != nil {
				ch <- res{buf, err}
				return
			}
		}
		ch <- res{buf, nil}
	}
	r1, r2 := make(chan res, 1), make(chan res, 1)
	go read(c1, r1)
	go read(c2, r2)
	werr := make(chan error, 2)
	go func() { n, err := c1.Write(src1); werr <- lenErr(n, size, err) }()
	go func() { n, err := c2.Write(src2); werr <- lenErr(n, size, err) }()
	for range 2 {
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
	}
	got2, got1 := <-r2, <-r1
	if got2.err != nil || !bytes.Equal(got2.got, src1) {
		t.Fatalf("c2 read %d bytes (err %v), want c1's %d bytes intact", len(got2.got), got2.err, size)
	}
	if got1.err != nil || !bytes.Equal(got1.got, src2) {
		t.Fatalf("c1 read %d bytes (err %v), want c2's %d bytes intact", len(got1.got), got1.err, size)
	}
}

func lenErr(n, want int, err error) error {
	if err != nil {
		return err
	}
	if n != want {
		return errors.New("short write without an error")
	}
	return nil
}

func TestEOFAndReset(t *testing.T) {
	d, a := tcpPair(t)
	c := Wrap(d)
	if _, err := a.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "bye" {
		t.Fatalf("read %q, %v; want \"bye\"", buf[:n], err)
	}
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}

	d2, a2 := tcpPair(t)
	c2 := Wrap(d2)
	_ = a2.(*net.TCPConn).SetLinger(0) // close with RST
	a2.Close()
	_, err = c2.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after a reset: %v, want ECONNRESET", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read error %#v is not a *net.OpError for read", err)
	}
	// Writing to a reset connection fails too, rather than hanging.
	for range 10 {
		if _, err = c2.Write([]byte("x")); err != nil {
			break
		}
	}
	if err == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
}

func TestDeadlinesAndClose(t *testing.T) {
	d, _ := tcpPair(t)
	c := Wrap(d)
	buf := make([]byte, 16)
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(buf)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v is not a timeout net.Error", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("deadline of 50ms took %v", el)
	}
	_ = c.SetReadDeadline(time.Time{})

	done := make(chan error, 1)
	go func() { _, err := c.Read(buf); done <- err }()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read during Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Read")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v, want net.ErrClosed", err)
	}
}

func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c) // echo
	}()
	d, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := Wrap(d)
	defer c.Close()
	if _, ok := c.(*Conn); !ok {
		t.Fatalf("Wrap(*net.UnixConn) = %T", c)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
}

// TestNoAllocations holds the point of the package: a relay's read and
// write cost no garbage.
func TestNoAllocations(t *testing.T) {
	d, a := tcpPair(t)
	c1, c2 := Wrap(d), Wrap(a)
	msg := []byte("B\x00\x00\x00\x0cstatement")
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c1.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c2, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("a write and a read allocate %.1f times, want 0", allocs)
	}
}

// BenchmarkPingPong compares a request/answer round trip over loopback
// through net.Conn and through rawsock.
func BenchmarkPingPong(b *testing.B) {
	for _, raw := range []bool{false, true} {
		name := "net"
		if raw {
			name = "rawsock"
		}
		b.Run(name, func(b *testing.B) {
			d, a := tcpPair(b)
			if raw {
				d, a = Wrap(d), Wrap(a)
			}
			go func() {
				buf := make([]byte, 64)
				for {
					n, err := a.Read(buf)
					if err != nil {
						return
					}
					if _, err := a.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
			msg := make([]byte, 40)
			buf := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := d.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(d, buf[:len(msg)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
