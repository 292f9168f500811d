package rebalance

// PostgreSQL-side mechanics of moving hash slots between two nodes online
// with PostgreSQL's own logical replication:
//
//	Prepare          bookkeeping tables, visibility policies, hidden slots on
//	                 the target, replica identity and publication on the source
//	StartCopy        subscription on the target (initial COPY + streaming)
//	CopyProgress     until Ready
//	WaitCaughtUp     marker round trip once writes to the slots are paused
//	TakeSnapshot     target state at cutover, for Verify
//	Flip             hide the slots on the source, show them on the target
//	StopReplication  drop subscription, slots, publication
//	Verify           counts and checksums per slot
//	Cleanup          delete the moved rows from the source, undo Prepare
//
// Rollback undoes everything before Flip; Unflip undoes Flip. Every step is
// idempotent: after a crash anywhere, re-running it finishes the job.
//
// Visibility rests on row-level security: a node never shows the
// application rows of slots listed in its shardproxy.hidden_slots (the
// policy shardproxy_visible), so copies on the target (before Flip) and
// moved rows left on the source (after Flip) are invisible to the app
// role. Superusers bypass row-level security, so the apply worker,
// verification and cleanup see every row.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/shard"
)

// Node is a shard primary, reached with a superuser DSN.
type Node struct {
	Name, DSN string
}

// Table is a sharded table. Name may be schema-qualified ("s.t"); the
// schema defaults to public.
type Table struct {
	Name, Key string
	Type      shard.KeyType
}

// Move moves Slots (of SlotCount) of Tables from Source to Target. ID
// ([a-z0-9_]{1,40}) names every object the move creates: publication,
// subscription and replication slot shardproxy_<ID>, marker table
// shardproxy.marker_<ID>.
type Move struct {
	ID             string
	Source, Target Node
	Tables         []Table
	Slots          []int
	SlotCount      int
}

