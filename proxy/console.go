package proxy

// The admin console: a client that logs in to database "shardproxy" as a
// user with admin: true talks to the proxy itself, PgBouncer style
// (SHOW SHARDS, SHOW POOLS, RELOAD, ...). No statement of a console
// session ever reaches a backend.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/pool"
	"github.com/shardproxy/shardproxy/shard"
	"github.com/shardproxy/shardproxy/wire"
)

// ConsoleDatabase is the database name that opens the admin console
// instead of a backend session. A backend database of that name cannot be
// reached through the proxy.
const ConsoleDatabase = "shardproxy"

// CodeInsufficientPrivilege is the SQLSTATE a non-admin user gets when
// opening the console.
const CodeInsufficientPrivilege = "42501"

// codeConfigFile is config_file_error: a RELOAD that failed.
const codeConfigFile = "F0000"

// consoleTimeout bounds each call into a Console func.
const consoleTimeout = 10 * time.Second

// ErrConsoleUnavailable, returned (possibly wrapped) by a Console func,
// means this proxy has no such data (no rebalance orchestrator, ...):
// SHOW SHARDS falls back to the proxy's own view, other commands answer
// 0A000.
var ErrConsoleUnavailable = errors.New("not available in this proxy")

// Console supplies what the admin console shows beyond what the proxy
// server holds itself (pools, clients, slots and counters come from the
// server). Every field is optional.
type Console struct {
	// Version is shown by SHOW VERSION.
	Version string
	// Shards lists the shards with their state and slot counts (the
	// rebalance orchestrator's view, as in shardctl shards). Without it,
	// or when it returns ErrConsoleUnavailable, SHOW SHARDS shows the
	// proxy's topology and shard map with state "active".
	Shards func(ctx context.Context) ([]admin.ShardInfo, error)
	// Nodes reports every node's health and lag (the replica monitor),
	// shaped like /api/v1/status's shards. Without it SHOW REPLICAS
	// lists the configured replicas with unknown health.
	Nodes func() []admin.ShardStatus
	// Rebalance is the latest rebalance (SHOW REBALANCE); without it, or
	// on ErrConsoleUnavailable, SHOW REBALANCE answers 0A000.
	Rebalance func(ctx context.Context) (admin.RebalanceStatus, error)
	// Reload re-reads the config (RELOAD); without it RELOAD answers 0A000.
	Reload func() error
}

// consoleState is the server's side of the console: its data sources,
// the connected clients, and counters since start.
type consoleState struct {
	opts    Console
	started time.Time

	mu      sync.Mutex
	clients map[uint32]*clientInfo

	// Counted on every statement by every session: each on its own
	// cache line, so the counters do not slow each other down.
	clientsTotal paddedCounter
	refused      paddedCounter
	queries      paddedCounter
	transactions paddedCounter
	errors       paddedCounter
	cancels      paddedCounter
}

type paddedCounter struct {
	atomic.Uint64
	_ [56]byte
}

// clientInfo is a logged-in client as SHOW CLIENTS lists it; fixed at
// login except for what is read from the session's atomics.
type clientInfo struct {
	ss       *session
	pid      uint32
	user     string
	database string
	addr     string
	app      string
	tls      bool
	since    time.Time
	console  bool
	busy     atomic.Bool // a console client running a command
}

// initConsole sets up the console state and wraps the hooks so the
// server counts what SHOW STATS reports.
func (s *Server) initConsole(opts Options) {
	c := &s.console
	c.opts = opts.Console
	c.started = time.Now()
	c.clients = map[uint32]*clientInfo{}
	h := opts.Hooks
	// Start from the caller's hooks so every hook not counted here
	// (Statement, Batch, ServerLost, ...) passes through as it is.
	s.hooks = h
	s.hooks.ClientConnected = func() {
		c.clientsTotal.Add(1)
		if h.ClientConnected != nil {
			h.ClientConnected()
		}
	}
	s.hooks.ClientRefused = func(reason string) {
		c.refused.Add(1)
		if h.ClientRefused != nil {
			h.ClientRefused(reason)
		}
	}
	s.hooks.Query = func() {
		c.queries.Add(1)
		if h.Query != nil {
			h.Query()
		}
	}
	s.hooks.Transaction = func() {
		c.transactions.Add(1)
		if h.Transaction != nil {
			h.Transaction()
		}
	}
	s.hooks.Error = func(code string) {
		c.errors.Add(1)
		if h.Error != nil {
			h.Error(code)
		}
	}
	s.hooks.Cancel = func() {
		c.cancels.Add(1)
		if h.Cancel != nil {
			h.Cancel()
		}
	}
}

