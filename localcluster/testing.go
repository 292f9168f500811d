package localcluster

import (
	"context"
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
