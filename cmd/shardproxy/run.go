package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served only when SHARDPROXY_PPROF names an address
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/metrics"
	"github.com/shardproxy/shardproxy/pool"
	"github.com/shardproxy/shardproxy/proxy"
	"github.com/shardproxy/shardproxy/rebalance"
	"github.com/shardproxy/shardproxy/replica"
	"github.com/shardproxy/shardproxy/shard"
	"github.com/shardproxy/shardproxy/twophase"
)

// shutdownGrace is how long open transactions get to finish on SIGTERM.
const shutdownGrace = 10 * time.Second

func runFromFile(ctx context.Context, path string, onReady func(addr string)) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	return run(ctx, cfg, path, nil, onReady)
}

// run starts the proxy and the admin API and blocks until SIGINT/SIGTERM
// or ctx ends, then shuts down gracefully. cfg was loaded from cfgPath,
// which SIGHUP, shardctl reload and the console's RELOAD re-read.
func run(ctx context.Context, cfg *config.Config, cfgPath string, tlsConf *tls.Config, onReady func(addr string)) error {
	if ctx == nil {
		ctx = context.Background()
	}
	log := configureLog(cfg)
	// Before addStoredShards adds the shards kept in the metadata
	// database: a reload compares the file with the file.
	rl := &reloader{path: cfgPath, file: cfg.Clone(), log: log}
	if addr := os.Getenv("SHARDPROXY_PPROF"); addr != "" {
		// Profiling is for developers: on its own listener, never on the admin API.
		go func() { log.Warn("pprof listener stopped", "err", http.ListenAndServe(addr, nil)) }()
	}
	m := metrics.New()
	pools := pool.NewManager(pool.Options{
		MaxSize:        cfg.Pool.Size,
		WaitTimeout:    cfg.Pool.WaitTimeout.D(),
		ConnectTimeout: cfg.Pool.ConnectTimeout.D(),
		IdleTimeout:    cfg.Pool.IdleTimeout.D(),
		ServerParams:   proxy.ServerParams(cfg.Limits),
		OnConnect: func(err error) {
			m.ServerConnectsTotal.Inc()
			if err != nil {
				m.ServerConnectErrors.Inc()
			}
		},
		OnWait:        func(d time.Duration) { m.PoolWaitSeconds.Observe(d.Seconds()) },
		OnWaitTimeout: func() { m.PoolWaitTimeouts.Inc() },
	})
	defer pools.Close()
	stored, err := addStoredShards(ctx, cfg, log)
	if err != nil {
		return err
	}
	shardList := &atomic.Pointer[[]config.Shard]{}
	shardList.Store(&cfg.Shards)
	// The monitor starts before the proxy it tells about nodes going down.
	var srvP atomic.Pointer[proxy.Server]
	mon, err := startReplicaMonitor(cfg, log, func(shard, addr string, replica bool) {
		role := "primary"
		if replica {
			role = "replica"
		}
		m.NodeDowns.WithLabelValues(shard, addr, role).Inc()
		if srv := srvP.Load(); srv != nil {
			srv.NodeDown(addr, replica)
		} else {
			pools.AbortDials(addr)
		}
	})
	if err != nil {
		return err
	}
	defer mon.Close()
	coord, err := openCoordinator(ctx, cfg, log)
	if err != nil {
		return err
	}
	if coord != nil {
		defer coord.Close()
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		go coord.Run(rctx, func() []twophase.Shard { return recoveryShards(*shardList.Load(), mon) }, 0)
	}
	smap, store, err := loadShardMap(ctx, cfg, log)
	if err != nil {
		return err
	}
	if store != nil {
		defer store.Close()
	}
	// The console reads the orchestrator through a pointer: console
	// sessions outlive the orchestrator at shutdown.
	var orchP atomic.Pointer[rebalance.Orchestrator]
	srv, err := proxy.New(cfg, proxy.Options{Logger: log, TLS: tlsConf, Pools: pools, Hooks: hooks(m), Coordinator: coord, ShardMap: smap, Replicas: mon.ReplicaView(),
		Console: proxy.Console{
			Version: version,
			Reload:  rl.consoleReload,
			Nodes:   func() []admin.ShardStatus { return shardStatuses(mon) },
			Shards: func(ctx context.Context) ([]admin.ShardInfo, error) {
				if o := orchP.Load(); o != nil {
					return o.Shards(ctx)
				}
				return nil, proxy.ErrConsoleUnavailable
			},
			Rebalance: func(ctx context.Context) (admin.RebalanceStatus, error) {
				if o := orchP.Load(); o != nil {
					return o.RebalanceStatus(ctx)
				}
				return admin.RebalanceStatus{}, proxy.ErrConsoleUnavailable
			},
		}})
	if err != nil {
		return err
	}
	srvP.Store(srv)
	rl.attach(srv, mon, nil)
	var orch *rebalance.Orchestrator
	if store != nil {
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		go watchShardMap(wctx, store, srv, log)
		octx, cancel := context.WithTimeout(ctx, time.Minute)
		orch, err = rebalance.New(octx, rebalance.Options{
			MetaDSN: metadataDSN(cfg), Config: cfg, Proxy: proxyOps{srv}, Store: store, Log: log, Stored: stored,
			OnShardAdded: func(sh config.Shard) error {
				if err := mon.AddShard(replicaShardConfig(sh)); err != nil {
					return err
				}
				list := append(append([]config.Shard(nil), *shardList.Load()...), sh)
				shardList.Store(&list)
				return nil
			},
			OnShardRemoved: func(name, tombstone string) {
				if err := mon.RenameShard(name, tombstone); err != nil {
					log.Warn("replica monitor: rename removed shard", "err", err)
				}
				list := slices.DeleteFunc(append([]config.Shard(nil), *shardList.Load()...), func(s config.Shard) bool { return s.Name == name })
				shardList.Store(&list)
			},
		})
		cancel()
		if err != nil {
			return fmt.Errorf("rebalance: %w", err)
		}
		defer orch.Close()
		if err := orch.Register(m.Registry()); err != nil {
			return err
		}
		orchP.Store(orch)
	}
	m.Registry().MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shardproxy_plan_cache_hits_total",
			Help: "Statement texts whose routing plan came from the shared plan cache."},
			func() float64 { h, _ := srv.PlanCacheStats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shardproxy_plan_cache_misses_total",
			Help: "Statement texts parsed and planned (not in the shared plan cache)."},
			func() float64 { _, mi := srv.PlanCacheStats(); return float64(mi) }),
	)
	if coord != nil {
		m.Registry().MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shardproxy_twophase_commits_total",
				Help: "Transactions spanning shards whose commit decision was logged (two-phase commit)."},
				func() float64 { return float64(coord.DecidedCount()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shardproxy_twophase_active",
				Help: "Two-phase commits in progress (between PREPARE and the end of COMMIT PREPARED)."},
				func() float64 { return float64(coord.ActiveCount()) }),
		)
	}
	m.RegisterClientStateCollector(func() metrics.ClientStates {
		idle, active, inTx := srv.ClientStates()
		return metrics.ClientStates{Idle: idle, Active: active, InTransaction: inTx}
	})
	if err := srv.Listen(); err != nil {
		return err
	}
	started := time.Now()
	m.RegisterPoolCollector(func() []metrics.PoolStats { return poolStats(pools) })
	m.RegisterNodeCollector(func() []metrics.NodeStats { return nodeStats(mon) })
	adm := admin.NewServer(admin.Options{
		Listen:   cfg.Admin.Listen,
		Token:    cfg.Admin.Token,
		Registry: m.Registry(),
		Logger:   log,
		Operator: operator(orch),
		Reload:   rl.adminReload,
		Status: func() admin.Status {
			st := admin.Status{
				Version: version, StartedAt: started, Listen: srv.Addr(), PoolMode: cfg.Pool.Mode,
				ClientConnections: srv.ClientCount(),
			}
			st.Shards = shardStatuses(mon)
			for _, p := range poolStats(pools) {
				st.Pools = append(st.Pools, admin.PoolStatus(p))
			}
			return st
		},
	})
	rl.attach(srv, mon, adm)
	if err := adm.Start(); err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	log.Info("shardproxy listening", "addr", srv.Addr(), "admin", adm.Addr(), "pool_mode", cfg.Pool.Mode, "config", cfgPath)
	if onReady != nil {
		onReady(srv.Addr())
	}

wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				_, _ = rl.reload("SIGHUP") // logged either way
				continue
			}
			log.Info("shutting down", "signal", sig.String())
			break wait
		case <-ctx.Done():
			break wait
		case err := <-serveErr:
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	_ = adm.Shutdown(sctx)
	if orch != nil {
		// A move stops where it is (a cutover releases its writes first)
		// and resumes at the next start.
		orchP.Store(nil)
		orch.Close()
		orch = nil
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown cut open transactions", "err", err)
	}
	return nil
}

func hooks(m *metrics.Metrics) proxy.Hooks {
	return proxy.Hooks{
		ClientConnected: func() {
			m.ClientConnections.Inc()
			m.ClientConnectionsTotal.Inc()
		},
		ClientDisconnected: func() { m.ClientConnections.Dec() },
		ClientRefused: func(reason string) {
			m.ClientsRefused.WithLabelValues(reason).Inc()
		},
		Query:       func() { m.Queries.Inc() },
		Statement:   m.Statement,
		Batch:       m.Batch,
		Transaction: func() { m.Transactions.Inc() },
		Error:       m.Error,
		Cancel:      func() { m.CancelRequests.Inc() },
		ServerLost:  func(node string) { m.ServerLost.WithLabelValues(node).Inc() },
		ReadRetried: func(node string) { m.ReplicaReadRetries.WithLabelValues(node).Inc() },
	}
}

