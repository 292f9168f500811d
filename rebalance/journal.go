package rebalance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/shard"
)

// The journal keeps, in the metadata database, the shards added at run
// time and every rebalance with each of its moves and the phase each
// reached, written before the phase's work starts: a proxy that restarts
// finds where it was and resumes or rolls back from there.
const journalSchema = `
CREATE SCHEMA IF NOT EXISTS shardproxy;
CREATE TABLE IF NOT EXISTS shardproxy.shards (
	name        text PRIMARY KEY,
	primary_dsn text,
	replica_dsns text[] NOT NULL DEFAULT '{}',
	state       text NOT NULL,
	updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shardproxy.rebalances (
	id          bigserial PRIMARY KEY,
	state       text NOT NULL,
	even        boolean NOT NULL,
	started_at  timestamptz NOT NULL DEFAULT now(),
	finished_at timestamptz,
	error       text,
	resumed     int NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS shardproxy.rebalance_moves (
	rebalance_id bigint NOT NULL REFERENCES shardproxy.rebalances(id),
	idx          int NOT NULL,
	from_shard   text NOT NULL,
	to_shard     text NOT NULL,
	slots        int[] NOT NULL,
	rows_est     bigint NOT NULL,
	bytes_est    bigint NOT NULL,
	phase        text NOT NULL,
	map_version  bigint,
	pause_ms     double precision,
	rows_copied  bigint NOT NULL DEFAULT 0,
	bytes_copied bigint NOT NULL DEFAULT 0,
	rows_cleaned bigint NOT NULL DEFAULT 0,
	verified     boolean NOT NULL DEFAULT false,
	verify_error text,
	PRIMARY KEY (rebalance_id, idx)
);
CREATE TABLE IF NOT EXISTS shardproxy.rebalance_log (
	id           bigserial PRIMARY KEY,
	rebalance_id bigint NOT NULL,
	idx          int NOT NULL,
	phase        text NOT NULL,
	message      text NOT NULL,
	at           timestamptz NOT NULL DEFAULT now()
);
`

// runLockKey is the advisory lock the proxy running a rebalance holds, so
// two proxies never drive the same one.
const runLockKey int64 = 0x73686172_64726562 // "shardreb"

// Shard states in shardproxy.shards.
const (
	StateActive   = "active"
	StateDraining = "draining"
	StateRemoved  = "removed"
)

// StoredShard is a row of shardproxy.shards: a shard added at run time
// (PrimaryDSN set) or a config shard's state (PrimaryDSN empty).
type StoredShard struct {
	Name        string
	PrimaryDSN  string
	ReplicaDSNs []string
	State       string
}

// journal is the metadata database's view of shards and rebalances.
type journal struct {
	pool *pgxpool.Pool
}

func openJournal(ctx context.Context, dsn string) (*journal, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("rebalance journal: parse DSN: %w", err)
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("rebalance journal: %w", err)
	}
	j := &journal{pool: pool}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", shard.SchemaLockKey); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, journalSchema)
		return err
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("rebalance journal: create tables: %w", err)
	}
	return j, nil
}

func (j *journal) close() { j.pool.Close() }

// LoadShards reads the shards added at run time and the states of the
// others, for a proxy starting up (it must route to added shards too).
func LoadShards(ctx context.Context, metaDSN string) ([]StoredShard, error) {
	j, err := openJournal(ctx, metaDSN)
	if err != nil {
		return nil, err
	}
	defer j.close()
	return j.shards(ctx)
}

func (j *journal) shards(ctx context.Context) ([]StoredShard, error) {
	rows, err := j.pool.Query(ctx, `SELECT name, coalesce(primary_dsn, ''), replica_dsns, state FROM shardproxy.shards ORDER BY updated_at, name`)
	if err != nil {
		return nil, fmt.Errorf("read shardproxy.shards: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (StoredShard, error) {
		var s StoredShard
		err := r.Scan(&s.Name, &s.PrimaryDSN, &s.ReplicaDSNs, &s.State)
		return s, err
	})
}

