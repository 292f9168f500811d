package proxy

import (
	"sync"
	"sync/atomic"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/pool"
)

// reloadState holds the config in force. Server.cfg stays the config the
// server started with, which is right for the fields a reload cannot
// change (listen, pool.mode, shards, sharding: see config.Reloadable);
// the reloadable ones (users, pool limits, max_client_conn, replica
// settings) are read through Config(), which a reload swaps atomically,
// so sessions read them without a lock.
type reloadState struct {
	cfg atomic.Pointer[config.Config]
	mu  sync.Mutex // serializes ApplyConfig
}

// Config is the config in force: the one the server started with, with
// the reloadable fields of the latest ApplyConfig. Callers must not
// modify it.
func (s *Server) Config() *config.Config { return s.reload.cfg.Load() }

// ApplyConfig puts a reloaded config in force and returns what changed
// (config.Diff's descriptions). next must be validated and, in every
// field a reload cannot change, equal the running config (build it with
// Config().WithReloadable); otherwise ApplyConfig returns the
// *config.RestartError and changes nothing.
//
// Connected clients stay connected and keep the user they logged in as;
// new logins check the new users and passwords. Existing pools adopt the
// new size and timeouts without dropping a connection in use, and new
// server connections log in with the new server passwords. Reads pick
// replicas with the new lag bound and fallback from their next statement.
func (s *Server) ApplyConfig(next *config.Config) ([]string, error) {
	s.reload.mu.Lock()
	defer s.reload.mu.Unlock()
	changes, err := config.Diff(s.Config(), next)
	if err != nil {
		return nil, err
	}
	s.reload.cfg.Store(next)
	s.pools.SetLimits(pool.Limits{
		MaxSize:        next.Pool.Size,
		WaitTimeout:    next.Pool.WaitTimeout.D(),
		ConnectTimeout: next.Pool.ConnectTimeout.D(),
		IdleTimeout:    next.Pool.IdleTimeout.D(),
	})
	s.pools.SetPasswords(serverPasswords(next.Users))
	return changes, nil
}

// serverPasswords maps each server user to the password the proxy logs
// in to the backends with (a user's own, or its server_user's).
func serverPasswords(users []config.User) map[string]string {
	out := make(map[string]string, len(users))
	for _, u := range users {
		if u.ServerUser != "" {
			out[u.ServerUser] = u.ServerPassword
		} else {
			out[u.Name] = u.Password
		}
	}
	return out
}