// trackClient lists a logged-in client for SHOW CLIENTS; call the
// returned func when it leaves.
func (s *Server) trackClient(ss *session, sm *pgproto3.StartupMessage) func() {
	ci := &clientInfo{
		ss: ss, pid: ss.pid, user: ss.user.Name, database: ss.database,
		since: time.Now(), console: ss.database == ConsoleDatabase,
	}
	if a := ss.conn.RemoteAddr(); a != nil {
		ci.addr = a.String()
	}
	_, ci.tls = ss.conn.(*tls.Conn)
	if sm != nil {
		ci.app = sm.Parameters["application_name"]
	}
	c := &s.console
	c.mu.Lock()
	c.clients[ci.pid] = ci
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		if c.clients[ci.pid] == ci {
			delete(c.clients, ci.pid)
		}
		c.mu.Unlock()
	}
}

// consoleLogin finishes the login of a console client: admins only, no
// backend involved.
func (ss *session) consoleLogin(u config.User, db string) error {
	s := ss.srv
	if !u.Admin {
		s.refuse("auth_failed")
		return wire.Fatalf(CodeInsufficientPrivilege,
			"user %s is not an admin: the shardproxy console needs admin: true in the config", u.Name).
			WithHint(fmt.Sprintf("Set admin: true for user %s in the users section, or connect to another database.", u.Name))
	}
	ss.user = u
	ss.database = db
	for _, p := range [][2]string{
		{"server_version", "15.0 (shardproxy console)"},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"},
		{"IntervalStyle", "postgres"},
		{"TimeZone", "UTC"},
		{"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"},
		{"is_superuser", "off"},
		{"session_authorization", u.Name},
		{"application_name", ""},
	} {
		_ = ss.w.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	_ = ss.w.Send(&pgproto3.BackendKeyData{ProcessID: ss.pid, SecretKey: ss.secret})
	_ = ss.w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	ss.txStatus = 'I'
	return ss.w.Flush()
}

// --- commands ---

// Column type OIDs of console results.
const (
	oidBool        = 16
	oidInt8        = 20
	oidInt4        = 23
	oidText        = 25
	oidFloat8      = 701
	oidTimestamptz = 1184
)

type consoleCol struct {
	name string
	oid  uint32
}

// consoleCmd is one console command. Its columns are fixed, so Describe
// answers without running it. A cell is nil (NULL), string, int64, bool,
// float64 or time.Time, matching its column's type.
type consoleCmd struct {
	name string // as listed by SHOW HELP
	help string
	cols []consoleCol
	tag  string // command tag without a row count
	run  func(s *Server, ctx context.Context) ([][]any, *wire.Error)
}

func cols(spec ...any) []consoleCol {
	out := make([]consoleCol, 0, len(spec)/2)
	for i := 0; i+1 < len(spec); i += 2 {
		out = append(out, consoleCol{name: spec[i].(string), oid: uint32(spec[i+1].(int))})
	}
	return out
}

// consoleCmds is in SHOW HELP order.
var consoleCmds []*consoleCmd

// consoleByText maps a normalized statement (lower case, single spaces,
// no trailing semicolon) to its command.
var consoleByText map[string]*consoleCmd

func init() {
	consoleCmds = []*consoleCmd{
		{name: "SHOW SHARDS", help: "shards with their state, slot count, primary and replica count",
			cols: cols("name", oidText, "state", oidText, "slots", oidInt8, "primary", oidText,
				"replicas", oidInt8, "primary_healthy", oidBool),
			tag: "SHOW", run: (*Server).consoleShards},
		{name: "SHOW REPLICAS", help: "replicas with health, lag and reads served",
			cols: cols("shard", oidText, "addr", oidText, "healthy", oidBool, "lag_bytes", oidInt8,
				"lag_seconds", oidFloat8, "outstanding", oidInt8, "reads_served", oidInt8, "last_error", oidText),
			tag: "SHOW", run: (*Server).consoleReplicas},
		{name: "SHOW POOLS", help: "server connection pools, one per node, user and database",
			cols: cols("shard", oidText, "node", oidText, "role", oidText, "user", oidText, "database", oidText,
				"active", oidInt8, "idle", oidInt8, "waiting", oidInt8, "max_size", oidInt8),
			tag: "SHOW", run: (*Server).consolePools},
		{name: "SHOW CLIENTS", help: "connected clients",
			cols: cols("pid", oidInt8, "user", oidText, "database", oidText, "addr", oidText,
				"application_name", oidText, "tls", oidBool, "state", oidText, "tx_open", oidBool,
				"server_pid", oidInt8, "connected_since", oidTimestamptz),
			tag: "SHOW", run: (*Server).consoleClients},
		{name: "SHOW SERVERS", help: "server connections: those linked to a client, then the idle ones per pool",
			cols: cols("shard", oidText, "node", oidText, "role", oidText, "user", oidText, "database", oidText,
				"state", oidText, "server_pid", oidInt8, "client_pid", oidInt8, "connections", oidInt8),
			tag: "SHOW", run: (*Server).consoleServers},
		{name: "SHOW SLOTS", help: "every hash slot and the shard that owns it",
			cols: cols("slot", oidInt8, "shard", oidText, "frozen", oidBool),
			tag:  "SHOW", run: (*Server).consoleSlots},
		{name: "SHOW SLOTS SUMMARY", help: "slot ranges per shard",
			cols: cols("shard", oidText, "slots", oidInt8, "ranges", oidText),
			tag:  "SHOW", run: (*Server).consoleSlotsSummary},
		{name: "SHOW STATS", help: "totals since the proxy started",
			cols: cols("started_at", oidTimestamptz, "uptime_seconds", oidFloat8, "clients", oidInt8,
				"clients_total", oidInt8, "clients_refused", oidInt8, "queries_total", oidInt8,
				"transactions_total", oidInt8, "errors_total", oidInt8, "cancels_total", oidInt8,
				"pool_mode", oidText, "shard_map_version", oidInt8),
			tag: "SHOW", run: (*Server).consoleStats},
		{name: "SHOW REBALANCE", help: "the latest rebalance, a row per move",
			cols: cols("id", oidInt8, "state", oidText, "phase", oidText, "move", oidInt8, "from", oidText,
				"to", oidText, "slots", oidInt8, "slot_ranges", oidText, "move_phase", oidText,
				"rows_copied", oidInt8, "rows_total", oidInt8, "pause_ms", oidFloat8, "verified", oidBool,
				"error", oidText),
			tag: "SHOW", run: (*Server).consoleRebalance},
		{name: "SHOW VERSION", help: "the proxy's version",
			cols: cols("version", oidText),
			tag:  "SHOW", run: (*Server).consoleVersion},
		{name: "SHOW HELP", help: "this list",
			cols: cols("command", oidText, "description", oidText),
			tag:  "SHOW", run: (*Server).consoleHelp},
		{name: "RELOAD", help: "re-read the config file (users, pools, timeouts, replicas)",
			tag: "RELOAD", run: (*Server).consoleReload},
	}
	consoleByText = map[string]*consoleCmd{}
	for _, c := range consoleCmds {
		consoleByText[strings.ToLower(c.name)] = c
	}
	// For tools that check the connection with a query.
	consoleByText["select 1"] = &consoleCmd{name: "SELECT 1", cols: cols("?column?", oidInt4), tag: "SELECT",
		run: func(*Server, context.Context) ([][]any, *wire.Error) { return [][]any{{int64(1)}}, nil }}
}

// normalizeConsole lower-cases a statement, collapses white space and
// drops trailing semicolons.
func normalizeConsole(q string) string {
	q = strings.TrimSpace(q)
	for strings.HasSuffix(q, ";") {
		q = strings.TrimSpace(strings.TrimSuffix(q, ";"))
	}
	return strings.ToLower(strings.Join(strings.Fields(q), " "))
}

// lookupConsole finds the command a statement names; nil with a nil
// error for an empty statement.
func lookupConsole(q string) (*consoleCmd, *wire.Error) {
	n := normalizeConsole(q)
	if n == "" {
		return nil, nil
	}
	if c := consoleByText[n]; c != nil {
		return c, nil
	}
	names := make([]string, 0, len(consoleCmds))
	for _, c := range consoleCmds {
		names = append(names, c.name)
	}
	shown := strings.TrimSpace(q)
	if len(shown) > 60 {
		shown = shown[:60] + "..."
	}
	return nil, wire.Errorf(wire.CodeSyntaxError, "unrecognized shardproxy console command %q", shown).
		WithHint("Valid commands: " + strings.Join(names, ", ") + ". The console only answers these; connect to an application database for SQL.")
}

// splitConsole splits a simple query into its statements (the commands
// hold no quotes, so a plain split on ';' is exact for them).
func splitConsole(q string) []string {
	var out []string
	for _, p := range strings.Split(q, ";") {
		if strings.TrimSpace(p) != "" {
			out = append(out, p)
		}
	}
	return out
}

func (s *Server) consoleCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), consoleTimeout)
}

