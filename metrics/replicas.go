package metrics

import "github.com/prometheus/client_golang/prometheus"

// NodeStats is one PostgreSQL node's health and replication state at
// scrape time, as the replica monitor measured it.
type NodeStats struct {
	Shard, Node, Role string
	Healthy           bool
	LagBytes          uint64
	// LagSeconds is negative when unknown (not reported then).
	LagSeconds  float64
	Outstanding int64
	Served      uint64
}

var nodeLabels = []string{"shard", "node", "role"}

var (
	nodeUpDesc = prometheus.NewDesc(Namespace+"_node_up",
		"1 when the node answered its last health probe.", nodeLabels, nil)
	replicaLagBytesDesc = prometheus.NewDesc(Namespace+"_replica_lag_bytes",
		"WAL bytes the replica has not replayed yet (primary position minus replay position).", nodeLabels, nil)
	replicaLagSecondsDesc = prometheus.NewDesc(Namespace+"_replica_lag_seconds",
		"How long ago the primary was already past the replica's replay position (0 when caught up).", nodeLabels, nil)
	nodeOutstandingDesc = prometheus.NewDesc(Namespace+"_node_outstanding_queries",
		"Reads currently running on the node through the proxy.", nodeLabels, nil)
	nodeReadsDesc = prometheus.NewDesc(Namespace+"_replica_reads_total",
		"Reads the proxy sent to the node.", nodeLabels, nil)
)

type nodeCollector struct{ stats func() []NodeStats }

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodeUpDesc
	ch <- replicaLagBytesDesc
	ch <- replicaLagSecondsDesc
	ch <- nodeOutstandingDesc
	ch <- nodeReadsDesc
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, n := range c.stats() {
		lv := []string{n.Shard, n.Node, n.Role}
		up := 0.0
		if n.Healthy {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(nodeUpDesc, prometheus.GaugeValue, up, lv...)
		ch <- prometheus.MustNewConstMetric(nodeOutstandingDesc, prometheus.GaugeValue, float64(n.Outstanding), lv...)
		ch <- prometheus.MustNewConstMetric(nodeReadsDesc, prometheus.CounterValue, float64(n.Served), lv...)
		if n.Role == "replica" {
			ch <- prometheus.MustNewConstMetric(replicaLagBytesDesc, prometheus.GaugeValue, float64(n.LagBytes), lv...)
			if n.LagSeconds >= 0 {
				ch <- prometheus.MustNewConstMetric(replicaLagSecondsDesc, prometheus.GaugeValue, n.LagSeconds, lv...)
			}
		}
	}
}

// RegisterNodeCollector makes every scrape report the nodes returned by
// f (called once per scrape, concurrently with the proxy). Register once.
func (m *Metrics) RegisterNodeCollector(f func() []NodeStats) {
	m.registry.MustRegister(nodeCollector{stats: f})
}