// Prepare readies both nodes for the copy. On the target: the shardproxy
// schema, the slots hidden (for this move) with the visibility policy on
// every table, leftover rows of the slots from an earlier attempt deleted
// (unless the subscription already exists), the marker table. On the
// source: the shardproxy schema, the (idle) visibility policy Flip will
// need, REPLICA IDENTITY FULL where the key is not covered by the replica
// identity (the original is recorded), the marker table and the
// publication with row filters. It refuses after Flip (while the source
// hides the move's slots); after Cleanup nothing on the nodes tells the
// move happened, so the caller must not go back to Prepare then.
func Prepare(ctx context.Context, mv Move) error {
	if err := pgCheckMove(mv); err != nil {
		return err
	}
	// After Flip the target's rows of the slots are the real ones: Prepare
	// would delete them as leftovers.
	err := pgRefuseFlipped(ctx, mv, "Prepare refused")
	if err != nil {
		return err
	}
	err = pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error {
		if err := pgEnsureSchema(ctx, conn); err != nil {
			return err
		}
		if err := pgCheckTables(ctx, conn, mv.Tables); err != nil {
			return fmt.Errorf("%w (copy the schema first)", err)
		}
		if err := pgEnsureMarker(ctx, conn, mv.ID); err != nil {
			return err
		}
		if err := pgHideSlots(ctx, conn, mv); err != nil {
			return err
		}
		for _, t := range mv.Tables {
			if err := pgEnsurePolicy(ctx, conn, t, mv.SlotCount); err != nil {
				return fmt.Errorf("policy on %s: %w", t.Name, err)
			}
		}
		subOID, err := pgSubscriptionOID(ctx, conn, mv.ID)
		if err != nil || subOID != 0 {
			// Once the subscription exists the rows there are the copy.
			return err
		}
		for _, t := range mv.Tables {
			if _, err := pgDeleteSlots(ctx, conn, t, mv.Slots, mv.SlotCount, 10000, nil); err != nil {
				return fmt.Errorf("delete leftovers of %s: %w", t.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error {
		if err := pgEnsureSchema(ctx, conn); err != nil {
			return err
		}
		if err := pgCheckTables(ctx, conn, mv.Tables); err != nil {
			return err
		}
		if err := pgEnsureMarker(ctx, conn, mv.ID); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (1, 0) ON CONFLICT (id) DO NOTHING", pgMarkerIdent(mv.ID))); err != nil {
			return err
		}
		for _, t := range mv.Tables {
			if err := pgEnsurePolicy(ctx, conn, t, mv.SlotCount); err != nil {
				return fmt.Errorf("policy on %s: %w", t.Name, err)
			}
			if err := pgEnsureReplicaIdentity(ctx, conn, mv.ID, t); err != nil {
				return fmt.Errorf("replica identity of %s: %w", t.Name, err)
			}
		}
		return pgEnsurePublication(ctx, conn, mv)
	})
}

// pgCheckTables fails unless every table exists and has its key column.
func pgCheckTables(ctx context.Context, conn *pgx.Conn, tables []Table) error {
	for _, t := range tables {
		var ok bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_attribute
			WHERE attrelid = to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped)`,
			pgTableIdent(t.Name), t.Key).Scan(&ok)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("table %s with column %s does not exist", t.Name, t.Key)
		}
	}
	return nil
}

func pgEnsureMarker(ctx context.Context, conn *pgx.Conn, moveID string) error {
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgMarkerIdent(moveID)).Scan(&ok); err != nil || ok {
		return err
	}
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (id int PRIMARY KEY, seq bigint NOT NULL)", pgMarkerIdent(moveID)))
		return err
	})
}

func pgDropMarker(ctx context.Context, conn *pgx.Conn, moveID string) error {
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgMarkerIdent(moveID)).Scan(&ok); err != nil || !ok {
		return err
	}
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+pgMarkerIdent(moveID))
		return err
	})
}

// pgHideSlots adds this move's hidden_slots rows on a node; a slot hidden
// by another move is an error.
func pgHideSlots(ctx context.Context, conn *pgx.Conn, mv Move) error {
	tbls := make([]string, len(mv.Tables))
	for i, t := range mv.Tables {
		tbls[i] = pgTableKey(t.Name)
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO shardproxy.hidden_slots (tbl, slot, move_id)
			SELECT t, s, $3 FROM unnest($1::text[]) t, unnest($2::int[]) s
			ON CONFLICT (tbl, slot) DO NOTHING`, tbls, mv.Slots, mv.ID)
		if err != nil {
			return err
		}
		var tbl, other string
		var slot int
		err = tx.QueryRow(ctx, `SELECT tbl, slot, move_id FROM shardproxy.hidden_slots
			WHERE tbl = ANY($1) AND slot = ANY($2) AND move_id <> $3 LIMIT 1`, tbls, mv.Slots, mv.ID).Scan(&tbl, &slot, &other)
		if err == nil {
			return fmt.Errorf("slot %d of %s is hidden by move %s", slot, tbl, other)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
}

// pgUnhideSlots removes this move's hidden_slots rows on a node.
func pgUnhideSlots(ctx context.Context, conn *pgx.Conn, moveID string) error {
	_, err := conn.Exec(ctx, "DELETE FROM shardproxy.hidden_slots WHERE move_id = $1", moveID)
	return err
}

// pgHiddenSlots lists the slots of t this move hides on a node.
func pgHiddenSlots(ctx context.Context, conn *pgx.Conn, moveID string, t Table) ([]int, error) {
	rows, err := conn.Query(ctx, "SELECT slot FROM shardproxy.hidden_slots WHERE tbl = $1 AND move_id = $2 ORDER BY slot",
		pgTableKey(t.Name), moveID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int])
}

func pgHasHidden(ctx context.Context, conn *pgx.Conn, moveID string) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM shardproxy.hidden_slots WHERE move_id = $1)", moveID).Scan(&ok)
	return ok, err
}

// pgReplicaIdentity returns a table's replica identity encoded as 'd',
// 'n', 'f' or 'i:<quoted index name>', and whether it covers col.
func pgReplicaIdentity(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, t Table) (enc string, covers bool, err error) {
	var ident string
	var idx *string
	err = q.QueryRow(ctx, `SELECT c.relreplident::text,
		(SELECT quote_ident(ic.relname) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
			WHERE i.indrelid = c.oid AND i.indisreplident),
		c.relreplident = 'f' OR EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid
			AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
			AND a.attnum = ANY (i.indkey))
		FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2
		WHERE c.oid = $1::regclass`, pgTableIdent(t.Name), t.Key).Scan(&ident, &idx, &covers)
	if err != nil {
		return "", false, err
	}
	if ident == "i" && idx != nil {
		ident = "i:" + *idx
	}
	return ident, covers, nil
}