// unavailable turns a Console func's error into the client's error.
func unavailable(what string, err error) *wire.Error {
	if errors.Is(err, ErrConsoleUnavailable) {
		return wire.Errorf(wire.CodeFeatureNotSupported, "%s is not available in this proxy", what)
	}
	return wire.Errorf(wire.CodeInternalError, "%s: %v", what, err)
}

// slotCounts counts the slots each shard index owns in m (frozen slots
// by their owner before the freeze).
func (s *Server) slotOwners() (owners []int, frozen []bool, m *shard.Map) {
	s.topoMu.Lock()
	m = s.smap.Load()
	var base *shard.Map
	if f := s.gate.Load(); f != nil {
		base = f.base
	}
	s.topoMu.Unlock()
	owners = slices.Clone(m.Slots)
	frozen = make([]bool, len(owners))
	for i, o := range owners {
		if o == shard.Frozen {
			frozen[i] = true
			if base != nil && i < len(base.Slots) {
				owners[i] = base.Slots[i]
			}
		}
	}
	return owners, frozen, m
}

func shardName(m *shard.Map, i int) string {
	if i >= 0 && i < len(m.Shards) {
		return m.Shards[i]
	}
	return "(none)"
}

// primaryHealth is the health of shard i's primary: from the node
// monitor when there is one, else from the replica picker, else NULL.
func (s *Server) primaryHealth(name string, i int, nodes []admin.ShardStatus) any {
	for _, n := range nodes {
		if n.Name == name {
			return n.Primary.Healthy
		}
	}
	if s.replicas != nil && i >= 0 {
		if _, known, healthy := s.replicas.Primary(i); known {
			return healthy
		}
	}
	return nil
}

