package rebalance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/shard"
)

// Proxy is what the orchestrator needs from the running proxy.
type Proxy interface {
	ShardMap() *shard.Map
	SetShardMap(*shard.Map)
	// Freeze holds every statement touching slots (owned by shard index
	// source) until the returned hold is released.
	Freeze(ctx context.Context, source int, slots []int) (Hold, error)
	SetReadFloor(shard int, lsn uint64)
	AddShard(sh config.Shard, m *shard.Map) error
	// RetireShard stops routing to an empty shard and renames it to
	// tombstone (its index stays until a restart).
	RetireShard(name, tombstone string) error
}

// Hold is a running freeze (proxy.Freeze).
type Hold interface {
	// WaitTransactions waits for the transactions begun before the
	// freeze (let through to the source) to end.
	WaitTransactions(ctx context.Context) error
	HoldMulti(ctx context.Context) error
	// StartHoldMulti holds them from now on and returns the wait for
	// those already running.
	StartHoldMulti() func(context.Context) error
	Release(next *shard.Map)
}

// Options configure an Orchestrator.
type Options struct {
	MetaDSN string
	Config  *config.Config
	Proxy   Proxy
	Store   shard.Store
	Log     *slog.Logger
	// Stored are the shards added at run time (LoadShards), already part
	// of Config.Shards when the proxy started.
	Stored []StoredShard
	// OnShardAdded is called before the proxy routes to a new shard
	// (replica monitor, 2PC recovery list); OnShardRemoved after it stops
	// routing to one, renamed to tombstone.
	OnShardAdded   func(config.Shard) error
	OnShardRemoved func(name, tombstone string)
	// BatchSlots bounds the slots of one move (DefaultBatchSlots).
	BatchSlots int
	// CutoverTimeout bounds one cutover attempt's write pause (2s);
	// CutoverAttempts is how many are tried before the move rolls back (5).
	CutoverTimeout  time.Duration
	CutoverAttempts int
}

// Orchestrator runs rebalances and the shard verbs (admin.Operator).
type Orchestrator struct {
	opts Options
	log  *slog.Logger
	j    *journal

	mu     sync.Mutex
	shards []shardEntry
	run    *running // nil when no rebalance runs in this proxy
	last   admin.RebalanceStatus
	m      *metrics
}

type shardEntry struct {
	config.Shard
	FromConfig bool
	State      string
}

// running is the rebalance this proxy drives.
type running struct {
	cancel          context.CancelFunc // shutdown: stop where it is
	cancelOnce      sync.Once
	cancelCh        chan struct{} // closed by a cancel request
	done            chan struct{}
	status          admin.RebalanceStatus
	cancelRequested bool
}

// requestCancel asks the rebalance to roll back what it can.
func (r *running) requestCancel() { r.cancelOnce.Do(func() { close(r.cancelCh) }) }

var shardNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,62}$`)

// New opens the journal and resumes a rebalance a previous run of the
// proxy left unfinished. A cutover cut short by the restart is undone
// before New returns, so the proxy never serves a half-flipped slot.
func New(ctx context.Context, opts Options) (*Orchestrator, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.CutoverTimeout <= 0 {
		opts.CutoverTimeout = 2 * time.Second
	}
	if opts.CutoverAttempts <= 0 {
		opts.CutoverAttempts = 5
	}
	j, err := openJournal(ctx, opts.MetaDSN)
	if err != nil {
		return nil, err
	}
	o := &Orchestrator{opts: opts, log: opts.Log, j: j, m: newMetrics()}
	stored := map[string]StoredShard{}
	for _, s := range opts.Stored {
		stored[s.Name] = s
	}
	for _, sh := range opts.Config.Shards {
		e := shardEntry{Shard: sh, FromConfig: true, State: StateActive}
		if s, ok := stored[sh.Name]; ok {
			e.State = s.State
			e.FromConfig = s.PrimaryDSN == ""
		}
		o.shards = append(o.shards, e)
	}
	rec, err := j.latest(ctx)
	if err != nil {
		j.close()
		return nil, err
	}
	if rec != nil {
		o.last = o.statusOf(rec)
		if rec.State == "running" || rec.State == "cancelling" {
			if err := o.settleCutover(ctx, rec); err != nil {
				j.close()
				return nil, err
			}
			_ = j.markResumed(ctx, rec.ID)
			rec.Resumed++
			o.log.Info("resuming rebalance", "id", rec.ID, "state", rec.State)
			o.start(rec, rec.State == "cancelling")
		}
	}
	return o, nil
}

// Close stops a running rebalance where it is (it resumes at the next
// start) and closes the journal.
func (o *Orchestrator) Close() {
	o.mu.Lock()
	r := o.run
	o.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
	o.j.close()
}

// --- shards ---

func (o *Orchestrator) entry(name string) (shardEntry, bool) {
	for _, e := range o.shards {
		if e.Name == name {
			return e, true
		}
	}
	return shardEntry{}, false
}

func (o *Orchestrator) info(e shardEntry, m *shard.Map) admin.ShardInfo {
	inf := admin.ShardInfo{Name: e.Name, Primary: dsnAddr(e.Primary), Replicas: []string{}, State: e.State, FromConfig: e.FromConfig}
	for _, r := range e.Replicas {
		inf.Replicas = append(inf.Replicas, dsnAddr(r))
	}
	if i, ok := m.ShardIndex(e.Name); ok {
		for _, s := range m.Slots {
			if s == i {
				inf.Slots++
			}
		}
	}
	if inf.State == StateActive && inf.Slots == 0 {
		inf.State = "added"
	}
	return inf
}

// Shards lists every shard with its state and slot count.
func (o *Orchestrator) Shards(ctx context.Context) ([]admin.ShardInfo, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := o.opts.Proxy.ShardMap()
	out := []admin.ShardInfo{}
	for _, e := range o.shards {
		if e.State == StateRemoved {
			continue
		}
		out = append(out, o.info(e, m))
	}
	return out, nil
}

func badRequest(msg, hint string) *admin.Error {
	return &admin.Error{Status: http.StatusBadRequest, Message: msg, Hint: hint}
}

func conflict(msg, hint string) *admin.Error {
	return &admin.Error{Status: http.StatusConflict, Message: msg, Hint: hint}
}

// AddShard prepares a new, empty primary as a shard: the sharded and
// reference tables' definitions copied from the default shard, the
// reference tables' rows copied, then the proxy routes to it (it owns no
// slots until a rebalance gives it some).
func (o *Orchestrator) AddShard(ctx context.Context, req admin.AddShardRequest) (admin.ShardInfo, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !shardNameRE.MatchString(req.Name) {
		return admin.ShardInfo{}, badRequest(fmt.Sprintf("invalid shard name %q", req.Name), "Use a letter followed by letters, digits, _ or -, at most 63 characters.")
	}
	if e, ok := o.entry(req.Name); ok && e.State != StateRemoved {
		return admin.ShardInfo{}, conflict(fmt.Sprintf("shard %s already exists", req.Name), "Pick another name; shardctl shards lists the existing ones.")
	}
	if o.run != nil {
		return admin.ShardInfo{}, conflict("a rebalance is running", "Wait for it (shardctl rebalance status --watch) or cancel it, then add the shard.")
	}
	if req.Primary == "" {
		return admin.ShardInfo{}, badRequest("--primary is required", "Pass a superuser DSN of the new shard's primary, e.g. postgres://postgres@host:5432/app.")
	}
	for _, dsn := range append([]string{req.Primary}, req.Replicas...) {
		if _, err := pgx.ParseConfig(dsn); err != nil {
			return admin.ShardInfo{}, badRequest(fmt.Sprintf("invalid DSN: %v", err), "Use postgres://user@host:port/db or key=value form.")
		}
		for _, e := range o.shards {
			if e.State != StateRemoved && (dsnAddr(e.Primary) == dsnAddr(dsn) || slices.ContainsFunc(e.Replicas, func(r string) bool { return dsnAddr(r) == dsnAddr(dsn) })) {
				return admin.ShardInfo{}, conflict(fmt.Sprintf("%s is already a node of shard %s", dsnAddr(dsn), e.Name), "Give the new shard its own primary.")
			}
		}
	}
	m := o.opts.Proxy.ShardMap()
	nm, err := m.WithShard(req.Name)
	if err != nil {
		return admin.ShardInfo{}, conflict(err.Error(), "Pick another name; shardctl shards lists the existing ones.")
	}
	if len(m.FrozenSlots()) > 0 {
		return admin.ShardInfo{}, conflict("a cutover is running", "Try again in a moment.")
	}
	if err := checkNewPrimary(ctx, req.Primary); err != nil {
		return admin.ShardInfo{}, err
	}
	from := o.nodeOf(m.Shards[m.Default()])
	to := Node{Name: req.Name, DSN: req.Primary}
	tables := append(m.TableNames(), m.ReferenceTables()...)
	if err := CopySchema(ctx, from, to, tables); err != nil {
		return admin.ShardInfo{}, fmt.Errorf("copy table definitions to %s: %w", req.Name, err)
	}
	for _, t := range m.ReferenceTables() {
		if _, err := CopyData(ctx, from, to, t); err != nil {
			return admin.ShardInfo{}, fmt.Errorf("copy reference table %s to %s: %w", t, req.Name, err)
		}
	}
	sh := config.Shard{Name: req.Name, Primary: req.Primary, Replicas: req.Replicas}
	if err := o.j.saveShard(ctx, StoredShard{Name: req.Name, PrimaryDSN: req.Primary, ReplicaDSNs: req.Replicas, State: StateActive}); err != nil {
		return admin.ShardInfo{}, err
	}
	if o.opts.OnShardAdded != nil {
		if err := o.opts.OnShardAdded(sh); err != nil {
			return admin.ShardInfo{}, err
		}
	}
	if err := o.opts.Proxy.AddShard(sh, nm); err != nil {
		return admin.ShardInfo{}, err
	}
	e := shardEntry{Shard: sh, State: StateActive}
	o.shards = slices.DeleteFunc(o.shards, func(x shardEntry) bool { return x.Name == req.Name })
	o.shards = append(o.shards, e)
	o.log.Info("shard added", "shard", req.Name, "primary", dsnAddr(req.Primary))
	return o.info(e, nm), nil
}

// checkNewPrimary makes sure the node can be a move's target: reachable,
// a primary, superuser, PostgreSQL 15+ (row filters), wal_level logical.
func checkNewPrimary(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return badRequest(fmt.Sprintf("cannot connect to %s: %v", dsnAddr(dsn), err), "Check the DSN and that the server accepts connections from the proxy.")
	}
	defer conn.Close(context.Background())
	var recovery, super bool
	var version int
	var walLevel string
	err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
		current_setting('server_version_num')::int, current_setting('wal_level')`).Scan(&recovery, &super, &version, &walLevel)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", dsnAddr(dsn), err)
	}
	switch {
	case recovery:
		return badRequest(fmt.Sprintf("%s is a standby", dsnAddr(dsn)), "A shard's primary must accept writes; pass the primary's DSN.")
	case !super:
		return badRequest(fmt.Sprintf("the DSN's user is not a superuser on %s", dsnAddr(dsn)), "Moving rows creates subscriptions, which needs a superuser DSN.")
	case version < 150000:
		return badRequest(fmt.Sprintf("%s runs PostgreSQL %d; 15 or later is required", dsnAddr(dsn), version/10000), "Row filters on publications arrived in PostgreSQL 15.")
	case walLevel != "logical":
		return badRequest(fmt.Sprintf("wal_level is %s on %s", walLevel, dsnAddr(dsn)), "Set wal_level = logical and restart that server.")
	}
	return nil
}

