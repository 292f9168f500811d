package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRouteMetrics(t *testing.T) {
	m := New()
	m.Statement(RouteSingle, false)
	m.Statement(RouteSingle, true)
	m.Statement(RouteMulti, false)
	m.Statement(99, false) // out of range: ignored, no panic
	m.Batch(0, "shard0", false, 2*time.Millisecond)
	m.Batch(0, "shard0", false, 3*time.Millisecond)
	m.Batch(3, "spare0", true, time.Millisecond)
	m.Batch(-1, "", false, 5*time.Millisecond)
	m.RegisterClientStateCollector(func() ClientStates { return ClientStates{Idle: 3, Active: 1, InTransaction: 2} })

	want := `
# HELP shardproxy_statements_total Statements routed, by route kind (single_shard, multi_shard, broadcast, proxy) and node role (primary, replica).
# TYPE shardproxy_statements_total counter
shardproxy_statements_total{role="primary",route="broadcast"} 0
shardproxy_statements_total{role="primary",route="multi_shard"} 1
shardproxy_statements_total{role="primary",route="proxy"} 0
shardproxy_statements_total{role="primary",route="single_shard"} 1
shardproxy_statements_total{role="replica",route="broadcast"} 0
shardproxy_statements_total{role="replica",route="multi_shard"} 0
shardproxy_statements_total{role="replica",route="proxy"} 0
shardproxy_statements_total{role="replica",route="single_shard"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "shardproxy_statements_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.routes.batchSeconds); n != 3 {
		t.Errorf("batch latency series: %d, want 3 (shard0/primary, spare0/replica, multi/primary)", n)
	}
	wantStates := `
# HELP shardproxy_client_connections_by_state Client connections by state: idle (between transactions), active (a statement running), in_transaction (idle inside a transaction).
# TYPE shardproxy_client_connections_by_state gauge
shardproxy_client_connections_by_state{state="active"} 1
shardproxy_client_connections_by_state{state="idle"} 3
shardproxy_client_connections_by_state{state="in_transaction"} 2
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(wantStates), "shardproxy_client_connections_by_state"); err != nil {
		t.Error(err)
	}
}

func BenchmarkBatchObserve(b *testing.B) {
	m := New()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.Statement(RouteSingle, false)
		m.Batch(1, "shard1", false, time.Millisecond)
	}
}
