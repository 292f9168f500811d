package wire

import (
	"io"
)

// Writer accumulates outgoing messages and writes them in one syscall on Flush.
type Writer struct {
	w   io.Writer
	buf []byte
	// flushes counts Flush calls that wrote something, so a caller can
	// tell whether anything left since it last looked.
	flushes uint64
}

// NewWriter returns a Writer with an initial buffer capacity.
func NewWriter(w io.Writer, size int) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, size)}
}

// Reset points the writer at a new destination, dropping buffered data.
func (w *Writer) Reset(dst io.Writer) {
	w.w = dst
	w.buf = w.buf[:0]
}

// Append queues raw bytes (whole messages).
func (w *Writer) Append(p []byte) { w.buf = append(w.buf, p...) }

// Buf exposes the buffer so encoders can append in place:
// w.SetBuf(msg.Encode(w.Buf())).
func (w *Writer) Buf() []byte { return w.buf }

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
		w.buf = make([]byte, 0, 16<<10)
	} else {
		w.buf = w.buf[:0]
	}
	return err
}

// Flushes is how many times buffered bytes were written out.
func (w *Writer) Flushes() uint64 { return w.flushes }

// Truncate drops buffered bytes beyond n (n <= Len).
func (w *Writer) Truncate(n int) { w.buf = w.buf[:n] }
