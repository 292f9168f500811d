package replica

import (
	"math"
	"math/rand/v2"
	"time"
)

// Shards is the number of configured shards.
func (m *Monitor) Shards() int { return len(m.list()) }

// ShardIndex maps a shard name to its index.
func (m *Monitor) ShardIndex(name string) (int, bool) {
	i, ok := m.set.Load().byName[name]
	return i, ok
}

// Nodes is the number of nodes of shard (primary and replicas).
func (m *Monitor) Nodes(shard int) int {
	if shard < 0 || shard >= len(m.list()) {
		return 0
	}
	return len(m.list()[shard].nodes)
}

// Addr is the label (host:port) of a node, for logs and pool lookups.
func (m *Monitor) Addr(shard, node int) string {
	if n := m.node(shard, node); n != nil {
		return n.addr
	}
	return ""
}

// DSN is the configured DSN of a node.
func (m *Monitor) DSN(shard, node int) string {
	if n := m.node(shard, node); n != nil {
		return n.dsn
	}
	return ""
}

func (m *Monitor) node(shard, node int) *node {
	if shard < 0 || shard >= len(m.list()) {
		return nil
	}
	s := m.list()[shard]
	if node < 0 || node >= len(s.nodes) {
		return nil
	}
	return s.nodes[node]
}

// Primary is the node the probes last confirmed as the shard's primary;
// healthy is false when that node is down or back in recovery, in which
// case writes must fail rather than go anywhere else. node is -1 when no
// node has been seen out of recovery yet.
func (m *Monitor) Primary(shard int) (node int, healthy bool) {
	if shard < 0 || shard >= len(m.list()) {
		return -1, false
	}
	snap := m.list()[shard].snap.Load()
	return snap.primary, snap.primaryOK
}

// LSNAfter is the primary's WAL position reported by the first probe sent
// after t. Every transaction that committed (synchronously) before t ends
// at or before it, so a replica whose replay position reaches it has that
// transaction: pass it as Pick's minLSN for read-your-writes. ok is false
// until such a probe has answered (within about one interval); the caller
// then reads from the primary.
//
// With synchronous_commit = off a commit may not be written yet when the
// probe reads pg_current_wal_lsn(); sessions that need read-your-writes
// must not turn it off.
func (m *Monitor) LSNAfter(shard int, t time.Time) (lsn uint64, ok bool) {
	if shard < 0 || shard >= len(m.list()) {
		return 0, false
	}
	return lsnAfter(m.list()[shard].snap.Load().hist, t)
}

// Pick chooses the replica of shard to serve a read: among healthy
// replicas whose time lag is at most maxLag (0: no bound) and whose replay
// position is at least minLSN (0: any), the one with the fewest outstanding
// queries per unit of weight. Ties are broken at random in proportion to
// weight, so idle replicas share reads by weight too. ok is false when no
// replica qualifies: read from the primary, or fail, as configured.
//
// Pick does not count the read; call Acquire on the node used and Release
// when the query is done. It takes no lock and does not allocate.
func (m *Monitor) Pick(shard int, maxLag time.Duration, minLSN uint64) (node int, ok bool) {
	if shard < 0 || shard >= len(m.list()) {
		return -1, false
	}
	s := m.list()[shard]
	snap := s.snap.Load()
	best := -1
	var bestOut, bestW, tieW int64
	for i := range snap.nodes {
		ns := &snap.nodes[i]
		if !ns.eligible(maxLag, minLSN) {
			continue
		}
		n := s.nodes[i]
		out, w := max(n.outstanding.Load(), 0), n.weight.Load()
		if best < 0 {
			best, bestOut, bestW, tieW = i, out, w, w
			continue
		}
		// out/w < bestOut/bestW without division or floats.
		switch a, b := out*bestW, bestOut*w; {
		case a < b:
			best, bestOut, bestW, tieW = i, out, w, w
		case a == b:
			// Weighted reservoir sampling over the tied nodes.
			tieW += w
			if rand.Int64N(tieW) < w {
				best, bestOut, bestW = i, out, w
			}
		}
	}
	return best, best >= 0
}

// PickHash is Pick for the ip_hash policy: the same key (a hash of the
// client address) keeps getting the same replica while that replica
// qualifies, and keys spread over replicas in proportion to weight. It uses
// weighted rendezvous hashing, so when a replica drops out only its own
// keys move, and they come back when it does.
func (m *Monitor) PickHash(shard int, maxLag time.Duration, minLSN uint64, key uint64) (node int, ok bool) {
	if shard < 0 || shard >= len(m.list()) {
		return -1, false
	}
	s := m.list()[shard]
	snap := s.snap.Load()
	best, bestScore := -1, 0.0
	for i := range snap.nodes {
		if !snap.nodes[i].eligible(maxLag, minLSN) {
			continue
		}
		n := s.nodes[i]
		// u in (0, 1); -w/ln(u) is the weighted rendezvous score.
		u := (float64(mix64(key^n.addrHash)>>11) + 0.5) / (1 << 53)
		if score := -float64(n.weight.Load()) / math.Log(u); best < 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	return best, best >= 0
}

// mix64 is splitmix64's finalizer: neighbouring keys (addresses) get
// unrelated scores.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// eligible is the filter of Pick. Every comparison keeps the replica only
// when it is at least as fresh as asked: lag at most maxLag, replay
// position at least minLSN. A replica with unknown lag (no primary sample
// yet) only qualifies when no lag bound is asked for.
func (ns *nodeSnap) eligible(maxLag time.Duration, minLSN uint64) bool {
	if !ns.replica || !ns.healthy || ns.lsn < minLSN {
		return false
	}
	if maxLag > 0 && (!ns.lagKnown || ns.lag > maxLag) {
		return false
	}
	return true
}

// Acquire counts a query starting on a node (replica or primary): it
// raises the node's outstanding count, which Pick balances on, and its
// served total.
func (m *Monitor) Acquire(shard, node int) {
	if n := m.node(shard, node); n != nil {
		n.outstanding.Add(1)
		n.served.Add(1)
	}
}

// Release counts the end of a query started with Acquire.
func (m *Monitor) Release(shard, node int) {
	if n := m.node(shard, node); n != nil {
		n.outstanding.Add(-1)
	}
}

// Outstanding is the number of queries acquired and not yet released on a
// node.
func (m *Monitor) Outstanding(shard, node int) int64 {
	if n := m.node(shard, node); n != nil {
		return n.outstanding.Load()
	}
	return 0
}

// ServedTotal is the number of queries ever acquired on a node.
func (m *Monitor) ServedTotal(shard, node int) uint64 {
	if n := m.node(shard, node); n != nil {
		return n.served.Load()
	}
	return 0
}