func poolStats(pm *pool.Manager) []metrics.PoolStats {
	var out []metrics.PoolStats
	for _, p := range pm.All() {
		s := p.Stats()
		out = append(out, metrics.PoolStats{
			Shard: p.Shard, Node: p.Key.Node, Role: p.Role, User: p.Key.User, Database: p.Key.Database,
			Idle: s.Idle, Active: s.Active, Waiting: s.Waiting, MaxSize: s.MaxSize,
		})
	}
	return out
}

// openCoordinator opens the two-phase commit log on the metadata database
// (metadata.dsn, by default the default shard's primary) when there is
// more than one shard to commit across.
func openCoordinator(ctx context.Context, cfg *config.Config, log *slog.Logger) (*twophase.Coordinator, error) {
	if len(cfg.Shards) < 2 {
		return nil, nil
	}
	dsn := metadataDSN(cfg)
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := twophase.Open(octx, dsn, twophase.DefaultProxyName, log)
	if err != nil {
		return nil, fmt.Errorf("metadata database %s: %w", dsnAddr(dsn), err)
	}
	return c, nil
}

// metadataDSN is where the proxy keeps its durable state.
func metadataDSN(cfg *config.Config) string {
	if cfg.Metadata.DSN != "" {
		return cfg.Metadata.DSN
	}
	for _, sh := range cfg.Shards {
		if sh.Name == cfg.Sharding.DefaultShard {
			return sh.Primary
		}
	}
	return cfg.Shards[0].Primary
}

