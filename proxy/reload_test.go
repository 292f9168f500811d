package proxy

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/shardproxy/shardproxy/config"
)

func reloadTestServer(t *testing.T) *Server {
	t.Helper()
	cfg, err := config.Parse([]byte(`
users: [{name: app, password: app}, {name: svc, password: x, server_user: app, server_password: app}]
shards: [{name: s0, primary: "postgres://postgres@127.0.0.1:1/app"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.pools.Close)
	return s
}

func TestApplyConfig(t *testing.T) {
	s := reloadTestServer(t)
	start := s.Config()
	p := s.pools.Get(s.primary, "app", "app", "app")

	next := start.Clone()
	next.Pool.Size = 3
	next.Replicas.MaxLag = config.Duration(250 * time.Millisecond)
	next.Users[0].Password = "new"
	next.Users = append(next.Users, config.User{Name: "bob", Password: "bob", Auth: "md5"})
	changes, err := s.ApplyConfig(next)
	if err != nil || len(changes) != 3 {
		t.Fatalf("ApplyConfig: %q, %v", changes, err)
	}
	if s.Config() != next {
		t.Fatal("new config not in force")
	}
	if u, ok := s.Config().User("bob"); !ok || u.Auth != "md5" {
		t.Errorf("bob: %+v %v", u, ok)
	}
	if st := p.Stats(); st.MaxSize != 3 {
		t.Errorf("existing pool max %d, want 3", st.MaxSize)
	}
	if start.Pool.Size != 20 || len(start.Users) != 2 {
		t.Errorf("the previous config was modified: %+v", start)
	}

	// A fixed field: refused, nothing applied.
	moved := next.Clone()
	moved.Listen = "127.0.0.1:1"
	moved.Pool.Size = 9
	var re *config.RestartError
	if _, err := s.ApplyConfig(moved); !errors.As(err, &re) || re.Fields[0] != "listen" {
		t.Fatalf("listen change: %v", err)
	}
	if s.Config() != next || p.Stats().MaxSize != 3 {
		t.Error("a refused reload changed the config in force")
	}
}

// Sessions read the config while reloads swap it (run with -race).
func TestApplyConfigConcurrentReads(t *testing.T) {
	s := reloadTestServer(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c := s.Config()
				_ = c.Replicas.MaxLag.D() + c.Pool.WaitTimeout.D()
				_, _ = c.User("app")
			}
		}()
	}
	for i := range 200 {
		next := s.Config().Clone()
		next.Pool.Size = 1 + i%5
		next.Replicas.MaxLag = config.Duration(time.Duration(i) * time.Millisecond)
		if _, err := s.ApplyConfig(next); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}
