package replica

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Defaults for Config. Interval plus Timeout stays under one second, so a
// node that stops answering is out of rotation within 1 s of failing.
const (
	DefaultInterval = 250 * time.Millisecond
	DefaultTimeout  = 600 * time.Millisecond
	DefaultHistory  = 60 * time.Second
)

// NodeConfig is one PostgreSQL server to monitor.
type NodeConfig struct {
	// DSN of a role allowed to call the WAL functions (a superuser or a
	// member of pg_monitor). Only the monitor uses it.
	DSN string
	// Addr labels the node in States; host:port of the DSN when empty.
	Addr string
	// Weight is the node's share of reads relative to its siblings
	// (default 1).
	Weight int
}

// ShardConfig is one shard: the configured primary and its replicas.
type ShardConfig struct {
	Name     string
	Primary  NodeConfig
	Replicas []NodeConfig
}

// Config configures a Monitor.
type Config struct {
	Shards []ShardConfig
	// Interval between the probes of one node (default 250 ms).
	Interval time.Duration
	// Timeout bounds one probe, connecting included (default 600 ms).
	Timeout time.Duration
	// History is how far back the primary's WAL positions are kept; time
	// lag saturates near it (default 60 s).
	History time.Duration
	Logger  *slog.Logger
	// OnDown, if set, is called (on its own goroutine) each time a node
	// that was healthy fails a probe; replica tells whether it was last
	// seen as a replica. The proxy uses it to stop waiting on the node.
	OnDown func(shard, addr string, replica bool)
}

