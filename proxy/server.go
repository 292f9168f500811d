// Package proxy is the client-facing side of shardproxy: it accepts
// PostgreSQL connections, authenticates them, and relays each client's
// statements to pooled server connections.
//
// A session runs on one goroutine: it reads client messages up to a
// point where the client waits for answers (Sync, Query, Flush), sends
// them to a server connection in one write, and relays the answers back
// in one write, so a pgbench round trip costs one read and one write on
// each side.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardproxy/shardproxy/auth"
	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/pool"
	"github.com/shardproxy/shardproxy/router"
	"github.com/shardproxy/shardproxy/shard"
	"github.com/shardproxy/shardproxy/twophase"
)

// Hooks let the proxy report to metrics without depending on them; every
// field is optional.
type Hooks struct {
	ClientConnected    func()
	ClientDisconnected func()
	ClientRefused      func(reason string)
	Query              func()
	Transaction        func()
	Error              func(sqlstate string)
	Cancel             func()
	// Statement counts a routed statement by route kind (Route*) and
	// whether a replica serves it; Batch times a batch on shard index
	// shard (-1: several shards).
	Statement func(route int, replica bool)
	Batch     func(shard int, name string, replica bool, d time.Duration)
	// ServerLost and ReadRetried name the node (host:port) of a server
	// connection lost mid-statement, and of a replica whose read ran
	// again on the primary.
	ServerLost  func(node string)
	ReadRetried func(node string)
}

// Route kinds passed to Hooks.Statement (metrics.Route* are the same).
const (
	RouteSingle = iota
	RouteMulti
	RouteBroadcast
	RouteLocal
)

// Options configure a Server beyond the config file.
type Options struct {
	Logger *slog.Logger
	Hooks  Hooks
	// TLS overrides the config's certificate (dev mode uses a generated one).
	TLS *tls.Config
	// Pools overrides the pool manager (tests); built from cfg when nil.
	Pools *pool.Manager
	// Coordinator runs two-phase commits of transactions that write on
	// several shards; without one such commits are refused.
	Coordinator *twophase.Coordinator
	// ShardMap is the shard map to start with (the stored version); built
	// from cfg when nil.
	ShardMap *shard.Map
	// Replicas picks the replica that serves a read outside a
	// transaction; without it every read goes to the primary.
	Replicas ReplicaPicker
	// Console feeds the admin console (database "shardproxy", console.go).
	Console Console
}

// ReplicaPicker chooses replicas for reads from their measured health and
// lag (package replica). Replicas are numbered per shard in config order.
type ReplicaPicker interface {
	// Pick returns a healthy replica of shard whose lag is within maxLag
	// (0: any) and that has replayed minLSN.
	Pick(shard int, maxLag time.Duration, minLSN uint64) (replica int, ok bool)
	// LSNAfter is the primary's WAL position first seen after t: a write
	// committed before t is at or before it.
	LSNAfter(shard int, t time.Time) (lsn uint64, ok bool)
	// Acquired and Released count a replica's outstanding queries.
	Acquired(shard, replica int)
	Released(shard, replica int)
	// Primary is where the shard's writes go: replica -1 for the
	// configured primary, else the replica the probes saw promoted;
	// known is false until a node was seen out of recovery, healthy
	// false when that node is down.
	Primary(shard int) (replica int, known, healthy bool)
}

// routerSchema tells the router which tables are sharded and replicated.
func routerSchema(cfg *config.Config) router.Schema {
	sc := router.Schema{Sharded: map[string]string{}, Reference: map[string]bool{}}
	for _, t := range cfg.Sharding.Tables {
		sc.Sharded[strings.ToLower(t.Name)] = strings.ToLower(t.Key)
	}
	for _, t := range cfg.Sharding.ReferenceTables {
		sc.Reference[strings.ToLower(t)] = true
	}
	return sc
}

// ShardMap is the shard map sessions route by now.
func (s *Server) ShardMap() *shard.Map { return s.smap.Load() }

// SetShardMap installs a new shard map version; sessions route with it
// from their next statement.
// During a cutover the new version is installed with the moving slots
// still frozen.
func (s *Server) SetShardMap(m *shard.Map) {
	s.topoMu.Lock()
	defer s.topoMu.Unlock()
	if f := s.gate.Load(); f != nil {
		f.base = m
		m = m.WithFrozen(f.slots)
	}
	s.smap.Store(m)
}