func (s *Server) consoleShards(ctx context.Context) ([][]any, *wire.Error) {
	var nodes []admin.ShardStatus
	if s.console.opts.Nodes != nil {
		nodes = s.console.opts.Nodes()
	}
	t := s.topo.Load()
	index := func(name string) int { return slices.Index(t.shardNames, name) }
	var rows [][]any
	if f := s.console.opts.Shards; f != nil {
		infos, err := f(ctx)
		switch {
		case errors.Is(err, ErrConsoleUnavailable):
		case err != nil:
			return nil, unavailable("shards", err)
		default:
			for _, sh := range infos {
				rows = append(rows, []any{sh.Name, sh.State, int64(sh.Slots), sh.Primary, int64(len(sh.Replicas)),
					s.primaryHealth(sh.Name, index(sh.Name), nodes)})
			}
			return rows, nil
		}
	}
	owners, _, _ := s.slotOwners()
	for _, i := range t.allShards {
		n := 0
		for _, o := range owners {
			if o == i {
				n++
			}
		}
		name := t.shardNames[i]
		rows = append(rows, []any{name, "active", int64(n), t.primaries[i].Addr(), int64(len(t.replicaSlots[i])),
			s.primaryHealth(name, i, nodes)})
	}
	return rows, nil
}

func (s *Server) consoleReplicas(context.Context) ([][]any, *wire.Error) {
	var rows [][]any
	if s.console.opts.Nodes != nil {
		for _, sh := range s.console.opts.Nodes() {
			for _, r := range sh.Replicas {
				var lagBytes, lagSeconds, lastErr any
				if r.LagBytes != nil {
					lagBytes = int64(min(*r.LagBytes, math.MaxInt64))
				}
				if r.LagSeconds != nil {
					lagSeconds = *r.LagSeconds
				}
				if r.LastError != "" {
					lastErr = r.LastError
				}
				rows = append(rows, []any{sh.Name, r.Addr, r.Healthy, lagBytes, lagSeconds,
					r.Outstanding, int64(min(r.Served, math.MaxInt64)), lastErr})
			}
		}
		return rows, nil
	}
	t := s.topo.Load()
	for _, i := range t.allShards {
		for _, slot := range t.replicaSlots[i] {
			rows = append(rows, []any{t.shardNames[i], t.nodes[slot].Addr(), nil, nil, nil, nil, nil, nil})
		}
	}
	return rows, nil
}

// sortedPools lists the pools by shard, role (primary first), node, user
// and database.
func (s *Server) sortedPools() []*pool.Pool {
	ps := s.pools.All()
	slices.SortFunc(ps, func(a, b *pool.Pool) int {
		return cmpStrings(a.Shard, b.Shard, a.Role, b.Role, a.Key.Node, b.Key.Node,
			a.Key.User, b.Key.User, a.Key.Database, b.Key.Database)
	})
	return ps
}

