package metrics

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// value finds the gauge or counter value of the series of name whose labels
// include all of want; testutil would do this but pulls in a diff library
// the module does not otherwise need.
func value(t *testing.T, m *Metrics, name string, want map[string]string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			return seriesValue(s)
		}
	}
	t.Fatalf("no series %s%v", name, want)
	return 0
}

func seriesValue(s *dto.Metric) float64 {
	if s.Gauge != nil {
		return s.GetGauge().GetValue()
	}
	return s.GetCounter().GetValue()
}

func TestNewRegistersEverythingWithPrefix(t *testing.T) {
	m := New()
	m.ClientConnections.Inc()
	m.ClientConnectionsTotal.Inc()
	m.RefusedTooManyClients.Inc()
	m.Queries.Add(3)
	m.Transactions.Inc()
	m.Error("42P01")
	m.PoolWaitSeconds.Observe(0.001)
	m.PoolWaitTimeouts.Inc()
	m.ServerConnectsTotal.Inc()
	m.ServerConnectErrors.Inc()
	m.CancelRequests.Inc()

	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	got := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		got[name] = true
		// The runtime and process collectors bring their own prefixes.
		if !strings.HasPrefix(name, "shardproxy_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %q lacks the shardproxy_ prefix", name)
		}
	}
	for _, want := range []string{
		"shardproxy_client_connections", "shardproxy_client_connections_total",
		"shardproxy_clients_refused_total", "shardproxy_queries_total",
		"shardproxy_transactions_total", "shardproxy_errors_total",
		"shardproxy_pool_wait_seconds", "shardproxy_pool_wait_timeouts_total",
		"shardproxy_server_connects_total", "shardproxy_server_connect_errors_total",
		"shardproxy_cancel_requests_total", "go_goroutines",
	} {
		if !got[want] {
			t.Errorf("metric %s not registered", want)
		}
	}
	if v := value(t, m, "shardproxy_clients_refused_total", map[string]string{"reason": ReasonAuthFailed}); v != 0 {
		t.Errorf("auth_failed = %v before any refusal, want a 0 series", v)
	}
	if v := value(t, m, "shardproxy_errors_total", map[string]string{"class": "42"}); v != 1 {
		t.Errorf("errors_total{class=42} = %v, want 1", v)
	}
}

func TestErrorClassIsBounded(t *testing.T) {
	for code, want := range map[string]string{"23505": "23", "08006": "08", "": "XX", "boom!": "XX", "P0001": "P0"} {
		if got := sqlstateClass(code); got != want {
			t.Errorf("sqlstateClass(%q) = %q, want %q", code, got, want)
		}
	}
}

func TestPoolCollector(t *testing.T) {
	m := New()
	m.RegisterPoolCollector(func() []PoolStats {
		return []PoolStats{{Shard: "s0", Node: "10.0.0.1:5432", Role: "primary", User: "app", Database: "app", Idle: 2, Active: 3, Waiting: 1, MaxSize: 20}}
	})
	pool := map[string]string{"shard": "s0", "node": "10.0.0.1:5432", "role": "primary", "user": "app", "database": "app"}
	with := func(k, v string) map[string]string {
		l := map[string]string{k: v}
		for k, v := range pool {
			l[k] = v
		}
		return l
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"shardproxy_pool_server_connections", with("state", "idle"), 2},
		{"shardproxy_pool_server_connections", with("state", "active"), 3},
		{"shardproxy_pool_clients_waiting", pool, 1},
		{"shardproxy_pool_max_size", pool, 20},
	} {
		if got := value(t, m, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// The hot path must not allocate: the proxy bumps these per statement.
func TestHotPathDoesNotAllocate(t *testing.T) {
	m := New()
	m.Error("40001")
	allocs := testing.AllocsPerRun(100, func() {
		m.Queries.Inc()
		m.RefusedBadStartup.Inc()
		m.Error("40001")
	})
	if allocs != 0 {
		t.Errorf("hot path allocates %v times per run", allocs)
	}
}
