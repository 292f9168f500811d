package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/twophase"
	"github.com/shardproxy/shardproxy/wire"
)

// txn is the client's transaction as the proxy runs it. BEGIN is answered
// by the proxy and opened lazily on each shard a statement reaches, so a
// transaction costs nothing on shards it never touches; COMMIT of a
// transaction that wrote on several shards uses two-phase commit.
type txn struct {
	open     bool   // the client is in a transaction block
	implicit bool   // a segment writing on several shards runs as one transaction
	failed   bool   // a statement failed: only ROLLBACK (TO) and COMMIT are accepted
	begin    string // the client's BEGIN, re-sent to each shard joined
	joined   uint64 // shards the transaction is open on
	wrote    uint64 // shards it wrote on
	// savepoints open now, oldest first, replayed on shards joined later.
	savepoints []string
	// settings are SET statements run in the transaction, replayed on
	// shards joined later.
	settings []string
	// errsBefore is the session's error count when an implicit
	// transaction began: any error since then rolls it back.
	errsBefore int
}

// startImplicit makes the current segment one transaction across shards.
func (ss *session) startImplicit() {
	if !ss.tx.implicit {
		ss.tx.implicit = true
		ss.tx.errsBefore = ss.errCount
	}
}

// sendAll sends one simple query to every joined connection and reads the
// answers; the first error, if any, is returned naming its shard.
func (ss *session) sendAll(mask uint64, sql func(s int) string) (*wire.Error, error) {
	var first *wire.Error
	for s, sc := range ss.conns {
		if sc == nil || mask&(1<<uint(s)) == 0 {
			continue
		}
		_ = sc.W.Send(&pgproto3.Query{String: sql(s)})
		if ss.unnamedOn == s+1 {
			ss.unnamedOn = 0
		}
		if err := sc.W.Flush(); err != nil {
			ss.useConn(s)
			return nil, serverIOError{err}
		}
	}
	for s, sc := range ss.conns {
		if sc == nil || mask&(1<<uint(s)) == 0 {
			continue
		}
		ss.useConn(s)
		ss.captured = nil
		ss.push(pend{kind: pQuery, mode: mSwallow, capture: true})
		if err := ss.pump(); err != nil {
			return nil, err
		}
		if ss.captured != nil && first == nil {
			first = ss.onShard(ss.captured, s)
		}
	}
	ss.captured = nil
	return first, nil
}

// onShard names the shard an error came from.
func (ss *session) onShard(e *wire.Error, s int) *wire.Error {
	c := *e
	d := "on shard " + ss.topo.slotNames[s]
	if c.Detail != "" {
		d = c.Detail + " (" + d + ")"
	}
	c.Detail = d
	return &c
}

// endTx forgets the transaction; the connections are idle again.
func (ss *session) endTx() {
	ss.tx = txn{}
	ss.noteTxEpoch()
}

// rollbackAll rolls back the transaction on every shard it joined.
func (ss *session) rollbackAll() error {
	joined := ss.tx.joined
	ss.endTx()
	if joined == 0 {
		return nil
	}
	e, err := ss.sendAll(joined, func(int) string { return "ROLLBACK" })
	if e != nil {
		ss.srv.log.Warn("rollback failed", "pid", ss.pid, "err", e)
	}
	return err
}

// commitAll commits the transaction on every shard it joined: plainly
// when at most one shard wrote, else with two-phase commit: PREPARE
// TRANSACTION everywhere, the decision logged durably, COMMIT PREPARED
// everywhere. A crash after the decision is finished by recovery.
func (ss *session) commitAll() (*wire.Error, error) {
	joined, wrote := ss.tx.joined, ss.tx.wrote&ss.tx.joined
	ss.endTx()
	if joined == 0 {
		return nil, nil
	}
	defer ss.noteWrites(wrote)
	if bitsCount(wrote) <= 1 {
		return ss.sendAll(joined, func(int) string { return "COMMIT" })
	}
	coord := ss.srv.coord
	if coord == nil {
		_, err := ss.sendAll(joined, func(int) string { return "ROLLBACK" })
		return wire.Errorf(wire.CodeFeatureNotSupported, "transaction wrote on %d shards but no 2PC coordinator is configured", bitsCount(wrote)).
			WithDetail("the transaction was rolled back on every shard"), err
	}
	gid := coord.Begin()
	prepare := "PREPARE TRANSACTION " + quoteLiteral(gid)
	e, err := ss.sendAll(joined, func(s int) string {
		if wrote&(1<<uint(s)) != 0 {
			return prepare
		}
		return "COMMIT"
	})
	if err != nil {
		// A connection died mid-prepare: no decision was logged, so
		// recovery rolls back whatever got prepared.
		coord.Finish(gid, false)
		return nil, err
	}
	if e != nil {
		coord.Finish(gid, ss.abortPrepared(wrote, gid))
		e.Detail = strings.TrimSpace(e.Detail + "; the transaction was rolled back on every shard")
		return e, nil
	}
	names := make([]string, 0, bitsCount(wrote))
	for s := range ss.conns {
		if wrote&(1<<uint(s)) != 0 {
			names = append(names, ss.topo.shardNames[s])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	derr := coord.Decide(ctx, gid, names)
	cancel()
	if errors.Is(derr, twophase.ErrOutcomeUnknown) {
		coord.Finish(gid, false)
		return wire.Errorf("08007", "could not reach the metadata database to log the commit decision: %v", derr).
			WithDetail("The transaction is prepared on every shard; recovery commits or rolls it back shortly."), nil
	}
	if derr != nil {
		coord.Finish(gid, ss.abortPrepared(wrote, gid))
		return wire.Errorf(wire.CodeTransactionRollback, "could not log the commit decision: %v", derr).
			WithDetail("the transaction was rolled back on every shard"), nil
	}
	e, err = ss.sendAll(wrote, func(int) string { return "COMMIT PREPARED " + quoteLiteral(gid) })
	// 42704: recovery got there first and committed it.
	if err != nil || (e != nil && e.Code != "42704") {
		// The decision is durable: recovery commits what is left.
		ss.srv.log.Warn("commit prepared failed; recovery will finish it", "gid", gid, "err", fmt.Sprint(e, err))
		coord.Finish(gid, false)
		return nil, err
	}
	coord.Finish(gid, true)
	return nil, nil
}

// abortPrepared rolls back a transaction prepared on some of mask's
// shards; it reports whether every shard answered.
func (ss *session) abortPrepared(mask uint64, gid string) bool {
	// Shards whose PREPARE failed have nothing prepared: ROLLBACK
	// PREPARED fails there (42704), which is fine.
	for s, sc := range ss.conns {
		if sc == nil || mask&(1<<uint(s)) == 0 {
			continue
		}
		e, err := ss.sendAll(1<<uint(s), func(int) string { return "ROLLBACK PREPARED " + quoteLiteral(gid) })
		if err != nil || (e != nil && e.Code != "42704") {
			ss.srv.log.Warn("rollback prepared", "gid", gid, "err", fmt.Sprint(e, err))
			return false
		}
	}
	return true
}

// finishImplicit ends a segment that ran as an implicit multi-shard
// transaction: committed when every shard succeeded, else rolled back.
func (ss *session) finishImplicit() error {
	failed := ss.errCount > ss.tx.errsBefore
	for s, sc := range ss.conns {
		if sc != nil && ss.tx.joined&(1<<uint(s)) != 0 && sc.TxStatus == 'E' {
			failed = true
		}
	}
	if failed {
		return ss.rollbackAll()
	}
	e, err := ss.commitAll()
	if e != nil {
		ss.sendError(e)
	}
	return err
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