func (j *journal) saveShard(ctx context.Context, s StoredShard) error {
	var dsn any
	if s.PrimaryDSN != "" {
		dsn = s.PrimaryDSN
	}
	if s.ReplicaDSNs == nil {
		s.ReplicaDSNs = []string{}
	}
	_, err := j.pool.Exec(ctx, `INSERT INTO shardproxy.shards (name, primary_dsn, replica_dsns, state) VALUES ($1, $2, $3, $4)
		ON CONFLICT (name) DO UPDATE SET primary_dsn = coalesce(EXCLUDED.primary_dsn, shards.primary_dsn),
			replica_dsns = CASE WHEN EXCLUDED.primary_dsn IS NULL THEN shards.replica_dsns ELSE EXCLUDED.replica_dsns END,
			state = EXCLUDED.state, updated_at = now()`, s.Name, dsn, s.ReplicaDSNs, s.State)
	if err != nil {
		return fmt.Errorf("save shard %s: %w", s.Name, err)
	}
	return nil
}

// record is a rebalance as journaled.
type record struct {
	ID         int64
	State      string
	Even       bool
	StartedAt  time.Time
	FinishedAt *time.Time
	Error      string
	Resumed    int
	Moves      []moveRecord
}

type moveRecord struct {
	Idx         int
	From, To    string
	Slots       []int
	Rows, Bytes int64
	Phase       string
	MapVersion  int64
	PauseMillis float64
	RowsCopied  int64
	BytesCopied int64
	RowsCleaned int64
	Verified    bool
	VerifyError string
}

// create journals a new rebalance with its moves, all pending.
func (j *journal) create(ctx context.Context, even bool, moves []admin.PlannedMove) (*record, error) {
	rec := &record{State: "running", Even: even}
	err := pgx.BeginFunc(ctx, j.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO shardproxy.rebalances (state, even) VALUES ('running', $1) RETURNING id, started_at`, even).
			Scan(&rec.ID, &rec.StartedAt); err != nil {
			return err
		}
		for i, m := range moves {
			if _, err := tx.Exec(ctx, `INSERT INTO shardproxy.rebalance_moves (rebalance_id, idx, from_shard, to_shard, slots, rows_est, bytes_est, phase)
				VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')`, rec.ID, i, m.From, m.To, m.Slots, m.Rows, m.Bytes); err != nil {
				return err
			}
			rec.Moves = append(rec.Moves, moveRecord{Idx: i, From: m.From, To: m.To, Slots: m.Slots, Rows: m.Rows, Bytes: m.Bytes, Phase: "pending"})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("journal the rebalance: %w", err)
	}
	return rec, nil
}

// latest returns the newest rebalance, or nil when none ran.
func (j *journal) latest(ctx context.Context) (*record, error) {
	rec := &record{}
	var errText *string
	err := j.pool.QueryRow(ctx, `SELECT id, state, even, started_at, finished_at, error, resumed FROM shardproxy.rebalances ORDER BY id DESC LIMIT 1`).
		Scan(&rec.ID, &rec.State, &rec.Even, &rec.StartedAt, &rec.FinishedAt, &errText, &rec.Resumed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the rebalance journal: %w", err)
	}
	if errText != nil {
		rec.Error = *errText
	}
	rows, err := j.pool.Query(ctx, `SELECT idx, from_shard, to_shard, slots, rows_est, bytes_est, phase, coalesce(map_version, 0),
			coalesce(pause_ms, 0), rows_copied, bytes_copied, rows_cleaned, verified, coalesce(verify_error, '')
		FROM shardproxy.rebalance_moves WHERE rebalance_id = $1 ORDER BY idx`, rec.ID)
	if err != nil {
		return nil, fmt.Errorf("read the rebalance journal: %w", err)
	}
	rec.Moves, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (moveRecord, error) {
		var m moveRecord
		var slots []int32
		err := r.Scan(&m.Idx, &m.From, &m.To, &slots, &m.Rows, &m.Bytes, &m.Phase, &m.MapVersion,
			&m.PauseMillis, &m.RowsCopied, &m.BytesCopied, &m.RowsCleaned, &m.Verified, &m.VerifyError)
		for _, s := range slots {
			m.Slots = append(m.Slots, int(s))
		}
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the rebalance journal: %w", err)
	}
	return rec, nil
}

