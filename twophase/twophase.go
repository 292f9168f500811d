// Package twophase coordinates two-phase commit for client transactions that
// write on more than one shard, and recovers the transactions a crashed proxy
// left prepared.
//
// # Protocol
//
// For one client transaction the proxy:
//
//  1. calls Begin right before the first PREPARE TRANSACTION, to get a GID;
//  2. sends PREPARE TRANSACTION '<gid>' on every written shard;
//  3. calls Decide, which durably logs the commit decision in the metadata
//     database (if any PREPARE failed it skips Decide and rolls back instead);
//  4. sends COMMIT PREPARED '<gid>' (or ROLLBACK PREPARED) on every shard;
//  5. calls Finish, saying whether every participant answered.
//
// The decision log is presumed-abort: a prepared transaction whose GID has no
// commit row is rolled back by recovery. Each GID has at most one row, and the
// first writer wins: Decide inserts a commit row, while recovery, before it
// rolls anything back, inserts an abort row. So "recovery rolled it back" and
// "Decide logged a commit" exclude each other in the metadata database itself,
// not just in this process's memory, and stay exclusive even if two live
// processes share a proxy name by mistake.
//
// # GIDs
//
// GIDs look like shardproxy:<proxy name>:<incarnation>:<seq>. The incarnation
// is new for every Open (UTC start time plus random bits), so after a crash
// every GID of an older incarnation is in doubt: its process is gone. GIDs of
// the current incarnation are in doubt only once Finish was called (or never
// will be, as Begin runs before PREPARE); recovery never touches a GID between
// Begin and Finish. GIDs of other proxy names, and foreign GIDs, are left
// alone. Every live proxy sharing a metadata database needs its own name.
//
// # Metadata
//
// Open creates schema shardproxy (shared with the shard map) and the table
//
//	CREATE TABLE shardproxy.twophase_decisions (
//	    gid          text PRIMARY KEY,
//	    participants text[] NOT NULL,
//	    committed    boolean NOT NULL,
//	    decided_at   timestamptz NOT NULL DEFAULT now()
//	);
//
// Rows with committed = true are commit decisions, participants being the
// shard names the proxy prepared on. Rows with committed = false are abort
// claims written by recovery (participants: where it saw the GID) or by a
// failed Decide.
package twophase

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultProxyName is the proxy name used when the configuration sets none.
const DefaultProxyName = "shardproxy"

// gidPrefix starts every GID we create, so an operator looking at
// pg_prepared_xacts can tell ours from anyone else's.
const gidPrefix = "shardproxy:"

const (
	// defaultDecideTimeout bounds the time from Begin to Decide. Past it
	// Decide refuses, so a transaction whose prepared parts may already have
	// been rolled back (and whose abort row may have expired, see
	// defaultAbortRetention) can never be committed. Begin runs right before
	// PREPARE, so this only trips on a stuck proxy.
	defaultDecideTimeout = 10 * time.Minute
	// defaultAbortRetention is how long abort rows of other incarnations are
	// kept. Recovery would roll back the same way without them (no row means
	// abort); they only exist to make a late Decide by a still-living
	// process fail, so they must outlive defaultDecideTimeout.
	defaultAbortRetention = time.Hour
	// resolveTimeout bounds the extra round trip Decide makes, even when
	// its caller's context is done, to learn the outcome after a failed
	// insert: a known outcome is worth far more to the client than one
	// second.
	resolveTimeout = 5 * time.Second
	// forgetTimeout bounds one batched delete of finished decisions.
	forgetTimeout = 10 * time.Second
)

var (
	// ErrAborted means the coordinator will never commit the transaction:
	// the caller should send ROLLBACK PREPARED to its participants (or
	// leave that to recovery) and report a rollback to the client.
	ErrAborted = errors.New("twophase: transaction aborted")
	// ErrOutcomeUnknown means Decide could not learn whether the commit
	// decision was logged (metadata database unreachable). The caller must
	// neither commit nor roll back: call Finish(gid, false) and let recovery
	// decide from the log. Tell the client SQLSTATE 08007
	// (transaction_resolution_unknown).
	ErrOutcomeUnknown = errors.New("twophase: transaction outcome unknown")
	// ErrNotActive means Decide was called for a GID that is not between
	// Begin and Finish in this process. Nothing was logged.
	ErrNotActive = errors.New("twophase: gid is not active in this coordinator")
)

