package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/shard"
	"github.com/shardproxy/shardproxy/wire"
)

// copySplit runs COPY ... FROM STDIN into a sharded table: the COPY opens
// on every shard, and each row the client streams goes to the shard that
// owns its key.
func (ss *session) copySplit(u *unit, implicit bool) error {
	c := u.st.Copy
	ok, err := ss.readyShards(u.st, u.shards, implicit)
	if err != nil || !ok {
		return err
	}
	keyCol, e, err := ss.copyKeyColumn(u.shards[0], c)
	if err != nil {
		return err
	}
	if e != nil {
		ss.sendError(e)
		return nil
	}
	sp, e := newCopySplitter(c, keyCol)
	if e != nil {
		ss.sendError(e)
		return nil
	}
	// Open the COPY everywhere; every shard must accept it.
	for _, s := range u.shards {
		sc := ss.conns[s]
		_ = sc.W.Send(&pgproto3.Query{String: u.sql})
		if err := sc.W.Flush(); err != nil {
			ss.useConn(s)
			return serverIOError{err}
		}
	}
	var first *wire.Error
	var inResponse []byte
	open := make([]bool, len(ss.conns))
	for _, s := range u.shards {
		ss.useConn(s)
		for done := false; !done; {
			typ, msg, err := ss.sc.R.Next()
			if err != nil {
				return serverIOError{err}
			}
			switch typ {
			case 'G':
				open[s] = true
				if inResponse == nil {
					inResponse = append([]byte(nil), msg...)
				}
				done = true
			case 'E':
				if first == nil {
					first = ss.onShard(decodeError(msg), s)
				}
			case 'Z':
				ss.sc.TxStatus = msg[5]
				done = true
			case 'N':
				if err := ss.emit(msg); err != nil {
					return err
				}
			}
		}
	}
	if first != nil {
		if err := ss.endCopies(u.shards, open, "COPY failed on another shard", nil); err != nil {
			return err
		}
		ss.sendError(first)
		ss.markFailed()
		return nil
	}
	ss.w.Append(inResponse)
	if err := ss.w.Flush(); err != nil {
		return clientError{err}
	}
	failMsg, e, err := ss.streamCopy(u, sp)
	if err != nil {
		return err
	}
	var g gather
	g.ss = ss
	if err := ss.endCopies(u.shards, open, failMsg, &g); err != nil {
		return err
	}
	switch {
	case e != nil:
		ss.sendError(e)
		ss.markFailed()
	case g.err != nil:
		ss.sendError(g.err)
		ss.markFailed()
	default:
		ss.w.Append(encode(&pgproto3.CommandComplete{CommandTag: []byte("COPY " + strconv.FormatInt(g.count, 10))}))
	}
	return nil
}

func (ss *session) markFailed() {
	if ss.tx.open {
		ss.tx.failed = true
	}
}

// streamCopy relays the client's COPY data to the shards, row by row.
// It returns a CopyFail message to send the shards when the copy must
// fail, and the error for the client.
func (ss *session) streamCopy(u *unit, sp *copySplitter) (string, *wire.Error, error) {
	m := ss.srv.ShardMap()
	var e *wire.Error
	route := func(row []byte, key []byte, null, all bool) {
		if e != nil {
			return
		}
		if all {
			for _, s := range u.shards {
				sc := ss.conns[s]
				sc.W.SetBuf(appendMsg(sc.W.Buf(), 'd', row))
			}
			return
		}
		table := u.st.Copy.Table
		var owner int
		var err error
		switch {
		case null:
			owner = m.ShardOfNull(table)
		case sp.binary:
			owner, err = m.ShardOfBinary(table, key)
		default:
			owner, err = m.ShardOfText(table, string(key))
		}
		if err != nil {
			e = asWireError(err)
			return
		}
		if owner == shard.Frozen {
			// COPYs are held at the start of a freeze (heldByFreeze);
			// one that still meets a frozen slot must not guess.
			e = wire.Errorf(wire.CodeSerializationFailure, "COPY row in slot being moved to another shard").
				WithHint("Retry the COPY: the move takes milliseconds.")
			return
		}
		sc := ss.conns[owner]
		sc.W.SetBuf(appendMsg(sc.W.Buf(), 'd', row))
	}
	for {
		if err := ss.flushCopyBuffers(u.shards, serverFlushAt); err != nil {
			return "", nil, err
		}
		typ, msg, err := ss.r.Next()
		if err != nil {
			ss.reportTooLarge(err)
			return "", nil, clientError{err}
		}
		switch typ {
		case 'd':
			if e == nil {
				if err := sp.feed(wire.Body(msg), route); err != nil {
					e = err
				}
			}
		case 'c':
			if e == nil {
				if err := sp.finish(route); err != nil {
					e = err
				}
			}
			if e != nil {
				return "COPY failed: " + e.Message, e, nil
			}
			return "", nil, nil
		case 'f':
			text, _, _ := cutCString(wire.Body(msg))
			return string(text), wire.Errorf("57014", "COPY from stdin failed: %s", text), nil
		case 'H', 'S':
		default:
			ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "unexpected message type %q during COPY from stdin", typ))
			return "", nil, clientError{io.ErrUnexpectedEOF}
		}
	}
}

