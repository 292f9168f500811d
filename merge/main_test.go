package merge

import (
	"fmt"
	"os"
	"testing"

	"github.com/shardproxy/shardproxy/localcluster"
)

// One PostgreSQL server serves every test of the package, started on
// first use and stopped in TestMain.
var shared = localcluster.Shared{Name: "merge", Options: localcluster.Options{Shards: 1}}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := shared.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "merge: stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// testDSN is a superuser DSN to database app on the package's server.
func testDSN(t testing.TB) string {
	t.Helper()
	return shared.Get(t).Primary("shard0").DSN(localcluster.AppDatabase)
}
