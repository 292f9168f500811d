package rebalance

import "github.com/prometheus/client_golang/prometheus"

// metrics are the rebalance's Prometheus series.
type metrics struct {
	running prometheus.Gauge
	pause   prometheus.Histogram
	phases  *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "shardproxy_rebalance_running", Help: "1 while this proxy drives a rebalance."}),
		pause: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "shardproxy_rebalance_cutover_pause_seconds",
			Help:    "How long writes to the moving slots were held at each cutover.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		phases: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shardproxy_rebalance_phases_total", Help: "Move phases entered, by phase."}, []string{"phase"}),
	}
}

func (m *metrics) phase(p string) { m.phases.WithLabelValues(p).Inc() }

// Register adds the rebalance's series to reg, with gauges of the running
// rebalance's progress read at scrape time.
func (o *Orchestrator) Register(reg prometheus.Registerer) error {
	total := func(f func(s *progressTotals) float64) func() float64 {
		return func() float64 {
			var t progressTotals
			o.mu.Lock()
			if o.run != nil {
				for _, mv := range o.run.status.Moves {
					t.rows += mv.RowsCopied
					t.rowsTotal += mv.RowsTotal
					t.bytes += mv.BytesCopied
					t.lag += mv.LagBytes
					t.cleaned += mv.RowsCleaned
				}
			}
			o.mu.Unlock()
			return f(&t)
		}
	}
	cs := []prometheus.Collector{o.m.running, o.m.pause, o.m.phases,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shardproxy_rebalance_rows_copied", Help: "Rows the running rebalance copied so far."}, total(func(t *progressTotals) float64 { return float64(t.rows) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shardproxy_rebalance_rows_planned", Help: "Rows the running rebalance moves (estimated at the start)."}, total(func(t *progressTotals) float64 { return float64(t.rowsTotal) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shardproxy_rebalance_bytes_copied", Help: "Bytes the running rebalance copied so far."}, total(func(t *progressTotals) float64 { return float64(t.bytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shardproxy_rebalance_lag_bytes", Help: "WAL the moves' targets have yet to apply."}, total(func(t *progressTotals) float64 { return float64(t.lag) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shardproxy_rebalance_rows_cleaned", Help: "Moved rows deleted from their sources so far."}, total(func(t *progressTotals) float64 { return float64(t.cleaned) })),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

type progressTotals struct {
	rows, rowsTotal, bytes, lag, cleaned int64
}
