package proxy

import (
	"bytes"

	"encoding/binary"
	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/router"
	"strconv"
	"sync"
)

// sharedStmt is a prepared statement as the servers know it. Clients name
// their statements as they like; the proxy prepares each distinct
// (query, parameter types) once per server connection under one global
// name, which is how PgBouncer 1.21+ and PgDog keep named prepared
// statements working with transaction pooling.
type sharedStmt struct {
	serverName string
	// parse is the complete Parse message under serverName, ready to send.
	parse []byte
	// sets are session settings the statement changes when executed.
	sets []setOp
	// plan and info are the router's analysis, made once.
	plan *plan.Statement
	info *stmtInfo
}

// stmtRegistry maps statement text to its shared server-side name.
type stmtRegistry struct {
	router *router.Router
	mu     sync.Mutex
	byKey  map[string]*sharedStmt
	next   uint64
}

func newStmtRegistry() *stmtRegistry {
	return &stmtRegistry{byKey: map[string]*sharedStmt{}}
}

// get returns the shared statement for a client Parse body whose name
// has been cut off: rest is "query\0" followed by the parameter types.
func (r *stmtRegistry) get(rest []byte) *sharedStmt {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.byKey[string(rest)]; s != nil {
		return s
	}
	r.next++
	name := "shardproxy_" + strconv.FormatUint(r.next, 10)
	s := &sharedStmt{serverName: name, parse: appendMsg(nil, 'P', []byte(name), []byte{0}, rest)}
	if q, after, ok := cutCString(rest); ok {
		s.sets = parseSessionSets(string(q))
		s.info = &stmtInfo{sql: string(q), oids: parseOIDs(after)}
		// Analyzed under the lock: once per distinct statement.
		parts := r.router.Analyze(s.info.sql)
		switch len(parts) {
		case 0:
			s.info.st = emptyStatement
		case 1:
			s.info.st = parts[0].Stmt
		default:
			s.info.st = multiInPrepared
		}
	} else {
		s.info = &stmtInfo{st: emptyStatement}
	}
	s.plan = s.info.st
	r.byKey[string(rest)] = s
	return s
}

// appendMsg appends a message of type typ whose body is the concatenation of parts.
func appendMsg(dst []byte, typ byte, parts ...[]byte) []byte {
	n := 4
	for _, p := range parts {
		n += len(p)
	}
	dst = append(dst, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(n))
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return dst
}

// cutCString splits b at its first NUL: the string, the bytes after the NUL.
func cutCString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}