// DrainShard marks a shard to be emptied by the next rebalance.
func (o *Orchestrator) DrainShard(ctx context.Context, name string) (admin.ShardInfo, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.entry(name)
	if !ok || e.State == StateRemoved {
		return admin.ShardInfo{}, &admin.Error{Status: http.StatusNotFound, Message: "no shard named " + name, Hint: "shardctl shards lists the shards."}
	}
	m := o.opts.Proxy.ShardMap()
	if m.Shards[m.Default()] == name {
		return admin.ShardInfo{}, conflict(fmt.Sprintf("shard %s is the default shard", name), "It holds the unsharded tables and the metadata; it cannot be drained.")
	}
	active := 0
	for _, x := range o.shards {
		if x.State == StateActive && x.Name != name {
			active++
		}
	}
	if active == 0 {
		return admin.ShardInfo{}, conflict("no other active shard would be left", "Add a shard first (shardctl shard add).")
	}
	if err := o.j.saveShard(ctx, StoredShard{Name: name, PrimaryDSN: dsnIf(!e.FromConfig, e.Primary), ReplicaDSNs: e.Replicas, State: StateDraining}); err != nil {
		return admin.ShardInfo{}, err
	}
	o.setState(name, StateDraining)
	e.State = StateDraining
	return o.info(e, m), nil
}

