package rebalance

// Helpers shared by the PostgreSQL-side move mechanics (pg*.go). They are
// unexported and prefixed with pg so that other files of the package
// (orchestrator, journal) do not collide with them.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/shard"
)

const (
	// pgConnectTimeout bounds establishing any connection to a node.
	pgConnectTimeout = 10 * time.Second
	// pgLockTimeout is the lock_timeout of every DDL statement: DDL on a
	// busy table queues behind running transactions, and everything
	// arriving after it queues behind the DDL, so we give up quickly and
	// retry rather than stall the application.
	pgLockTimeout = "2s"
	// pgDDLAttempts is how often a DDL transaction is retried on a lock
	// timeout or deadlock.
	pgDDLAttempts = 8
	// pgPolicy is the name of the visibility policy on sharded tables.
	pgPolicy = "shardproxy_visible"
	// pgSchema holds our bookkeeping tables on every node.
	pgSchema = "shardproxy"
	// pgSubConnectTimeout is appended to the subscription's connection
	// string when it has none, so the apply worker and DROP SUBSCRIPTION do
	// not wait on an unreachable source for the OS TCP timeout.
	pgSubConnectTimeout = "10"
)

var pgMoveIDRe = regexp.MustCompile(`^[a-z0-9_]{1,40}$`)

// pgObjName is the name of the publication, subscription and replication
// slot of a move.
func pgObjName(moveID string) string { return "shardproxy_" + moveID }

// pgMarkerName is the catch-up marker table of a move (schema shardproxy).
func pgMarkerName(moveID string) string { return "marker_" + moveID }

func pgMarkerIdent(moveID string) string {
	return pgx.Identifier{pgSchema, pgMarkerName(moveID)}.Sanitize()
}

// pgCheckMove validates what every step relies on.
func pgCheckMove(mv Move) error {
	if !pgMoveIDRe.MatchString(mv.ID) {
		return fmt.Errorf("rebalance: move id %q must match [a-z0-9_]{1,40}", mv.ID)
	}
	if mv.Source.DSN == "" || mv.Target.DSN == "" {
		return fmt.Errorf("rebalance: move %s: source and target DSNs are required", mv.ID)
	}
	if mv.SlotCount <= 0 {
		return fmt.Errorf("rebalance: move %s: SlotCount must be positive", mv.ID)
	}
	if len(mv.Slots) == 0 {
		return fmt.Errorf("rebalance: move %s: no slots", mv.ID)
	}
	for _, s := range mv.Slots {
		if s < 0 || s >= mv.SlotCount {
			return fmt.Errorf("rebalance: move %s: slot %d out of range 0..%d", mv.ID, s, mv.SlotCount-1)
		}
	}
	if len(mv.Tables) == 0 {
		return fmt.Errorf("rebalance: move %s: no tables", mv.ID)
	}
	for _, t := range mv.Tables {
		if t.Name == "" || t.Key == "" || t.Type.HashFunc() == "" {
			return fmt.Errorf("rebalance: move %s: table %+v needs a name, a key column and a hashable key type", mv.ID, t)
		}
	}
	return nil
}

// pgSplitName splits a possibly schema-qualified table name (public by
// default). Double quotes around either part are removed; a quoted part may
// contain dots.
func pgSplitName(name string) (schema, rel string) {
	var parts []string
	var cur strings.Builder
	inQuote := false
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '"' && inQuote && i+1 < len(name) && name[i+1] == '"':
			cur.WriteByte('"')
			i++
		case c == '"':
			inQuote = !inQuote
		case c == '.' && !inQuote:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	parts = append(parts, cur.String())
	if len(parts) == 1 {
		return "public", parts[0]
	}
	return parts[len(parts)-2], parts[len(parts)-1]
}

// pgTableKey is the canonical "schema.table" form stored in
// shardproxy.hidden_slots.tbl and shardproxy.move_replica_identity.tbl.
func pgTableKey(name string) string {
	s, r := pgSplitName(name)
	return s + "." + r
}