// Monitor probes every node and answers the executor's routing questions.
// Create it with New, start it with Start, stop it with Close.
type Monitor struct {
	cfg Config
	log *slog.Logger
	// set is replaced whole when a shard is added (AddShard), so the
	// routing questions read it without a lock.
	set atomic.Pointer[shardSet]

	ctx context.Context // the probes' context, once started

	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// node is the long-lived part of a node: identity and hot-path counters.
// Everything the probes learn lives in shard.st and the snapshots.
type node struct {
	addr        string
	dsn         string
	weight      atomic.Int64 // SetWeights changes it while reads pick
	addrHash    uint64       // PickHash's node identity: stable when the config is reordered
	cfg         *pgconn.Config
	outstanding atomic.Int64
	served      atomic.Uint64
}

// probeState is what the probes know about one node; guarded by shard.mu.
type probeState struct {
	seen        bool // at least one successful probe
	healthy     bool // the latest probe succeeded
	inRecovery  bool
	sawRecovery bool // seen in recovery at some point: a later exit is a promotion
	lsn         uint64
	receiveLSN  uint64
	recv        time.Time // reply time of the latest successful probe
	probedAt    time.Time // time of the latest probe, successful or not
	lastErr     string
	timeouts    int // consecutive probes of a healthy node that timed out
}

// timeoutsToDown is how many probes in a row must time out before a node
// that was healthy is reported down. One slow answer is what a saturated
// machine gives (measured: a primary busy with pgbench at load average 9
// missed the 600 ms timeout once and answered the next probe 26 ms later;
// declaring it down failed every client's next statement). Two in a row
// still report a stalled node within about 1.5 s (Interval + 2 x Timeout).
// A hard failure (refused, reset, an error from the server) counts at
// once: it says the node is gone, not slow.
const timeoutsToDown = 2

// isTimeout reports whether a probe failed by running out of time rather
// than by an answer or a refusal.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

type shard struct {
	name  string
	nodes []*node
	log   *slog.Logger

	mu      sync.Mutex // guards st, hist, primary
	st      []probeState
	hist    lsnHistory
	primary int // -1 until a node is seen out of recovery

	snap atomic.Pointer[snapshot]

	onDown func(shard, addr string, replica bool) // Config.OnDown
}

// snapshot is an immutable view of one shard, rebuilt after every probe.
type snapshot struct {
	primary   int
	primaryOK bool
	nodes     []nodeSnap
	hist      []lsnSample
}

type nodeSnap struct {
	probeState
	lagBytes uint64
	lag      time.Duration
	lagKnown bool
	replica  bool // healthy-or-not node last seen in recovery, not the primary
}

// New validates cfg and builds a Monitor. It connects to nothing until
// Start.
func New(cfg Config) (*Monitor, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.History <= 0 {
		cfg.History = DefaultHistory
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Monitor{cfg: cfg, log: cfg.Logger}
	m.set.Store(&shardSet{byName: map[string]int{}})
	for _, sc := range cfg.Shards {
		if _, err := m.add(sc); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// shardSet is the monitor's shards, by index and by name.
type shardSet struct {
	shards []*shard
	byName map[string]int
}

func (m *Monitor) list() []*shard { return m.set.Load().shards }

// add publishes one more shard (callers serialize through m.mu or own m).
func (m *Monitor) add(sc ShardConfig) (*shard, error) {
	old := m.set.Load()
	if _, dup := old.byName[sc.Name]; dup {
		return nil, fmt.Errorf("replica: shard %q configured twice", sc.Name)
	}
	s := &shard{name: sc.Name, primary: -1, log: m.log, onDown: m.cfg.OnDown}
	s.hist = lsnHistory{window: m.cfg.History, max: int(m.cfg.History/m.cfg.Interval)*2 + 16}
	for j, nc := range append([]NodeConfig{sc.Primary}, sc.Replicas...) {
		n, err := newNode(nc, m.cfg.Timeout)
		if err != nil {
			return nil, fmt.Errorf("replica: shard %q node %d: %w", sc.Name, j, err)
		}
		s.nodes = append(s.nodes, n)
	}
	s.st = make([]probeState, len(s.nodes))
	s.publishLocked()
	next := &shardSet{shards: append(append([]*shard(nil), old.shards...), s), byName: make(map[string]int, len(old.byName)+1)}
	for k, v := range old.byName {
		next.byName[k] = v
	}
	next.byName[sc.Name] = len(old.shards)
	m.set.Store(next)
	return s, nil
}

// AddShard starts watching one more shard (shard add), as index Shards().
func (m *Monitor) AddShard(sc ShardConfig) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := m.add(sc)
	if err != nil {
		return err
	}
	if m.ctx != nil {
		m.startShard(m.ctx, s)
	}
	return nil
}

func (m *Monitor) startShard(ctx context.Context, s *shard) {
	for i := range s.nodes {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.loop(ctx, s, i)
		}()
	}
}

func newNode(nc NodeConfig, timeout time.Duration) (*node, error) {
	pc, err := pgconn.ParseConfig(nc.DSN)
	if err != nil {
		return nil, fmt.Errorf("parse DSN: %w", err)
	}
	if pc.ConnectTimeout == 0 || pc.ConnectTimeout > timeout {
		pc.ConnectTimeout = timeout
	}
	if pc.RuntimeParams == nil {
		pc.RuntimeParams = map[string]string{}
	}
	// Visible in pg_stat_activity, so operators know what the idle
	// connection on every node is.
	pc.RuntimeParams["application_name"] = "shardproxy-replica-monitor"
	addr := nc.Addr
	if addr == "" {
		addr = net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
	}
	h := fnv.New64a()
	h.Write([]byte(addr))
	n := &node{addr: addr, dsn: nc.DSN, cfg: pc, addrHash: h.Sum64()}
	n.setWeight(nc.Weight)
	return n, nil
}

func (n *node) setWeight(w int) {
	n.weight.Store(int64(max(w, 1)))
}

// SetWeights changes the read weights of shard's replicas (in config
// order; 0 or a missing entry means 1), for reads picked from now on.
func (m *Monitor) SetWeights(shard string, weights []int) error {
	set := m.set.Load()
	i, ok := set.byName[shard]
	if !ok {
		return fmt.Errorf("replica: no shard %q", shard)
	}
	s := set.shards[i]
	for j, n := range s.nodes[1:] {
		w := 1
		if j < len(weights) {
			w = weights[j]
		}
		n.setWeight(w)
	}
	return nil
}

// Start launches one probe loop per node. It returns at once; the first
// results arrive within about one Timeout.
func (m *Monitor) Start() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.ctx = ctx
	for _, s := range m.list() {
		m.startShard(ctx, s)
	}
}

// Close stops the probes and closes their connections.
func (m *Monitor) Close() error {
	m.mu.Lock()
	cancel := m.cancel
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
	return nil
}

// probeSQL is the only query the monitor sends: one round trip returns the
// role and the position that matters for it. pg_current_wal_lsn() fails
// during recovery, hence the CASE (volatile functions are not folded, so
// the untaken branch never runs).
const probeSQL = `SELECT pg_is_in_recovery(),
 CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
 pg_last_wal_receive_lsn()`

type probeResult struct {
	err        error
	inRecovery bool
	lsn        uint64
	receiveLSN uint64
	sent, recv time.Time
}

func (m *Monitor) loop(ctx context.Context, s *shard, i int) {
	n := s.nodes[i]
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			cctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
			conn.Close(cctx)
			cancel()
		}
	}()
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		var res probeResult
		conn, res = m.probe(ctx, n, conn)
		if ctx.Err() != nil {
			return // a probe cut short by Close says nothing about the node
		}
		s.record(i, res)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe runs probeSQL on conn, connecting first when conn is nil. Any
