package localcluster

import (
	"context"
	"os"
	"sync"
	"testing"
)

// StartForTest starts a cluster for a test or benchmark and stops it in
// t.Cleanup. If opts.Dir is empty it uses tb.TempDir(). Failure to start
// fails the test rather than skipping it: a missing PostgreSQL install on CI
// should be loud.
func StartForTest(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	// Not tb.Context(): Start only uses ctx while it runs, and Cleanup
	// must be able to stop the servers after that context is canceled.
	c, err := Start(context.Background(), opts)
	if err != nil {
		tb.Fatalf("localcluster: %v", err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Errorf("localcluster: stop: %v", err)
		}
	})
	return c
}

// Shared is one cluster shared by every test of a package, started on
// first use (so -short runs, whose tests skip, start none). Call Stop
// from TestMain after m.Run.
type Shared struct {
	// Name labels the temporary directory and messages.
	Name string
	// Options for Start; Dir is made by Shared.
	Options Options

	once sync.Once
	c    *Cluster
	dir  string
	err  error
}

// Get returns the shared cluster, starting it the first time. Tests that
// need PostgreSQL call it; under -short it skips the test.
func (s *Shared) Get(tb testing.TB) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs PostgreSQL; skipped with -short")
	}
	s.once.Do(func() {
		s.dir, s.err = os.MkdirTemp("", "shardproxy-"+s.Name+"-")
		if s.err != nil {
			return
		}
		// The servers run as the postgres OS user when we are root.
		if s.err = os.Chmod(s.dir, 0o755); s.err != nil {
			return
		}
		opts := s.Options
		opts.Dir = s.dir
		s.c, s.err = Start(context.Background(), opts)
	})
	if s.err != nil {
		// Loud, not a skip: CI without PostgreSQL must notice.
		tb.Fatalf("start PostgreSQL: %v", s.err)
	}
	return s.c
}

// Stop stops the cluster if it was started and removes its directory.
func (s *Shared) Stop() error {
	var err error
	if s.c != nil {
		err = s.c.Stop()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
	return err
}
