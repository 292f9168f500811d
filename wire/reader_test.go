package wire

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

func msg(typ byte, body string) []byte {
	return appendHeader(typ, []byte(body))
}

func appendHeader(typ byte, body []byte) []byte {
	n := len(body) + 4
	return append([]byte{typ, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

func TestReaderSmallAndLarge(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 100_000) // larger than the buffer
	var in []byte
	in = append(in, msg('Q', "select 1\x00")...)
	in = append(in, appendHeader('d', big)...)
	in = append(in, msg('S', "")...)
	r := NewReader(bytes.NewReader(in), 4096)
	for i, want := range []struct {
		typ byte
		n   int
	}{{'Q', 14}, {'d', 100_005}, {'S', 5}} {
		typ, m, err := r.Next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if typ != want.typ || len(m) != want.n {
			t.Fatalf("message %d: got %q len %d, want %q len %d", i, typ, len(m), want.typ, want.n)
		}
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("at end: got %v, want EOF", err)
	}
}

func TestReaderRejectsBadLength(t *testing.T) {
	for _, in := range [][]byte{
		{'Q', 0, 0, 0, 2},          // shorter than the length field itself
		{'Q', 0x7f, 0xff, 0xff, 0}, // 2 GiB
	} {
		r := NewReader(bytes.NewReader(in), 4096)
		if _, _, err := r.Next(); err == nil {
			t.Fatalf("%v: accepted", in)
		}
	}
}

func TestReaderTruncated(t *testing.T) {
	in := msg('Q', "select 1\x00")
	r := NewReader(bytes.NewReader(in[:8]), 4096)
	if _, _, err := r.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want unexpected EOF", err)
	}
}

// FuzzReader feeds arbitrary bytes: the reader must return messages whose
// framing is consistent, or an error, and never panic or over-allocate.
func FuzzReader(f *testing.F) {
	f.Add(msg('Q', "select 1\x00"))
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 64)
		for {
			typ, m, err := r.Next()
			if err != nil {
				return
			}
			if m[0] != typ || len(m) < 5 {
				t.Fatalf("bad framing: %q %v", typ, m)
			}
		}
	})
}

func BenchmarkReaderNext(b *testing.B) {
	one := msg('D', "\x00\x01\x00\x00\x00\x04abcd")
	in := bytes.Repeat(one, 1000)
	src := bytes.NewReader(in)
	r := NewReader(src, 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(one)))
	for i := 0; i < b.N; i++ {
		if _, _, err := r.Next(); err != nil {
			src.Reset(in)
			r.Reset(src)
		}
	}
}

func TestReaderMaxMessage(t *testing.T) {
	small, big := msg('Q', "select 1\x00"), msg('Q', strings.Repeat("x", 5000)+"\x00")
	r := NewReader(bytes.NewReader(append(append([]byte(nil), small...), big...)), 64)
	r.SetMaxMessage(4096)
	if _, m, err := r.Next(); err != nil || !bytes.Equal(m, small) {
		t.Fatalf("small message: %q, %v", m, err)
	}
	_, _, err := r.Next()
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Length != 5005 || tl.Max != 4096 || tl.Type != 'Q' {
		t.Fatalf("got %v, want a TooLargeError for 5005 bytes over 4096", err)
	}
}

// A header claiming a huge message costs memory only for the bytes that
// arrive: a client cannot pin the length it claims by sending 5 bytes.
func TestReaderHugeClaimSmallAlloc(t *testing.T) {
	in := append([]byte{'Q', 0x30, 0, 0, 0}, []byte("select")...) // claims 805 MB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := NewReader(bytes.NewReader(in), 64).Next()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want unexpected EOF", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Fatalf("allocated %d bytes for a message that sent 6", grew)
	}
	// A real large message still reads whole, across many buffer fills.
	body := bytes.Repeat([]byte("0123456789"), 500_000)
	m := msg('d', string(body))
	_, got, err := NewReader(bytes.NewReader(m), 64).Next()
	if err != nil || !bytes.Equal(got, m) {
		t.Fatalf("5 MB message: %d bytes, %v", len(got), err)
	}
}

// A released writer holds no buffer, takes one again on the next write,
// and the round trip allocates nothing once the pool is warm.
func TestWriterRelease(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, 0)
	w.Append(msg('Q', "select 1\x00"))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	w.Release()
	if w.buf != nil {
		t.Fatal("released writer still holds a buffer")
	}
	w.Append([]byte("x"))
	w.Release() // not empty: kept
	if w.Len() != 1 {
		t.Fatalf("Release dropped buffered bytes: %d", w.Len())
	}
	_ = w.Flush()
	rfq := msg('Z', "I")
	allocs := testing.AllocsPerRun(100, func() {
		w.Append(rfq)
		_ = w.Flush()
		w.Release()
	})
	if allocs > 0.1 {
		t.Fatalf("%.1f allocations per write/flush/release", allocs)
	}
	if !strings.HasPrefix(out.String(), "Q") || !strings.HasSuffix(out.String(), "I") {
		t.Fatalf("output %q", out.String())
	}
}