// error closes the connection, so the next probe starts from a fresh one
// rather than from a connection in an unknown protocol state.
func (m *Monitor) probe(ctx context.Context, n *node, conn *pgconn.PgConn) (*pgconn.PgConn, probeResult) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	res := probeResult{sent: time.Now()}
	fail := func(err error) (*pgconn.PgConn, probeResult) {
		if conn != nil {
			cctx, ccancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			conn.Close(cctx)
			ccancel()
		}
		res.err = err
		res.recv = time.Now()
		return nil, res
	}
	if conn == nil {
		var err error
		conn, err = pgconn.ConnectConfig(ctx, n.cfg)
		if err != nil {
			conn = nil
			return fail(fmt.Errorf("connect %s: %w", n.addr, err))
		}
		// Time the query, not the connection setup: the LSN belongs to
		// the moment the query ran.
		res.sent = time.Now()
	}
	results, err := conn.Exec(ctx, probeSQL).ReadAll()
	res.recv = time.Now()
	if err == nil && len(results) != 1 {
		err = fmt.Errorf("%d results", len(results))
	}
	if err == nil {
		err = results[0].Err
	}
	if err == nil {
		err = parseProbeRow(results[0].Rows, &res)
	}
	if err != nil {
		return fail(fmt.Errorf("probe %s: %w", n.addr, err))
	}
	return conn, res
}

func parseProbeRow(rows [][][]byte, res *probeResult) error {
	if len(rows) != 1 || len(rows[0]) != 3 {
		return errors.New("unexpected probe result shape")
	}
	r := rows[0]
	res.inRecovery = string(r[0]) == "t"
	var err error
	if r[1] == nil {
		return errors.New("no WAL position")
	}
	if res.lsn, err = ParseLSN(string(r[1])); err != nil {
		return err
	}
	if r[2] != nil { // NULL on a primary, and on a replica with no WAL receiver
		if res.receiveLSN, err = ParseLSN(string(r[2])); err != nil {
			return err
		}
	}
	return nil
}

