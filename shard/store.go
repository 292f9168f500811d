package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Assignment is one stored version of the slot assignment.
type Assignment struct {
	Version   int64
	CreatedAt time.Time
	// Slots maps each slot to a shard name.
	Slots []string
}

// Store keeps the versions of the slot assignment durably, so every proxy
// routes by the same map and a restarted proxy resumes the latest one.
type Store interface {
	// Load returns the latest assignment, or nil when none is stored.
	Load(ctx context.Context) (*Assignment, error)
	// Save stores slots as version expectedVersion+1 if expectedVersion
	// is still the latest (0: nothing stored yet), and tells watchers.
	// It returns a *ConflictError when another writer saved first.
	Save(ctx context.Context, slots []string, expectedVersion int64) (version int64, err error)
	// Watch calls fn with the latest version whenever it may have
	// changed: once connected (and after every reconnect, since a
	// notification may have been missed meanwhile) and on every save.
	// fn may see a version more than once; callers load when it is newer
	// than theirs. Watch returns ctx's error once ctx is done.
	Watch(ctx context.Context, fn func(version int64)) error
	Close()
}

// ErrConflict matches every *ConflictError (errors.Is).
var ErrConflict = errors.New("shard map version conflict")

// ConflictError reports a Save that lost the race to another writer.
type ConflictError struct {
	Expected, Current int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("shard map version conflict: saving over version %d, but version %d is the latest (another writer saved first)",
		e.Expected, e.Current)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// LoadOrInit returns the map to route by: the latest stored assignment
// applied to base (the map built from the config), or, on the very first
// start, base itself saved as version 1. A stored assignment whose slot
// count or shard names the config does not have is an error: routing by
// either one would send keys to the wrong shards.
func LoadOrInit(ctx context.Context, st Store, base *Map) (*Map, error) {
	for attempt := 0; ; attempt++ {
		a, err := st.Load(ctx)
		if err != nil {
			return nil, err
		}
		if a != nil {
			m, err := base.WithAssignment(a.Version, a.Slots)
			if err != nil {
				return nil, fmt.Errorf("stored shard map disagrees with the config: %w", err)
			}
			return m, nil
		}
		v, err := st.Save(ctx, base.Assignment(), 0)
		if errors.Is(err, ErrConflict) && attempt == 0 {
			// Another proxy initialized the store at the same moment:
			// use what it saved.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("save initial shard map: %w", err)
		}
		return base.WithAssignment(v, base.Assignment())
	}
}

// Metadata names in PostgreSQL.
const (
	// MetadataSchema holds every table the proxy keeps in the metadata
	// database (shard map versions here, the 2PC log elsewhere).
	MetadataSchema = "shardproxy"
	// NotifyChannel carries the version number of every saved map.
	NotifyChannel = "shardproxy_map"
	// SchemaLockKey is the advisory lock taken while creating metadata
	// objects: concurrent CREATE ... IF NOT EXISTS of the same object can
	// still fail with a unique violation in the catalogs.
	SchemaLockKey int64 = 0x73686172_6470726f // "shardpro"
	// WatchApplicationName is the application_name of Watch's connection
	// unless the DSN sets one.
	WatchApplicationName = "shardproxy map watch"
)

const mapTable = MetadataSchema + ".shard_map_versions"

const schemaSQL = `
CREATE SCHEMA IF NOT EXISTS ` + MetadataSchema + `;
CREATE TABLE IF NOT EXISTS ` + mapTable + ` (
	version    bigint PRIMARY KEY CHECK (version > 0),
	created_at timestamptz NOT NULL DEFAULT now(),
	slots      text[] NOT NULL CHECK (cardinality(slots) > 0)
);
COMMENT ON TABLE ` + mapTable + ` IS 'shardproxy: versions of the slot -> shard assignment; the highest version is current';`

// Watch's reconnect backoff and liveness check interval.
const (
	watchMinBackoff = 100 * time.Millisecond
	watchMaxBackoff = 5 * time.Second
	watchPing       = 30 * time.Second
)

// PGStore is a Store in a PostgreSQL database.
type PGStore struct {
	dsn  string
	pool *pgxpool.Pool
	log  *slog.Logger
}

// OpenPGStore connects to the metadata database at dsn and creates the
// schema and table if they are missing. log may be nil.
func OpenPGStore(ctx context.Context, dsn string, log *slog.Logger) (*PGStore, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("metadata store: parse DSN: %w", err)
	}
	// Loads and saves are rare; two connections cover a save racing a load.
	cfg.MaxConns = 2
	cfg.MinConns = 0
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata store: %w", err)
	}
	s := &PGStore{dsn: dsn, pool: pool, log: log}
	if err := s.ensureSchema(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

func (s *PGStore) ensureSchema(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", SchemaLockKey); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schemaSQL)
		return err
	})
	if err != nil {
		return fmt.Errorf("metadata store: create %s: %w", mapTable, err)
	}
	return nil
}

