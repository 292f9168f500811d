package replica

import "time"

// ReplicaView numbers each shard's replicas from 0, as the proxy's
// executor does, where the Monitor's node 0 is the shard's primary. It
// satisfies proxy.ReplicaPicker.
type ReplicaView struct{ m *Monitor }

// ReplicaView returns the monitor as the proxy sees it.
func (m *Monitor) ReplicaView() ReplicaView { return ReplicaView{m} }

// Pick is Monitor.Pick with the replica's number among its shard's replicas.
func (v ReplicaView) Pick(shard int, maxLag time.Duration, minLSN uint64) (int, bool) {
	n, ok := v.m.Pick(shard, maxLag, minLSN)
	return n - 1, ok && n >= 1
}

// LSNAfter is Monitor.LSNAfter.
func (v ReplicaView) LSNAfter(shard int, t time.Time) (uint64, bool) { return v.m.LSNAfter(shard, t) }

// Acquired counts a query outstanding on replica r of shard.
func (v ReplicaView) Acquired(shard, r int) { v.m.Acquire(shard, r+1) }

// Released ends what Acquired counted.
func (v ReplicaView) Released(shard, r int) { v.m.Release(shard, r+1) }

// Primary reports where the shard's writes go: replica -1 for the
// configured primary, or the number of the replica the probes saw
// promoted; known is false until some node was seen out of recovery.
func (v ReplicaView) Primary(shard int) (replica int, known, healthy bool) {
	n, ok := v.m.Primary(shard)
	if n < 0 {
		return -1, false, false
	}
	return n - 1, true, ok
}
