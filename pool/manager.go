package pool

import (
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Node is one Postgres server the proxy may connect to.
type Node struct {
	Shard string
	Role  string // primary or replica
	// Config is parsed from the node's DSN; pools copy it and replace
	// user, password and database.
	Config *pgconn.Config
}

// Addr is host:port.
func (n *Node) Addr() string { return fmt.Sprintf("%s:%d", n.Config.Host, n.Config.Port) }

// Manager owns every pool, created lazily per (node, user, database).
type Manager struct {
	opts  Options
	mu    sync.RWMutex
	pools map[Key]*Pool
	stop  chan struct{}
	done  sync.WaitGroup
	once  sync.Once
}

// NewManager starts the idle reaper.
func NewManager(opts Options) *Manager {
	m := &Manager{opts: opts, pools: map[Key]*Pool{}, stop: make(chan struct{})}
	m.done.Add(1)
	go m.reap()
	return m
}

// Get returns the pool for (node, user, database), creating it on first use.
func (m *Manager) Get(n *Node, user, password, database string) *Pool {
	key := Key{Node: n.Addr(), User: user, Database: database}
	m.mu.RLock()
	p := m.pools[key]
	m.mu.RUnlock()
	if p != nil {
		return p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p = m.pools[key]; p != nil {
		return p
	}
	cfg := n.Config.Copy()
	cfg.User = user
	cfg.Password = password
	cfg.Database = database
	// Servers get no startup parameters of their own: the proxy applies
	// each client's settings with SET when it hands the connection over.
	cfg.RuntimeParams = map[string]string{}
	p = New(key, n.Shard, n.Role, cfg, m.opts)
	m.pools[key] = p
	return p
}

// All returns every pool, for stats.
func (m *Manager) All() []*Pool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*Pool, 0, len(m.pools))
	for _, p := range m.pools {
		out = append(out, p)
	}
	return out
}

func (m *Manager) reap() {
	defer m.done.Done()
	interval := m.opts.IdleTimeout / 4
	if interval < time.Second {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case now := <-t.C:
			for _, p := range m.All() {
				p.CloseIdle(now)
			}
		}
	}
}

// Close closes every pool.
func (m *Manager) Close() {
	m.once.Do(func() {
		close(m.stop)
		m.done.Wait()
		for _, p := range m.All() {
			p.Close()
		}
	})
}
