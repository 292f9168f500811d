package sharded

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/proxy"
)

// result of a statement run in the background.
type result struct {
	err error
	at  time.Time
}

func runAsync(c *pgx.Conn, sql string, args ...any) chan result {
	ch := make(chan result, 1)
	go func() {
		_, err := c.Exec(context.Background(), sql, args...)
		ch <- result{err, time.Now()}
	}()
	return ch
}

func mustWait(t *testing.T, ch chan result, what string) result {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("%s failed: %v", what, r.err)
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not finish", what)
	}
	return result{}
}

func mustBlock(t *testing.T, ch chan result, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s should wait for the freeze, finished with err=%v", what, r.err)
	case <-time.After(300 * time.Millisecond):
	}
}

// keyIn finds a key of items in slot (of the proxy's map) and one outside
// it owned by the same shard.
func keysForFreeze(t *testing.T, srv *proxy.Server) (slot, owner int, in int64, out []int64) {
	t.Helper()
	m := srv.ShardMap()
	s0, err := m.Slot("items", "1")
	if err != nil {
		t.Fatal(err)
	}
	slot, owner = s0, m.Slots[s0]
	in = 1
	for k := int64(2); k < 10000 && len(out) < 2; k++ {
		s, _ := m.Slot("items", fmt.Sprint(k))
		if s != slot && m.Slots[s] == owner {
			out = append(out, k)
		}
	}
	if len(out) < 2 {
		t.Fatal("no other keys on the same shard")
	}
	return slot, owner, in, out
}

// TestFreezeQueuesStatementsOfMovingSlots checks the cutover freeze: a
// statement touching a frozen slot waits (is not failed) until the freeze
// ends and then runs on the slot's owner of that moment; statements on
// other slots of the same shard, and reads spanning shards, go on; a
// transaction begun before the freeze is let through and the cutover
// waits for it; HoldMulti holds reads spanning shards too.
func TestFreezeQueuesStatementsOfMovingSlots(t *testing.T) {
	srv := startProxy(t, 2, nil)
	c := connect(t, srv)
	setupItems(t, c, 50)
	slot, owner, in, outs := keysForFreeze(t, srv)
	for _, k := range outs {
		mustExec(t, c, "INSERT INTO items (id, grp, name) VALUES ($1, 0, 'x') ON CONFLICT (id) DO NOTHING", k)
	}
	out := outs[0]

	// A transaction begun (and writing) before the freeze.
	early := connect(t, srv)
	mustExec(t, early, "BEGIN")
	mustExec(t, early, "UPDATE items SET grp = 7 WHERE id = $1", out)

	ctx := context.Background()
	f, err := srv.FreezeSlots(ctx, owner, []int{slot})
	if err != nil {
		t.Fatalf("freeze: %v", err)
	}
	released := false
	defer func() {
		if !released {
			f.Release(nil)
		}
	}()

	w := connect(t, srv)
	frozenWrite := runAsync(w, "UPDATE items SET grp = 42 WHERE id = $1", in)
	mustBlock(t, frozenWrite, "a write to a frozen slot")

	// Same shard, other slot: no pause. Fan-out read: goes on.
	mustExec(t, connect(t, srv), "UPDATE items SET grp = 43 WHERE id = $1", outs[1])
	if n := queryInt(t, connect(t, srv), "SELECT count(*) FROM items"); n < 50 {
		t.Fatalf("fan-out read during the freeze saw %d rows", n)
	}

	// The early transaction is let through to the source...
	mustExec(t, early, "UPDATE items SET name = 'early' WHERE id = $1", in)
	waited := make(chan error, 1)
	go func() { waited <- f.WaitTransactions(ctx) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitTransactions returned (%v) while a transaction from before the freeze is open", err)
	case <-time.After(200 * time.Millisecond):
	}
	// ... and the cutover waits for it to end.
	mustExec(t, early, "COMMIT")
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("WaitTransactions: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitTransactions still waiting after the transaction committed")
	}

	// HoldMulti: reads spanning shards wait too.
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := f.HoldMulti(hctx); err != nil {
		t.Fatalf("HoldMulti: %v", err)
	}
	fan := runAsync(connect(t, srv), "SELECT count(*) FROM items")
	mustBlock(t, fan, "a fan-out read during HoldMulti")

	start := time.Now()
	f.Release(nil)
	released = true
	r := mustWait(t, frozenWrite, "the held write")
	mustWait(t, fan, "the held fan-out read")
	if r.at.Before(start) {
		t.Fatal("the held write finished before the release")
	}
	if got := queryInt(t, connectShard(t, shardNames()[owner]), "SELECT grp FROM items WHERE id = $1", in); got != 42 {
		t.Fatalf("held write: grp = %d on the owner, want 42", got)
	}
	var name string
	if err := c.QueryRow(ctx, "SELECT name FROM items WHERE id = $1", in).Scan(&name); err != nil || name != "early" {
		t.Fatalf("the early transaction's write: name = %q, err = %v", name, err)
	}
}

// TestFreezeReleaseToNewOwner: statements held by the freeze route by the
// map the release installs.
func TestFreezeReleaseToNewOwner(t *testing.T) {
	srv := startProxy(t, 2, nil)
	c := connect(t, srv)
	setupItems(t, c, 10)
	m := srv.ShardMap()
	var key int64 = 100001
	slot, err := m.Slot("items", fmt.Sprint(key))
	if err != nil {
		t.Fatal(err)
	}
	owner := m.Slots[slot]
	names := m.Assignment()
	names[slot] = m.Shards[1-owner]
	next, err := m.WithAssignment(m.Version+1, names)
	if err != nil {
		t.Fatal(err)
	}
	f, err := srv.FreezeSlots(context.Background(), owner, []int{slot})
	if err != nil {
		t.Fatal(err)
	}
	ins := runAsync(connect(t, srv), "INSERT INTO items (id, grp, name) VALUES ($1, 1, 'moved')", key)
	mustBlock(t, ins, "an insert into a frozen slot")
	f.Release(next)
	mustWait(t, ins, "the held insert")
	if n := queryInt(t, connectShard(t, shardNames()[1-owner]), "SELECT count(*) FROM items WHERE id = $1", key); n != 1 {
		t.Fatalf("the held insert is not on the slot's new owner (%d rows there)", n)
	}
	if n := queryInt(t, connectShard(t, shardNames()[owner]), "SELECT count(*) FROM items WHERE id = $1", key); n != 0 {
		t.Fatalf("the held insert reached the slot's old owner")
	}
	// Put the slot back for the other tests sharing the cluster.
	srv.SetShardMap(m)
	mustExec(t, connectShard(t, shardNames()[1-owner]), "DELETE FROM items WHERE id = $1", key)
}