// setPhase journals a move's next phase (before its work starts).
func (j *journal) setPhase(ctx context.Context, id int64, idx int, phase, message string) error {
	return pgx.BeginFunc(ctx, j.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE shardproxy.rebalance_moves SET phase = $3 WHERE rebalance_id = $1 AND idx = $2`, id, idx, phase); err != nil {
			return fmt.Errorf("journal phase %s of move %d: %w", phase, idx, err)
		}
		if message == "" {
			message = "phase " + phase
		}
		_, err := tx.Exec(ctx, `INSERT INTO shardproxy.rebalance_log (rebalance_id, idx, phase, message) VALUES ($1, $2, $3, $4)`, id, idx, phase, message)
		return err
	})
}

// note adds a line to the journal's log.
func (j *journal) note(ctx context.Context, id int64, idx int, phase, message string) {
	_, _ = j.pool.Exec(ctx, `INSERT INTO shardproxy.rebalance_log (rebalance_id, idx, phase, message) VALUES ($1, $2, $3, $4)`, id, idx, phase, message)
}

// updateMove stores a move's counters and results.
func (j *journal) updateMove(ctx context.Context, id int64, m moveRecord) error {
	_, err := j.pool.Exec(ctx, `UPDATE shardproxy.rebalance_moves SET map_version = nullif($3, 0), pause_ms = nullif($4, 0::float8),
			rows_copied = $5, bytes_copied = $6, rows_cleaned = $7, verified = $8, verify_error = nullif($9, '')
		WHERE rebalance_id = $1 AND idx = $2`, id, m.Idx, m.MapVersion, m.PauseMillis, m.RowsCopied, m.BytesCopied, m.RowsCleaned, m.Verified, m.VerifyError)
	if err != nil {
		return fmt.Errorf("journal move %d: %w", m.Idx, err)
	}
	return nil
}

// finish journals how the rebalance ended.
func (j *journal) finish(ctx context.Context, id int64, state, errText string) error {
	_, err := j.pool.Exec(ctx, `UPDATE shardproxy.rebalances SET state = $2, error = nullif($3, ''), finished_at = now() WHERE id = $1`, id, state, errText)
	if err != nil {
		return fmt.Errorf("journal the end of rebalance %d: %w", id, err)
	}
	j.note(ctx, id, -1, state, "rebalance "+state+ifErr(errText))
	return nil
}

func ifErr(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func (j *journal) setState(ctx context.Context, id int64, state string) error {
	_, err := j.pool.Exec(ctx, `UPDATE shardproxy.rebalances SET state = $2 WHERE id = $1`, id, state)
	return err
}

func (j *journal) markResumed(ctx context.Context, id int64) error {
	_, err := j.pool.Exec(ctx, `UPDATE shardproxy.rebalances SET resumed = resumed + 1 WHERE id = $1`, id)
	return err
}

// logTail returns the latest journal notes of a rebalance, oldest first.
func (j *journal) logTail(ctx context.Context, id int64, n int) ([]admin.JournalNote, error) {
	rows, err := j.pool.Query(ctx, `SELECT at, idx, phase, message FROM (
		SELECT * FROM shardproxy.rebalance_log WHERE rebalance_id = $1 ORDER BY id DESC LIMIT $2) t ORDER BY id`, id, n)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (admin.JournalNote, error) {
		var n admin.JournalNote
		err := r.Scan(&n.At, &n.Move, &n.Phase, &n.Message)
		return n, err
	})
}

// marshal is for debug logs.
func (r *record) String() string {
	b, _ := json.Marshal(r)
	return string(b)
}
