package rebalance

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
)

// Progress is the state of a move's initial copy and streaming.
type Progress struct {
	// TablesTotal counts the moved tables (not the marker table);
	// TablesSynced those whose initial copy is done (states s and r).
	TablesTotal, TablesSynced int
	// RowsCopied and BytesCopied: for tables being copied, what
	// pg_stat_progress_copy reports for their tablesync worker; for tables
	// already copied, the source's estimate (reltuples and relation size
	// times the share of moving slots).
	RowsCopied, BytesCopied int64
	// LagBytes is WAL on the source not yet confirmed by the subscription.
	LagBytes int64
	// Ready: every table, the marker included, is in state r (copied and
	// streaming through the apply worker).
	Ready bool
}

// CopyProgress reports the copy's progress. It fails when the subscription
// does not exist.
func CopyProgress(ctx context.Context, mv Move) (Progress, error) {
	var p Progress
	if err := pgCheckMove(mv); err != nil {
		return p, err
	}
	synced := map[string]bool{} // table key -> copy finished
	err := pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error {
		oid, err := pgSubscriptionOID(ctx, conn, mv.ID)
		if err != nil {
			return err
		}
		if oid == 0 {
			return fmt.Errorf("subscription %s does not exist", pgObjName(mv.ID))
		}
		marker := pgSchema + "." + pgMarkerName(mv.ID)
		all := true
		rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname, sr.srsubstate::text,
				coalesce(pc.tuples_processed, 0), coalesce(pc.bytes_processed, 0)
			FROM pg_subscription_rel sr
			JOIN pg_class c ON c.oid = sr.srrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_stat_subscription ss ON ss.subid = sr.srsubid AND ss.relid = sr.srrelid
			LEFT JOIN pg_stat_progress_copy pc ON pc.pid = ss.pid AND pc.relid = sr.srrelid
			WHERE sr.srsubid = $1`, oid)
		if err != nil {
			return err
		}
		var rel, state string
		var tuples, bytes int64
		_, err = pgx.ForEachRow(rows, []any{&rel, &state, &tuples, &bytes}, func() error {
			if state != "r" {
				all = false
			}
			if rel == marker {
				return nil
			}
			p.TablesTotal++
			if state == "r" || state == "s" {
				p.TablesSynced++
				synced[rel] = true
			} else {
				p.RowsCopied += tuples
				p.BytesCopied += bytes
			}
			return nil
		})
		if err != nil {
			return err
		}
		p.Ready = all && p.TablesTotal > 0
		return nil
	})
	if err != nil {
		return p, err
	}
	err = pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error {
		var lag *int64
		err := conn.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
			FROM pg_replication_slots WHERE slot_name = $1`, pgObjName(mv.ID)).Scan(&lag)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if lag != nil {
			p.LagBytes = *lag
		}
		share := float64(len(mv.Slots)) / float64(mv.SlotCount)
		for _, t := range mv.Tables {
			if !synced[pgTableKey(t.Name)] {
				continue
			}
			var tuples float64
			var size int64
			if err := conn.QueryRow(ctx, "SELECT greatest(reltuples, 0)::float8, pg_relation_size(oid) FROM pg_class WHERE oid = $1::regclass",
				pgTableIdent(t.Name)).Scan(&tuples, &size); err != nil {
				return err
			}
			p.RowsCopied += int64(tuples * share)
			p.BytesCopied += int64(float64(size) * share)
		}
		return nil
	})
	return p, err
}

// SlotStats is the size of one slot.
type SlotStats struct {
	Rows, Bytes int64
}