// recoveryShards lists the shard primaries in-doubt transactions may be
// on: after a failover, the promoted replica, which inherited the old
// primary's prepared transactions with its WAL.
func recoveryShards(shards []config.Shard, mon *replica.Monitor) []twophase.Shard {
	out := make([]twophase.Shard, 0, len(shards))
	for _, sh := range shards {
		dsn := sh.Primary
		if i, ok := mon.ShardIndex(sh.Name); !ok {
			continue
		} else if n, _ := mon.Primary(i); n > 0 {
			dsn = mon.DSN(i, n)
		}
		out = append(out, twophase.Shard{Name: sh.Name, DSN: dsn})
	}
	return out
}

// loadShardMap reads the current shard map version from the metadata
// database, saving the config's as version 1 on the very first start.
// A single shard needs no stored map.
func loadShardMap(ctx context.Context, cfg *config.Config, log *slog.Logger) (*shard.Map, *shard.PGStore, error) {
	base, err := shard.FromConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("shard map: %w", err)
	}
	if len(cfg.Shards) < 2 {
		return base, nil, nil
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dsn := metadataDSN(cfg)
	st, err := shard.OpenPGStore(octx, dsn, log)
	if err != nil {
		return nil, nil, fmt.Errorf("metadata database %s: %w", dsnAddr(dsn), err)
	}
	m, err := shard.LoadOrInit(octx, st, base)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	log.Info("shard map loaded", "version", m.Version, "slots", len(m.Slots))
	return m, st, nil
}