// record folds one probe result into the shard and publishes a snapshot.
func (s *shard) record(i int, res probeResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st[i]
	st.probedAt = res.recv
	if res.err != nil && st.healthy && isTimeout(res.err) {
		if st.timeouts++; st.timeouts < timeoutsToDown {
			s.log.Debug("replica: probe timed out; node kept healthy until the next one", "shard", s.name, "node", s.nodes[i].addr, "err", res.err)
			s.publishLocked() // the status shows the probe time
			return
		}
	}
	st.timeouts = 0
	switch {
	case res.err != nil && (st.healthy || !st.seen && st.lastErr == ""):
		s.log.Warn("replica: node unhealthy", "shard", s.name, "node", s.nodes[i].addr, "err", res.err)
		if st.healthy && s.onDown != nil {
			go s.onDown(s.name, s.nodes[i].addr, st.inRecovery && i != s.primary)
		}
	case res.err == nil && !st.healthy:
		s.log.Info("replica: node healthy", "shard", s.name, "node", s.nodes[i].addr, "in_recovery", res.inRecovery)
	}
	if res.err != nil {
		st.healthy = false
		st.lastErr = res.err.Error()
	} else {
		st.seen, st.healthy, st.lastErr = true, true, ""
		st.inRecovery = res.inRecovery
		st.sawRecovery = st.sawRecovery || res.inRecovery
		st.lsn, st.receiveLSN, st.recv = res.lsn, res.receiveLSN, res.recv
	}
	s.electLocked()
	if res.err == nil && i == s.primary && !res.inRecovery {
		s.hist.add(res.lsn, res.sent, res.recv)
	}
	s.publishLocked()
}

// electLocked decides the shard's primary from what the probes saw. The
// current primary stays while it answers out of recovery. When it is
// down or back in recovery, only a node the probes saw go from recovery to
// out of recovery (a promotion) may take over. That rule never reports a
// node as primary that was not seen out of recovery, and it keeps a crashed
// old primary that comes back still thinking it is primary (split brain)
// from ever taking writes again. Before any primary is known (startup), the
// configured primary is preferred, then any node seen out of recovery.
func (s *shard) electLocked() {
	cur := s.primary
	if cur >= 0 && s.st[cur].healthy && !s.st[cur].inRecovery {
		return
	}
	pick := -1
	for i, st := range s.st {
		if i == cur || !st.healthy || st.inRecovery {
			continue
		}
		if cur >= 0 && !st.sawRecovery {
			continue
		}
		pick = i
		break // index order: the configured primary (0) first at startup
	}
	if pick < 0 {
		return // keep reporting the old primary, as unhealthy
	}
	if cur >= 0 {
		s.log.Warn("replica: new primary (promotion observed)", "shard", s.name,
			"old", s.nodes[cur].addr, "new", s.nodes[pick].addr)
	}
	s.primary = pick
	// The history is the old primary's time axis; the new primary's
	// positions are on a new timeline, so measure from scratch.
	s.hist.reset()
}

func (s *shard) publishLocked() {
	snap := &snapshot{primary: s.primary, nodes: make([]nodeSnap, len(s.st))}
	if s.primary >= 0 {
		p := s.st[s.primary]
		snap.primaryOK = p.healthy && !p.inRecovery
	}
	snap.hist = append([]lsnSample(nil), s.hist.s...)
	var latest uint64
	if k := len(snap.hist); k > 0 {
		latest = snap.hist[k-1].LSN
	}
	for i, st := range s.st {
		ns := nodeSnap{probeState: st}
		ns.replica = st.seen && st.inRecovery && i != s.primary
		if ns.replica {
			ns.lag, ns.lagKnown = timeLag(snap.hist, st.lsn, st.recv)
			if ns.lagKnown {
				ns.lagBytes = lagBytes(latest, st.lsn)
			}
		}
		snap.nodes[i] = ns
	}
	s.snap.Store(snap)
}

// RenameShard gives shard old another name (a removed shard, whose name
// may then be added again).
func (m *Monitor) RenameShard(old, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	set := m.set.Load()
	i, ok := set.byName[old]
	if !ok {
		return fmt.Errorf("replica: no shard %q", old)
	}
	next := &shardSet{shards: set.shards, byName: make(map[string]int, len(set.byName))}
	for k, v := range set.byName {
		if k != old {
			next.byName[k] = v
		}
	}
	next.byName[name] = i
	m.set.Store(next)
	return nil
}
