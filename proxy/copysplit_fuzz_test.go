package proxy

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// splitOut is what a copySplitter did with a stream.
type splitOut struct {
	rows  [][]byte // every routed row, in order
	keys  [][]byte
	nulls []bool
	all   []bool
	err   string // SQLSTATE and message of the error, if any
}

func runSplitter(c *plan.Copy, keyCol int, chunks [][]byte) splitOut {
	sp, e := newCopySplitter(c, keyCol)
	if e != nil {
		return splitOut{err: e.Code + " " + e.Message}
	}
	var out splitOut
	route := func(row, key []byte, null, all bool) {
		// The splitter reuses its buffer: copy like the real route does
		// (appendMsg copies into the shard's write buffer).
		out.rows = append(out.rows, append([]byte(nil), row...))
		if key != nil {
			key = append([]byte{}, key...)
		}
		out.keys = append(out.keys, key)
		out.nulls = append(out.nulls, null)
		out.all = append(out.all, all)
	}
	var err *wire.Error
	for _, ch := range chunks {
		if err = sp.feed(ch, route); err != nil {
			break
		}
	}
	if err == nil {
		err = sp.finish(route)
	}
	if err != nil {
		out.err = err.Code + " " + err.Message
	}
	return out
}

// refLine is one input line and the length of its line ending.
type refLine struct {
	text []byte
	term int
}

// refLines cuts data into lines the way PostgreSQL's CopyReadLineText
// does: the first line ending (\n, \r or \r\n) is the stream's; in text
// a backslash makes the next byte data (a backslash-newline does not end
// the row); in CSV a line ending inside quotes is data (an escape
// different from the quote protects the next quote or escape). A line
// that is exactly \. ends the data: it and what follows are not rows (the
// header line, when there is one, is never the marker). A last line
// without its ending is a line. openQuote: the data ended inside quotes.
func refLines(data []byte, csv, header bool, quote, escape byte) (lines []refLine, openQuote bool) {
	useEsc := csv && escape != quote
	var eol string
	inQuote := false
	start := 0
	add := func(end, term int) bool {
		l := refLine{text: data[start:end], term: term}
		start = end
		if !(header && len(lines) == 0) && string(l.text[:len(l.text)-term]) == `\.` {
			return false
		}
		lines = append(lines, l)
		return true
	}
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case csv && inQuote && useEsc && c == escape:
			if i+1 < len(data) && (data[i+1] == quote || data[i+1] == escape) {
				i++
			}
			continue
		case csv && c == quote:
			inQuote = !inQuote
			continue
		case csv && inQuote:
			continue
		case !csv && c == '\\':
			i++
			continue
		}
		if eol == "" && (c == '\n' || c == '\r') {
			switch {
			case c == '\n':
				eol = "\n"
			case i+1 < len(data) && data[i+1] == '\n':
				eol = "\r\n"
			default:
				eol = "\r"
			}
		}
		if eol != "" && bytes.HasPrefix(data[i:], []byte(eol)) {
			if !add(i+len(eol), len(eol)) {
				return lines, false
			}
			i += len(eol) - 1
		}
	}
	if start < len(data) {
		add(len(data), 0)
	}
	return lines, inQuote
}

// refTextKey parses field keyCol of a text-format line as PostgreSQL's
// CopyReadAttributesText does: fields split at unescaped delimiters, NULL
// when the raw field equals the null string, then backslash escapes.
func refTextKey(line []byte, delim byte, null string, keyCol int) (key []byte, isNull, ok bool) {
	col, start := 0, 0
	for i := 0; i <= len(line); i++ {
		if i < len(line) && line[i] == '\\' {
			i++
			continue
		}
		if i < len(line) && line[i] != delim {
			continue
		}
		if col == keyCol {
			raw := line[start:i]
			if string(raw) == null {
				return nil, true, true
			}
			return refUnescape(raw), false, true
		}
		col++
		start = i + 1
	}
	return nil, false, false
}

