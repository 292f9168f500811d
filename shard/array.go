package shard

import (
	"encoding/binary"
	"strings"

	"github.com/shardproxy/shardproxy/wire"
)

// elemFunc receives one array element; elem is only valid during the call.
type elemFunc func(elem string, null bool) *wire.Error

// walkTextArray calls fn for every element of an array in array_in's text
// syntax ({1,2,"x y",NULL}, nested braces for more dimensions, optional
// [lo:hi]= bounds), in order, dimensions flattened: = ANY compares with
// every element whatever the shape.
func walkTextArray(s string, scratch []byte, fn elemFunc) *wire.Error {
	w := textArrayWalker{s: s, scratch: scratch, fn: fn}
	i := skipSpace(s, 0)
	if i < len(s) && s[i] == '[' {
		for i < len(s) && s[i] == '[' {
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return w.malformed()
			}
			i = skipSpace(s, i+j+1)
		}
		if i >= len(s) || s[i] != '=' {
			return w.malformed()
		}
		i = skipSpace(s, i+1)
	}
	if i >= len(s) || s[i] != '{' {
		return w.malformed()
	}
	i, err := w.level(i)
	if err != nil {
		return err
	}
	if !onlySpace(s[i:]) {
		return w.malformed()
	}
	return nil
}

type textArrayWalker struct {
	s       string
	scratch []byte
	fn      elemFunc
}

func (w *textArrayWalker) malformed() *wire.Error {
	return wire.Errorf(codeInvalidTextRepresentation, "malformed array literal: %s", quoted(w.s))
}

// level reads one brace-enclosed level starting at the '{' at i and
// returns the index after its closing brace.
func (w *textArrayWalker) level(i int) (int, *wire.Error) {
	s := w.s
	i = skipSpace(s, i+1)
	if i < len(s) && s[i] == '}' {
		return i + 1, nil
	}
	for {
		i = skipSpace(s, i)
		if i >= len(s) {
			return i, w.malformed()
		}
		var err *wire.Error
		if s[i] == '{' {
			i, err = w.level(i)
		} else {
			i, err = w.element(i)
		}
		if err != nil {
			return i, err
		}
		i = skipSpace(s, i)
		if i >= len(s) {
			return i, w.malformed()
		}
		switch s[i] {
		case ',':
			i++
		case '}':
			return i + 1, nil
		default:
			return i, w.malformed()
		}
	}
}

// element reads one element at i: quoted, or unquoted with surrounding
// white space trimmed; a backslash escapes the next character in both.
// An unquoted, unescaped NULL (any case) is SQL NULL.
func (w *textArrayWalker) element(i int) (int, *wire.Error) {
	s := w.s
	if s[i] == '"' {
		buf := w.scratch[:0]
		for i++; ; i++ {
			if i >= len(s) {
				return i, w.malformed()
			}
			c := s[i]
			if c == '\\' {
				if i++; i >= len(s) {
					return i, w.malformed()
				}
				c = s[i]
			} else if c == '"' {
				w.scratch = buf
				return i + 1, w.fn(bytesString(buf), false)
			}
			buf = append(buf, c)
		}
	}
	// Unquoted: find its end first, so that the common case (no
	// backslash) is a substring and needs no copy.
	start, end, escaped := i, i, false
	for ; i < len(s); i++ {
		c := s[i]
		if c == ',' || c == '}' {
			break
		}
		if c == '{' || c == '"' {
			return i, w.malformed()
		}
		if c == '\\' {
			escaped = true
			if i++; i >= len(s) {
				return i, w.malformed()
			}
			end = i + 1
		} else if !isSpace(c) {
			end = i + 1
		}
	}
	if end == start {
		return i, w.malformed()
	}
	raw := s[start:end]
	if !escaped {
		null := len(raw) == 4 && hasPrefixFold(raw, "null")
		return i, w.fn(raw, null)
	}
	buf := w.scratch[:0]
	for j := 0; j < len(raw); j++ {
		if raw[j] == '\\' {
			j++
		}
		buf = append(buf, raw[j])
	}
	w.scratch = buf
	return i, w.fn(bytesString(buf), false)
}

// walkBinaryArray calls fn for every element of an array in array_send's
// format: int32 ndim, int32 has-nulls flag, uint32 element type OID,
// ndim pairs of int32 (length, lower bound), then each element as an
// int32 length (-1 for NULL) and its bytes. It returns errBinary when the
// data is malformed.
func walkBinaryArray(b []byte, fn func(elemOID uint32, elem []byte, null bool) *wire.Error) *wire.Error {
	if len(b) < 12 {
		return errBinary
	}
	ndim := int32(binary.BigEndian.Uint32(b))
	flags := int32(binary.BigEndian.Uint32(b[4:]))
	elemOID := binary.BigEndian.Uint32(b[8:])
	if ndim < 0 || ndim > 6 {
		return wire.Errorf("22023", "invalid number of dimensions: %d", ndim)
	}
	if flags != 0 && flags != 1 {
		return wire.Errorf("22023", "invalid array flags")
	}
	off := 12
	n := 0
	if ndim > 0 {
		n = 1
	}
	for d := int32(0); d < ndim; d++ {
		if len(b)-off < 8 {
			return errBinary
		}
		dim := int32(binary.BigEndian.Uint32(b[off:]))
		off += 8
		if dim < 0 {
			return errBinary
		}
		n *= int(dim)
		// Every element takes at least its 4-byte length, which bounds n
		// before it can overflow.
		if n > len(b)/4 {
			return errBinary
		}
	}
	for ; n > 0; n-- {
		if len(b)-off < 4 {
			return errBinary
		}
		l := int32(binary.BigEndian.Uint32(b[off:]))
		off += 4
		if l == -1 {
			if err := fn(elemOID, nil, true); err != nil {
				return err
			}
			continue
		}
		if l < 0 || int(l) > len(b)-off {
			return errBinary
		}
		if err := fn(elemOID, b[off:off+int(l)], false); err != nil {
			return err
		}
		off += int(l)
	}
	if off != len(b) {
		return errBinary
	}
	return nil
}
