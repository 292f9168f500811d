package twophase

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// decisionsTable is the decision log; the schema is shared with the shard
// map, hence the twophase_ prefix.
const decisionsTable = "shardproxy.twophase_decisions"

// schemaDDL is idempotent so every Open can run it.
const schemaDDL = `
CREATE SCHEMA IF NOT EXISTS shardproxy;
CREATE TABLE IF NOT EXISTS shardproxy.twophase_decisions (
	gid          text PRIMARY KEY,
	participants text[] NOT NULL,
	committed    boolean NOT NULL,
	decided_at   timestamptz NOT NULL DEFAULT now()
);`

// schemaLockKey serializes our own concurrent migrations (several proxies
// starting at once) under a transaction-level advisory lock.
const schemaLockKey = 0x73703270 // "sp2p"

// migrate creates the schema and table. IF NOT EXISTS is not atomic against
// a concurrent creator (two sessions can both pass the check, and the loser
// fails with a unique violation on the catalog), and the shard map code
// creates the same schema without our lock, so a unique violation is retried.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	var err error
	for range 3 {
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(schemaLockKey)); err != nil {
				return err
			}
			// Simple protocol: the DDL is several statements.
			_, err := tx.Exec(ctx, schemaDDL, pgx.QueryExecModeSimpleProtocol)
			return err
		})
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("twophase: create %s: %w", decisionsTable, err)
	}
	return nil
}