// pgEnsureReplicaIdentity records t's replica identity for this move and
// sets it to FULL when it does not cover the key column: PostgreSQL 15 row
// filters of a publication that publishes updates and deletes may only use
// replica identity columns (and a table without one cannot be updated at
// all once published). When another move already changed it, its recorded
// original is ours too, so the last move to finish restores it.
func pgEnsureReplicaIdentity(ctx context.Context, conn *pgx.Conn, moveID string, t Table) error {
	key := pgTableKey(t.Name)
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		cur, covers, err := pgReplicaIdentity(ctx, tx, t)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO shardproxy.move_replica_identity (move_id, tbl, original)
			SELECT $1, $2, coalesce((SELECT original FROM shardproxy.move_replica_identity WHERE tbl = $2 AND move_id <> $1 LIMIT 1), $3)
			ON CONFLICT (move_id, tbl) DO NOTHING`, moveID, key, cur)
		if err != nil || covers {
			return err
		}
		_, err = tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", pgTableIdent(t.Name)))
		return err
	})
}

// pgRestoreReplicaIdentity undoes pgEnsureReplicaIdentity once no other
// move needs the table's changed identity.
func pgRestoreReplicaIdentity(ctx context.Context, conn *pgx.Conn, moveID string, t Table) error {
	key := pgTableKey(t.Name)
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		var orig string
		err := tx.QueryRow(ctx, "DELETE FROM shardproxy.move_replica_identity WHERE move_id = $1 AND tbl = $2 RETURNING original",
			moveID, key).Scan(&orig)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var others bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT FROM shardproxy.move_replica_identity WHERE tbl = $1)", key).Scan(&others); err != nil || others {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgTableIdent(t.Name)).Scan(&exists); err != nil || !exists {
			return err
		}
		cur, _, err := pgReplicaIdentity(ctx, tx, t)
		if err != nil || cur == orig {
			return err
		}
		var clause string
		switch {
		case orig == "d":
			clause = "DEFAULT"
		case orig == "n":
			clause = "NOTHING"
		case orig == "f":
			clause = "FULL"
		case strings.HasPrefix(orig, "i:"):
			clause = "USING INDEX " + orig[2:]
		default:
			return fmt.Errorf("unknown recorded replica identity %q", orig)
		}
		_, err = tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY %s", pgTableIdent(t.Name), clause))
		return err
	})
}

// pgEnsurePublication creates the move's publication: each table filtered
// to the moving slots, plus the marker table unfiltered. TRUNCATE is not
// published: it would empty the target's whole table.
func pgEnsurePublication(ctx context.Context, conn *pgx.Conn, mv Move) error {
	name := pgObjName(mv.ID)
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", name).Scan(&ok); err != nil || ok {
		return err
	}
	var parts []string
	for _, t := range mv.Tables {
		parts = append(parts, fmt.Sprintf("%s WHERE (%s IN (%s))", pgTableIdent(t.Name), pgSlotExpr(t, mv.SlotCount, ""), pgIntList(mv.Slots)))
	}
	parts = append(parts, pgMarkerIdent(mv.ID))
	sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert, update, delete')",
		pgx.Identifier{name}.Sanitize(), strings.Join(parts, ", "))
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", name).Scan(&ok); err != nil || ok {
			return err
		}
		_, err := tx.Exec(ctx, sql)
		return err
	})
}

// pgSubscriptionOID returns the oid of the move's subscription on the
// connected node, or 0.
func pgSubscriptionOID(ctx context.Context, conn *pgx.Conn, moveID string) (uint32, error) {
	var oid uint32
	err := conn.QueryRow(ctx, "SELECT oid FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
		pgObjName(moveID)).Scan(&oid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return oid, err
}

func pgSystemID(ctx context.Context, conn *pgx.Conn) (string, error) {
	var id string
	err := conn.QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&id)
	return id, err
}

// pgRecordSubscription stores the subscription's oid and the subscriber's
// system identifier on the source: they make up the names of the
// tablesync slots (pg_<suboid>_sync_<relid>_<sysid>), which we must be
// able to find after the subscription is gone.
func pgRecordSubscription(ctx context.Context, source *pgx.Conn, moveID string, suboid uint32, sysid string) error {
	_, err := source.Exec(ctx, `INSERT INTO shardproxy.move_subscription (move_id, suboid, subscriber_sysid) VALUES ($1, $2, $3)
		ON CONFLICT (move_id) DO UPDATE SET suboid = excluded.suboid, subscriber_sysid = excluded.subscriber_sysid`, moveID, suboid, sysid)
	return err
}

// pgSubConninfo is the subscription's CONNECTION: the source DSN with a
// connect_timeout added when it has none.
func pgSubConninfo(dsn string) string {
	if strings.Contains(dsn, "connect_timeout") {
		return dsn
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "connect_timeout=" + pgSubConnectTimeout
	}
	return dsn + " connect_timeout=" + pgSubConnectTimeout
}

// StartCopy creates the subscription on the target (initial copy of the
// filtered tables, then streaming). A no-op when it exists.
func StartCopy(ctx context.Context, mv Move) error {
	if err := pgCheckMove(mv); err != nil {
		return err
	}
	name := pgObjName(mv.ID)
	target, err := pgConnect(ctx, mv.Target.DSN)
	if err != nil {
		return fmt.Errorf("%s: %w", mv.Target.Name, err)
	}
	defer pgClose(target)
	source, err := pgConnect(ctx, mv.Source.DSN)
	if err != nil {
		return fmt.Errorf("%s: %w", mv.Source.Name, err)
	}
	defer pgClose(source)

	oid, err := pgSubscriptionOID(ctx, target, mv.ID)
	if err != nil {
		return fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
	}
	sysid, err := pgSystemID(ctx, target)
	if err != nil {
		return fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
	}
	if oid == 0 {
		// A CREATE SUBSCRIPTION interrupted after it made the slot on the
		// source but before it committed leaves the slot behind.
		if err := pgDropSlots(ctx, source, "slot_name = $1", name); err != nil {
			return fmt.Errorf("rebalance: %s: drop stale slot: %w", mv.Source.Name, err)
		}
		sql := fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (copy_data = true, create_slot = true, slot_name = %s, enabled = true)",
			pgx.Identifier{name}.Sanitize(), pgLiteral(pgSubConninfo(mv.Source.DSN)), pgx.Identifier{name}.Sanitize(), pgLiteral(name))
		if err := pgExec(ctx, target, sql); err != nil {
			if pgSQLState(err) != "42710" { // duplicate_object: a concurrent run won
				return fmt.Errorf("rebalance: %s: create subscription: %w", mv.Target.Name, err)
			}
		}
		if oid, err = pgSubscriptionOID(ctx, target, mv.ID); err != nil {
			return fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
		}
	}
	if err := pgRecordSubscription(ctx, source, mv.ID, oid, sysid); err != nil {
		return fmt.Errorf("rebalance: %s: %w", mv.Source.Name, err)
	}
	return nil
}

// pgDropSlots drops the replication slots matching where (over
// pg_replication_slots, with args), terminating a walsender still using
// one first.
func pgDropSlots(ctx context.Context, conn *pgx.Conn, where string, args ...any) error {
	for attempt := 0; ; attempt++ {
		rows, err := conn.Query(ctx, "SELECT slot_name::text, coalesce(active_pid, 0) FROM pg_replication_slots WHERE "+where, args...)
		if err != nil {
			return err
		}
		type slot struct {
			name string
			pid  int
		}
		slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
			var s slot
			err := r.Scan(&s.name, &s.pid)
			return s, err
		})
		if err != nil {
			return err
		}
		if len(slots) == 0 {
			return nil
		}
		var lastErr error
		for _, s := range slots {
			if s.pid != 0 {
				if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", s.pid); err != nil {
					lastErr = err
					continue
				}
			}
			_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", s.name)
			if err != nil {
				lastErr = err
			}
		}
		if lastErr == nil {
			continue // check again
		}
		if attempt >= 20 {
			return lastErr
		}
		if err := pgSleep(ctx, 100*time.Millisecond); err != nil {
			return errors.Join(lastErr, err)
		}
	}
}

// StopReplication drops the subscription on the target (with its
// replication slot and the tablesync slots on the source), the
// publication, and any replication slot of the move left on the source.
// It does what it can on each node and reports every failure; after it
// succeeds no object named shardproxy_<ID> exists on either node.
func StopReplication(ctx context.Context, mv Move) error {
	if err := pgCheckMove(mv); err != nil {
		return err
	}
	var subOID uint32
	var sysid string
	targetErr := pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error {
		var err error
		if subOID, err = pgSubscriptionOID(ctx, conn, mv.ID); err != nil {
			return err
		}
		if sysid, err = pgSystemID(ctx, conn); err != nil || subOID == 0 {
			return err
		}
		return pgDropSubscription(ctx, conn, mv.ID)
	})
	sourceErr := pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{pgObjName(mv.ID)}.Sanitize()); err != nil {
			return err
		}
		if targetErr == nil {
			// The subscription is gone: nothing may use our slots any more.
			if err := pgDropSlots(ctx, conn, "slot_name = $1", pgObjName(mv.ID)); err != nil {
				return err
			}
		}
		ok, err := pgSchemaExists(ctx, conn)
		if err != nil || !ok {
			return err
		}
		if subOID != 0 {
			if err := pgRecordSubscription(ctx, conn, mv.ID, subOID, sysid); err != nil {
				return err
			}
		}
		if targetErr != nil {
			return nil
		}
		var oid uint32
		var sys string
		err = conn.QueryRow(ctx, "SELECT suboid, subscriber_sysid FROM shardproxy.move_subscription WHERE move_id = $1", mv.ID).Scan(&oid, &sys)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := pgDropSlots(ctx, conn, "slot_name LIKE $1", fmt.Sprintf("pg\\_%d\\_sync\\_%%\\_%s", oid, sys)); err != nil {
			return err
		}
		_, err = conn.Exec(ctx, "DELETE FROM shardproxy.move_subscription WHERE move_id = $1", mv.ID)
		return err
	})
	return errors.Join(targetErr, sourceErr)
}

// pgDropSubscription drops the move's subscription. DROP SUBSCRIPTION
// also drops its slots on the source; when it cannot (source down), the
// subscription is detached from its slot and dropped, and the caller drops
// the slots on the source.
func pgDropSubscription(ctx context.Context, conn *pgx.Conn, moveID string) error {
	ident := pgx.Identifier{pgObjName(moveID)}.Sanitize()
	dropCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	// Separate statements: in one multi-statement query DROP SUBSCRIPTION
	// would run in an implicit transaction block, which it refuses.
	err := pgExec(dropCtx, conn, "SET lock_timeout = '10s'")
	if err == nil {
		err = pgExec(dropCtx, conn, "DROP SUBSCRIPTION IF EXISTS "+ident)
	}
	cancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	if conn.IsClosed() {
		// A canceled statement closes the pgx connection.
		return fmt.Errorf("drop subscription: %w", err)
	}
	if oid, err2 := pgSubscriptionOID(ctx, conn, moveID); err2 != nil || oid == 0 {
		return err2
	}
	err2 := pgExec(ctx, conn, "ALTER SUBSCRIPTION "+ident+" DISABLE")
	if err2 == nil {
		err2 = pgExec(ctx, conn, "ALTER SUBSCRIPTION "+ident+" SET (slot_name = NONE)")
	}
	if err2 == nil {
		err2 = pgExec(ctx, conn, "DROP SUBSCRIPTION IF EXISTS "+ident)
	}
	if err2 != nil {
		return fmt.Errorf("drop subscription: %w (after: %v)", err2, err)
	}
	return nil
}

// Flip switches visibility at cutover: the slots become hidden on the
// source, then visible on the target (in that order, so no read sees a row
// twice). Plain DML on shardproxy.hidden_slots: no DDL, no table lock.
func Flip(ctx context.Context, mv Move) error {
	if err := pgCheckMove(mv); err != nil {
		return err
	}
	if err := pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error { return pgHideSlots(ctx, conn, mv) }); err != nil {
		return err
	}
	return pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error { return pgUnhideSlots(ctx, conn, mv.ID) })
}

// Unflip is the inverse of Flip: hide on the target, then show on the
// source.
func Unflip(ctx context.Context, mv Move) error {
	if err := pgCheckMove(mv); err != nil {
		return err
	}
	if err := pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error { return pgHideSlots(ctx, conn, mv) }); err != nil {
		return err
	}
	return pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error { return pgUnhideSlots(ctx, conn, mv.ID) })
}

// pgDeleteSlots deletes the rows of t in slots from a node in batches of
// about batch rows, walking the table by block ranges (TID range scans,
// so the whole delete reads the table once), then sweeping what is left
// with ctid IN (... LIMIT batch). Returns the number of rows deleted.
func pgDeleteSlots(ctx context.Context, conn *pgx.Conn, t Table, slots []int, slotCount, batch int, onDeleted func(int64)) (int64, error) {
	if len(slots) == 0 {
		return 0, nil
	}
	if batch <= 0 {
		batch = 10000
	}
	ident := pgTableIdent(t.Name)
	filter := fmt.Sprintf("%s IN (%s)", pgSlotExpr(t, slotCount, ""), pgIntList(slots))
	var pages int64
	var tuples float64
	var relpages int32
	err := conn.QueryRow(ctx, `SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, c.reltuples::float8, c.relpages
		FROM pg_class c WHERE c.oid = $1::regclass`, ident).Scan(&pages, &tuples, &relpages)
	if err != nil {
		return 0, err
	}
	var total int64
	report := func(n int64) {
		total += n
		if n > 0 && onDeleted != nil {
			onDeleted(n)
		}
	}
	// Rows per block, from the statistics when there are any.
	perBlock := 50.0
	if relpages > 0 && tuples > 0 {
		perBlock = tuples / float64(relpages)
	}
	fraction := float64(len(slots)) / float64(slotCount)
	step := int64(float64(batch) / (perBlock * fraction))
	if step < 1 {
		step = 1
	}
	for from := int64(0); from < pages; from += step {
		tag, err := conn.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE ctid >= '(%d,0)'::tid AND ctid < '(%d,0)'::tid AND %s",
			ident, from, from+step, filter))
		if err != nil {
			return total, err
		}
		report(tag.RowsAffected())
	}
	for {
		tag, err := conn.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %s WHERE %s LIMIT %d))",
			ident, ident, filter, batch))
		if err != nil {
			return total, err
		}
		report(tag.RowsAffected())
		if tag.RowsAffected() == 0 {
			return total, nil
		}
	}
}

// Cleanup deletes the moved rows from the source in batches (calling
// onDeleted with each batch's count), then removes the move's hidden slots
// on the source, the visibility policies no longer needed on either node,
// the recorded replica identity changes and the marker tables. It refuses
// to run while the subscription exists, or before Flip. Only slots this
// move hides on the source are deleted, so a Cleanup that lost a race with
// Unflip deletes nothing.
func Cleanup(ctx context.Context, mv Move, batch int, onDeleted func(n int64)) error {
	if err := pgCheckMove(mv); err != nil {
		return err
	}
	target, err := pgConnect(ctx, mv.Target.DSN)
	if err != nil {
		return fmt.Errorf("%s: %w", mv.Target.Name, err)
	}
	defer pgClose(target)
	source, err := pgConnect(ctx, mv.Source.DSN)
	if err != nil {
		return fmt.Errorf("%s: %w", mv.Source.Name, err)
	}
	defer pgClose(source)
	if oid, err := pgSubscriptionOID(ctx, target, mv.ID); err != nil {
		return fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
	} else if oid != 0 {
		return fmt.Errorf("rebalance: move %s: subscription %s still exists on %s: call StopReplication first", mv.ID, pgObjName(mv.ID), mv.Target.Name)
	}
	srcOK, err := pgSchemaExists(ctx, source)
	if err != nil {
		return fmt.Errorf("rebalance: %s: %w", mv.Source.Name, err)
	}
	tgtOK, err := pgSchemaExists(ctx, target)
	if err != nil {
		return fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
	}
	if srcOK && tgtOK {
		srcHidden, err := pgHasHidden(ctx, source, mv.ID)
		if err != nil {
			return fmt.Errorf("rebalance: %s: %w", mv.Source.Name, err)
		}
		tgtHidden, err := pgHasHidden(ctx, target, mv.ID)
		if err != nil {
			return fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err)
		}
		if tgtHidden && !srcHidden {
			return fmt.Errorf("rebalance: move %s is not flipped (the target still hides its slots): refusing to delete from the source", mv.ID)
		}
	}
	if srcOK {
		for _, t := range mv.Tables {
			slots, err := pgHiddenSlots(ctx, source, mv.ID, t)
			if err != nil {
				return fmt.Errorf("rebalance: %s: %w", mv.Source.Name, err)
			}
			if _, err := pgDeleteSlots(ctx, source, t, slots, mv.SlotCount, batch, onDeleted); err != nil {
				return fmt.Errorf("rebalance: %s: delete moved rows of %s: %w", mv.Source.Name, t.Name, err)
			}
			if _, err := source.Exec(ctx, "DELETE FROM shardproxy.hidden_slots WHERE tbl = $1 AND move_id = $2", pgTableKey(t.Name), mv.ID); err != nil {
				return fmt.Errorf("rebalance: %s: %w", mv.Source.Name, err)
			}
		}
	}
	var errs []error
	if err := pgUndoPrepare(ctx, source, mv); err != nil {
		errs = append(errs, fmt.Errorf("rebalance: %s: %w", mv.Source.Name, err))
	}
	if err := pgUndoPrepare(ctx, target, mv); err != nil {
		errs = append(errs, fmt.Errorf("rebalance: %s: %w", mv.Target.Name, err))
	}
	return errors.Join(errs...)
}

// pgUndoPrepare removes from one node what Prepare made for the move,
// once no rows are hidden by it: policies no longer needed, replica
// identity changes, the marker table, the subscription record.
func pgUndoPrepare(ctx context.Context, conn *pgx.Conn, mv Move) error {
	ok, err := pgSchemaExists(ctx, conn)
	if err != nil || !ok {
		return err
	}
	if err := pgUnhideSlots(ctx, conn, mv.ID); err != nil {
		return err
	}
	for _, t := range mv.Tables {
		if err := pgDropPolicyIfUnused(ctx, conn, t); err != nil {
			return fmt.Errorf("policy on %s: %w", t.Name, err)
		}
		if err := pgRestoreReplicaIdentity(ctx, conn, mv.ID, t); err != nil {
			return fmt.Errorf("replica identity of %s: %w", t.Name, err)
		}
	}
	if err := pgDropMarker(ctx, conn, mv.ID); err != nil {
		return err
	}
	return nil
}

// Rollback abandons a move before Flip: StopReplication, then the copies
// of the slots on the target are deleted (only slots the target still
// hides for this move, so a target that already serves them loses
// nothing), and everything Prepare made is undone on both nodes. It
// refuses after Flip (call Unflip first).
func Rollback(ctx context.Context, mv Move) error {
	if err := pgCheckMove(mv); err != nil {
		return err
	}
	err := pgRefuseFlipped(ctx, mv, "Unflip first")
	if err != nil {
		return err
	}
	if err := StopReplication(ctx, mv); err != nil {
		return err
	}
	err = pgWithNode(ctx, mv.Target, func(conn *pgx.Conn) error {
		ok, err := pgSchemaExists(ctx, conn)
		if err != nil || !ok {
			return err
		}
		for _, t := range mv.Tables {
			slots, err := pgHiddenSlots(ctx, conn, mv.ID, t)
			if err != nil {
				return err
			}
			if _, err := pgDeleteSlots(ctx, conn, t, slots, mv.SlotCount, 10000, nil); err != nil {
				return fmt.Errorf("delete copied rows of %s: %w", t.Name, err)
			}
			if _, err := conn.Exec(ctx, "DELETE FROM shardproxy.hidden_slots WHERE tbl = $1 AND move_id = $2", pgTableKey(t.Name), mv.ID); err != nil {
				return err
			}
		}
		return pgUndoPrepare(ctx, conn, mv)
	})
	if err != nil {
		return err
	}
	return pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error {
		return pgUndoPrepare(ctx, conn, mv)
	})
}

// pgRefuseFlipped fails when the source hides the move's slots (after
// Flip), where re-preparing or rolling back would delete the rows the
// target now serves.
func pgRefuseFlipped(ctx context.Context, mv Move, what string) error {
	return pgWithNode(ctx, mv.Source, func(conn *pgx.Conn) error {
		ok, err := pgSchemaExists(ctx, conn)
		if err != nil || !ok {
			return err
		}
		flipped, err := pgHasHidden(ctx, conn, mv.ID)
		if err == nil && flipped {
			err = fmt.Errorf("move %s is flipped (the source hides its slots): %s", mv.ID, what)
		}
		return err
	})
}