func dsnIf(b bool, dsn string) string {
	if b {
		return dsn
	}
	return ""
}

func (o *Orchestrator) setState(name, state string) {
	for i := range o.shards {
		if o.shards[i].Name == name {
			o.shards[i].State = state
		}
	}
}

// RemoveShard forgets a shard that owns no slots any more.
func (o *Orchestrator) RemoveShard(ctx context.Context, name string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.entry(name)
	if !ok || e.State == StateRemoved {
		return &admin.Error{Status: http.StatusNotFound, Message: "no shard named " + name, Hint: "shardctl shards lists the shards."}
	}
	if o.run != nil {
		return conflict("a rebalance is running", "Wait for it to finish, then remove the shard.")
	}
	m := o.opts.Proxy.ShardMap()
	if inf := o.info(e, m); inf.Slots > 0 {
		return conflict(fmt.Sprintf("shard %s still owns %d slots", name, inf.Slots), fmt.Sprintf("Run shardctl shard drain %s and shardctl rebalance start --wait first.", name))
	}
	if m.Shards[m.Default()] == name {
		return conflict(fmt.Sprintf("shard %s is the default shard", name), "It holds the unsharded tables and the metadata.")
	}
	if e.FromConfig {
		return conflict(fmt.Sprintf("shard %s is in the config file", name), "It owns no slots now: remove it from the config's shards and restart (or reload) the proxy.")
	}
	if err := o.j.saveShard(ctx, StoredShard{Name: name, PrimaryDSN: e.Primary, ReplicaDSNs: e.Replicas, State: StateRemoved}); err != nil {
		return err
	}
	tomb := name + "~removed"
	for n := 2; slices.ContainsFunc(o.shards, func(x shardEntry) bool { return x.Name == tomb }); n++ {
		tomb = fmt.Sprintf("%s~removed%d", name, n)
	}
	if err := o.opts.Proxy.RetireShard(name, tomb); err != nil {
		return err
	}
	if o.opts.OnShardRemoved != nil {
		o.opts.OnShardRemoved(name, tomb)
	}
	for i := range o.shards {
		if o.shards[i].Name == name {
			o.shards[i].Name, o.shards[i].State = tomb, StateRemoved
		}
	}
	return nil
}

// nodeOf is the superuser node of a shard (callers hold o.mu or only
// read names that exist).
func (o *Orchestrator) nodeOf(name string) Node {
	e, _ := o.entry(name)
	return Node{Name: name, DSN: e.Primary}
}

func dsnAddr(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Host != "" {
		return u.Host
	}
	if c, err := pgx.ParseConfig(dsn); err == nil {
		return net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port)))
	}
	return "?"
}