// Server accepts client connections.
type Server struct {
	// cfg is the config the server started with: read from it only the
	// fields a reload cannot change; Config() has the others (reload.go).
	cfg       *config.Config
	reload    reloadState
	log       *slog.Logger
	hooks     Hooks
	tls       *tls.Config
	pools     *pool.Manager
	ownPools  bool
	verifiers *auth.Verifiers
	primary   *pool.Node // default shard primary: logins are checked here
	topo      atomic.Pointer[topology]
	topoMu    sync.Mutex // serializes AddShard
	replicas  ReplicaPicker
	stmts     *stmtRegistry
	logins    loginCache

	// Sharding: the default shard, the router, the current shard map
	// (swapped whole when a new version arrives) and the 2PC coordinator.
	defShard int
	router   *router.Router
	smap     atomic.Pointer[shard.Map]
	// gate is the running cutover's freeze (nil: none), epoch counts
	// freeze steps for their grace periods (gate.go).
	gate  atomic.Pointer[Freeze]
	epoch atomic.Uint64
	// readFloor, by shard, is the WAL position a replica must have
	// replayed to serve reads (set after a cutover moved rows in).
	readFloor []atomic.Uint64
	coord     *twophase.Coordinator

	ln       net.Listener
	wg       sync.WaitGroup
	clients  atomic.Int64
	shutting atomic.Bool
	hardStop atomic.Int64 // unix nanos after which in-transaction sessions are cut

	mu        sync.Mutex
	sessions  map[uint32]*session
	userConns map[string]int // logged-in clients by user, for users[].max_connections

	console consoleState // the admin console (console.go)
}

// New builds a server from a validated config.
func New(cfg *config.Config, opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		hooks:     opts.Hooks,
		tls:       opts.TLS,
		pools:     opts.Pools,
		verifiers: auth.NewVerifiers(),
		stmts:     newStmtRegistry(),
		sessions:  map[uint32]*session{},
	}
	s.reload.cfg.Store(cfg)
	s.initConsole(opts) // wraps s.hooks to count for SHOW STATS
	if s.tls == nil && cfg.TLS.Enabled() {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: load certificate: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if s.tls != nil && s.tls.MinVersion < tls.VersionTLS12 {
		// TLS 1.0 and 1.1 are broken; no caller gets them by omission.
		s.tls = s.tls.Clone()
		s.tls.MinVersion = tls.VersionTLS12
	}
	t, err := newTopology(cfg.Shards, reservedPrimaries(len(cfg.Shards)))
	if err != nil {
		return nil, err
	}
	for i, sh := range cfg.Shards {
		if sh.Name == cfg.Sharding.DefaultShard {
			s.defShard = i
		}
	}
	s.primary = t.primaries[s.defShard]
	s.topo.Store(t)
	s.epoch.Store(1)
	s.readFloor = make([]atomic.Uint64, len(t.primaries))
	s.replicas = opts.Replicas
	m := opts.ShardMap
	if m == nil {
		if m, err = shard.FromConfig(cfg); err != nil {
			return nil, fmt.Errorf("shard map: %w", err)
		}
	}
	s.smap.Store(m)
	s.router = router.New(routerSchema(cfg), 10000)
	s.stmts.router = s.router
	s.coord = opts.Coordinator
	if s.pools == nil {
		s.pools = pool.NewManager(pool.Options{
			MaxSize:        cfg.Pool.Size,
			WaitTimeout:    cfg.Pool.WaitTimeout.D(),
			ConnectTimeout: cfg.Pool.ConnectTimeout.D(),
			IdleTimeout:    cfg.Pool.IdleTimeout.D(),
			ServerParams:   ServerParams(cfg.Limits),
		})
		s.ownPools = true
	}
	return s, nil
}

// ServerParams are the startup parameters that forward the configured
// limits to every server connection, in milliseconds as PostgreSQL reads
// them.
func ServerParams(l config.Limits) map[string]string {
	p := map[string]string{}
	if d := l.StatementTimeout.D(); d > 0 {
		p["statement_timeout"] = strconv.FormatInt(d.Milliseconds(), 10)
	}
	if d := l.IdleInTransactionTimeout.D(); d > 0 {
		p["idle_in_transaction_session_timeout"] = strconv.FormatInt(d.Milliseconds(), 10)
	}
	return p
}

// Pools exposes the pool manager for stats.
func (s *Server) Pools() *pool.Manager { return s.pools }

// ClientCount is the number of connected clients.
func (s *Server) ClientCount() int { return int(s.clients.Load()) }

// Listen binds the client port.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	s.ln = ln
	return nil
}

// Addr is the bound client address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve accepts clients until Shutdown.
func (s *Server) Serve() error {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
		}()
	}
}