// pgTableIdent is the quoted, schema-qualified identifier of a table.
func pgTableIdent(name string) string {
	s, r := pgSplitName(name)
	return pgx.Identifier{s, r}.Sanitize()
}

// pgSlotExpr is the slot of a row of t (as an int), with t's key column
// quoted; qualifier, if not empty, prefixes the column (e.g. "t").
func pgSlotExpr(t Table, slotCount int, qualifier string) string {
	col := pgx.Identifier{t.Key}.Sanitize()
	if qualifier != "" {
		col = qualifier + "." + col
	}
	return "(" + shard.SlotExpr(col, t.Type, slotCount) + ")::int"
}

// pgIntList renders slots as "1,2,3".
func pgIntList(slots []int) string {
	var b strings.Builder
	for i, s := range slots {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s))
	}
	return b.String()
}

// pgLiteral quotes a string as an SQL literal (standard_conforming_strings
// is on in every supported server).
func pgLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// pgConnect opens a connection with a bounded connect time.
func pgConnect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("rebalance: parse DSN: %w", err)
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > pgConnectTimeout {
		cfg.ConnectTimeout = pgConnectTimeout
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "shardproxy-rebalance"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("rebalance: connect to %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	return conn, nil
}

// pgClose closes a connection without waiting on a dead server for long.
func pgClose(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// pgWithNode connects to n, runs fn and closes the connection; errors are
// labelled with the node's name.
func pgWithNode(ctx context.Context, n Node, fn func(*pgx.Conn) error) error {
	conn, err := pgConnect(ctx, n.DSN)
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	defer pgClose(conn)
	if err := fn(conn); err != nil {
		return fmt.Errorf("rebalance: %s: %w", n.Name, err)
	}
	return nil
}

// pgExec runs sql (possibly several statements) with the simple protocol.
func pgExec(ctx context.Context, conn *pgx.Conn, sql string) error {
	_, err := conn.PgConn().Exec(ctx, sql).ReadAll()
	return err
}

// pgRetryable reports lock timeouts, deadlocks and serialization failures.
func pgRetryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "55P03", "40P01", "40001", "23505":
			// 23505: two sessions racing on CREATE ... IF NOT EXISTS.
			return true
		}
	}
	return false
}

// pgSQLState returns the SQLSTATE of err, or "".
func pgSQLState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// pgDDL runs fn in a transaction with lock_timeout set, retrying on lock
// timeouts and deadlocks with a growing pause. fn must be idempotent
// (it is re-run from scratch after a retryable error).
func pgDDL(ctx context.Context, conn *pgx.Conn, fn func(pgx.Tx) error) error {
	var err error
	for attempt := 0; attempt < pgDDLAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
			}
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+pgLockTimeout+"'"); err != nil {
				return err
			}
			return fn(tx)
		})
		if err == nil || !pgRetryable(err) {
			return err
		}
	}
	return fmt.Errorf("gave up after %d attempts: %w", pgDDLAttempts, err)
}

// pgEnsureSchema creates our bookkeeping schema and tables on a node.
func pgEnsureSchema(ctx context.Context, conn *pgx.Conn) error {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT to_regclass('shardproxy.move_subscription') IS NOT NULL
		AND to_regclass('shardproxy.hidden_slots') IS NOT NULL
		AND to_regclass('shardproxy.move_replica_identity') IS NOT NULL`).Scan(&ok)
	if err != nil || ok {
		return err
	}
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
CREATE SCHEMA IF NOT EXISTS shardproxy;
GRANT USAGE ON SCHEMA shardproxy TO PUBLIC;
CREATE TABLE IF NOT EXISTS shardproxy.hidden_slots (
	tbl text NOT NULL,
	slot int NOT NULL,
	move_id text NOT NULL,
	PRIMARY KEY (tbl, slot)
);
GRANT SELECT ON shardproxy.hidden_slots TO PUBLIC;
CREATE TABLE IF NOT EXISTS shardproxy.move_replica_identity (
	move_id text NOT NULL,
	tbl text NOT NULL,
	original text NOT NULL,
	PRIMARY KEY (move_id, tbl)
);
CREATE TABLE IF NOT EXISTS shardproxy.move_subscription (
	move_id text PRIMARY KEY,
	suboid oid NOT NULL,
	subscriber_sysid text NOT NULL
);`)
		return err
	})
}

