package proxy

import (
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/pool"
	"github.com/shardproxy/shardproxy/shard"
)

// maxNodes bounds primaries (reserved) plus replicas: a session keeps the
// nodes a transaction touched in one uint64.
const maxNodes = 64

// reservedPrimaries is how many primary slots a server keeps: room for
// shards added while it runs, so adding one never renumbers the nodes a
// session holds connections to.
func reservedPrimaries(configured int) int {
	return max(16, configured+8)
}

// topology is the set of nodes sessions connect to. It only grows (shard
// add) and is replaced whole, so a session can hold on to an old one and
// switch at its next batch: node numbers (a session's connection slots)
// never change meaning.
//
// Slots 0..len(primaries)-1 are the primaries by shard index (nil where no
// shard is yet), the replicas follow in the order they were added.
type topology struct {
	primaries    []*pool.Node
	nodes        []*pool.Node
	slotNames    []string // "shard0", "shard0/replica1", ...
	replicaSlots [][]int  // by shard: the slots of its replicas, in config order
	slotShard    []int    // by slot: its shard (-1: unused)
	slotReplica  []int    // by slot: its replica number in the shard (-1: primary)
	shardNames   []string // by shard index, the shards that exist
	allShards    []int
	hasReplicas  bool
}

func newTopology(shards []config.Shard, reserved int) (*topology, error) {
	t := &topology{
		primaries:    make([]*pool.Node, reserved),
		replicaSlots: make([][]int, reserved),
	}
	t.nodes = make([]*pool.Node, reserved)
	t.slotNames = make([]string, reserved)
	t.slotShard = make([]int, reserved)
	t.slotReplica = make([]int, reserved)
	for i := range reserved {
		t.slotShard[i], t.slotReplica[i] = -1, -1
	}
	for _, sh := range shards {
		var err error
		if t, err = t.withShard(sh); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// withShard returns a copy with one more shard (index len(shardNames)).
func (t *topology) withShard(sh config.Shard) (*topology, error) {
	i := len(t.shardNames)
	if i >= len(t.primaries) {
		return nil, fmt.Errorf("shard %s: at most %d shards per proxy run (restart the proxy to add more)", sh.Name, len(t.primaries))
	}
	if len(t.nodes)+len(sh.Replicas) > maxNodes {
		return nil, fmt.Errorf("shard %s: %d primaries and replicas: at most %d are supported", sh.Name, len(t.nodes)+len(sh.Replicas), maxNodes)
	}
	pc, err := pgconn.ParseConfig(sh.Primary)
	if err != nil {
		return nil, fmt.Errorf("shard %s: primary DSN: %w", sh.Name, err)
	}
	n := &topology{
		primaries:    append([]*pool.Node(nil), t.primaries...),
		nodes:        append([]*pool.Node(nil), t.nodes...),
		slotNames:    append([]string(nil), t.slotNames...),
		replicaSlots: append([][]int(nil), t.replicaSlots...),
		slotShard:    append([]int(nil), t.slotShard...),
		slotReplica:  append([]int(nil), t.slotReplica...),
		shardNames:   append(append([]string(nil), t.shardNames...), sh.Name),
		allShards:    append(append([]int(nil), t.allShards...), i),
		hasReplicas:  t.hasReplicas,
	}
	node := &pool.Node{Shard: sh.Name, Role: "primary", Config: pc}
	n.primaries[i], n.nodes[i], n.slotNames[i], n.slotShard[i] = node, node, sh.Name, i
	for j, dsn := range sh.Replicas {
		pc, err := pgconn.ParseConfig(dsn)
		if err != nil {
			return nil, fmt.Errorf("shard %s: replica %d DSN: %w", sh.Name, j+1, err)
		}
		n.replicaSlots[i] = append(n.replicaSlots[i], len(n.nodes))
		n.nodes = append(n.nodes, &pool.Node{Shard: sh.Name, Role: "replica", Config: pc})
		n.slotNames = append(n.slotNames, fmt.Sprintf("%s/replica%d", sh.Name, j+1))
		n.slotShard = append(n.slotShard, i)
		n.slotReplica = append(n.slotReplica, j)
		n.hasReplicas = true
	}
	return n, nil
}

// AddShard adds a shard while the server runs: sessions can reach it from
// their next batch. It owns no slots until a shard map version gives it
// some; m must be the current map with the shard added (Map.WithShard).
func (s *Server) AddShard(sh config.Shard, m *shard.Map) error {
	s.topoMu.Lock()
	defer s.topoMu.Unlock()
	t := s.topo.Load()
	for _, name := range t.shardNames {
		if name == sh.Name {
			return fmt.Errorf("shard %s already exists", sh.Name)
		}
	}
	if idx, ok := m.ShardIndex(sh.Name); !ok || idx != len(t.shardNames) {
		return fmt.Errorf("shard %s: the shard map must add it as shard index %d", sh.Name, len(t.shardNames))
	}
	n, err := t.withShard(sh)
	if err != nil {
		return err
	}
	s.topo.Store(n)
	s.smap.Store(m)
	return nil
}

// ShardNames are the shards the server routes to, by index.
func (s *Server) ShardNames() []string { return s.topo.Load().shardNames }

// adoptTopology moves the session to the server's current topology,
// growing its per-node arrays; the node numbers it holds keep their
// meaning.
func (ss *session) adoptTopology() {
	t := ss.srv.topo.Load()
	if t == ss.topo {
		return
	}
	for len(ss.pools) < len(t.nodes) {
		ss.pools = append(ss.pools, nil)
		ss.conns = append(ss.conns, nil)
	}
	for i, n := range t.nodes {
		if n != nil && ss.pools[i] == nil {
			ss.pools[i] = ss.srv.pools.Get(n, ss.serverUser, ss.serverPass, ss.database)
		}
	}
	for len(ss.wroteAt) < len(t.primaries) {
		ss.wroteAt = append(ss.wroteAt, time.Time{})
	}
	ss.topo = t
}

// RetireShard stops routing to a shard that owns no slots any more
// (shard remove): fan-out statements leave it out from their next batch.
// Its index stays taken until the proxy restarts, under the name
// tombstone, so the name itself can be added again.
func (s *Server) RetireShard(name, tombstone string) error {
	s.topoMu.Lock()
	defer s.topoMu.Unlock()
	t := s.topo.Load()
	i := slices.Index(t.shardNames, name)
	if i < 0 {
		return fmt.Errorf("no shard named %s", name)
	}
	if i == s.defShard {
		return fmt.Errorf("shard %s is the default shard", name)
	}
	for _, o := range s.smap.Load().Slots {
		if o == i {
			return fmt.Errorf("shard %s still owns slots", name)
		}
	}
	m, err := s.smap.Load().RenameShard(name, tombstone)
	if err != nil {
		return err
	}
	n := *t
	n.allShards = slices.DeleteFunc(slices.Clone(t.allShards), func(x int) bool { return x == i })
	n.shardNames = slices.Clone(t.shardNames)
	n.shardNames[i] = tombstone
	n.slotNames = slices.Clone(t.slotNames)
	n.slotNames[i] = tombstone
	s.topo.Store(&n)
	s.smap.Store(m)
	return nil
}