// --- plans ---

func (o *Orchestrator) states() map[string]string {
	st := map[string]string{}
	for _, e := range o.shards {
		st[e.Name] = e.State
	}
	return st
}

// tables lists the hash-sharded tables: the rows that move with slots.
// Range and list tables follow their key ranges, not slots.
func tablesOf(m *shard.Map) []Table {
	var out []Table
	for _, name := range m.TableNames() {
		t, _ := m.Table(name)
		if t.Method == shard.Hash {
			out = append(out, Table{Name: t.Name, Key: t.Key, Type: t.Type})
		}
	}
	return out
}

// PlanRebalance says which slots would move where, with the rows and bytes
// of each move counted on its source.
func (o *Orchestrator) PlanRebalance(ctx context.Context, req admin.RebalanceRequest) (admin.Plan, error) {
	o.mu.Lock()
	m := o.opts.Proxy.ShardMap()
	moves, before, after := planMoves(m, o.states(), req.Even, o.opts.BatchSlots)
	nodes := map[string]Node{}
	for _, mv := range moves {
		nodes[mv.From] = o.nodeOf(mv.From)
	}
	o.mu.Unlock()
	if len(m.FrozenSlots()) > 0 {
		return admin.Plan{}, conflict("a cutover is running", "Try again in a moment.")
	}
	if err := estimate(ctx, moves, nodes, tablesOf(m), len(m.Slots)); err != nil {
		return admin.Plan{}, err
	}
	if moves == nil {
		moves = []admin.PlannedMove{}
	}
	return admin.Plan{Moves: moves, Before: before, After: after}, nil
}

func estimate(ctx context.Context, moves []admin.PlannedMove, nodes map[string]Node, tables []Table, slots int) error {
	stats := map[string]map[int]SlotStats{}
	for name, n := range nodes {
		st, err := Estimate(ctx, n, tables, slots)
		if err != nil {
			return fmt.Errorf("estimate rows on %s: %w", name, err)
		}
		stats[name] = st
	}
	for i := range moves {
		for _, s := range moves[i].Slots {
			moves[i].Rows += stats[moves[i].From][s].Rows
			moves[i].Bytes += stats[moves[i].From][s].Bytes
		}
	}
	return nil
}

// StartRebalance plans and starts a rebalance in the background.
func (o *Orchestrator) StartRebalance(ctx context.Context, req admin.RebalanceRequest) (admin.RebalanceStatus, error) {
	o.mu.Lock()
	if o.run != nil {
		o.mu.Unlock()
		return admin.RebalanceStatus{}, conflict("a rebalance is already running", "Follow it with shardctl rebalance status --watch, or stop it with shardctl rebalance cancel.")
	}
	o.mu.Unlock()
	plan, err := o.PlanRebalance(ctx, req)
	if err != nil {
		return admin.RebalanceStatus{}, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.run != nil {
		return admin.RebalanceStatus{}, conflict("a rebalance is already running", "Follow it with shardctl rebalance status --watch.")
	}
	rec, err := o.j.create(ctx, req.Even, plan.Moves)
	if err != nil {
		return admin.RebalanceStatus{}, err
	}
	if len(plan.Moves) == 0 {
		_ = o.j.finish(ctx, rec.ID, "done", "")
		rec.State = "done"
		now := time.Now()
		rec.FinishedAt = &now
		o.last = o.statusOf(rec)
		return o.last, nil
	}
	o.j.note(ctx, rec.ID, -1, "start", fmt.Sprintf("rebalance started: %d moves", len(plan.Moves)))
	o.startLocked(rec, false)
	return o.run.status, nil
}

func (o *Orchestrator) start(rec *record, cancelled bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.startLocked(rec, cancelled)
}

func (o *Orchestrator) startLocked(rec *record, cancelled bool) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{}), cancelCh: make(chan struct{}), status: o.statusOf(rec), cancelRequested: cancelled}
	if cancelled {
		r.requestCancel()
	}
	o.run = r
	go func() {
		defer close(r.done)
		o.drive(ctx, rec, r)
		o.mu.Lock()
		if o.run == r {
			o.run = nil
		}
		o.mu.Unlock()
	}()
}

