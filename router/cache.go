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
//
// Besides the number of texts, the bytes they hold are bounded, so that
// many long one-off texts cannot make the cache large.
type cache struct {
	seed   maphash.Seed
	shards []cacheShard
}

const (
	cacheShards = 16
	// entryOverhead approximates what a cached plan costs besides its
	// text; bytesPerEntry is the average budget per entry.
	entryOverhead = 256
	bytesPerEntry = 2 << 10
)

type cacheShard struct {
	mu       sync.RWMutex
	m        map[string]*cacheEntry
	ring     []*cacheEntry // the entries the clock hand sweeps
	hand     int
	bytes    int
	maxSize  int
	maxBytes int
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
	if size < 4*n {
		n = 1
	}
	c := &cache{seed: maphash.MakeSeed(), shards: make([]cacheShard, n)}
	per := (size + n - 1) / n
	for i := range c.shards {
		c.shards[i] = cacheShard{
			m:        make(map[string]*cacheEntry, per),
			maxSize:  per,
			maxBytes: per * bytesPerEntry,
		}
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
	size := len(key) + entryOverhead
	if size > s.maxBytes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; ok {
		return // another session planned the same text meanwhile
	}
	for len(s.ring) > 0 && (len(s.ring) >= s.maxSize || s.bytes+size > s.maxBytes) {
		s.evict()
	}
	e := &cacheEntry{key: key, parts: parts}
	s.ring = append(s.ring, e)
	s.m[key] = e
	s.bytes += size
}

// evict removes one entry: the first the hand finds not used since its
// last pass (referenced ones get a second chance). Ends within two laps.
func (s *cacheShard) evict() {
	for {
		if s.hand >= len(s.ring) {
			s.hand = 0
		}
		e := s.ring[s.hand]
		if e.used.Load() {
			e.used.Store(false)
			s.hand++
			continue
		}
		last := len(s.ring) - 1
		s.ring[s.hand] = s.ring[last]
		s.ring[last] = nil
		s.ring = s.ring[:last]
		delete(s.m, e.key)
		s.bytes -= len(e.key) + entryOverhead
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
