package router

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// cache maps statement texts to their plans. It is split into shards,
// each behind its own RWMutex, so concurrent sessions rarely contend;
// within a shard, CLOCK (second chance) eviction keeps the texts that are
// still being used. A hit takes a read lock, a map lookup and at most one
// atomic store: no allocation.
type cache struct {
	seed   maphash.Seed
	shards []cacheShard
}

const cacheShards = 16

type cacheShard struct {
	mu      sync.RWMutex
	m       map[string]*cacheEntry
	ring    []*cacheEntry // insertion ring the clock hand sweeps
	hand    int
	maxSize int
}

type cacheEntry struct {
	key   string
	parts []Part
	used  atomic.Bool // referenced since the hand last passed
}

func newCache(size int) *cache {
	if size <= 0 {
		return nil
	}
	n := cacheShards
	if size < n {
		n = 1
	}
	c := &cache{seed: maphash.MakeSeed(), shards: make([]cacheShard, n)}
	per := (size + n - 1) / n
	for i := range c.shards {
		c.shards[i].m = make(map[string]*cacheEntry, per)
		c.shards[i].maxSize = per
	}
	return c
}

func (c *cache) shard(key string) *cacheShard {
	if len(c.shards) == 1 {
		return &c.shards[0]
	}
	return &c.shards[maphash.String(c.seed, key)%uint64(len(c.shards))]
}

func (c *cache) get(key string) ([]Part, bool) {
	if c == nil {
		return nil, false
	}
	s := c.shard(key)
	s.mu.RLock()
	e, ok := s.m[key]
	s.mu.RUnlock()
	if !ok {
		return nil, false
	}
	// Only store when needed: a store on every hit would bounce the
	// cache line between cores for hot statements.
	if !e.used.Load() {
		e.used.Store(true)
	}
	return e.parts, true
}

func (c *cache) put(key string, parts []Part) {
	if c == nil {
		return
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; ok {
		return // another session planned the same text meanwhile
	}
	e := &cacheEntry{key: key, parts: parts}
	if len(s.ring) < s.maxSize {
		s.ring = append(s.ring, e)
		s.m[key] = e
		return
	}
	// Sweep: give referenced entries a second chance, evict the first
	// one not used since the last pass. Terminates within two laps.
	for {
		old := s.ring[s.hand]
		if old.used.Load() {
			old.used.Store(false)
			s.hand = (s.hand + 1) % len(s.ring)
			continue
		}
		delete(s.m, old.key)
		s.ring[s.hand] = e
		s.m[key] = e
		s.hand = (s.hand + 1) % len(s.ring)
		return
	}
}

// len reports the number of cached texts (for tests).
func (c *cache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