// RebalanceStatus reports the running rebalance, or the last one.
func (o *Orchestrator) RebalanceStatus(ctx context.Context) (admin.RebalanceStatus, error) {
	o.mu.Lock()
	st := o.last
	if o.run != nil {
		st = o.run.status
		st.Moves = slices.Clone(st.Moves)
	}
	o.mu.Unlock()
	if st.ID == 0 {
		st.State = "idle"
		st.Moves = []admin.MoveStatus{}
		return st, nil
	}
	st.Totals = admin.MoveProgress{}
	for _, mv := range st.Moves {
		st.Totals.RowsCopied += mv.RowsCopied
		st.Totals.RowsTotal += mv.RowsTotal
		st.Totals.BytesCopied += mv.BytesCopied
		st.Totals.BytesTotal += mv.BytesTotal
		st.Totals.LagBytes += mv.LagBytes
		st.Totals.RowsCleaned += mv.RowsCleaned
		st.Totals.TablesSynced += mv.TablesSynced
		st.Totals.TablesTotal += mv.TablesTotal
	}
	if st.State == "running" && !st.StartedAt.IsZero() && st.Totals.RowsCopied > 0 && st.Totals.RowsTotal > st.Totals.RowsCopied {
		rate := float64(st.Totals.RowsCopied) / time.Since(st.StartedAt).Seconds()
		st.ETASeconds = float64(st.Totals.RowsTotal-st.Totals.RowsCopied) / rate
	}
	if notes, err := o.j.logTail(ctx, st.ID, 50); err == nil {
		st.Log = notes
	}
	return st, nil
}

// CancelRebalance stops the running rebalance: the move in progress rolls
// back unless its cutover already switched the slots, in which case it
// finishes; moves not started are skipped.
func (o *Orchestrator) CancelRebalance(ctx context.Context) (admin.RebalanceStatus, error) {
	o.mu.Lock()
	r := o.run
	if r == nil {
		o.mu.Unlock()
		return admin.RebalanceStatus{}, conflict("no rebalance is running", "shardctl rebalance status shows the last one.")
	}
	r.cancelRequested = true
	r.status.State = "cancelling"
	o.mu.Unlock()
	_ = o.j.setState(ctx, r.status.ID, "cancelling")
	r.requestCancel()
	return o.RebalanceStatus(ctx)
}

func (o *Orchestrator) statusOf(rec *record) admin.RebalanceStatus {
	st := admin.RebalanceStatus{ID: rec.ID, State: rec.State, StartedAt: rec.StartedAt, Error: rec.Error, Resumed: rec.Resumed, Moves: []admin.MoveStatus{}}
	if rec.FinishedAt != nil {
		st.FinishedAt = *rec.FinishedAt
	}
	for _, m := range rec.Moves {
		ms := admin.MoveStatus{PlannedMove: admin.PlannedMove{From: m.From, To: m.To, Slots: m.Slots, Rows: m.Rows, Bytes: m.Bytes}, Phase: m.Phase,
			PauseMillis: m.PauseMillis, Verified: m.Verified, VerifyError: m.VerifyError}
		ms.RowsTotal, ms.BytesTotal = m.Rows, m.Bytes
		ms.RowsCopied, ms.BytesCopied, ms.RowsCleaned = m.RowsCopied, m.BytesCopied, m.RowsCleaned
		st.Moves = append(st.Moves, ms)
	}
	return st
}

// update changes the running status under the lock.
func (o *Orchestrator) update(r *running, fn func(st *admin.RebalanceStatus)) {
	o.mu.Lock()
	fn(&r.status)
	o.mu.Unlock()
}

var errCancelled = errors.New("rebalance cancelled")
