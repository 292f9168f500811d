package pool

import (
	"fmt"
	"maps"
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
	mu    sync.RWMutex // guards opts, pools and passwords
	opts  Options
	pools map[Key]*Pool
	// passwords, by server user, replace the ones sessions pass to Get
	// (SetPasswords: a reloaded config's).
	passwords map[string]string
	stop      chan struct{}
	done      sync.WaitGroup
	once      sync.Once
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
	if pw, ok := m.passwords[user]; ok {
		password = pw
	}
	cfg := n.Config.Copy()
	cfg.User = user
	cfg.Password = password
	cfg.Database = database
	// Servers get no client's startup parameters: the proxy applies each
	// client's settings with SET when it hands the connection over. The
	// forwarded limits are the defaults a RESET returns to.
	cfg.RuntimeParams = maps.Clone(m.opts.ServerParams)
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	p = New(key, n.Shard, n.Role, cfg, m.opts)
	m.pools[key] = p
	return p
}

// AbortDials stops the connects in progress to the node at addr
// (host:port) in every pool.
func (m *Manager) AbortDials(addr string) {
	for _, p := range m.All() {
		if p.Key.Node == addr {
			p.AbortDials()
		}
	}
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

// SetLimits changes the limits of every pool, and of those created from
// now on (see Pool.SetLimits).
func (m *Manager) SetLimits(l Limits) {
	m.mu.Lock()
	m.opts.MaxSize, m.opts.WaitTimeout, m.opts.ConnectTimeout, m.opts.IdleTimeout = l.MaxSize, l.WaitTimeout, l.ConnectTimeout, l.IdleTimeout
	m.mu.Unlock()
	for _, p := range m.All() {
		p.SetLimits(l)
	}
}

// SetPasswords sets, by server user, the password new server connections
// log in with, in the pools that exist and those created later; open
// connections are not touched. Users not in passwords keep the password
// their sessions pass to Get.
func (m *Manager) SetPasswords(passwords map[string]string) {
	m.mu.Lock()
	m.passwords = maps.Clone(passwords)
	m.mu.Unlock()
	for _, p := range m.All() {
		if pw, ok := passwords[p.Key.User]; ok {
			p.setPassword(pw)
		}
	}
}

// reapInterval is how often idle connections are looked for: a quarter
// of the idle timeout, at least a second.
func (m *Manager) reapInterval() time.Duration {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return max(m.opts.IdleTimeout/4, time.Second)
}

func (m *Manager) reap() {
	defer m.done.Done()
	interval := m.reapInterval()
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
			// The idle timeout may have changed (SetLimits).
			if next := m.reapInterval(); next != interval {
				interval = next
				t.Reset(interval)
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