// Shard is a shard primary that recovery visits.
type Shard struct {
	// Name is the shard's name in the shard map; it must match the names
	// passed to Decide as participants.
	Name string
	// DSN reaches the primary as a superuser or as the role that prepared
	// the transactions (COMMIT PREPARED requires one of those). Recovery
	// switches to each prepared transaction's database itself.
	DSN string
}

// Coordinator hands out GIDs, logs commit decisions and recovers in-doubt
// transactions. It is safe for concurrent use.
type Coordinator struct {
	pool        *pgxpool.Pool
	log         *slog.Logger
	name        string
	incarnation string
	prefix      string // gidPrefix + name + ":"; every GID this name owns
	seq         atomic.Uint64

	decideTimeout  time.Duration
	abortRetention time.Duration

	mu      sync.Mutex
	active  map[string]*txn
	forget  []string // commit rows to delete, batched by forgetLoop
	closed  bool
	totals  Report
	decided uint64

	recoverSem chan struct{} // one Recover at a time in this process
	kick       chan struct{} // asks Run for an early pass
	forgetKick chan struct{}
	closing    chan struct{}
	forgetDone chan struct{}
	runWG      sync.WaitGroup
	closeOnce  sync.Once
}

// txn is an active GID: between Begin and Finish.
type txn struct {
	began   time.Time
	decided bool // Decide logged a commit row
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,63}$`)

// validateName keeps names out of trouble in GIDs: no ':' (the separator),
// no quote (GIDs are SQL literals) and short enough that a GID stays far
// below PostgreSQL's 200-byte limit.
func validateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("twophase: invalid proxy name %q: use 1-63 of A-Z a-z 0-9 _ . -", name)
	}
	return nil
}

// Open connects to the metadata database, creates the schema and table if
// needed and starts a new incarnation of proxyName (DefaultProxyName if
// empty). The DSN may carry pgxpool settings such as pool_max_conns.
func Open(ctx context.Context, metadataDSN, proxyName string, log *slog.Logger) (*Coordinator, error) {
	if proxyName == "" {
		proxyName = DefaultProxyName
	}
	if err := validateName(proxyName); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(metadataDSN)
	if err != nil {
		return nil, fmt.Errorf("twophase: parse metadata DSN: %w", err)
	}
	// Every write of a decision must be on disk before COMMIT PREPARED is
	// sent. A startup parameter beats role and database defaults, so a
	// metadata database tuned with synchronous_commit = off cannot lose a
	// decision. Other values (local, remote_write, remote_apply) all flush
	// locally and are kept.
	if v, ok := cfg.ConnConfig.RuntimeParams["synchronous_commit"]; !ok || strings.EqualFold(v, "off") {
		cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "shardproxy-twophase"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("twophase: metadata pool: %w", err)
	}
	var syncCommit string
	if err := pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&syncCommit); err != nil {
		pool.Close()
		return nil, fmt.Errorf("twophase: connect to metadata database: %w", err)
	}
	if syncCommit == "off" {
		pool.Close()
		return nil, errors.New("twophase: metadata database runs with synchronous_commit = off; commit decisions would not be durable")
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	inc, err := newIncarnation()
	if err != nil {
		pool.Close()
		return nil, err
	}
	c := &Coordinator{
		pool:           pool,
		log:            log,
		name:           proxyName,
		incarnation:    inc,
		prefix:         gidPrefix + proxyName + ":",
		decideTimeout:  defaultDecideTimeout,
		abortRetention: defaultAbortRetention,
		active:         map[string]*txn{},
		recoverSem:     make(chan struct{}, 1),
		kick:           make(chan struct{}, 1),
		forgetKick:     make(chan struct{}, 1),
		closing:        make(chan struct{}),
		forgetDone:     make(chan struct{}),
	}
	go c.forgetLoop()
	log.Info("twophase: coordinator started", "proxy", proxyName, "incarnation", inc)
	return c, nil
}

// newIncarnation is the start time (readable by an operator looking at
// pg_prepared_xacts) plus random bits, so two processes started in the same
// second still differ.
func newIncarnation() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("twophase: random incarnation: %w", err)
	}
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:]), nil
}

// Name is the proxy name this coordinator owns GIDs for.
func (c *Coordinator) Name() string { return c.name }

// Incarnation identifies this process's GIDs among those of earlier runs.
func (c *Coordinator) Incarnation() string { return c.incarnation }

// Begin returns a new GID and marks it active, so recovery leaves any
// transaction prepared under it alone until Finish. Call it right before the
// first PREPARE TRANSACTION: Decide refuses GIDs older than 10 minutes.
func (c *Coordinator) Begin() string {
	gid := c.prefix + c.incarnation + ":" + strconv.FormatUint(c.seq.Add(1), 10)
	c.mu.Lock()
	c.active[gid] = &txn{began: time.Now()}
	c.mu.Unlock()
	return gid
}

// Decide durably logs the decision to commit gid, prepared on the named
// participants (shard names as in Shard.Name). It returns nil only once the
// decision is on disk: then, and only then, send COMMIT PREPARED. Errors:
//
//   - ErrAborted: the transaction will never be committed (recovery claimed
//     it first, Begin was too long ago, or the insert failed and an abort
//     was recorded instead); roll back.
//   - ErrOutcomeUnknown: the metadata database could not be reached to
//     learn the outcome; call Finish(gid, false) and let recovery finish it
//     either way, without sending COMMIT PREPARED or ROLLBACK PREPARED.
//   - ErrNotActive: gid is not between Begin and Finish; nothing changed.
//
// Calling Decide again for a GID it already decided returns nil.
func (c *Coordinator) Decide(ctx context.Context, gid string, participants []string) error {
	if len(participants) == 0 {
		return fmt.Errorf("twophase: decide %s: no participants", gid)
	}
	c.mu.Lock()
	t, ok := c.active[gid]
	var age time.Duration
	if ok {
		age = time.Since(t.began)
	}
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("twophase: decide %s: %w", gid, ErrNotActive)
	}
	// The in-memory active set keeps this process's recovery off gid, but
	// an abort row written by another process sharing our name expires
	// after abortRetention; refusing late decisions keeps that safe.
	if age > c.decideTimeout {
		return fmt.Errorf("twophase: decide %s: %s since Begin, more than %s: %w", gid, age.Round(time.Second), c.decideTimeout, ErrAborted)
	}

	committed, err := c.logOutcome(ctx, gid, participants, true)
	if err != nil {
		// The insert may or may not have committed (a lost reply looks
		// like any other failure). Writing an abort row settles it: if
		// the commit row is there the abort insert does nothing and we
		// read "committed", otherwise the abort row makes sure no one
		// ever commits.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
		defer cancel()
		var rerr error
		committed, rerr = c.logOutcome(rctx, gid, participants, false)
		if rerr != nil {
			return fmt.Errorf("twophase: decide %s: %w: log decision: %w; read outcome: %w", gid, ErrOutcomeUnknown, err, rerr)
		}
		if !committed {
			return fmt.Errorf("twophase: decide %s: log decision: %w (abort recorded instead): %w", gid, err, ErrAborted)
		}
		c.log.Warn("twophase: decision was logged although the insert reported an error", "gid", gid, "err", err)
	}
	if !committed {
		return fmt.Errorf("twophase: decide %s: recovery already rolled it back: %w", gid, ErrAborted)
	}
	c.mu.Lock()
	// Counted once per GID, however often a caller retries.
	if t, ok := c.active[gid]; ok && !t.decided {
		t.decided = true
		c.decided++
	}
	c.mu.Unlock()
	return nil
}

// logOutcome inserts a row for gid unless one exists, and returns the
// outcome the stored row records, whoever wrote it.
func (c *Coordinator) logOutcome(ctx context.Context, gid string, participants []string, commit bool) (bool, error) {
	var committed bool
	err := c.pool.QueryRow(ctx, `INSERT INTO `+decisionsTable+` (gid, participants, committed)
		VALUES ($1, $2, $3) ON CONFLICT (gid) DO NOTHING RETURNING committed`,
		gid, participants, commit).Scan(&committed)
	if err == nil {
		return committed, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("insert decision: %w", err)
	}
	// A conflict. This is a new statement with a new snapshot, so it sees
	// the row that the insert waited for.
	if err := c.pool.QueryRow(ctx, `SELECT committed FROM `+decisionsTable+` WHERE gid = $1`, gid).Scan(&committed); err != nil {
		return false, fmt.Errorf("read existing decision: %w", err)
	}
	return committed, nil
}

// Finish ends gid's active period. resolved reports that every participant
// answered: COMMIT PREPARED after a successful Decide, ROLLBACK PREPARED
// otherwise (or nothing was prepared). When the commit was resolved
// everywhere the decision is forgotten in the background. When resolved is
// false, whatever is still prepared is finished by the next recovery pass,
// committed if Decide succeeded and rolled back otherwise, and Run is asked
// to make that pass now rather than at its next tick.
func (c *Coordinator) Finish(gid string, resolved bool) {
	c.mu.Lock()
	t, ok := c.active[gid]
	delete(c.active, gid)
	if ok && resolved && t.decided {
		c.forget = append(c.forget, gid)
	}
	c.mu.Unlock()
	switch {
	case !ok:
		c.log.Warn("twophase: Finish for a gid that is not active", "gid", gid)
	case resolved && t.decided:
		signal(c.forgetKick)
	case !resolved:
		signal(c.kick)
	}
}

// signal wakes a goroutine waiting on ch without ever blocking the caller;
// one pending signal is enough because the receiver handles all work queued.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// ActiveCount is the number of GIDs between Begin and Finish (a gauge).
func (c *Coordinator) ActiveCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.active)
}

// DecidedCount is the number of commit decisions Decide logged (a counter).
func (c *Coordinator) DecidedCount() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.decided
}

func (c *Coordinator) isActive(gid string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.active[gid]
	return ok
}

// forgetLoop deletes the commit rows of finished transactions in batches,
// off the client's commit path: a row left behind is harmless (recovery
// deletes it once no participant holds the GID), while a synchronous delete
// would cost every commit another round trip.
func (c *Coordinator) forgetLoop() {
	defer close(c.forgetDone)
	for {
		select {
		case <-c.forgetKick:
			c.flushForget()
		case <-c.closing:
			c.flushForget()
			return
		}
	}
}

func (c *Coordinator) flushForget() {
	c.mu.Lock()
	gids := c.forget
	c.forget = nil
	c.mu.Unlock()
	if len(gids) == 0 {
		return
	}
	slices.Sort(gids) // same row-lock order as recovery's deletes
	ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
	defer cancel()
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		// Losing this delete in a crash only leaves rows recovery
		// cleans up, so it need not wait for a flush.
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM `+decisionsTable+` WHERE gid = ANY($1) AND committed`, gids)
		return err
	})
	if err != nil {
		c.log.Warn("twophase: forget finished decisions (recovery will retry)", "count", len(gids), "err", err)
	}
}