// pgSchemaExists reports whether our bookkeeping tables exist on a node
// (steps that only remove things skip a node that never had them).
func pgSchemaExists(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT to_regclass('shardproxy.move_subscription') IS NOT NULL
		AND to_regclass('shardproxy.hidden_slots') IS NOT NULL
		AND to_regclass('shardproxy.move_replica_identity') IS NOT NULL`).Scan(&ok)
	return ok, err
}

// pgPolicyExpr is the visibility condition on table t: a row is visible
// unless its slot is hidden on this node. The first arm is an InitPlan,
// evaluated once per query, so that a table without hidden slots pays
// nothing per row; the second is a hashed SubPlan.
func pgPolicyExpr(t Table, slotCount int) string {
	key := pgLiteral(pgTableKey(t.Name))
	return fmt.Sprintf("((SELECT NOT EXISTS (SELECT FROM shardproxy.hidden_slots WHERE tbl = %s)) OR NOT (%s IN (SELECT slot FROM shardproxy.hidden_slots WHERE tbl = %s)))",
		key, pgSlotExpr(t, slotCount, ""), key)
}

// pgEnsurePolicy creates the visibility policy on t and turns row-level
// security on (forced, so the owning app role is subject to it). If the
// table already has row-level security of its own, our policy is
// RESTRICTIVE (ANDed with the owner's policies) and the table's RLS flags
// are left as we found them on removal.
func pgEnsurePolicy(ctx context.Context, conn *pgx.Conn, t Table, slotCount int) error {
	ident := pgTableIdent(t.Name)
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		var exists, rls bool
		err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_policy WHERE polrelid = c.oid AND polname = $2), c.relrowsecurity
			FROM pg_class c WHERE c.oid = $1::regclass`, ident, pgPolicy).Scan(&exists, &rls)
		if err != nil {
			return err
		}
		if exists {
			return nil
		}
		kind := "PERMISSIVE"
		if rls {
			kind = "RESTRICTIVE"
		}
		expr := pgPolicyExpr(t, slotCount)
		_, err = tx.Exec(ctx, fmt.Sprintf("CREATE POLICY %s ON %s AS %s FOR ALL TO PUBLIC USING %s WITH CHECK %s",
			pgPolicy, ident, kind, expr, expr))
		if err != nil {
			return err
		}
		if !rls {
			_, err = tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY", ident))
		}
		return err
	})
}

// pgDropPolicyIfUnused drops our policy on t when the node hides no slot of
// t any more, and turns row-level security off again if we turned it on.
func pgDropPolicyIfUnused(ctx context.Context, conn *pgx.Conn, t Table) error {
	ident := pgTableIdent(t.Name)
	return pgDDL(ctx, conn, func(tx pgx.Tx) error {
		var reg *string
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1)::text", ident).Scan(&reg); err != nil || reg == nil {
			return err
		}
		var permissive *bool
		var hidden bool
		err := tx.QueryRow(ctx, `SELECT (SELECT polpermissive FROM pg_policy WHERE polrelid = $1::regclass AND polname = $2),
			EXISTS (SELECT FROM shardproxy.hidden_slots WHERE tbl = $3)`, ident, pgPolicy, pgTableKey(t.Name)).Scan(&permissive, &hidden)
		if err != nil || permissive == nil || hidden {
			return err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("DROP POLICY IF EXISTS %s ON %s", pgPolicy, ident)); err != nil {
			return err
		}
		if *permissive {
			_, err = tx.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY", ident))
		}
		return err
	})
}

// pgSleep waits d or until ctx is done.
func pgSleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