// cmpStrings compares pairs in order: a1 vs b1, then a2 vs b2, ...
func cmpStrings(pairs ...string) int {
	for i := 0; i+1 < len(pairs); i += 2 {
		if c := strings.Compare(pairs[i], pairs[i+1]); c != 0 {
			return c
		}
	}
	return 0
}

func (s *Server) consolePools(context.Context) ([][]any, *wire.Error) {
	var rows [][]any
	for _, p := range s.sortedPools() {
		st := p.Stats()
		rows = append(rows, []any{p.Shard, p.Key.Node, p.Role, p.Key.User, p.Key.Database,
			int64(st.Active), int64(st.Idle), int64(st.Waiting), int64(st.MaxSize)})
	}
	return rows, nil
}

// clientState is PostgreSQL's pg_stat_activity state of a session.
func clientState(ci *clientInfo) (state string, txOpen bool) {
	if ci.console {
		if ci.busy.Load() {
			return "active", false
		}
		return "idle", false
	}
	txOpen = ci.ss.txEpoch.Load() != 0
	switch {
	case ci.ss.inBatch.Load() != 0 || ci.ss.inMulti.Load() != 0:
		return "active", txOpen
	case txOpen:
		return "idle in transaction", true
	}
	return "idle", false
}

func (s *Server) consoleClients(context.Context) ([][]any, *wire.Error) {
	c := &s.console
	c.mu.Lock()
	list := make([]*clientInfo, 0, len(c.clients))
	for _, ci := range c.clients {
		list = append(list, ci)
	}
	c.mu.Unlock()
	slices.SortFunc(list, func(a, b *clientInfo) int {
		if d := a.since.Compare(b.since); d != 0 {
			return d
		}
		return int(a.pid) - int(b.pid)
	})
	rows := make([][]any, 0, len(list))
	for _, ci := range list {
		state, txOpen := clientState(ci)
		var serverPID any
		if sc := ci.ss.running.Load(); sc != nil {
			serverPID = int64(sc.PID)
		}
		var app any
		if ci.app != "" {
			app = ci.app
		}
		rows = append(rows, []any{int64(ci.pid), ci.user, ci.database, ci.addr, app, ci.tls, state, txOpen,
			serverPID, ci.since})
	}
	return rows, nil
}

func (s *Server) consoleServers(context.Context) ([][]any, *wire.Error) {
	type link struct{ server, client uint32 }
	linked := map[*pool.Pool][]link{}
	s.mu.Lock()
	for _, ss := range s.sessions {
		if sc := ss.running.Load(); sc != nil && sc.Pool() != nil {
			linked[sc.Pool()] = append(linked[sc.Pool()], link{sc.PID, ss.pid})
		}
	}
	s.mu.Unlock()
	var rows [][]any
	for _, p := range s.sortedPools() {
		st := p.Stats()
		ls := linked[p]
		slices.SortFunc(ls, func(a, b link) int { return int(a.server) - int(b.server) })
		base := []any{p.Shard, p.Key.Node, p.Role, p.Key.User, p.Key.Database}
		for _, l := range ls {
			rows = append(rows, append(slices.Clone(base), "active", int64(l.server), int64(l.client), int64(1)))
		}
		// In use but not linked to a client right now: logging a client
		// in, being opened or reset, or a second shard of a transaction.
		if n := st.Active - len(ls); n > 0 {
			rows = append(rows, append(slices.Clone(base), "active", nil, nil, int64(n)))
		}
		if st.Idle > 0 {
			rows = append(rows, append(slices.Clone(base), "idle", nil, nil, int64(st.Idle)))
		}
	}
	return rows, nil
}

func (s *Server) consoleSlots(context.Context) ([][]any, *wire.Error) {
	owners, frozen, m := s.slotOwners()
	rows := make([][]any, len(owners))
	for i, o := range owners {
		rows[i] = []any{int64(i), shardName(m, o), frozen[i]}
	}
	return rows, nil
}

func (s *Server) consoleSlotsSummary(context.Context) ([][]any, *wire.Error) {
	owners, frozen, m := s.slotOwners()
	t := s.topo.Load()
	by := map[int][]int{}
	var frozenSlots []int
	for i, o := range owners {
		by[o] = append(by[o], i)
		if frozen[i] {
			frozenSlots = append(frozenSlots, i)
		}
	}
	var rows [][]any
	for _, i := range t.allShards {
		rows = append(rows, []any{shardName(m, i), int64(len(by[i])), admin.SlotRanges(by[i])})
	}
	if len(frozenSlots) > 0 {
		rows = append(rows, []any{"(frozen)", int64(len(frozenSlots)), admin.SlotRanges(frozenSlots)})
	}
	return rows, nil
}