func refUnescape(b []byte) []byte {
	out := []byte{}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' || i+1 == len(b) {
			out = append(out, c)
			continue
		}
		i++
		c = b[i]
		switch {
		case c >= '0' && c <= '7':
			v := int(c - '0')
			for n := 1; n < 3 && i+1 < len(b) && b[i+1] >= '0' && b[i+1] <= '7'; n++ {
				i++
				v = v*8 + int(b[i]-'0')
			}
			out = append(out, byte(v))
		case c == 'x' && i+1 < len(b) && isHexDigit(b[i+1]):
			i++
			v := hexVal(b[i])
			if i+1 < len(b) && isHexDigit(b[i+1]) {
				i++
				v = v*16 + hexVal(b[i])
			}
			out = append(out, byte(v))
		case c == 'b':
			out = append(out, '\b')
		case c == 'f':
			out = append(out, '\f')
		case c == 'n':
			out = append(out, '\n')
		case c == 'r':
			out = append(out, '\r')
		case c == 't':
			out = append(out, '\t')
		case c == 'v':
			out = append(out, '\v')
		default:
			out = append(out, c)
		}
	}
	return out
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	}
	return int(c-'A') + 10
}

// refCSVKey parses field keyCol of a CSV line as PostgreSQL's
// CopyReadAttributesCSV does: a field alternates unquoted and quoted runs
// ("a"b"c" is abc); NULL only when no quote was seen and the raw field is
// the null string. ok is false for a missing column or an unterminated quote.
func refCSVKey(line []byte, delim, quote, escape byte, null string, keyCol int) (key []byte, isNull, ok bool) {
	i := 0
	for col := 0; ; col++ {
		start := i
		val := []byte{}
		sawQuote := false
		endOfLine := false
	field:
		for {
			// unquoted run
			for {
				if i >= len(line) {
					endOfLine = true
					break field
				}
				c := line[i]
				i++
				if c == delim {
					break field
				}
				if c == quote {
					sawQuote = true
					break
				}
				val = append(val, c)
			}
			// quoted run
			for {
				if i >= len(line) {
					return nil, false, false
				}
				c := line[i]
				i++
				if c == escape && i < len(line) && (line[i] == quote || line[i] == escape) {
					val = append(val, line[i])
					i++
					continue
				}
				if c == quote {
					break
				}
				val = append(val, c)
			}
		}
		if col == keyCol {
			end := i
			if !endOfLine {
				end--
			}
			if !sawQuote && string(line[start:end]) == null {
				return nil, true, true
			}
			return val, false, true
		}
		if endOfLine {
			return nil, false, false
		}
	}
}

// checkKnownBugs turns on the assertions that currently fail (see
// knownDivergence); the fuzz run skips those inputs so that it keeps
// looking for new problems.
const checkKnownBugs = true

// knownDivergence reports a key field where the splitter is known to read
// a different key than PostgreSQL:
//   - text: octal (\101) and hex (\x41) escapes are not decoded by
//     unescapeText, so the key "\x41" routes as "x41" instead of "A";
//   - csv: text after a closing quote ("a"b) is dropped by csvField, which
//     PostgreSQL appends to the field (key "ab", and a later quoted run
//     can even hide a delimiter).
func knownDivergence(line []byte, csv bool, quote, escape, delim byte) bool {
	if checkKnownBugs {
		return false
	}
	if !csv {
		for i := 0; i+1 < len(line); i++ {
			if line[i] == '\\' {
				if c := line[i+1]; c >= '0' && c <= '7' || c == 'x' {
					return true
				}
				i++
			}
		}
		return false
	}
	return !simpleCSVQuoting(line, quote, escape, delim)
}

