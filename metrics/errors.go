package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// errorClassCache keeps one counter per SQLSTATE class. The number of
// classes is small and fixed by PostgreSQL, so the cache stays bounded,
// while a sync.Map keeps the read path lock-free after the first error of
// each class.
type errorClassCache struct {
	vec      *prometheus.CounterVec
	counters sync.Map // class string -> prometheus.Counter
}

func (c *errorClassCache) get(sqlstate string) prometheus.Counter {
	class := sqlstateClass(sqlstate)
	if v, ok := c.counters.Load(class); ok {
		return v.(prometheus.Counter)
	}
	v, _ := c.counters.LoadOrStore(class, c.vec.WithLabelValues(class))
	return v.(prometheus.Counter)
}

// sqlstateClass returns the two-character class of a SQLSTATE code. A
// malformed code becomes "XX" (internal_error) rather than a new label
// value, so a buggy caller cannot blow up the label cardinality.
func sqlstateClass(code string) string {
	if len(code) != 5 {
		return "XX"
	}
	for i := 0; i < 2; i++ {
		ch := code[i]
		if !('0' <= ch && ch <= '9' || 'A' <= ch && ch <= 'Z') {
			return "XX"
		}
	}
	return code[:2]
}