// Close stops Run, flushes pending forgets and closes the metadata pool. It
// does not touch prepared transactions: GIDs still active become in doubt
// for the next incarnation, exactly as after a crash.
func (c *Coordinator) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.closing)
		c.runWG.Wait()
		<-c.forgetDone
		c.pool.Close()
	})
}

// gidParts is a parsed GID of ours.
type gidParts struct {
	name, incarnation string
	seq               uint64
}

// parseGID splits a GID made by Begin; ok is false for anything else, which
// recovery then leaves alone.
func parseGID(gid string) (gidParts, bool) {
	rest, ok := strings.CutPrefix(gid, gidPrefix)
	if !ok {
		return gidParts{}, false
	}
	f := strings.Split(rest, ":")
	if len(f) != 3 || validateName(f[0]) != nil || !incarnationRE.MatchString(f[1]) {
		return gidParts{}, false
	}
	seq, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		return gidParts{}, false
	}
	return gidParts{name: f[0], incarnation: f[1], seq: seq}, true
}

// incarnationRE accepts what newIncarnation makes, loosely, so an older
// format would still be recovered; it excludes ':' and quotes.
var incarnationRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,40}$`)

// quoteLiteral quotes a GID for COMMIT/ROLLBACK PREPARED, which take no
// parameters. parseGID already rules out quotes; this is defense in depth.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
