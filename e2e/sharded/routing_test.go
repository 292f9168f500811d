package sharded

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// setupItems creates the items table through the proxy (a broadcast DDL)
// and fills it with n rows, one INSERT per row and one multi-row INSERT.
func setupItems(t *testing.T, c *pgx.Conn, n int) {
	t.Helper()
	mustExec(t, c, "DROP TABLE IF EXISTS items")
	mustExec(t, c, "CREATE TABLE items (id bigint PRIMARY KEY, grp int, name text, price numeric(10,2))")
	var vals []string
	for i := 1; i <= n; i++ {
		if i%2 == 0 {
			mustExec(t, c, "INSERT INTO items (id, grp, name, price) VALUES ($1, $2, $3, $4)", i, i%5, fmt.Sprintf("item-%03d", i), fmt.Sprintf("%d.%02d", i, i%100))
			continue
		}
		vals = append(vals, fmt.Sprintf("(%d, %d, 'item-%03d', %d.%02d)", i, i%5, i, i, i%100))
	}
	mustExec(t, c, "INSERT INTO items (id, grp, name, price) VALUES "+strings.Join(vals, ", "))
}

func TestKeyedRoutingAndFanOut(t *testing.T) {
	srv := startProxy(t, 3, nil)
	c := connect(t, srv)
	setupItems(t, c, 300)

	// DDL reached every shard; rows are split, none lost or duplicated.
	counts := onShards(t, 3, "SELECT count(*) FROM items")
	if sum(counts) != 300 {
		t.Fatalf("rows per shard %s: want 300 in total", joinInts(counts))
	}
	for i, n := range counts {
		if n < 60 || n > 140 {
			t.Fatalf("shard %d holds %d of 300 rows (%s): hash split looks wrong", i, n, joinInts(counts))
		}
	}
	// Each row is on the shard that owns its slot, the slot being the
	// partition PostgreSQL's own hash partitioning picks (modulus 256),
	// and slots assigned to the 3 shards in contiguous blocks.
	for i, name := range shardNames() {
		wrong := queryInt(t, connectShard(t, name), `SELECT count(*) FROM (SELECT floor(
			(((hashint8extended(id, 8816678312871386365)::numeric + 5305509591434766563 + 18446744073709551616)
			  % 18446744073709551616) % 256) * 3 / 256) AS owner FROM items) x WHERE owner <> $1`, i)
		if wrong != 0 {
			t.Fatalf("shard %s holds %d rows whose slot belongs elsewhere", name, wrong)
		}
	}

	// Keyed reads, simple and extended.
	var name string
	if err := c.QueryRow(ctxT(t, 10*time.Second), "SELECT name FROM items WHERE id = 42").Scan(&name); err != nil || name != "item-042" {
		t.Fatalf("keyed literal read: %q %v", name, err)
	}
	if err := c.QueryRow(ctxT(t, 10*time.Second), "SELECT name FROM items WHERE id = $1", 77).Scan(&name); err != nil || name != "item-077" {
		t.Fatalf("keyed param read: %q %v", name, err)
	}
	// Fan-out with merge.
	if n := queryInt(t, c, "SELECT count(*) FROM items"); n != 300 {
		t.Fatalf("fan-out count = %d, want 300", n)
	}
	rows, err := c.Query(ctxT(t, 10*time.Second), "SELECT id FROM items ORDER BY id DESC LIMIT 5 OFFSET 2")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids) != "[298 297 296 295 294]" {
		t.Fatalf("ORDER BY id DESC LIMIT 5 OFFSET 2 = %v", ids)
	}
	// IN list across shards.
	if n := queryInt(t, c, "SELECT count(*) FROM items WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)"); n != 10 {
		t.Fatalf("IN-list count = %d, want 10", n)
	}
	if n := queryInt(t, c, "SELECT count(*) FROM items WHERE id = ANY($1)", []int64{1, 2, 3, 250, 299}); n != 5 {
		t.Fatalf("= ANY($1) count = %d, want 5", n)
	}
	// Writes by key; the total is unchanged.
	mustExec(t, c, "UPDATE items SET price = price + 1 WHERE id = $1", 10)
	mustExec(t, c, "DELETE FROM items WHERE id = 11")
	if n := queryInt(t, c, "SELECT count(*) FROM items"); n != 299 {
		t.Fatalf("count after delete = %d, want 299", n)
	}
	// Moving a row to another shard by changing its key is refused.
	_, err = c.Exec(ctxT(t, 10*time.Second), "UPDATE items SET id = 100000 WHERE id = 12")
	wantCode(t, err, "0A000", "UPDATE of the shard key")
	// A window function over every shard is refused, the session goes on.
	_, err = c.Exec(ctxT(t, 10*time.Second), "SELECT id, row_number() OVER (ORDER BY id) FROM items")
	wantCode(t, err, "0A000", "window function across shards")
	if n := queryInt(t, c, "SELECT count(*) FROM items WHERE id = 12"); n != 1 {
		t.Fatalf("session broken after refusal: count = %d", n)
	}
}

