package proxy

import (
	"strings"
)

// setOp is one session-setting change found in a statement: SET name TO
// value (value is the SQL text as written), RESET name (reset true), or
// RESET ALL / DISCARD ALL (all true).
type setOp struct {
	name  string
	value string
	reset bool
	all   bool
	// discard marks DISCARD ALL / DEALLOCATE ALL, which also drop the
	// server's prepared statements.
	discard bool
	// Savepoint markers, so ROLLBACK TO undoes the settings made after
	// its savepoint: savepoint, rollbackTo and release hold the name.
	savepoint, rollbackTo, release string
}

// parseSessionSets finds session-level SET/RESET/DISCARD statements in a
// query string, so the proxy can carry them to whichever server connection
// serves the client next. SET LOCAL and SET TRANSACTION are transaction
// scoped and ignored. Anything it cannot read with certainty (dollar
// quoting) is left alone: worst case a setting is not carried over, never
// a wrong one. The SQL parser replaces this scan when statements are parsed.
func parseSessionSets(q string) []setOp {
	// The common case, a single statement that is not a SET & co (an
	// UPDATE ... SET included), is decided by its first word.
	if !sessionKeyword(firstWord(q)) && !(multiStatement(q) && mayHaveSet(q)) {
		return nil
	}
	if strings.IndexByte(q, '$') >= 0 {
		return nil
	}
	var ops []setOp
	for _, stmt := range splitStatements(q) {
		if op, ok := parseOneSet(stmt); ok {
			ops = append(ops, op)
		}
	}
	return ops
}

// mayHaveSet is a cheap filter run on every simple query: it looks for the
// keywords case-insensitively without allocating.
func mayHaveSet(q string) bool {
	for i := 0; i+3 <= len(q); i++ {
		c := q[i] | 0x20
		if c == 's' || c == 'r' || c == 'd' {
			w := q[i : i+3]
			if strings.EqualFold(w, "set") || strings.EqualFold(w, "res") || strings.EqualFold(w, "dis") ||
				strings.EqualFold(w, "dea") || strings.EqualFold(w, "sav") || strings.EqualFold(w, "rol") ||
				strings.EqualFold(w, "rel") {
				return true
			}
		}
	}
	return false
}

// firstWord returns the first word of q after whitespace and comments.
func firstWord(q string) string {
	for {
		q = strings.TrimLeft(q, " \t\r\n")
		switch {
		case strings.HasPrefix(q, "--"):
			i := strings.IndexByte(q, '\n')
			if i < 0 {
				return ""
			}
			q = q[i+1:]
		case strings.HasPrefix(q, "/*"):
			i := strings.Index(q, "*/")
			if i < 0 {
				return ""
			}
			q = q[i+2:]
		default:
			i := 0
			for i < len(q) && (q[i]|0x20 >= 'a' && q[i]|0x20 <= 'z') {
				i++
			}
			return q[:i]
		}
	}
}

func sessionKeyword(w string) bool {
	for _, k := range [...]string{"set", "reset", "discard", "deallocate", "savepoint", "release", "rollback"} {
		if strings.EqualFold(w, k) {
			return true
		}
	}
	return false
}

// multiStatement reports a semicolon before the end of q (ignoring a
// trailing one); quotes are not considered, so it errs towards yes.
func multiStatement(q string) bool {
	q = strings.TrimRight(q, " \t\r\n;")
	return strings.IndexByte(q, ';') >= 0
}