// Estimate counts the rows and bytes (sum of pg_column_size of the rows)
// of every slot of tables on n, exactly: one GROUP BY per table.
func Estimate(ctx context.Context, n Node, tables []Table, slotCount int) (map[int]SlotStats, error) {
	if slotCount <= 0 {
		return nil, errors.New("rebalance: Estimate: slotCount must be positive")
	}
	out := map[int]SlotStats{}
	err := pgWithNode(ctx, n, func(conn *pgx.Conn) error {
		for _, t := range tables {
			rows, err := conn.Query(ctx, fmt.Sprintf("SELECT %s AS slot, count(*), coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM %s t GROUP BY 1",
				pgSlotExpr(t, slotCount, "t"), pgTableIdent(t.Name)))
			if err != nil {
				return fmt.Errorf("%s: %w", t.Name, err)
			}
			var slot int
			var cnt, bytes int64
			_, err = pgx.ForEachRow(rows, []any{&slot, &cnt, &bytes}, func() error {
				s := out[slot]
				s.Rows += cnt
				s.Bytes += bytes
				out[slot] = s
				return nil
			})
			if err != nil {
				return fmt.Errorf("%s: %w", t.Name, err)
			}
		}
		return nil
	})
	return out, err
}

// WaitCaughtUp bumps the move's marker on the source and waits until the
// target has applied it: the apply worker applies transactions in commit
// order, so every transaction committed on the source before the marker
// is then on the target. It needs every table in state r (see
// CopyProgress.Ready) and returns the round trip's duration.
func WaitCaughtUp(ctx context.Context, mv Move) (time.Duration, error) {
	if err := pgCheckMove(mv); err != nil {
		return 0, err
	}
	target, err := pgConnect(ctx, mv.Target.DSN)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", mv.Target.Name, err)
	}
	defer pgClose(target)
	oid, err := pgSubscriptionOID(ctx, target, mv.ID)
	if err != nil {
		return 0, fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
	}
	if oid == 0 {
		return 0, fmt.Errorf("rebalance: move %s: no subscription on %s", mv.ID, mv.Target.Name)
	}
	var notReady int
	if err := target.QueryRow(ctx, "SELECT count(*) FROM pg_subscription_rel WHERE srsubid = $1 AND srsubstate <> 'r'", oid).Scan(&notReady); err != nil {
		return 0, fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
	}
	if notReady > 0 {
		return 0, fmt.Errorf("rebalance: move %s: %d tables not ready yet", mv.ID, notReady)
	}
	start := time.Now()
	var seq int64
	err = pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, fmt.Sprintf("INSERT INTO %[1]s AS m VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = m.seq + 1 RETURNING seq",
			pgMarkerIdent(mv.ID))).Scan(&seq)
	})
	if err != nil {
		return 0, err
	}
	q := fmt.Sprintf("SELECT coalesce((SELECT seq FROM %s WHERE id = 1), -1)", pgMarkerIdent(mv.ID))
	wait := time.Millisecond
	for {
		var got int64
		if err := target.QueryRow(ctx, q).Scan(&got); err != nil {
			return time.Since(start), fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
		}
		if got >= seq {
			return time.Since(start), nil
		}
		if err := pgSleep(ctx, wait); err != nil {
			return time.Since(start), fmt.Errorf("rebalance: move %s: waiting for marker %d on %s: %w", mv.ID, seq, mv.Target.Name, err)
		}
		if wait < 20*time.Millisecond {
			wait *= 2
		}
	}
}

// Snapshot is a REPEATABLE READ transaction held open on a move's target,
// so Verify can compare the source with the target as it was at cutover
// even while the target takes new writes.
type Snapshot struct {
	node Node
	conn *pgx.Conn
	tx   pgx.Tx
}

// TakeSnapshot opens the snapshot on the target. Close it when done: it
// holds back vacuum on the target.
func TakeSnapshot(ctx context.Context, mv Move) (*Snapshot, error) {
	conn, err := pgConnect(ctx, mv.Target.DSN)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", mv.Target.Name, err)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err == nil {
		// The snapshot is taken by the first statement, not by BEGIN.
		_, err = tx.Exec(ctx, "SELECT 1")
	}
	if err != nil {
		pgClose(conn)
		return nil, fmt.Errorf("rebalance: %s: snapshot: %w", mv.Target.Name, err)
	}
	return &Snapshot{node: mv.Target, conn: conn, tx: tx}, nil
}

