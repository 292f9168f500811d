package proxy

import (
	"sort"
	"strings"
	"sync"
	"time"
)

// loginCacheTTL bounds how stale a cached login answer may be (a server
// restarted with another TimeZone, a dropped database).
const loginCacheTTL = time.Minute

// loginCacheMax bounds the cache; distinct startup settings are few in
// practice (one per application), so overflowing just starts over.
const loginCacheMax = 1024

// loginCache remembers, per pool and startup settings, the ParameterStatus
// values a server answered at login.
type loginCache struct {
	mu sync.Mutex
	m  map[string]loginEntry
}

type loginEntry struct {
	params map[string]string
	at     time.Time
}

func (c *loginCache) get(key string) (map[string]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || time.Since(e.at) > loginCacheTTL {
		return nil, false
	}
	return e.params, true
}

func (c *loginCache) put(key string, params map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= loginCacheMax {
		c.m = map[string]loginEntry{}
	}
	c.m[key] = loginEntry{params: params, at: time.Now()}
}

// loginKey identifies a pool and a set of startup settings.
func loginKey(pool string, params map[string]string) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(pool)
	for _, k := range keys {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(params[k])
	}
	return b.String()
}
