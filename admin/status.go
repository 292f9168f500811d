package admin

import "time"

// Status is the body of GET /api/v1/status: the proxy's identity and a
// snapshot of its topology and pools.
type Status struct {
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	// UptimeSeconds is filled in by the server from StartedAt at request
	// time, so the Status func need not compute it.
	UptimeSeconds     float64       `json:"uptime_seconds"`
	Listen            string        `json:"listen"`
	PoolMode          string        `json:"pool_mode"`
	ClientConnections int           `json:"client_connections"`
	Shards            []ShardStatus `json:"shards"`
	Pools             []PoolStatus  `json:"pools"`
}

// ShardStatus is one shard with its nodes.
type ShardStatus struct {
	Name     string       `json:"name"`
	Primary  NodeStatus   `json:"primary"`
	Replicas []NodeStatus `json:"replicas"`
}

// NodeStatus is one PostgreSQL node as the proxy sees it.
type NodeStatus struct {
	Addr    string `json:"addr"`
	Role    string `json:"role"`
	Healthy bool   `json:"healthy"`
	// Measured by the replica monitor, when one runs.
	LagBytes    *uint64  `json:"lag_bytes,omitempty"`
	LagSeconds  *float64 `json:"lag_seconds,omitempty"`
	Outstanding int64    `json:"outstanding_queries,omitempty"`
	Served      uint64   `json:"reads_served,omitempty"`
	LastError   string   `json:"last_error,omitempty"`
}

// PoolStatus is one backend pool. Its fields match metrics.PoolStats one
// for one (a test keeps it so), so a proxy converts with a plain
// admin.PoolStatus(stats) instead of copying field by field.
type PoolStatus struct {
	Shard    string `json:"shard"`
	Node     string `json:"node"`
	Role     string `json:"role"`
	User     string `json:"user"`
	Database string `json:"database"`
	Idle     int    `json:"idle"`
	Active   int    `json:"active"`
	Waiting  int    `json:"waiting"`
	MaxSize  int    `json:"max_size"`
}