// Close ends the snapshot's transaction and connection.
func (s *Snapshot) Close() {
	if s == nil || s.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.tx.Rollback(ctx)
	pgClose(s.conn)
	s.conn = nil
}

// SlotCheck compares one slot of one table on both nodes.
type SlotCheck struct {
	Table                  string
	Slot                   int
	SourceRows, TargetRows int64
	SourceSum, TargetSum   string
	OK                     bool
}

type pgSlotSum struct {
	rows int64
	sum  string
}

// pgSlotSums returns count(*) and an order-independent checksum (the sum
// of a 64-bit hash of each row's text) per slot of t in slots.
func pgSlotSums(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, t Table, slots []int, slotCount int) (map[int]pgSlotSum, error) {
	expr := pgSlotExpr(t, slotCount, "t")
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT %s AS slot, count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text
		FROM %s t WHERE %s IN (%s) GROUP BY 1`, expr, pgTableIdent(t.Name), expr, pgIntList(slots)))
	if err != nil {
		return nil, err
	}
	out := map[int]pgSlotSum{}
	var slot int
	var s pgSlotSum
	_, err = pgx.ForEachRow(rows, []any{&slot, &s.rows, &s.sum}, func() error {
		out[slot] = s
		return nil
	})
	return out, err
}

// Verify compares, per table and slot of the move, the row count and
// checksum on the source (live: after Flip its moved rows no longer
// change) with the target's inside snap (live when snap is nil). The
// checksum hashes each row's text form, so both tables must have the same
// columns in the same order (CopySchema makes them so).
func Verify(ctx context.Context, mv Move, snap *Snapshot) ([]SlotCheck, error) {
	if err := pgCheckMove(mv); err != nil {
		return nil, err
	}
	src := map[string]map[int]pgSlotSum{}
	err := pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error {
		for _, t := range mv.Tables {
			m, err := pgSlotSums(ctx, conn, t, mv.Slots, mv.SlotCount)
			if err != nil {
				return fmt.Errorf("%s: %w", t.Name, err)
			}
			src[t.Name] = m
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	tgt := map[string]map[int]pgSlotSum{}
	targetSide := func(q interface {
		Query(context.Context, string, ...any) (pgx.Rows, error)
	}) error {
		for _, t := range mv.Tables {
			m, err := pgSlotSums(ctx, q, t, mv.Slots, mv.SlotCount)
			if err != nil {
				return fmt.Errorf("%s: %w", t.Name, err)
			}
			tgt[t.Name] = m
		}
		return nil
	}
	if snap != nil {
		if snap.conn == nil {
			return nil, errors.New("rebalance: Verify: snapshot is closed")
		}
		if err := targetSide(snap.tx); err != nil {
			return nil, fmt.Errorf("rebalance: %s: %w", snap.node.Name, err)
		}
	} else if err := pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error { return targetSide(conn) }); err != nil {
		return nil, err
	}
	return compareSums(mv, src, tgt), nil
}

// compareSums pairs the per-table, per-slot counts and checksums of both
// sides of a move.
func compareSums(mv Move, src, tgt map[string]map[int]pgSlotSum) []SlotCheck {
	slots := append([]int(nil), mv.Slots...)
	sort.Ints(slots)
	var out []SlotCheck
	for _, t := range mv.Tables {
		for _, s := range slots {
			a, b := src[t.Name][s], tgt[t.Name][s]
			if a.sum == "" {
				a.sum = "0"
			}
			if b.sum == "" {
				b.sum = "0"
			}
			out = append(out, SlotCheck{
				Table: t.Name, Slot: s,
				SourceRows: a.rows, TargetRows: b.rows,
				SourceSum: a.sum, TargetSum: b.sum,
				OK: a.rows == b.rows && a.sum == b.sum,
			})
		}
	}
	return out
}

// Leftovers lists, in words, every object of a move still present on the
// nodes: publications, subscriptions and replication slots named
// shardproxy_*, tablesync slots of our subscriptions, marker tables,
// hidden slots, visibility policies and recorded replica identity changes.
// Empty when the nodes are clean (between moves).
func Leftovers(ctx context.Context, nodes []Node) ([]string, error) {
	var out []string
	syncPrefixes := map[string]bool{} // "pg_<oid>_sync_" patterns
	conns := make([]*pgx.Conn, len(nodes))
	defer func() {
		for _, c := range conns {
			if c != nil {
				pgClose(c)
			}
		}
	}()
	for i, n := range nodes {
		c, err := pgConnect(ctx, n.DSN)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Name, err)
		}
		conns[i] = c
	}
	strs := func(conn *pgx.Conn, sql string, args ...any) ([]string, error) {
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	}
	// Pass 1: objects by name, and the oids of our subscriptions.
	for i, n := range nodes {
		conn := conns[i]
		queries := []struct{ what, sql string }{
			{"publication", `SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'shardproxy\_%'`},
			{"subscription", `SELECT subname::text FROM pg_subscription WHERE subname LIKE 'shardproxy\_%'`},
			{"replication slot", `SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'shardproxy\_%'`},
			{"marker table", `SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = 'shardproxy' AND tablename LIKE 'marker\_%'`},
			{"visibility policy on", `SELECT schemaname || '.' || tablename FROM pg_policies WHERE policyname = 'shardproxy_visible'`},
		}
		for _, q := range queries {
			names, err := strs(conn, q.sql)
			if err != nil {
				return nil, fmt.Errorf("rebalance: %s: %w", n.Name, err)
			}
			for _, name := range names {
				out = append(out, fmt.Sprintf("%s: %s %s", n.Name, q.what, name))
			}
		}
		oids, err := strs(conn, `SELECT oid::text FROM pg_subscription WHERE subname LIKE 'shardproxy\_%'`)
		if err != nil {
			return nil, fmt.Errorf("rebalance: %s: %w", n.Name, err)
		}
		for _, o := range oids {
			syncPrefixes["pg_"+o+"_sync_"] = true
		}
		ok, err := pgSchemaExists(ctx, conn)
		if err != nil {
			return nil, fmt.Errorf("rebalance: %s: %w", n.Name, err)
		}
		if !ok {
			continue
		}
		recs, err := strs(conn, `SELECT 'hidden slots of move ' || move_id || ': ' || count(*) || ' rows' FROM shardproxy.hidden_slots GROUP BY move_id
			UNION ALL SELECT 'replica identity of ' || tbl || ' changed by move ' || move_id FROM shardproxy.move_replica_identity
			UNION ALL SELECT 'subscription record of move ' || move_id FROM shardproxy.move_subscription`)
		if err != nil {
			return nil, fmt.Errorf("rebalance: %s: %w", n.Name, err)
		}
		for _, r := range recs {
			out = append(out, n.Name+": "+r)
		}
		oids, err = strs(conn, `SELECT suboid::text FROM shardproxy.move_subscription`)
		if err != nil {
			return nil, fmt.Errorf("rebalance: %s: %w", n.Name, err)
		}
		for _, o := range oids {
			syncPrefixes["pg_"+o+"_sync_"] = true
		}
	}
	// Pass 2: tablesync slots of our subscriptions.
	for i, n := range nodes {
		slots, err := strs(conns[i], `SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'pg\_%\_sync\_%'`)
		if err != nil {
			return nil, fmt.Errorf("rebalance: %s: %w", n.Name, err)
		}
		for _, s := range slots {
			for p := range syncPrefixes {
				if len(s) > len(p) && s[:len(p)] == p {
					out = append(out, fmt.Sprintf("%s: tablesync replication slot %s", n.Name, s))
					break
				}
			}
		}
	}
	return out, nil
}
