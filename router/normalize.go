package router

// Simple-query statements usually differ only in their constants
// (pgbench -M simple sends "... WHERE aid = 81723" with a new number each
// time), so a plan cache keyed by the exact text would parse nearly every
// statement. NormalizeLiterals replaces numeric and plain string
// constants with $1, $2, ... so the text becomes a cache key shared by
// all such statements, and returns the constants, which the executor
// binds as text parameters when it locates the shard key.
//
// The scan is conservative: anything it cannot rewrite with certainty
// (dollar quoting, E'' strings with escapes, typed literals such as DATE
// '...', bit strings, statements that already use $N) makes it give up,
// and the caller analyzes the original text instead. A normalized text
// that no longer parses (a constant where the grammar wants one, like
// varchar(10)) is caught by the caller the same way.

// NormalizeLiterals appends the normalized form of sql to dst and the
// constants' values (string constants unquoted) to lits. ok is false when
// sql contains nothing to normalize or something the scan does not handle.
func NormalizeLiterals(dst []byte, lits [][]byte, sql []byte) (norm []byte, values [][]byte, ok bool) {
	n := 0
	prevWord := false // the previous token was an identifier or keyword
	var prev []byte   // that word, for typed-literal detection
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := i
			for j < len(sql) && sql[j] != '\n' {
				j++
			}
			dst = append(dst, sql[i:j]...)
			i = j
			continue
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			j, depth := i+2, 1
			for j < len(sql) && depth > 0 {
				switch {
				case sql[j] == '*' && j+1 < len(sql) && sql[j+1] == '/':
					depth--
					j += 2
				case sql[j] == '/' && j+1 < len(sql) && sql[j+1] == '*':
					depth++
					j += 2
				default:
					j++
				}
			}
			if depth > 0 {
				return dst, lits, false
			}
			dst = append(dst, sql[i:j]...)
			i = j
			continue
		case c == '"':
			j := i + 1
			for {
				if j >= len(sql) {
					return dst, lits, false
				}
				if sql[j] == '"' {
					if j+1 < len(sql) && sql[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			dst = append(dst, sql[i:j+1]...)
			i = j + 1
			prevWord, prev = true, nil
			continue
		case c == '\'':
			if (prevWord && prev != nil && !plainBeforeString(prev)) || (len(dst) > 0 && dst[len(dst)-1] == '&') {
				// DATE '...', INTERVAL '...', E'...', B'...', U&'...':
				// a typed literal or a string with another syntax.
				return dst, lits, false
			}
			j := i + 1
			var val []byte
			start := j
			escaped := false
			for {
				if j >= len(sql) {
					return dst, lits, false
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' {
						escaped = true
						j += 2
						continue
					}
					break
				}
				j++
			}
			val = sql[start:j]
			if escaped {
				val = unquoteDoubled(val)
			}
			n++
			lits = append(lits, val)
			dst = appendParam(dst, n)
			i = j + 1
			prevWord, prev = false, nil
			continue
		case c == '$':
			// $N parameters or dollar quoting: leave such texts alone.
			return dst, lits, false
		case isDigit(c) || (c == '.' && i+1 < len(sql) && isDigit(sql[i+1])):
			j := i
			for j < len(sql) && (isDigit(sql[j]) || sql[j] == '.') {
				j++
			}
			if j < len(sql) && (sql[j] == 'e' || sql[j] == 'E') {
				k := j + 1
				if k < len(sql) && (sql[k] == '+' || sql[k] == '-') {
					k++
				}
				if k < len(sql) && isDigit(sql[k]) {
					j = k
					for j < len(sql) && isDigit(sql[j]) {
						j++
					}
				}
			}
			if j < len(sql) && (isIdentChar(sql[j])) {
				// 0x1F, 1_000, 123abc: not a plain number.
				return dst, lits, false
			}
			n++
			lits = append(lits, sql[i:j])
			dst = appendParam(dst, n)
			i = j
			prevWord, prev = false, nil
			continue
		case isIdentStart(c):
			j := i
			for j < len(sql) && isIdentChar(sql[j]) {
				j++
			}
			dst = append(dst, sql[i:j]...)
			prevWord, prev = true, sql[i:j]
			i = j
			continue
		}
		// A word followed by blanks still types a following literal
		// (DATE '2024-01-01'); anything else ends it.
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			prevWord, prev = false, nil
		}
		dst = append(dst, c)
		i++
	}
	return dst, lits, n > 0
}

func appendParam(dst []byte, n int) []byte {
	dst = append(dst, '$')
	var tmp [8]byte
	k := len(tmp)
	for {
		k--
		tmp[k] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(dst, tmp[k:]...)
}

func unquoteDoubled(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		out = append(out, b[i])
		if b[i] == '\'' {
			i++
		}
	}
	return out
}

func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool { return c == '_' || c >= 0x80 || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func isIdentChar(c byte) bool  { return isIdentStart(c) || isDigit(c) || c == '$' }

// plainBeforeString reports keywords after which a string constant is a
// plain one (not the type name of a typed literal).
func plainBeforeString(w []byte) bool {
	switch len(w) {
	case 2, 3, 4, 5, 6, 7, 8, 9:
	default:
		return false
	}
	var b [9]byte
	for i, c := range w {
		b[i] = c | 0x20
	}
	switch string(b[:len(w)]) {
	case "select", "where", "and", "or", "not", "then", "else", "when", "like", "ilike", "in",
		"is", "between", "case", "limit", "offset", "returning", "distinct", "escape", "on",
		"by", "having", "similar", "to", "all", "any", "some":
		return true
	}
	return false
}
