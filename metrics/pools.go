package metrics

import "github.com/prometheus/client_golang/prometheus"

// PoolStats is one backend pool's state at scrape time. A pool serves one
// (node, user, database); Shard and Role say where the node sits.
type PoolStats struct {
	Shard, Node, Role, User, Database string
	Idle, Active, Waiting, MaxSize    int
}

var poolLabels = []string{"shard", "node", "role", "user", "database"}

var (
	poolServerConnsDesc = prometheus.NewDesc(
		Namespace+"_pool_server_connections",
		"Server connections in a pool, by state (idle or active).",
		append(append([]string{}, poolLabels...), "state"), nil)
	poolWaitingDesc = prometheus.NewDesc(
		Namespace+"_pool_clients_waiting",
		"Clients waiting for a server connection from a pool.",
		poolLabels, nil)
	poolMaxSizeDesc = prometheus.NewDesc(
		Namespace+"_pool_max_size",
		"Maximum number of server connections a pool may open.",
		poolLabels, nil)
)

// poolCollector reads pool state only when scraped, so pools need not
// maintain gauges on every checkout and checkin.
type poolCollector struct {
	stats func() []PoolStats
}

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolServerConnsDesc
	ch <- poolWaitingDesc
	ch <- poolMaxSizeDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.stats() {
		lv := []string{p.Shard, p.Node, p.Role, p.User, p.Database}
		gauge := func(d *prometheus.Desc, v int, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), append(lv[:len(lv):len(lv)], extra...)...)
		}
		gauge(poolServerConnsDesc, p.Idle, "idle")
		gauge(poolServerConnsDesc, p.Active, "active")
		gauge(poolWaitingDesc, p.Waiting)
		gauge(poolMaxSizeDesc, p.MaxSize)
	}
}

// RegisterPoolCollector makes every scrape report the pools returned by f.
// f is called once per scrape, concurrently with the proxy, so it must be
// safe for that, and must not return two pools with the same labels (the
// registry rejects duplicate series). Register it once: a second call panics with a duplicate
// registration, which is a wiring bug.
func (m *Metrics) RegisterPoolCollector(f func() []PoolStats) {
	m.registry.MustRegister(poolCollector{stats: f})
}