// simpleCSVQuoting reports a line whose quotes only wrap whole fields: a
// quote opens only at a field's start and a closing quote is followed by
// the delimiter or the end of the line.
func simpleCSVQuoting(line []byte, quote, escape, delim byte) bool {
	fieldStart, inQuote := true, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		if inQuote {
			if c == escape && i+1 < len(line) && (line[i+1] == quote || line[i+1] == escape) {
				i++
				continue
			}
			if c == quote {
				inQuote = false
				if i+1 < len(line) && line[i+1] != delim {
					return false
				}
			}
			continue
		}
		switch {
		case c == quote && fieldStart:
			inQuote = true
		case c == quote:
			return false
		}
		fieldStart = c == delim
	}
	return true
}

func sameOut(a, b splitOut) bool {
	if a.err != b.err || len(a.rows) != len(b.rows) {
		return false
	}
	for i := range a.rows {
		if !bytes.Equal(a.rows[i], b.rows[i]) || !bytes.Equal(a.keys[i], b.keys[i]) ||
			(a.keys[i] == nil) != (b.keys[i] == nil) || a.nulls[i] != b.nulls[i] || a.all[i] != b.all[i] {
			return false
		}
	}
	return true
}

// FuzzCopySplitter feeds arbitrary COPY text/csv data, cut into CopyData
// chunks at arbitrary points, to the splitter. It must not panic; how the
// data is chunked must not change what it routes; the routed rows must be
// exactly the input's lines (nothing lost, duplicated or merged; only
// text's \. end marker is dropped), or the splitter must report an
// error; the key it routes by must be the field PostgreSQL would read.
func FuzzCopySplitter(f *testing.F) {
	f.Add([]byte("1\tone\n2\ttwo\n"), []byte{3, 1, 7}, uint8(0))
	f.Add([]byte("a\\tb\tx\n\\N\ty\n\\.\n"), []byte{0}, uint8(0))
	f.Add([]byte("id,name\n1,\"multi\nline\"\n\"2\",\"q\"\"uote\"\n,null\n"), []byte{2, 2, 2}, uint8(1|2))
	f.Add([]byte("x|\"1\"\r\ny|\"\"\r\n"), []byte{5}, uint8(1|4|8))
	f.Add([]byte("no newline at end"), []byte{1, 1}, uint8(0))
	f.Add([]byte("\"a\\\"b\",1\n"), []byte{}, uint8(1|16))
	f.Add([]byte("k\\x41\\101\tv\n"), []byte{4}, uint8(0))
	f.Add([]byte(""), []byte{}, uint8(1))
	f.Add([]byte("1\tline one\\\nstill one\n2\tb\n"), []byte{9, 1}, uint8(0)) // backslash-newline is data
	f.Add([]byte("1\ta\r2\tb\r3\tc"), []byte{4, 1}, uint8(0))                 // rows ended by bare \r
	f.Add([]byte("1,a\r\n2,\"b\r\nc\"\r\n"), []byte{5, 1}, uint8(1))          // CRLF, CRLF inside quotes
	f.Add([]byte("1,a\n\\.\n9,after the end\n"), []byte{4}, uint8(1))         // \. ends CSV data too
	f.Add([]byte("1\ta\n\\.\n9\tafter the end\n"), []byte{2, 2}, uint8(0))    // and text: the rest is ignored
	f.Fuzz(func(t *testing.T, data, cuts []byte, opts uint8) {
		c := &plan.Copy{Format: "text", Header: opts&2 != 0}
		csv := opts&1 != 0
		if csv {
			c.Format = "csv"
		}
		keyCol := int(opts>>2) & 1
		if opts&8 != 0 {
			c.Delimiter = "|"
		}
		if csv && opts&16 != 0 {
			c.Escape = `\`
		}
		if opts&32 != 0 {
			c.Null = "NULL"
		}
		sp, e := newCopySplitter(c, keyCol)
		if e != nil {
			t.Fatalf("newCopySplitter: %v", e)
		}
		delim, quote, escape, null := sp.delim, sp.quote, sp.escape, sp.null

		var chunks [][]byte
		rest := data
		for _, n := range cuts {
			if len(rest) == 0 {
				break
			}
			k := int(n) % (len(rest) + 1)
			chunks = append(chunks, rest[:k])
			rest = rest[k:]
		}
		chunks = append(chunks, rest)

		got := runSplitter(c, keyCol, chunks)
		whole := runSplitter(c, keyCol, [][]byte{data})
		if !sameOut(got, whole) {
			t.Fatalf("chunking changed the result:\nchunks %q\n got %s\nwhole %s", chunks, fmtOut(got), fmtOut(whole))
		}
		var bytesIn int
		for _, r := range got.rows {
			bytesIn += len(r)
		}
		if bytesIn > len(data) {
			t.Fatalf("routed %d bytes from %d of input", bytesIn, len(data))
		}

		lines, openQuote := refLines(data, csv, c.Header, quote, escape)
		// Rows routed before an error must still be whole input lines.
		li := 0
		for ri, row := range got.rows {
			if li >= len(lines) {
				t.Fatalf("row %d %q routed beyond the input's %d lines", ri, row, len(lines))
			}
			if !bytes.Equal(row, lines[li].text) {
				t.Fatalf("row %d: routed %q, input line %d is %q (all rows %q)", ri, row, li, lines[li].text, got.rows)
			}
			if c.Header && li == 0 {
				if !got.all[ri] {
					t.Fatalf("header line not sent to every shard")
				}
				li++
				continue
			}
			if got.all[ri] {
				t.Fatalf("data row %q sent to every shard", row)
			}
			line := row[:len(row)-lines[li].term]
			var key []byte
			var isNull, ok bool
			if csv {
				key, isNull, ok = refCSVKey(line, delim, quote, escape, null, keyCol)
			} else {
				key, isNull, ok = refTextKey(line, delim, null, keyCol)
			}
			if !ok {
				if !knownDivergence(line, csv, quote, escape, delim) {
					t.Fatalf("row %q routed, but the reference finds no key column %d in it", row, keyCol)
				}
			}
			if knownDivergence(line, csv, quote, escape, delim) {
				li++
				continue
			}
			if isNull != got.nulls[ri] || (!isNull && !bytes.Equal(key, got.keys[ri])) {
				t.Fatalf("row %q: key %q null=%v, reference %q null=%v", row, got.keys[ri], got.nulls[ri], key, isNull)
			}
			li++
		}
		if got.err == "" {
			// Known bug: CSV data ending inside a quoted field is dropped
			// at CopyDone without an error (finish ignores what textRows
			// leaves); PostgreSQL fails with "unterminated CSV quoted field".
			if !checkKnownBugs && openQuote && li == len(lines)-1 {
				li++
			}
			if li != len(lines) {
				t.Fatalf("no error, but input line %q and %d after it were not routed (rows %q)", lines[li].text, len(lines)-li-1, got.rows)
			}
		}
	})
}

func fmtOut(o splitOut) string {
	return fmt.Sprintf("rows %q keys %q nulls %v all %v err %q", o.rows, o.keys, o.nulls, o.all, o.err)
}

// BenchmarkCopySplitLargeRowSmallChunks: a 1 MB CSV row arriving in 64-byte
// CopyData messages is scanned once (the scan resumes where the previous
// message left it), not once per message.
func BenchmarkCopySplitLargeRowSmallChunks(b *testing.B) {
	row := append(append([]byte("1,\""), bytes.Repeat([]byte("x\n"), 512<<10)...), "\"\n"...)
	c := &plan.Copy{Format: "csv"}
	b.SetBytes(int64(len(row)))
	for i := 0; i < b.N; i++ {
		sp, _ := newCopySplitter(c, 0)
		routed := 0
		route := func(r, key []byte, null, all bool) { routed += len(r) }
		for off := 0; off < len(row); off += 64 {
			if e := sp.feed(row[off:min(off+64, len(row))], route); e != nil {
				b.Fatal(e)
			}
		}
		if e := sp.finish(route); e != nil || routed != len(row) {
			b.Fatalf("routed %d of %d bytes: %v", routed, len(row), e)
		}
	}
}