// Shutdown stops accepting clients, lets running statements and open
// transactions finish until ctx expires, tells idle clients the server is
// shutting down (57P01), then closes the pools.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	hard := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok {
		hard = dl
	}
	s.hardStop.Store(hard.UnixNano())
	if s.ln != nil {
		_ = s.ln.Close()
	}
	// A past read deadline wakes every session blocked on its client; each
	// decides whether it is idle (leave now) or in a transaction (wait).
	s.mu.Lock()
	for _, ss := range s.sessions {
		_ = ss.conn.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for _, ss := range s.sessions {
			_ = ss.conn.Close()
			// A session waiting on its server wakes up only when that
			// socket closes too.
			if sc := ss.running.Load(); sc != nil {
				_ = sc.CloseSocket()
			}
		}
		s.mu.Unlock()
		<-done
		err = ctx.Err()
	}
	if s.ownPools {
		s.pools.Close()
	}
	return err
}

// register gives a session its own cancel key.
func (s *Server) register(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff
		if pid == 0 || s.sessions[pid] != nil {
			continue
		}
		ss.pid = pid
		ss.secret = append([]byte(nil), b[4:8]...)
		s.sessions[pid] = ss
		return
	}
}

func (s *Server) unregister(ss *session) {
	s.mu.Lock()
	if s.sessions[ss.pid] == ss {
		delete(s.sessions, ss.pid)
	}
	if ss.countedUser != "" {
		if s.userConns[ss.countedUser]--; s.userConns[ss.countedUser] <= 0 {
			delete(s.userConns, ss.countedUser)
		}
		ss.countedUser = ""
	}
	s.mu.Unlock()
}

// admitUser counts an authenticated client against its user's
// max_connections (0: no cap); false when the user is at its cap.
func (s *Server) admitUser(ss *session, user string, max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max > 0 && s.userConns[user] >= max {
		return false
	}
	if s.userConns == nil {
		s.userConns = map[string]int{}
	}
	s.userConns[user]++
	ss.countedUser = user
	return true
}

// cancel forwards a client's CancelRequest to the server connection that
// is running that client's statement, if any.
func (s *Server) cancel(pid uint32, secret []byte) {
	s.mu.Lock()
	ss := s.sessions[pid]
	s.mu.Unlock()
	if ss == nil || !equalSecret(ss.secret, secret) {
		return
	}
	if s.hooks.Cancel != nil {
		s.hooks.Cancel()
	}
	sc := ss.running.Load()
	if sc == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc.Cancel(ctx); err != nil {
		s.log.Warn("forward cancel request", "err", err)
	}
}

func equalSecret(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := range a {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// SetReadFloor makes reads of shard i outside transactions go to replicas
// only once they have replayed lsn (the primary's position after rows
// moved in), so no read on a replica misses them.
func (s *Server) SetReadFloor(i int, lsn uint64) {
	if i >= 0 && i < len(s.readFloor) {
		s.readFloor[i].Store(lsn)
	}
}

// ClientStates counts the client sessions (console sessions aside) that
// are idle, running a batch, or idle inside a transaction.
func (s *Server) ClientStates() (idle, active, inTx int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ss := range s.sessions {
		switch {
		case ss.inBatch.Load() != 0:
			active++
		case ss.txEpoch.Load() != 0:
			inTx++
		default:
			idle++
		}
	}
	return idle, active, inTx
}

// PlanCacheStats returns the shared plan cache's hits and misses.
func (s *Server) PlanCacheStats() (hits, misses uint64) { return s.router.CacheStats() }

// NodeDown is the health monitor's news that the node at addr stopped
// answering. Connects in progress to it give up at once. Reads running on
// it, if it is a replica, are cut: the executor runs them again on the
// primary when the client has seen none of their answer, so a replica
// that stalls with its sockets open (SIGSTOP, a partition) costs its
// readers a health-probe interval, not the outage. Statements on a
// primary are left alone: cutting one would leave its outcome unknown to
// the client because a probe was slow; limits.query_timeout bounds them.
func (s *Server) NodeDown(addr string, replica bool) {
	s.pools.AbortDials(addr)
	if !replica {
		return
	}
	var cut []*pool.Conn
	s.mu.Lock()
	for _, ss := range s.sessions {
		if sc := ss.running.Load(); sc != nil && sc.Pool() != nil && sc.Pool().Key.Node == addr {
			cut = append(cut, sc)
		}
	}
	s.mu.Unlock()
	for _, sc := range cut {
		_ = sc.SetReadDeadline(time.Unix(1, 0))
	}
	if len(cut) > 0 {
		s.log.Warn("replica down: cut the reads running on it; they run again on the primary", "node", addr, "reads", len(cut))
	}
}