// Close closes the store's connections.
func (s *PGStore) Close() { s.pool.Close() }

// Load implements Store.
func (s *PGStore) Load(ctx context.Context) (*Assignment, error) {
	var a Assignment
	err := s.pool.QueryRow(ctx,
		"SELECT version, created_at, slots FROM "+mapTable+" ORDER BY version DESC LIMIT 1").
		Scan(&a.Version, &a.CreatedAt, &a.Slots)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("metadata store: load shard map: %w", err)
	}
	return &a, nil
}

// Save implements Store. The insert only happens while expectedVersion is
// the latest; two writers racing past that check collide on the primary
// key, and the loser gets the ConflictError too. The notification is sent
// in the same transaction, so watchers hear of it exactly when it commits.
func (s *PGStore) Save(ctx context.Context, slots []string, expectedVersion int64) (int64, error) {
	if len(slots) == 0 {
		return 0, errors.New("metadata store: save shard map: no slots")
	}
	for i, name := range slots {
		if name == "" {
			return 0, fmt.Errorf("metadata store: save shard map: slot %d has no shard", i)
		}
	}
	var version int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
INSERT INTO `+mapTable+` (version, slots)
SELECT $1::bigint + 1, $2::text[]
WHERE (SELECT coalesce(max(version), 0) FROM `+mapTable+`) = $1
RETURNING version`, expectedVersion, slots).Scan(&version)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, strconv.FormatInt(version, 10))
		return err
	})
	var pgErr *pgconn.PgError
	if errors.Is(err, pgx.ErrNoRows) || (errors.As(err, &pgErr) && pgErr.Code == "23505") {
		current, lerr := s.latest(ctx)
		if lerr != nil {
			return 0, fmt.Errorf("metadata store: save shard map over version %d lost a race; reading the latest: %w", expectedVersion, lerr)
		}
		return 0, &ConflictError{Expected: expectedVersion, Current: current}
	}
	if err != nil {
		return 0, fmt.Errorf("metadata store: save shard map version %d: %w", expectedVersion+1, err)
	}
	return version, nil
}

func (s *PGStore) latest(ctx context.Context) (int64, error) {
	var v int64
	err := s.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+mapTable).Scan(&v)
	return v, err
}

// Watch implements Store with LISTEN on a dedicated connection,
// reconnecting with exponential backoff when it breaks.
func (s *PGStore) Watch(ctx context.Context, fn func(version int64)) error {
	backoff := watchMinBackoff
	for {
		err := s.watchOnce(ctx, fn, func() { backoff = watchMinBackoff })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("shard map watch: connection to the metadata store lost; reconnecting", "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, watchMaxBackoff)
	}
}

func (s *PGStore) watchOnce(ctx context.Context, fn func(int64), connected func()) error {
	cfg, err := pgx.ParseConfig(s.dsn)
	if err != nil {
		return err
	}
	if _, set := cfg.RuntimeParams["application_name"]; !set {
		// Lets an operator tell the long-lived listener from the rest.
		cfg.RuntimeParams["application_name"] = WatchApplicationName
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return err
	}
	connected()
	// Listening now, so whatever was saved before is in the table and
	// anything saved later arrives as a notification.
	var latest int64
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+mapTable).Scan(&latest); err != nil {
		return err
	}
	if latest > 0 {
		fn(latest)
	}
	for {
		// A silent network failure would block a plain wait forever; wake
		// up now and then and check the server still answers.
		wctx, cancel := context.WithTimeout(ctx, watchPing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if wctx.Err() != nil && !conn.IsClosed() {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err = conn.Ping(pctx)
				cancel()
				if err == nil {
					continue
				}
			}
			return err
		}
		v, err := strconv.ParseInt(n.Payload, 10, 64)
		if err != nil {
			s.log.Warn("shard map watch: ignoring a notification that is not a version", "channel", n.Channel, "payload", n.Payload)
			continue
		}
		fn(v)
	}
}
