package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Route kinds, the values of the "route" label of
// shardproxy_statements_total.
const (
	RouteSingle    = iota // one shard
	RouteMulti            // several shards, results merged
	RouteBroadcast        // every shard (DDL, reference-table writes)
	RouteLocal            // answered by the proxy (BEGIN, SET shardproxy.*, ...)
	routeKinds
)

var routeNames = [routeKinds]string{"single_shard", "multi_shard", "broadcast", "proxy"}

// routeMetrics are the per-route statement counters and per-shard batch
// latencies. Children are resolved once (statements) or once per shard
// and role (latencies), so the hot path does an array index and an
// atomic add.
type routeMetrics struct {
	statements *prometheus.CounterVec
	stmt       [routeKinds][2]prometheus.Counter // [route][replica]

	batchSeconds *prometheus.HistogramVec
	mu           sync.Mutex
	batch        atomic.Pointer[[]prometheus.Observer] // by (shard+1)*2 + replica
}

func newRouteMetrics() *routeMetrics {
	r := &routeMetrics{
		statements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "statements_total",
			Help: "Statements routed, by route kind (single_shard, multi_shard, broadcast, proxy) and node role (primary, replica).",
		}, []string{"route", "role"}),
		batchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "batch_duration_seconds",
			Help:    "Time from routing a client's batch (statements up to a Sync or a simple query) to its last answer, by shard (\"multi\" for batches spanning shards) and node role.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"shard", "role"}),
	}
	for k := range routeKinds {
		r.stmt[k][0] = r.statements.WithLabelValues(routeNames[k], "primary")
		r.stmt[k][1] = r.statements.WithLabelValues(routeNames[k], "replica")
	}
	return r
}

// Statement counts one routed statement.
func (m *Metrics) Statement(route int, replica bool) {
	if route < 0 || route >= routeKinds {
		return
	}
	m.routes.stmt[route][b2i(replica)].Inc()
}

// Batch observes one batch's duration on shard index shard (named name;
// -1: several shards).
func (m *Metrics) Batch(shard int, name string, replica bool, d time.Duration) {
	idx := (shard+1)*2 + b2i(replica)
	if c := m.routes.batch.Load(); c != nil && idx < len(*c) && (*c)[idx] != nil {
		(*c)[idx].Observe(d.Seconds())
		return
	}
	m.routes.batchChild(idx, shard, name, replica).Observe(d.Seconds())
}

// batchChild resolves and caches a latency child (first batch per shard
// and role only).
func (r *routeMetrics) batchChild(idx, shard int, name string, replica bool) prometheus.Observer {
	r.mu.Lock()
	defer r.mu.Unlock()
	var cur []prometheus.Observer
	if c := r.batch.Load(); c != nil {
		cur = *c
	}
	if idx < len(cur) && cur[idx] != nil {
		return cur[idx]
	}
	next := make([]prometheus.Observer, max(len(cur), idx+1))
	copy(next, cur)
	if shard < 0 {
		name = "multi"
	}
	role := "primary"
	if replica {
		role = "replica"
	}
	next[idx] = r.batchSeconds.WithLabelValues(name, role)
	r.batch.Store(&next)
	return next[idx]
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ClientStates counts client connections by state at scrape time.
type ClientStates struct{ Idle, Active, InTransaction int }

// RegisterClientStateCollector reports shardproxy_client_connections_by_state
// from fn, called at every scrape.
func (m *Metrics) RegisterClientStateCollector(fn func() ClientStates) {
	desc := prometheus.NewDesc(Namespace+"_client_connections_by_state",
		"Client connections by state: idle (between transactions), active (a statement running), in_transaction (idle inside a transaction).",
		[]string{"state"}, nil)
	m.registry.MustRegister(collectorFunc{desc: desc, collect: func(ch chan<- prometheus.Metric) {
		st := fn()
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(st.Idle), "idle")
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(st.Active), "active")
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(st.InTransaction), "in_transaction")
	}})
}

type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