func TestTransactionsAcrossShards(t *testing.T) {
	srv := startProxy(t, 3, nil)
	c := connect(t, srv)
	mustExec(t, c, "DROP TABLE IF EXISTS accounts2pc")
	mustExec(t, c, "CREATE TABLE accounts2pc (id bigint PRIMARY KEY, balance bigint NOT NULL)")
	for i := 1; i <= 30; i++ {
		mustExec(t, c, "INSERT INTO accounts2pc (id, balance) VALUES ($1, 100)", i)
	}
	ctx := ctxT(t, 60*time.Second)

	// Committed transfers over several shards: all of it lands.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		if _, err := tx.Exec(ctx, "UPDATE accounts2pc SET balance = balance - 5 WHERE id = $1", i); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts2pc SET balance = balance + 5 WHERE id = $1", i+10); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if n := queryInt(t, c, "SELECT sum(balance) FROM accounts2pc"); n != 3000 {
		t.Fatalf("sum after commit = %d, want 3000", n)
	}
	if n := queryInt(t, c, "SELECT balance FROM accounts2pc WHERE id = 15"); n != 105 {
		t.Fatalf("balance 15 = %d, want 105", n)
	}

	// Rolled back: nothing lands anywhere.
	tx, _ = c.Begin(ctx)
	for i := 1; i <= 10; i++ {
		if _, err := tx.Exec(ctx, "UPDATE accounts2pc SET balance = 0 WHERE id = $1", i); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, c, "SELECT count(*) FROM accounts2pc WHERE balance = 0"); n != 0 {
		t.Fatalf("%d rows changed by a rolled-back transaction", n)
	}

	// An error aborts the whole transaction on every shard.
	tx, _ = c.Begin(ctx)
	_, _ = tx.Exec(ctx, "UPDATE accounts2pc SET balance = 0 WHERE id = 1")
	_, err = tx.Exec(ctx, "UPDATE accounts2pc SET balance = 1/0 WHERE id = 2")
	wantCode(t, err, "22012", "division by zero")
	_, err = tx.Exec(ctx, "UPDATE accounts2pc SET balance = 0 WHERE id = 3")
	wantCode(t, err, "25P02", "statement in failed transaction")
	if err := tx.Commit(ctx); err == nil || !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Fatalf("commit of failed transaction: %v, want rollback", err)
	}
	if n := queryInt(t, c, "SELECT count(*) FROM accounts2pc WHERE balance = 0"); n != 0 {
		t.Fatalf("%d rows changed by a failed transaction", n)
	}

	// Savepoints span shards.
	tx, _ = c.Begin(ctx)
	mustTx(t, tx, "UPDATE accounts2pc SET balance = balance + 1 WHERE id = 1")
	mustTx(t, tx, "SAVEPOINT a")
	mustTx(t, tx, "UPDATE accounts2pc SET balance = balance + 1000 WHERE id = 2")
	mustTx(t, tx, "UPDATE accounts2pc SET balance = balance + 1000 WHERE id = 25")
	mustTx(t, tx, "ROLLBACK TO SAVEPOINT a")
	mustTx(t, tx, "UPDATE accounts2pc SET balance = balance - 1 WHERE id = 26")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, c, "SELECT sum(balance) FROM accounts2pc"); n != 3000 {
		t.Fatalf("sum after savepoint rollback = %d, want 3000", n)
	}

	// A setting made in the transaction holds on every shard it reaches,
	// before and after the SET.
	tx, _ = c.Begin(ctx)
	mustTx(t, tx, "UPDATE accounts2pc SET balance = balance WHERE id = 1")
	mustTx(t, tx, "SET LOCAL lock_timeout = '1234ms'")
	for _, sh := range shardNames() {
		var v string
		if err := tx.QueryRow(ctx, "/* shardproxy: shard="+sh+" */ SELECT current_setting('lock_timeout')").Scan(&v); err != nil || v != "1234ms" {
			t.Fatalf("lock_timeout on %s inside the transaction = %q, %v; want 1234ms", sh, v, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// Nothing of ours stays prepared.
	for _, n := range onShards(t, 3, "SELECT count(*) FROM pg_prepared_xacts") {
		if n != 0 {
			t.Fatalf("prepared transactions left behind: %d", n)
		}
	}
	// A multi-shard write outside a transaction is atomic too.
	_, err = c.Exec(ctx, "UPDATE accounts2pc SET balance = balance + 1 WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)")
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, c, "SELECT sum(balance) FROM accounts2pc"); n != 3010 {
		t.Fatalf("sum after multi-shard update = %d, want 3010", n)
	}
}

func mustTx(t *testing.T, tx pgx.Tx, sql string) {
	t.Helper()
	if _, err := tx.Exec(ctxT(t, 30*time.Second), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestCopySplit(t *testing.T) {
	srv := startProxy(t, 3, nil)
	c := connect(t, srv)
	mustExec(t, c, "DROP TABLE IF EXISTS copy_t")
	mustExec(t, c, "CREATE TABLE copy_t (id bigint PRIMARY KEY, note text)")
	// Binary COPY through pgx.
	var src [][]any
	for i := 1; i <= 1000; i++ {
		src = append(src, []any{int64(i), fmt.Sprintf("row %d", i)})
	}
	n, err := c.CopyFrom(ctxT(t, 30*time.Second), pgx.Identifier{"copy_t"}, []string{"id", "note"}, pgx.CopyFromRows(src))
	if err != nil || n != 1000 {
		t.Fatalf("binary copy: %d rows, %v", n, err)
	}
	// Text and CSV COPY through the raw protocol.
	pc := c.PgConn()
	var text, csv strings.Builder
	for i := 1001; i <= 2000; i++ {
		fmt.Fprintf(&text, "%d\ttext\\trow %d\n", i, i)
	}
	for i := 2001; i <= 3000; i++ {
		fmt.Fprintf(&csv, "%d,\"csv, row\n%d\"\n", i, i)
	}
	if tag, err := pc.CopyFrom(ctxT(t, 30*time.Second), strings.NewReader(text.String()), "COPY copy_t FROM STDIN"); err != nil || tag.RowsAffected() != 1000 {
		t.Fatalf("text copy: %v %v", tag, err)
	}
	if tag, err := pc.CopyFrom(ctxT(t, 30*time.Second), strings.NewReader("id,note\n"+csv.String()), "COPY copy_t (id, note) FROM STDIN WITH (FORMAT csv, HEADER true)"); err != nil || tag.RowsAffected() != 1000 {
		t.Fatalf("csv copy: %v %v", tag, err)
	}
	counts := onShards(t, 3, "SELECT count(*) FROM copy_t")
	if sum(counts) != 3000 {
		t.Fatalf("copied rows per shard %s, want 3000 in total", joinInts(counts))
	}
	for _, k := range counts {
		if k < 700 || k > 1300 {
			t.Fatalf("uneven split %s", joinInts(counts))
		}
	}
	var note string
	if err := c.QueryRow(ctxT(t, 10*time.Second), "SELECT note FROM copy_t WHERE id = 2500").Scan(&note); err != nil || note != "csv, row\n2500" {
		t.Fatalf("csv row = %q, %v", note, err)
	}
	if err := c.QueryRow(ctxT(t, 10*time.Second), "SELECT note FROM copy_t WHERE id = 1500").Scan(&note); err != nil || note != "text\trow 1500" {
		t.Fatalf("text row = %q, %v", note, err)
	}
	// A bad row fails the whole COPY on every shard.
	_, err = pc.CopyFrom(ctxT(t, 30*time.Second), strings.NewReader("5001\tok\nnot-a-number\tbad\n"), "COPY copy_t FROM STDIN")
	if err == nil {
		t.Fatal("COPY with a bad key succeeded")
	}
	if n := queryInt(t, c, "SELECT count(*) FROM copy_t WHERE id = 5001"); n != 0 {
		t.Fatal("row of a failed COPY landed")
	}
	// COPY TO fans out.
	var out strings.Builder
	if _, err := pc.CopyTo(ctxT(t, 30*time.Second), &out, "COPY copy_t TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(out.String(), "\n"); lines < 3000 {
		t.Fatalf("COPY TO returned %d lines, want >= 3000", lines)
	}
	_ = context.Background
	_ = pgconn.CommandTag{}
}
