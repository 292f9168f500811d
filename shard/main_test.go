package shard

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/shardproxy/shardproxy/localcluster"
)

// One PostgreSQL server serves every test of the package, started on
// first use (so -short runs start none) and stopped in TestMain.
var (
	clusterOnce sync.Once
	cluster     *localcluster.Cluster
	clusterDir  string
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		if err := cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "shard: stop cluster:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	if clusterDir != "" {
		os.RemoveAll(clusterDir)
	}
	os.Exit(code)
}

// testDSN is a superuser DSN to database app on the package's server.
func testDSN(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped with -short")
	}
	clusterOnce.Do(func() {
		clusterDir, clusterErr = os.MkdirTemp("", "shardproxy-shard-")
		if clusterErr != nil {
			return
		}
		// The servers run as the postgres OS user when we are root.
		if clusterErr = os.Chmod(clusterDir, 0o755); clusterErr != nil {
			return
		}
		cluster, clusterErr = localcluster.Start(context.Background(), localcluster.Options{Dir: clusterDir, Shards: 1})
	})
	if clusterErr != nil {
		// Loud, not a skip: CI without PostgreSQL must notice.
		t.Fatalf("start PostgreSQL: %v", clusterErr)
	}
	return cluster.Primary("shard0").DSN("app")
}