// splitStatements splits on semicolons outside quotes and comments, and
// drops comments, so each statement starts at its first keyword.
func splitStatements(q string) []string {
	var out []string
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(q) {
				if q[j] == c {
					if j+1 < len(q) && q[j+1] == c {
						j += 2
						continue
					}
					break
				}
				j++
			}
			if j >= len(q) {
				j = len(q) - 1
			}
			b.WriteString(q[i : j+1])
			i = j
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
			b.WriteByte(' ')
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				i = len(q)
			} else {
				i += end + 3
			}
			b.WriteByte(' ')
		case c == ';':
			out = append(out, strings.TrimSpace(b.String()))
			b.Reset()
		default:
			b.WriteByte(c)
		}
	}
	if s := strings.TrimSpace(b.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// nextWord returns the first whitespace-delimited word and the rest.
func nextWord(s string) (string, string) {
	s = strings.TrimLeft(s, " \t\r\n")
	i := strings.IndexAny(s, " \t\r\n=")
	if i < 0 {
		return s, ""
	}
	if i == 0 { // "=" right away
		return s[:1], s[1:]
	}
	return s[:i], s[i:]
}

func validGUCName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func parseOneSet(stmt string) (setOp, bool) {
	w, rest := nextWord(stmt)
	switch strings.ToLower(w) {
	case "set":
		name, rest := nextWord(rest)
		lname := strings.ToLower(name)
		switch lname {
		case "local", "transaction", "constraints":
			return setOp{}, false
		case "session":
			name, rest = nextWord(rest)
			lname = strings.ToLower(name)
			if lname == "characteristics" {
				return setOp{}, false
			}
			if lname == "authorization" {
				return valueOp("session_authorization", rest)
			}
		case "time":
			if z, r := nextWord(rest); strings.EqualFold(z, "zone") {
				return valueOp("timezone", r)
			}
			return setOp{}, false
		case "role":
			return valueOp("role", rest)
		case "names":
			return valueOp("client_encoding", rest)
		}
		if strings.HasPrefix(lname, `"`) || !validGUCName(lname) {
			return setOp{}, false
		}
		eq, r := nextWord(rest)
		if eq != "=" && !strings.EqualFold(eq, "to") {
			return setOp{}, false
		}
		return valueOp(lname, r)
	case "reset":
		name, _ := nextWord(rest)
		lname := strings.ToLower(name)
		switch lname {
		case "all":
			return setOp{all: true}, true
		case "session":
			return setOp{name: "session_authorization", reset: true}, true
		case "time":
			return setOp{name: "timezone", reset: true}, true
		}
		if !validGUCName(lname) {
			return setOp{}, false
		}
		return setOp{name: lname, reset: true}, true
	case "savepoint":
		if n := identName(rest); n != "" {
			return setOp{savepoint: n}, true
		}
	case "release":
		n, r := nextWord(rest)
		if strings.EqualFold(n, "savepoint") {
			n, _ = nextWord(r)
		}
		if n = identName(n); n != "" {
			return setOp{release: n}, true
		}
	case "rollback":
		// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
		n, r := nextWord(rest)
		if strings.EqualFold(n, "work") || strings.EqualFold(n, "transaction") {
			n, r = nextWord(r)
		}
		if !strings.EqualFold(n, "to") {
			return setOp{}, false
		}
		n, r = nextWord(r)
		if strings.EqualFold(n, "savepoint") {
			n, _ = nextWord(r)
		}
		if n = identName(n); n != "" {
			return setOp{rollbackTo: n}, true
		}
	case "discard":
		if a, _ := nextWord(rest); strings.EqualFold(a, "all") {
			return setOp{all: true, discard: true}, true
		}
	case "deallocate":
		a, r := nextWord(rest)
		if strings.EqualFold(a, "prepare") {
			a, _ = nextWord(r)
		}
		if strings.EqualFold(a, "all") {
			return setOp{discard: true}, true
		}
	}
	return setOp{}, false
}

// identName normalizes a savepoint name the way PostgreSQL does: folded to
// lower case unless double-quoted.
func identName(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s
	}
	if i := strings.IndexAny(s, " \t\r\n"); i >= 0 {
		s = s[:i]
	}
	return strings.ToLower(s)
}

// resolveSavepoints drops the settings a ROLLBACK TO SAVEPOINT undid and
// returns the plain setting changes, in order.
func resolveSavepoints(ops []setOp) []setOp {
	type mark struct {
		name string
		n    int
	}
	var out []setOp
	var marks []mark
	last := func(name string) int {
		for i := len(marks) - 1; i >= 0; i-- {
			if marks[i].name == name {
				return i
			}
		}
		return -1
	}
	for _, o := range ops {
		switch {
		case o.savepoint != "":
			marks = append(marks, mark{o.savepoint, len(out)})
		case o.rollbackTo != "":
			// The savepoint survives its rollback; later ones do not.
			if i := last(o.rollbackTo); i >= 0 {
				out = out[:marks[i].n]
				marks = marks[:i+1]
			}
		case o.release != "":
			if i := last(o.release); i >= 0 {
				marks = marks[:i]
			}
		default:
			out = append(out, o)
		}
	}
	return out
}

func valueOp(name, rest string) (setOp, bool) {
	v := strings.TrimSpace(rest)
	if v == "" {
		return setOp{}, false
	}
	if strings.EqualFold(v, "default") {
		return setOp{name: name, reset: true}, true
	}
	return setOp{name: name, value: v}, true
}

// quoteLiteral renders s as a SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