func (ss *session) flushCopyBuffers(shards []int, at int) error {
	for _, s := range shards {
		sc := ss.conns[s]
		if sc.W.Len() >= at || (at == 0 && sc.W.Len() > 0) {
			if err := sc.W.Flush(); err != nil {
				ss.useConn(s)
				return serverIOError{err}
			}
		}
	}
	return nil
}

// endCopies ends the COPY on every shard where it is open: CopyDone, or
// CopyFail with failMsg; then reads each shard's answer into g.
func (ss *session) endCopies(shards []int, open []bool, failMsg string, g *gather) error {
	for _, s := range shards {
		if !open[s] {
			continue
		}
		sc := ss.conns[s]
		if failMsg != "" {
			_ = sc.W.Send(&pgproto3.CopyFail{Message: failMsg})
		} else {
			sc.W.Append([]byte{'c', 0, 0, 0, 4})
		}
	}
	if err := ss.flushCopyBuffers(shards, 0); err != nil {
		return err
	}
	for _, s := range shards {
		if !open[s] {
			continue
		}
		sink := g
		if sink == nil {
			sink = &gather{ss: ss}
		}
		if err := ss.readShard(s, sink, true); err != nil {
			return err
		}
	}
	return nil
}

// copyKeyColumn finds the position of the key column among the COPY's
// columns, asking the catalog when the COPY lists none.
func (ss *session) copyKeyColumn(s int, c *plan.Copy) (int, *wire.Error, error) {
	cols := c.Columns
	if cols == nil {
		rows, e, err := ss.queryText(s, "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = "+
			quoteLiteral(c.Table)+"::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
		if err != nil || e != nil {
			return 0, e, err
		}
		for _, r := range rows {
			cols = append(cols, r[0])
		}
	}
	for i, col := range cols {
		if strings.EqualFold(col, c.KeyColumn) {
			return i, nil, nil
		}
	}
	return 0, wire.Errorf(wire.CodeFeatureNotSupported, "COPY into sharded table %s must include its shard key column %s", c.Table, c.KeyColumn).
		WithHint("List the key column in the COPY column list."), nil
}

// queryText runs a catalog query on shard s's held connection and
// returns its rows as text.
func (ss *session) queryText(s int, sql string) ([][]string, *wire.Error, error) {
	ss.useConn(s)
	sc := ss.sc
	_ = sc.W.Send(&pgproto3.Query{String: sql})
	if err := sc.W.Flush(); err != nil {
		return nil, nil, serverIOError{err}
	}
	var rows [][]string
	var e *wire.Error
	for {
		typ, msg, err := sc.R.Next()
		if err != nil {
			return nil, nil, serverIOError{err}
		}
		switch typ {
		case 'D':
			var dr pgproto3.DataRow
			if err := dr.Decode(wire.Body(msg)); err != nil {
				return nil, nil, serverIOError{err}
			}
			row := make([]string, len(dr.Values))
			for i, v := range dr.Values {
				row[i] = string(v)
			}
			rows = append(rows, row)
		case 'E':
			e = ss.onShard(decodeError(msg), s)
		case 'Z':
			sc.TxStatus = msg[5]
			return rows, e, nil
		}
	}
}

// copySplitter cuts a COPY data stream into rows and finds each row's key.
type copySplitter struct {
	format    string
	delim     byte
	quote     byte
	escape    byte
	null      string
	header    bool
	keyCol    int
	binary    bool
	buf       []byte // an incomplete row carried to the next CopyData
	sawHeader bool
	// The scan of the incomplete row at the start of buf resumes where
	// the last CopyData left it (scan bytes in, inside quotes or not), so
	// a huge row arriving in small pieces is scanned once, not once per
	// piece.
	scan    int
	inQuote bool
	// eol is the line ending the first row used; PostgreSQL holds every
	// row to it.
	eol copyEOL
	// ended: the end-of-data marker \. was seen; PostgreSQL ignores the
	// rest of the stream, and so does the split.
	ended bool
	// binary format: the file header, sent to every shard once.
	binHeader []byte
}

func newCopySplitter(c *plan.Copy, keyCol int) (*copySplitter, *wire.Error) {
	sp := &copySplitter{format: strings.ToLower(c.Format), keyCol: keyCol, header: c.Header}
	switch sp.format {
	case "", "text":
		sp.format = "text"
		sp.delim, sp.null = '\t', `\N`
	case "csv":
		sp.delim, sp.quote, sp.null = ',', '"', ""
	case "binary":
		sp.binary = true
		return sp, nil
	default:
		return nil, wire.Errorf(wire.CodeFeatureNotSupported, "COPY format %q is not supported for sharded tables", c.Format)
	}
	if c.Delimiter != "" {
		sp.delim = c.Delimiter[0]
	}
	if c.Quote != "" {
		sp.quote = c.Quote[0]
	}
	sp.escape = sp.quote
	if c.Escape != "" {
		sp.escape = c.Escape[0]
	}
	if c.Null != "" {
		sp.null = c.Null
	}
	return sp, nil
}

// routeFn sends one row to the shard owning key (null: a NULL key; all:
// to every shard, for headers and the binary trailer).
type routeFn func(row, key []byte, null, all bool)

// copyEOL is a COPY stream's line ending, as PostgreSQL's
// CopyReadLineText classifies it from the first line.
type copyEOL uint8

const (
	eolUnknown copyEOL = iota
	eolNL              // \n
	eolCR              // \r alone
	eolCRNL            // \r\n
)

// feed consumes one CopyData payload.
func (sp *copySplitter) feed(data []byte, route routeFn) *wire.Error {
	if sp.binary {
		sp.buf = append(sp.buf, data...)
		return sp.binaryRows(route, false)
	}
	if sp.ended {
		return nil
	}
	b := data
	if len(sp.buf) > 0 {
		sp.buf = append(sp.buf, data...)
		b = sp.buf
	}
	rest, e := sp.textRows(b, route, false)
	if e != nil {
		return e
	}
	switch {
	case len(rest) == 0:
		sp.buf = sp.buf[:0]
	case len(sp.buf) == 0:
		sp.buf = append([]byte(nil), rest...)
	case len(rest) < len(sp.buf):
		// Rows were routed: move the incomplete one to the front. When
		// none was, rest is all of buf already (no copy per message).
		sp.buf = append(sp.buf[:0], rest...)
	}
	return nil
}

// finish handles what remains at CopyDone: a last row without its line
// ending is a row.
func (sp *copySplitter) finish(route routeFn) *wire.Error {
	if sp.binary {
		return sp.binaryRows(route, true)
	}
	if sp.ended || len(sp.buf) == 0 {
		return nil
	}
	b := sp.buf
	sp.buf = nil
	_, e := sp.textRows(b, route, true)
	return e
}

// textRows routes every complete row in b and returns the incomplete
// rest; with final, the end of b ends the last row.
func (sp *copySplitter) textRows(b []byte, route routeFn, final bool) ([]byte, *wire.Error) {
	for len(b) > 0 && !sp.ended {
		end, term, e := sp.rowEnd(b, final)
		if e != nil {
			return nil, e
		}
		if end < 0 {
			return b, nil
		}
		row, line := b[:end], b[:end-term]
		b = b[end:]
		sp.scan, sp.inQuote = 0, false
		if sp.header && !sp.sawHeader {
			sp.sawHeader = true
			route(row, nil, false, true) // each shard skips its own header line
			continue
		}
		if string(line) == `\.` {
			sp.ended = true
			return nil, nil
		}
		key, null, e := sp.field(line)
		if e != nil {
			return nil, e
		}
		route(row, key, null, false)
	}
	return nil, nil
}

// rowEnd finds the end of the first row of b: the index just past its
// line ending and the ending's length, or -1 if the row is not complete
// yet. It follows PostgreSQL's CopyReadLineText: in text format a
// backslash takes the next byte with it (a backslash-newline is data); in
// CSV a line ending inside quotes is data; the first row's ending (\n,
// \r or \r\n) is the stream's, and other line-ending bytes are left in
// the row for the shard to refuse as PostgreSQL would.
func (sp *copySplitter) rowEnd(b []byte, final bool) (int, int, *wire.Error) {
	csv := sp.format == "csv"
	inQuote := sp.inQuote
	pause := func(i int) (int, int, *wire.Error) {
		// The byte at i needs the next one to be understood.
		sp.scan, sp.inQuote = i, inQuote
		return -1, 0, nil
	}
	for i := sp.scan; i < len(b); i++ {
		c := b[i]
		if csv {
			if inQuote {
				if c == sp.escape && sp.escape != sp.quote {
					if i+1 >= len(b) && !final {
						return pause(i)
					}
					if i+1 < len(b) && (b[i+1] == sp.quote || b[i+1] == sp.escape) {
						i++
					}
					continue
				}
				if c == sp.quote {
					inQuote = false
				}
				continue
			}
			if c == sp.quote {
				inQuote = true
				continue
			}
		} else if c == '\\' {
			if i+1 >= len(b) {
				if !final {
					return pause(i)
				}
				continue
			}
			i++
			continue
		}
		if c != '\n' && c != '\r' {
			continue
		}
		if sp.eol == eolUnknown {
			switch {
			case c == '\n':
				sp.eol = eolNL
			case i+1 < len(b) && b[i+1] == '\n':
				sp.eol = eolCRNL
			case i+1 >= len(b) && !final:
				return pause(i)
			default:
				sp.eol = eolCR
			}
		}
		switch sp.eol {
		case eolNL:
			if c == '\n' {
				return i + 1, 1, nil
			}
		case eolCR:
			if c == '\r' {
				return i + 1, 1, nil
			}
		case eolCRNL:
			if c == '\r' {
				if i+1 >= len(b) && !final {
					return pause(i)
				}
				if i+1 < len(b) && b[i+1] == '\n' {
					return i + 2, 2, nil
				}
			}
		}
	}
	if !final {
		sp.scan, sp.inQuote = len(b), inQuote
		return -1, 0, nil
	}
	if inQuote {
		// Still inside quotes at the end of the data: PostgreSQL refuses
		// it too, rather than dropping the row.
		return 0, 0, wire.Errorf("22P04", "unterminated CSV quoted field")
	}
	return len(b), 0, nil
}

// field extracts the key column's value from one row.
func (sp *copySplitter) field(line []byte) ([]byte, bool, *wire.Error) {
	if sp.format == "csv" {
		return sp.csvField(line)
	}
	col := 0
	start := 0
	for i := 0; i <= len(line); i++ {
		if i == len(line) || line[i] == sp.delim {
			if col == sp.keyCol {
				raw := line[start:i]
				if string(raw) == sp.null {
					return nil, true, nil
				}
				return unescapeText(raw), false, nil
			}
			col++
			start = i + 1
			continue
		}
		if line[i] == '\\' {
			i++
		}
	}
	return nil, false, wire.Errorf("22P04", "missing data for column %d (the shard key) in COPY row", sp.keyCol+1)
}

// csvField reads the key column of a CSV row as PostgreSQL's
// CopyReadAttributesCSV does: quoted and unquoted runs may alternate in a
// field ("a"b is ab), the escape character inside quotes escapes a quote
// or itself, and only an unquoted field equal to the NULL string is NULL.
func (sp *copySplitter) csvField(line []byte) ([]byte, bool, *wire.Error) {
	col := 0
	i := 0
	for {
		var val []byte
		inQuote, sawQuote := false, false
		for ; i < len(line); i++ {
			c := line[i]
			if !inQuote && c == sp.delim {
				break
			}
			if !inQuote && c == sp.quote {
				inQuote, sawQuote = true, true
				continue
			}
			if inQuote && c == sp.escape && i+1 < len(line) && (line[i+1] == sp.escape || line[i+1] == sp.quote) {
				i++
				val = append(val, line[i])
				continue
			}
			if inQuote && c == sp.quote {
				inQuote = false
				continue
			}
			val = append(val, c)
		}
		if inQuote {
			return nil, false, wire.Errorf("22P04", "unterminated CSV quoted field")
		}
		if col == sp.keyCol {
			if !sawQuote && string(val) == sp.null {
				return nil, true, nil
			}
			if val == nil {
				val = []byte{}
			}
			return val, false, nil
		}
		if i >= len(line) {
			return nil, false, wire.Errorf("22P04", "missing data for column %d (the shard key) in COPY row", sp.keyCol+1)
		}
		i++ // delimiter
		col++
	}
}

// unescapeText undoes COPY text-format backslash escapes.
func unescapeText(b []byte) []byte {
	if bytes.IndexByte(b, '\\') < 0 {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' || i+1 == len(b) {
			out = append(out, c)
			continue
		}
		i++
		switch c := b[i]; {
		case c >= '0' && c <= '7':
			// \ooo: one to three octal digits.
			v := int(c - '0')
			for n := 1; n < 3 && i+1 < len(b) && b[i+1] >= '0' && b[i+1] <= '7'; n++ {
				i++
				v = v*8 + int(b[i]-'0')
			}
			out = append(out, byte(v))
			continue
		case c == 'x' && i+1 < len(b) && copyIsHex(b[i+1]):
			// \xhh: one or two hex digits.
			i++
			v := copyHexVal(b[i])
			if i+1 < len(b) && copyIsHex(b[i+1]) {
				i++
				v = v*16 + copyHexVal(b[i])
			}
			out = append(out, byte(v))
			continue
		}
		switch b[i] {
		case 'n':
			out = append(out, '\n')
		case 't':
			out = append(out, '\t')
		case 'r':
			out = append(out, '\r')
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'v':
			out = append(out, '\v')
		default:
			out = append(out, b[i])
		}
	}
	return out
}