func (s *Server) consoleStats(context.Context) ([][]any, *wire.Error) {
	c := &s.console
	return [][]any{{c.started, time.Since(c.started).Seconds(), int64(s.ClientCount()),
		u64(c.clientsTotal.Load()), u64(c.refused.Load()), u64(c.queries.Load()),
		u64(c.transactions.Load()), u64(c.errors.Load()), u64(c.cancels.Load()),
		s.cfg.Pool.Mode, s.ShardMap().Version}}, nil
}

func u64(v uint64) int64 { return int64(min(v, math.MaxInt64)) }

func (s *Server) consoleRebalance(ctx context.Context) ([][]any, *wire.Error) {
	f := s.console.opts.Rebalance
	if f == nil {
		return nil, unavailable("rebalance status", ErrConsoleUnavailable).
			WithHint("Rebalancing runs with a metadata database (two shards or more).")
	}
	st, err := f(ctx)
	if err != nil {
		e := unavailable("rebalance status", err)
		if errors.Is(err, ErrConsoleUnavailable) {
			e.WithHint("Rebalancing runs with a metadata database (two shards or more).")
		}
		return nil, e
	}
	state := st.State
	if state == "" {
		state = "idle"
	}
	nz := func(v string) any {
		if v == "" {
			return nil
		}
		return v
	}
	head := []any{st.ID, state, nz(st.Phase)}
	if len(st.Moves) == 0 {
		return [][]any{append(head, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nz(st.Error))}, nil
	}
	rows := make([][]any, 0, len(st.Moves))
	for i, m := range st.Moves {
		errText := m.VerifyError
		if errText == "" {
			errText = st.Error
		}
		slots := slices.Sorted(slices.Values(m.Slots))
		rows = append(rows, append(slices.Clone(head), int64(i+1), m.From, m.To, int64(len(m.Slots)), admin.SlotRanges(slots),
			nz(m.Phase), m.RowsCopied, m.RowsTotal, m.PauseMillis, m.Verified, nz(errText)))
	}
	return rows, nil
}

func (s *Server) consoleVersion(context.Context) ([][]any, *wire.Error) {
	v := s.console.opts.Version
	if v == "" {
		v = "(devel)"
	}
	return [][]any{{"shardproxy " + v}}, nil
}

func (s *Server) consoleHelp(context.Context) ([][]any, *wire.Error) {
	rows := make([][]any, 0, len(consoleCmds))
	for _, c := range consoleCmds {
		rows = append(rows, []any{c.name, c.help})
	}
	return rows, nil
}

func (s *Server) consoleReload(context.Context) ([][]any, *wire.Error) {
	f := s.console.opts.Reload
	if f == nil {
		return nil, wire.Errorf(wire.CodeFeatureNotSupported, "reload is not available").
			WithHint("This proxy was started without a config file to reload.")
	}
	if err := f(); err != nil {
		if errors.Is(err, ErrConsoleUnavailable) {
			return nil, wire.Errorf(wire.CodeFeatureNotSupported, "reload is not available")
		}
		return nil, wire.Errorf(codeConfigFile, "reload failed: %v", err).
			WithHint("The running config is unchanged.")
	}
	s.log.Info("config reloaded from the admin console")
	return nil, nil
}

// --- encoding ---

// rowDescription describes cmd's columns in the given result formats.
func (c *consoleCmd) rowDescription(formats []int16) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(c.cols))}
	for i, col := range c.cols {
		size := int16(-1)
		switch col.oid {
		case oidBool:
			size = 1
		case oidInt4:
			size = 4
		case oidInt8, oidFloat8, oidTimestamptz:
			size = 8
		}
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(col.name), DataTypeOID: col.oid,
			DataTypeSize: size, TypeModifier: -1, Format: formatOf(formats, i)}
	}
	return rd
}

// formatOf is column i's format under Bind's result format codes.
func formatOf(formats []int16, i int) int16 {
	switch {
	case len(formats) == 0:
		return 0
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	}
	return 0
}

