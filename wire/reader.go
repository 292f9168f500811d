package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// MaxMessageLen bounds a single message; PostgreSQL itself refuses
// anything over 1 GiB, and a larger length is a sure sign of garbage.
const MaxMessageLen = 1 << 30

// growStep is the first allocation for a message larger than the buffer.
const growStep = 1 << 20

// Reader reads typed protocol messages (1 type byte, 4 length bytes, body).
//
// Next returns a view of the whole message that stays valid until the
// following call; small messages are served straight from the bufio
// buffer, so forwarding them costs one copy into the destination buffer.
type Reader struct {
	br      *bufio.Reader
	scratch []byte
	pending int // bytes to Discard from br before the next message
	max     int // 0: MaxMessageLen
}

// NewReader wraps r with a buffer of the given size.
func NewReader(r io.Reader, size int) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, size)}
}

// SetMaxMessage makes Next refuse, with a *TooLargeError, messages longer
// than n bytes (type byte excluded, as PostgreSQL counts); n <= 0 or above
// MaxMessageLen means MaxMessageLen.
func (r *Reader) SetMaxMessage(n int) {
	if n <= 0 || n > MaxMessageLen {
		n = 0
	}
	r.max = n
}

// Reset points the reader at a new source, dropping buffered data.
func (r *Reader) Reset(src io.Reader) {
	r.br.Reset(src)
	r.pending = 0
}

// Buffered reports how many bytes can be read without blocking.
func (r *Reader) Buffered() int { return r.br.Buffered() - r.pending }

// Next returns the next message: its type and the full raw message
// (header included), ready to be appended to a write buffer.
func (r *Reader) Next() (typ byte, msg []byte, err error) {
	if r.pending > 0 {
		if _, err := r.br.Discard(r.pending); err != nil {
			return 0, nil, err
		}
		r.pending = 0
	}
	hdr, err := r.br.Peek(5)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	typ = hdr[0]
	n := int(binary.BigEndian.Uint32(hdr[1:5]))
	if n < 4 || n > MaxMessageLen {
		return 0, nil, &FramingError{Type: typ, Length: n}
	}
	if r.max > 0 && n > r.max {
		return 0, nil, &TooLargeError{Type: typ, Length: n, Max: r.max}
	}
	total := n + 1
	if total <= r.br.Size() {
		msg, err = r.br.Peek(total)
		if err != nil {
			return 0, nil, unexpected(err)
		}
		r.pending = total
		return typ, msg, nil
	}
	// The buffer grows with the bytes that actually arrive: a header
	// claiming a huge length must not cost that much memory up front
	// (one connection could otherwise pin up to the limit by sending 5
	// bytes).
	msg = r.scratch[:0]
	if cap(msg) < total && cap(msg) < growStep {
		msg = make([]byte, 0, min(total, growStep))
	}
	for len(msg) < total {
		if len(msg) == cap(msg) {
			grown := make([]byte, len(msg), min(2*cap(msg), total))
			copy(grown, msg)
			msg = grown
		}
		n, err := r.br.Read(msg[len(msg):min(cap(msg), total)])
		msg = msg[:len(msg)+n]
		if err != nil && len(msg) < total {
			r.scratch = msg[:0]
			return 0, nil, unexpected(err)
		}
	}
	r.scratch = msg[:0]
	// Keep huge one-off buffers (a 100 MB bytea) from pinning memory.
	if cap(r.scratch) > 8<<20 {
		r.scratch = nil
	}
	return typ, msg, nil
}

// ReadStartup reads a length-prefixed startup-phase packet (no type byte)
// and returns its body. maxLen guards against garbage lengths.
func (r *Reader) ReadStartup(maxLen int) ([]byte, error) {
	if r.pending > 0 {
		if _, err := r.br.Discard(r.pending); err != nil {
			return nil, err
		}
		r.pending = 0
	}
	var hdr [4]byte
	if _, err := io.ReadFull(r.br, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 || n > maxLen {
		return nil, fmt.Errorf("invalid startup packet length %d", n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r.br, body); err != nil {
		return nil, unexpected(err)
	}
	return body, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// FramingError is a message length no PostgreSQL peer sends: the bytes
// on the socket are not the protocol (garbage, or a desynchronized peer).
type FramingError struct {
	Type   byte
	Length int
}

func (e *FramingError) Error() string {
	return fmt.Sprintf("invalid message length %d for message type %q", e.Length, e.Type)
}

// TooLargeError is a well-formed message longer than the reader's
// SetMaxMessage limit. Its bytes were not read: the stream cannot go on.
type TooLargeError struct {
	Type        byte
	Length, Max int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("message of type %q is %d bytes, over the limit of %d", e.Type, e.Length, e.Max)
}

// Body strips the 5-byte header from a raw message.
func Body(msg []byte) []byte { return msg[5:] }
