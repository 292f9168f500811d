// Package metrics holds the proxy's Prometheus metrics.
//
// The proxy increments the exported fields directly. Every field is an
// already-resolved metric (label children are looked up once, in New), so
// the hot path costs one atomic add and never a map lookup or allocation.
// The metrics live on their own registry, not the global default one, so
// tests and embedded proxies (shardproxy dev) never collide on names.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric name, as the product contract requires.
const Namespace = "shardproxy"

// Reasons for refusing a client, the values of the "reason" label of
// shardproxy_clients_refused_total.
const (
	ReasonAuthFailed      = "auth_failed"
	ReasonTooManyClients  = "too_many_clients"
	ReasonBadStartup      = "bad_startup"
	ReasonUnknownDatabase = "unknown_database"
)

// Metrics is the proxy's set of metrics. Create it with New.
type Metrics struct {
	registry *prometheus.Registry

	ClientConnections      prometheus.Gauge
	ClientConnectionsTotal prometheus.Counter
	// ClientsRefused is by reason; the Refused* fields below are its
	// pre-resolved children for the known reasons.
	ClientsRefused *prometheus.CounterVec

	RefusedAuthFailed      prometheus.Counter
	RefusedTooManyClients  prometheus.Counter
	RefusedBadStartup      prometheus.Counter
	RefusedUnknownDatabase prometheus.Counter

	Queries      prometheus.Counter
	Transactions prometheus.Counter
	// Errors is by SQLSTATE class (the first two characters of the code);
	// use Error, which caches the child per class.
	Errors *prometheus.CounterVec

	PoolWaitSeconds     prometheus.Histogram
	PoolWaitTimeouts    prometheus.Counter
	ServerConnectsTotal prometheus.Counter
	ServerConnectErrors prometheus.Counter
	CancelRequests      prometheus.Counter
	// NodeDowns counts a node's healthy-to-unhealthy changes, so an
	// outage shorter than the scrape interval still shows; ServerLost
	// counts server connections lost mid-statement (closed, timed out or
	// cut after a health failure) and ReplicaReadRetries the reads run
	// again on the primary after their replica failed. All by node.
	NodeDowns          *prometheus.CounterVec
	ServerLost         *prometheus.CounterVec
	ReplicaReadRetries *prometheus.CounterVec

	errorClasses errorClassCache
	routes       *routeMetrics
}

// New creates the metrics and registers them, together with the Go runtime
// and process collectors, on a fresh registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		registry: reg,
		ClientConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "client_connections",
			Help: "Client connections currently open.",
		}),
		ClientConnectionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "client_connections_total",
			Help: "Client connections accepted since start.",
		}),
		ClientsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "clients_refused_total",
			Help: "Client connections refused, by reason.",
		}, []string{"reason"}),
		Queries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "queries_total",
			Help: "Statements received from clients.",
		}),
		Transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "transactions_total",
			Help: "Transactions completed (committed or rolled back), including implicit single-statement ones.",
		}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "errors_total",
			Help: "Errors returned to clients, by SQLSTATE class.",
		}, []string{"class"}),
		PoolWaitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "pool_wait_seconds",
			Help: "Time a client waited for a server connection from a pool.",
			// A pool that hands out connections in microseconds is the
			// norm; the upper buckets reach the default 5s wait timeout.
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		PoolWaitTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "pool_wait_timeouts_total",
			Help: "Clients that gave up waiting for a server connection.",
		}),
		ServerConnectsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "server_connects_total",
			Help: "Server connections established to backends.",
		}),
		ServerConnectErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "server_connect_errors_total",
			Help: "Failed attempts to connect to a backend.",
		}),
		CancelRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "cancel_requests_total",
			Help: "CancelRequest messages received from clients.",
		}),
		NodeDowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "node_down_total",
			Help: "Times a node went from healthy to failing its health probe.",
		}, []string{"shard", "node", "role"}),
		ServerLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "server_connections_lost_total",
			Help: "Server connections lost while a statement ran on them (closed by the server, timed out, or cut after a health failure).",
		}, []string{"node"}),
		ReplicaReadRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "replica_read_retries_total",
			Help: "Reads run again on the primary because their replica failed before the client saw an answer.",
		}, []string{"node"}),
	}
	// Resolving the children now also makes every reason appear as 0 on
	// the first scrape, so rate() and alerts work before the first refusal.
	m.RefusedAuthFailed = m.ClientsRefused.WithLabelValues(ReasonAuthFailed)
	m.RefusedTooManyClients = m.ClientsRefused.WithLabelValues(ReasonTooManyClients)
	m.RefusedBadStartup = m.ClientsRefused.WithLabelValues(ReasonBadStartup)
	m.RefusedUnknownDatabase = m.ClientsRefused.WithLabelValues(ReasonUnknownDatabase)
	m.errorClasses.vec = m.Errors
	m.routes = newRouteMetrics()

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.ClientConnections, m.ClientConnectionsTotal, m.ClientsRefused,
		m.Queries, m.Transactions, m.Errors,
		m.PoolWaitSeconds, m.PoolWaitTimeouts,
		m.ServerConnectsTotal, m.ServerConnectErrors, m.CancelRequests,
		m.NodeDowns, m.ServerLost, m.ReplicaReadRetries,
		m.routes.statements, m.routes.batchSeconds,
	)
	return m
}

// Registry returns the registry holding every proxy metric, for the admin
// API's /metrics handler.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Error counts one error sent to a client with the given SQLSTATE code
// (five characters, e.g. "42P01"); it is counted under its class ("42").
func (m *Metrics) Error(sqlstate string) { m.errorClasses.get(sqlstate).Inc() }