var binarySignature = []byte("PGCOPY\n\xff\r\n\x00")

// binaryRows routes complete binary tuples; the header goes to every
// shard with the first tuple, the trailer at the end.
func (sp *copySplitter) binaryRows(route routeFn, final bool) *wire.Error {
	b := sp.buf
	if sp.binHeader == nil {
		if len(b) < 19 {
			if final {
				return wire.Errorf("22P04", "COPY file signature not recognized")
			}
			return nil
		}
		if !bytes.Equal(b[:11], binarySignature) {
			return wire.Errorf("22P04", "COPY file signature not recognized")
		}
		ext := int(binary.BigEndian.Uint32(b[15:19]))
		if len(b) < 19+ext {
			return nil
		}
		sp.binHeader = append([]byte(nil), b[:19+ext]...)
		b = b[19+ext:]
		route(sp.binHeader, nil, false, true)
	}
	for len(b) >= 2 {
		n := int16(binary.BigEndian.Uint16(b))
		if n == -1 {
			route(b[:2], nil, false, true) // trailer for everyone
			b = b[2:]
			continue
		}
		off := 2
		var key []byte
		null := false
		complete := true
		for f := 0; f < int(n); f++ {
			if len(b) < off+4 {
				complete = false
				break
			}
			l := int32(binary.BigEndian.Uint32(b[off:]))
			off += 4
			if f == sp.keyCol {
				if l < 0 {
					null = true
				} else {
					key = b[off:off] // an empty key is not NULL
				}
			}
			if l > 0 {
				if len(b) < off+int(l) {
					complete = false
					break
				}
				if f == sp.keyCol {
					key = b[off : off+int(l)]
				}
				off += int(l)
			}
		}
		if !complete {
			break
		}
		if sp.keyCol >= int(n) {
			return wire.Errorf("22P04", "missing data for column %d (the shard key) in COPY row", sp.keyCol+1)
		}
		route(b[:off], key, null, false)
		b = b[off:]
	}
	if len(b) < len(sp.buf) { // tuples were routed: keep the rest at the front
		sp.buf = append(sp.buf[:0], b...)
	}
	if final && len(sp.buf) > 0 {
		return wire.Errorf("22P04", "unexpected end of COPY data")
	}
	return nil
}

func copyIsHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func copyHexVal(c byte) int {
	switch {
	case c >= 'a':
		return int(c-'a') + 10
	case c >= 'A':
		return int(c-'A') + 10
	}
	return int(c - '0')
}