// pgEpoch is where PostgreSQL's binary timestamps count from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// encodeCell renders a cell in text (format 0) or binary (1) for its
// column type; nil is NULL.
func encodeCell(v any, oid uint32, format int16) []byte {
	if v == nil {
		return nil
	}
	bin := format == 1
	switch x := v.(type) {
	case string:
		return []byte(x)
	case bool:
		switch {
		case bin && x:
			return []byte{1}
		case bin:
			return []byte{0}
		case x:
			return []byte("t")
		}
		return []byte("f")
	case int64:
		switch {
		case bin && oid == oidInt4:
			return binary.BigEndian.AppendUint32(nil, uint32(int32(x)))
		case bin:
			return binary.BigEndian.AppendUint64(nil, uint64(x))
		}
		return strconv.AppendInt(nil, x, 10)
	case float64:
		if bin {
			return binary.BigEndian.AppendUint64(nil, math.Float64bits(x))
		}
		return strconv.AppendFloat(nil, x, 'f', -1, 64)
	case time.Time:
		if bin {
			return binary.BigEndian.AppendUint64(nil, uint64(x.Sub(pgEpoch).Microseconds()))
		}
		return []byte(x.UTC().Format("2006-01-02 15:04:05.999999-07"))
	}
	return []byte(fmt.Sprint(v))
}

// --- the session loop ---

// consolePortal is a bound console statement.
type consolePortal struct {
	cmd     *consoleCmd // nil: the empty statement
	formats []int16
}

// consoleSession is a console client's extended-protocol state.
type consoleSession struct {
	ss      *session
	info    *clientInfo
	stmts   map[string]*consoleCmd
	portals map[string]consolePortal
	skip    bool // an error in an extended-protocol run: ignore until Sync
}

// runConsole serves a console client until it leaves.
func (ss *session) runConsole() {
	s := ss.srv
	cs := &consoleSession{ss: ss, stmts: map[string]*consoleCmd{}, portals: map[string]consolePortal{}}
	s.console.mu.Lock()
	cs.info = s.console.clients[ss.pid]
	s.console.mu.Unlock()
	if cs.info == nil {
		cs.info = &clientInfo{}
	}
	for {
		if s.shutting.Load() && ss.r.Buffered() == 0 {
			ss.fatal(wire.Fatalf(wire.CodeAdminShutdown, "terminating connection due to administrator command").
				WithDetail("shardproxy is shutting down"))
			return
		}
		typ, msg, err := ss.r.Next()
		if err != nil {
			if wire.IsTimeout(err) && s.shutting.Load() {
				continue // answered at the top of the loop
			}
			_ = ss.onReadError(err)
			return
		}
		if !cs.handle(typ, msg) {
			return
		}
	}
}

