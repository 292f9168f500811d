package sharded

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardproxy/shardproxy/config"
)

// syncBuffer is a bytes.Buffer safe for the proxy's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSlowQueryAndStatementLog: with log.slow_query set, a batch slower
// than it is logged at warn with its route and SQL; with log.statements,
// every statement is logged with its route at debug level.
func TestSlowQueryAndStatementLog(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := startProxyLog(t, 2, func(c *config.Config) {
		c.Log.SlowQuery = config.Duration(150 * time.Millisecond)
		c.Log.Statements = true
	}, log)
	c := connect(t, srv)
	mustExec(t, c, "SELECT pg_sleep(0.3)")
	mustExec(t, c, "SELECT 1")
	setupItems(t, c, 10)
	queryInt(t, c, "SELECT count(*) FROM items")
	out := buf.String()
	slow := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `msg="slow query"`) {
			slow++
			if !strings.Contains(line, "pg_sleep") || !strings.Contains(line, "route=") {
				t.Errorf("slow query line without its SQL or route: %s", line)
			}
		}
	}
	if slow != 1 {
		t.Errorf("want exactly one slow query line (the pg_sleep), got %d:\n%s", slow, out)
	}
	if !strings.Contains(out, `msg=statement`) || !strings.Contains(out, "route: shard0,shard1 primary fan-out") {
		t.Errorf("statement log lacks the fan-out count's route:\n%s", out)
	}
}
