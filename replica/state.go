package replica

import "time"

// Role names in States.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"
	// RoleUnknown: never answered a probe.
	RoleUnknown = "unknown"
	// RoleStalePrimary: out of recovery but not the shard's primary, e.g.
	// an old primary restarted after a failover (split brain). It gets
	// neither writes nor reads.
	RoleStalePrimary = "stale_primary"
)

// ShardState is a shard in States.
type ShardState struct {
	Name           string      `json:"name"`
	Primary        int         `json:"primary"` // node index, -1 if none known
	PrimaryHealthy bool        `json:"primary_healthy"`
	PrimaryLSN     string      `json:"primary_lsn,omitempty"`
	Nodes          []NodeState `json:"nodes"`
}

// NodeState is a node in States.
type NodeState struct {
	Index      int    `json:"index"`
	Addr       string `json:"addr"`
	Role       string `json:"role"`
	Healthy    bool   `json:"healthy"`
	InRecovery bool   `json:"in_recovery"`
	Weight     int64  `json:"weight"`
	// LSN is the replay position of a replica, the current WAL position of
	// a primary.
	LSN        uint64 `json:"lsn"`
	ReplayLSN  string `json:"replay_lsn,omitempty"`
	ReceiveLSN string `json:"receive_lsn,omitempty"`
	LagBytes   uint64 `json:"lag_bytes"`
	// LagSeconds is null when the lag is unknown (no primary sample yet).
	LagSeconds  *float64  `json:"lag_seconds"`
	Outstanding int64     `json:"outstanding"`
	Served      uint64    `json:"served"`
	ProbedAt    time.Time `json:"probed_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
}

// States is a snapshot of every shard and node for the admin API and
// metrics. It allocates; do not call it per query.
func (m *Monitor) States() []ShardState {
	out := make([]ShardState, len(m.list()))
	for si, s := range m.list() {
		snap := s.snap.Load()
		ss := ShardState{Name: s.name, Primary: snap.primary, PrimaryHealthy: snap.primaryOK, Nodes: make([]NodeState, len(s.nodes))}
		if k := len(snap.hist); k > 0 {
			ss.PrimaryLSN = FormatLSN(snap.hist[k-1].LSN)
		}
		for i, n := range s.nodes {
			ns := snap.nodes[i]
			st := NodeState{
				Index: i, Addr: n.addr, Healthy: ns.healthy, InRecovery: ns.inRecovery, Weight: n.weight.Load(),
				LSN: ns.lsn, LagBytes: ns.lagBytes, Outstanding: n.outstanding.Load(), Served: n.served.Load(),
				ProbedAt: ns.probedAt, LastError: ns.lastErr,
			}
			switch {
			case !ns.seen:
				st.Role = RoleUnknown
			case i == snap.primary:
				st.Role = RolePrimary
			case ns.inRecovery:
				st.Role = RoleReplica
			default:
				st.Role = RoleStalePrimary
			}
			if ns.seen && ns.inRecovery {
				st.ReplayLSN = FormatLSN(ns.lsn)
				if ns.receiveLSN != 0 {
					st.ReceiveLSN = FormatLSN(ns.receiveLSN)
				}
			}
			if ns.lagKnown {
				sec := ns.lag.Seconds()
				st.LagSeconds = &sec
			}
			ss.Nodes[i] = st
		}
		out[si] = ss
	}
	return out
}