// watchShardMap installs each new shard map version as soon as the
// metadata database announces it.
func watchShardMap(ctx context.Context, st *shard.PGStore, srv *proxy.Server, log *slog.Logger) {
	err := st.Watch(ctx, func(version int64) {
		if cur := srv.ShardMap(); cur != nil && cur.Version >= version {
			return
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		a, err := st.Load(lctx)
		if err != nil || a == nil {
			log.Warn("load new shard map version", "version", version, "err", err)
			return
		}
		// The current map knows the shards added since the start.
		m, err := srv.ShardMap().WithAssignment(a.Version, a.Slots)
		if err != nil {
			log.Error("new shard map version disagrees with the config; keeping the current one", "version", a.Version, "err", err)
			return
		}
		srv.SetShardMap(m)
		log.Info("shard map updated", "version", m.Version)
	})
	if err != nil && ctx.Err() == nil {
		log.Warn("shard map watch stopped", "err", err)
	}
}

// startReplicaMonitor probes every primary and replica (health, WAL
// positions, lag), so reads outside transactions can go to replicas
// within the lag bound and the admin API reports real node health.
func startReplicaMonitor(cfg *config.Config, log *slog.Logger, onDown func(shard, addr string, replica bool)) (*replica.Monitor, error) {
	rc := replica.Config{Logger: log, OnDown: onDown}
	for _, sh := range cfg.Shards {
		rc.Shards = append(rc.Shards, replicaShardConfig(sh))
	}
	m, err := replica.New(rc)
	if err != nil {
		return nil, fmt.Errorf("replica monitor: %w", err)
	}
	m.Start()
	return m, nil
}

// nodeStatus renders a monitored node for /api/v1/status.
func nodeStatus(n replica.NodeState) admin.NodeStatus {
	ns := admin.NodeStatus{Addr: n.Addr, Role: n.Role, Healthy: n.Healthy, Outstanding: n.Outstanding, Served: n.Served, LastError: n.LastError}
	if n.Role == "replica" {
		lag := n.LagBytes
		ns.LagBytes, ns.LagSeconds = &lag, n.LagSeconds
	}
	return ns
}

// nodeStats lists every monitored node for the metrics.
func nodeStats(mon *replica.Monitor) []metrics.NodeStats {
	var out []metrics.NodeStats
	for _, sh := range mon.States() {
		for _, n := range sh.Nodes {
			lag := -1.0
			if n.LagSeconds != nil {
				lag = *n.LagSeconds
			}
			out = append(out, metrics.NodeStats{Shard: sh.Name, Node: n.Addr, Role: n.Role, Healthy: n.Healthy,
				LagBytes: n.LagBytes, LagSeconds: lag, Outstanding: n.Outstanding, Served: n.Served})
		}
	}
	return out
}

func replicaShardConfig(sh config.Shard) replica.ShardConfig {
	sc := replica.ShardConfig{Name: sh.Name, Primary: replica.NodeConfig{DSN: sh.Primary, Addr: dsnAddr(sh.Primary)}}
	for j, r := range sh.Replicas {
		nc := replica.NodeConfig{DSN: r, Addr: dsnAddr(r)}
		if j < len(sh.ReplicaWeights) {
			nc.Weight = sh.ReplicaWeights[j]
		}
		sc.Replicas = append(sc.Replicas, nc)
	}
	return sc
}

// addStoredShards appends the shards added at run time (shard add), kept
// in the metadata database, to the config's, so a restarted proxy routes
// to them too. Only a sharded setup (two shards or more) has them.
func addStoredShards(ctx context.Context, cfg *config.Config, log *slog.Logger) ([]rebalance.StoredShard, error) {
	if len(cfg.Shards) < 2 {
		return nil, nil
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stored, err := rebalance.LoadShards(octx, metadataDSN(cfg))
	if err != nil {
		return nil, fmt.Errorf("metadata database %s: %w", dsnAddr(metadataDSN(cfg)), err)
	}
	for _, s := range stored {
		if s.PrimaryDSN == "" || s.State == rebalance.StateRemoved || slices.ContainsFunc(cfg.Shards, func(c config.Shard) bool { return c.Name == s.Name }) {
			continue
		}
		cfg.Shards = append(cfg.Shards, config.Shard{Name: s.Name, Primary: s.PrimaryDSN, Replicas: s.ReplicaDSNs})
		log.Info("shard added at run time", "shard", s.Name, "primary", dsnAddr(s.PrimaryDSN))
	}
	return stored, nil
}

// proxyOps adapts the proxy server to what the rebalance drives.
type proxyOps struct{ *proxy.Server }

func (p proxyOps) Freeze(ctx context.Context, source int, slots []int) (rebalance.Hold, error) {
	return p.FreezeSlots(ctx, source, slots)
}

// operator is the admin API's operator, nil (verbs answer 503) without
// an orchestrator.
func operator(o *rebalance.Orchestrator) admin.Operator {
	if o == nil {
		return nil
	}
	return o
}

// reloader re-reads the config file the proxy started with (SIGHUP,
// shardctl reload, RELOAD in the admin console) and applies what can
// change while it runs: users, pool limits and timeouts, max_client_conn,
// replica lag bound, fallback and weights, the admin token. A file that
// does not validate, or that changes a setting only a restart applies,
// is refused whole: the running config stays.
type reloader struct {
	path string
	log  *slog.Logger

	mu sync.Mutex // one reload at a time; guards the fields below
	// file is the config the file held at start or at the last reload,
	// before the shards added at run time: the next file is compared
	// with it.
	file *config.Config
	srv  *proxy.Server
	mon  *replica.Monitor
	adm  *admin.Server
}

// attach gives the reloader what it applies a config to, as they are
// built.
func (r *reloader) attach(srv *proxy.Server, mon *replica.Monitor, adm *admin.Server) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv, r.mon, r.adm = srv, mon, adm
}

// reload applies the config file and logs the outcome; source says who
// asked (SIGHUP, admin API, console).
func (r *reloader) reload(source string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	changes, err := r.apply()
	switch {
	case err != nil:
		r.log.Error("config reload refused; the running config stays", "source", source, "config", r.path, "err", oneLine(err))
	case len(changes) == 0:
		r.log.Info("config reloaded: no change", "source", source, "config", r.path)
	default:
		r.log.Info("config reloaded", "source", source, "config", r.path, "changes", strings.Join(changes, "; "))
	}
	return changes, err
}

func (r *reloader) apply() ([]string, error) {
	if r.path == "" || r.srv == nil {
		return nil, errors.New("this proxy has no config file to reload")
	}
	next, err := config.Load(r.path)
	if err != nil {
		return nil, err
	}
	changes, err := config.Diff(r.file, next)
	if err != nil || len(changes) == 0 {
		return nil, err
	}
	if _, err := r.srv.ApplyConfig(r.srv.Config().WithReloadable(next)); err != nil {
		return nil, err
	}
	for i, sh := range next.Shards {
		if !slices.Equal(sh.ReplicaWeights, r.file.Shards[i].ReplicaWeights) {
			if err := r.mon.SetWeights(sh.Name, sh.ReplicaWeights); err != nil {
				r.log.Warn("config reload: replica weights not applied", "shard", sh.Name, "err", err)
			}
		}
	}
	if r.adm != nil {
		r.adm.SetToken(next.Admin.Token)
	}
	setLogLevel(next)
	r.file = next
	return changes, nil
}

// consoleReload is the admin console's RELOAD (proxy.Console.Reload).
func (r *reloader) consoleReload() error {
	_, err := r.reload("console")
	return err
}

// adminReload is POST /api/v1/reload: a refused reload answers 400 with
// the reason and what to do.
func (r *reloader) adminReload(context.Context) (admin.ReloadResult, error) {
	changes, err := r.reload("admin API")
	if err != nil {
		hint := "fix the config file and reload again; the running config is unchanged"
		var re *config.RestartError
		if errors.As(err, &re) {
			hint = "restart the proxy to apply those settings, or put their running values back in the file and reload"
		}
		return admin.ReloadResult{}, &admin.Error{Status: http.StatusBadRequest, Message: oneLine(err), Hint: hint}
	}
	return admin.ReloadResult{Changes: changes}, nil
}

// oneLine joins a multi-line error (errors.Join, YAML's list of problems)
// into one line for logs and shardctl.
func oneLine(err error) string {
	var b strings.Builder
	for i, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if i > 0 && b.Len() > 0 {
			if strings.HasSuffix(b.String(), ":") {
				b.WriteString(" ")
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(l)
	}
	return b.String()
}

// shardStatuses lists every monitored shard with its nodes, for
// /api/v1/status and the console's SHOW SHARDS / SHOW REPLICAS.
func shardStatuses(mon *replica.Monitor) []admin.ShardStatus {
	var out []admin.ShardStatus
	for _, sh := range mon.States() {
		ss := admin.ShardStatus{Name: sh.Name}
		for i, n := range sh.Nodes {
			if i == 0 {
				ss.Primary = nodeStatus(n)
			} else {
				ss.Replicas = append(ss.Replicas, nodeStatus(n))
			}
		}
		out = append(out, ss)
	}
	return out
}

// The proxy's route kinds are the metrics' label indexes (each index
// below compiles only when the two constants are equal).
var (
	_ = [1]struct{}{}[proxy.RouteSingle-metrics.RouteSingle]
	_ = [1]struct{}{}[proxy.RouteMulti-metrics.RouteMulti]
	_ = [1]struct{}{}[proxy.RouteBroadcast-metrics.RouteBroadcast]
	_ = [1]struct{}{}[proxy.RouteLocal-metrics.RouteLocal]
)

// logLevel is the running log level: the config's log.level (changed on
// reload) unless --log-level says otherwise.
var (
	logLevel     slog.LevelVar
	logLevelFlag string // --log-level, "" when not given
)

// configureLog makes the proxy's logger from the config: text or JSON on
// stderr, at the configured level.
func configureLog(cfg *config.Config) *slog.Logger {
	setLogLevel(cfg)
	opts := &slog.HandlerOptions{Level: &logLevel}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	log := slog.New(h)
	slog.SetDefault(log)
	return log
}

func setLogLevel(cfg *config.Config) {
	name := cfg.Log.Level
	if logLevelFlag != "" {
		name = logLevelFlag
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(name)); err == nil {
		logLevel.Set(lvl)
	}
}
