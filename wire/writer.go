package wire

import (
	"io"
	"sync"
)

// Writer accumulates outgoing messages and writes them in one syscall on Flush.
type Writer struct {
	w   io.Writer
	buf []byte
	// flushes counts Flush calls that wrote something, so a caller can
	// tell whether anything left since it last looked.
	flushes uint64
	// pooled holds buf's slice header while buf came from bufPool, so
	// Release puts it back without allocating a new one.
	pooled *[]byte
}

// NewWriter returns a Writer with an initial buffer capacity; size 0
// takes buffers from a shared pool on demand (see Release).
func NewWriter(w io.Writer, size int) *Writer {
	if size == 0 {
		return &Writer{w: w}
	}
	return &Writer{w: w, buf: make([]byte, 0, size)}
}

// pooledSize is the capacity of the shared buffers.
const pooledSize = 16 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, pooledSize); return &b }}

// Release gives an empty buffer back to the shared pool: a connection
// that waits (an idle client) then holds no buffer. The next write takes
// one again. A buffer that grew past the pooled size is dropped instead.
func (w *Writer) Release() {
	if w.buf == nil || len(w.buf) > 0 {
		return
	}
	if w.pooled != nil && cap(w.buf) == pooledSize {
		*w.pooled = w.buf[:0]
		bufPool.Put(w.pooled)
	}
	w.buf, w.pooled = nil, nil
}

// ensure gives a released writer a buffer again.
func (w *Writer) ensure() {
	if w.buf == nil {
		w.pooled = bufPool.Get().(*[]byte)
		w.buf = (*w.pooled)[:0]
	}
}

// Reset points the writer at a new destination, dropping buffered data.
func (w *Writer) Reset(dst io.Writer) {
	w.w = dst
	w.buf = w.buf[:0]
}

// Append queues raw bytes (whole messages).
func (w *Writer) Append(p []byte) {
	w.ensure()
	w.buf = append(w.buf, p...)
}

// Buf exposes the buffer so encoders can append in place:
// w.SetBuf(msg.Encode(w.Buf())).
func (w *Writer) Buf() []byte {
	w.ensure()
	return w.buf
}

// SetBuf replaces the buffer after an in-place append.
func (w *Writer) SetBuf(b []byte) { w.buf = b }

// Len is the number of bytes waiting to be written.
func (w *Writer) Len() int { return len(w.buf) }

// Encoder is any pgproto3 message.
type Encoder interface {
	Encode(dst []byte) ([]byte, error)
}

// Send encodes a pgproto3 message into the buffer.
func (w *Writer) Send(m Encoder) error {
	w.ensure()
	b, err := m.Encode(w.buf)
	if err != nil {
		return err
	}
	w.buf = b
	return nil
}

// Flush writes everything buffered.
func (w *Writer) Flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.w.Write(w.buf)
	w.flushes++
	// Shrink after a burst (a large COPY OUT) so idle sessions stay small.
	if cap(w.buf) > 1<<20 {
		w.buf, w.pooled = nil, nil // the next write takes a pooled buffer
	} else {
		w.buf = w.buf[:0]
	}
	return err
}

// Flushes is how many times buffered bytes were written out.
func (w *Writer) Flushes() uint64 { return w.flushes }

// Truncate drops buffered bytes beyond n (n <= Len).
func (w *Writer) Truncate(n int) { w.buf = w.buf[:n] }