// handle answers one client message; false ends the session.
func (cs *consoleSession) handle(typ byte, msg []byte) bool {
	ss := cs.ss
	if cs.skip && typ != 'S' && typ != 'X' {
		return true
	}
	body := wire.Body(msg)
	switch typ {
	case 'X':
		return false
	case 'Q':
		ss.srv.countQuery()
		var q pgproto3.Query
		if err := q.Decode(body); err != nil {
			ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid Query message: %v", err))
			return false
		}
		cs.simple(q.String)
		_ = ss.w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return ss.w.Flush() == nil
	case 'P':
		var p pgproto3.Parse
		if err := p.Decode(body); err != nil {
			return cs.protocolError("Parse", err)
		}
		parts := splitConsole(p.Query)
		if len(parts) > 1 {
			cs.fail(wire.Errorf(wire.CodeSyntaxError, "cannot insert multiple commands into a prepared statement"))
			return true
		}
		cmd, e := lookupConsole(p.Query)
		if e != nil {
			cs.fail(e)
			return true
		}
		cs.stmts[p.Name] = cmd
		ss.w.Append(msgParseComplete)
	case 'B':
		var b pgproto3.Bind
		if err := b.Decode(body); err != nil {
			return cs.protocolError("Bind", err)
		}
		cmd, ok := cs.stmts[b.PreparedStatement]
		if !ok {
			cs.fail(wire.Errorf(wire.CodeInvalidSQLStatementName, "prepared statement \"%s\" does not exist", b.PreparedStatement))
			return true
		}
		if len(b.Parameters) > 0 {
			cs.fail(wire.Errorf(wire.CodeProtocolViolation, "bind message supplies %d parameters, but prepared statement \"%s\" requires 0",
				len(b.Parameters), b.PreparedStatement))
			return true
		}
		cs.portals[b.DestinationPortal] = consolePortal{cmd: cmd, formats: slices.Clone(b.ResultFormatCodes)}
		ss.w.Append(msgBindComplete)
	case 'D':
		var d pgproto3.Describe
		if err := d.Decode(body); err != nil {
			return cs.protocolError("Describe", err)
		}
		var cmd *consoleCmd
		var formats []int16
		if d.ObjectType == 'S' {
			c, ok := cs.stmts[d.Name]
			if !ok {
				cs.fail(wire.Errorf(wire.CodeInvalidSQLStatementName, "prepared statement \"%s\" does not exist", d.Name))
				return true
			}
			cmd = c
			_ = ss.w.Send(&pgproto3.ParameterDescription{})
		} else {
			p, ok := cs.portals[d.Name]
			if !ok {
				cs.fail(wire.Errorf("34000", "portal \"%s\" does not exist", d.Name))
				return true
			}
			cmd, formats = p.cmd, p.formats
		}
		if cmd == nil || len(cmd.cols) == 0 {
			ss.w.Append(msgNoData)
		} else {
			_ = ss.w.Send(cmd.rowDescription(formats))
		}
	case 'E':
		ss.srv.countQuery()
		var e pgproto3.Execute
		if err := e.Decode(body); err != nil {
			return cs.protocolError("Execute", err)
		}
		p, ok := cs.portals[e.Portal]
		if !ok {
			cs.fail(wire.Errorf("34000", "portal \"%s\" does not exist", e.Portal))
			return true
		}
		if p.cmd == nil {
			_ = ss.w.Send(&pgproto3.EmptyQueryResponse{})
			return true
		}
		if e := cs.exec(p.cmd, p.formats, false); e != nil {
			cs.fail(e)
		}
	case 'C':
		var c pgproto3.Close
		if err := c.Decode(body); err != nil {
			return cs.protocolError("Close", err)
		}
		if c.ObjectType == 'S' {
			delete(cs.stmts, c.Name)
		} else {
			delete(cs.portals, c.Name)
		}
		ss.w.Append(msgCloseComplete)
	case 'S':
		cs.skip = false
		delete(cs.portals, "")
		_ = ss.w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return ss.w.Flush() == nil
	case 'H':
		return ss.w.Flush() == nil
	case 'F':
		ss.sendError(wire.Errorf(wire.CodeFeatureNotSupported, "function calls are not supported by the shardproxy console"))
		_ = ss.w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return ss.w.Flush() == nil
	case 'd', 'c', 'f':
		// Copy messages outside COPY: ignored, as PostgreSQL does.
	default:
		ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid frontend message type %d", typ))
		return false
	}
	// Extended-protocol answers wait for Sync or Flush, unless the buffer
	// grows large.
	if ss.w.Len() > 64<<10 {
		return ss.w.Flush() == nil
	}
	return true
}

func (cs *consoleSession) protocolError(what string, err error) bool {
	cs.ss.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid %s message: %v", what, err))
	return false
}

// fail reports an error in an extended-protocol run and skips to Sync.
func (cs *consoleSession) fail(e *wire.Error) {
	cs.ss.sendError(e)
	cs.skip = true
}

// simple runs a simple Query: each statement in turn, stopping at the
// first error; the caller sends ReadyForQuery.
func (cs *consoleSession) simple(q string) {
	parts := splitConsole(q)
	if len(parts) == 0 {
		_ = cs.ss.w.Send(&pgproto3.EmptyQueryResponse{})
		return
	}
	for _, p := range parts {
		cmd, e := lookupConsole(p)
		if e == nil {
			e = cs.exec(cmd, nil, true)
		}
		if e != nil {
			cs.ss.sendError(e)
			return
		}
	}
}

// exec runs cmd and sends its rows (after a RowDescription when simple)
// and CommandComplete.
func (cs *consoleSession) exec(cmd *consoleCmd, formats []int16, simple bool) *wire.Error {
	ss := cs.ss
	cs.info.busy.Store(true)
	defer cs.info.busy.Store(false)
	ctx, cancel := ss.srv.consoleCtx()
	defer cancel()
	rows, e := cmd.run(ss.srv, ctx)
	if e != nil {
		return e
	}
	if simple && len(cmd.cols) > 0 {
		_ = ss.w.Send(cmd.rowDescription(nil))
	}
	vals := make([][]byte, len(cmd.cols))
	for _, r := range rows {
		for i, col := range cmd.cols {
			var v any
			if i < len(r) {
				v = r[i]
			}
			vals[i] = encodeCell(v, col.oid, formatOf(formats, i))
		}
		_ = ss.w.Send(&pgproto3.DataRow{Values: vals})
	}
	tag := cmd.tag
	if tag == "SELECT" {
		tag = fmt.Sprintf("SELECT %d", len(rows))
	}
	_ = ss.w.Send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
	return nil
}
