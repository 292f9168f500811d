package replica

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestParseFormatLSN(t *testing.T) {
	for _, c := range []struct {
		s string
		v uint64
	}{{"0/0", 0}, {"0/3000060", 0x3000060}, {"16/B374D848", 0x16_B374D848}, {"FFFFFFFF/FFFFFFFF", ^uint64(0)}} {
		v, err := ParseLSN(c.s)
		if err != nil || v != c.v {
			t.Errorf("ParseLSN(%q) = %x, %v; want %x", c.s, v, err, c.v)
		}
		if got := FormatLSN(c.v); got != c.s {
			t.Errorf("FormatLSN(%x) = %q; want %q", c.v, got, c.s)
		}
	}
	for _, bad := range []string{"", "12", "x/1", "1/y", "100000000/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
}

// The sign of lag: primary ahead means positive lag; replica ahead (sampled
// later than the primary) means zero, never a wrapped huge number.
func TestLagBytesDirection(t *testing.T) {
	if got := lagBytes(1000, 400); got != 600 {
		t.Errorf("primary 1000, replica 400: lag %d, want 600", got)
	}
	if got := lagBytes(400, 1000); got != 0 {
		t.Errorf("replica ahead: lag %d, want 0", got)
	}
	if got := lagBytes(500, 500); got != 0 {
		t.Errorf("caught up: lag %d, want 0", got)
	}
}

func TestTimeLag(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := lsnHistory{window: time.Minute, max: 1000}
	// Probes every 250 ms, answered 1 ms after sending.
	h.add(100, at(0), at(1))
	h.add(100, at(250), at(251)) // idle: extends the sample
	h.add(200, at(500), at(501))
	h.add(300, at(750), at(751))
	h.add(300, at(1000), at(1001))
	if len(h.s) != 3 {
		t.Fatalf("history has %d samples, want 3 (same LSN extends)", len(h.s))
	}

	if _, ok := timeLag(nil, 5, at(0)); ok {
		t.Error("lag known without primary samples")
	}
	for _, c := range []struct {
		replay uint64
		at     int
		want   time.Duration
	}{
		{300, 10_000, 0},       // caught up with the latest sample: zero however long ago the last write was
		{400, 10_000, 0},       // ahead of the sample: zero, not negative
		{250, 2000, 1249 * ms}, // primary first seen past 250 at 751 ms
		{200, 2000, 1249 * ms}, // exactly at 200: the first sample past it is 300 at 751 ms
		{199, 2000, 1499 * ms}, // just below 200
		{99, 2000, 1999 * ms},  // behind everything: since the first sample
		{250, 400, 0},          // observed before the primary was seen past it
	} {
		got, ok := timeLag(h.s, c.replay, at(c.at))
		if !ok || got != c.want {
			t.Errorf("timeLag(replay %d, at %d ms) = %v, %v; want %v", c.replay, c.at, got, ok, c.want)
		}
	}
	// Direction: a replica further behind never has less lag.
	var prev time.Duration = -1
	for replay := uint64(400); replay > 0; replay -= 10 {
		got, _ := timeLag(h.s, replay, at(3000))
		if got < prev {
			t.Fatalf("replay %d has lag %v, less than %v of a fresher replica", replay, got, prev)
		}
		prev = got
	}
}

const ms = time.Millisecond

func TestHistoryTrim(t *testing.T) {
	t0 := time.Now()
	h := lsnHistory{window: time.Second, max: 1000}
	for i := range 100 {
		ts := t0.Add(time.Duration(i) * 100 * ms)
		h.add(uint64(i+1), ts, ts)
	}
	if len(h.s) > 12 {
		t.Errorf("history kept %d samples for a 1 s window at 100 ms", len(h.s))
	}
	h = lsnHistory{window: time.Hour, max: 5}
	for i := range 100 {
		h.add(uint64(i+1), t0, t0)
	}
	if len(h.s) != 5 || h.s[4].LSN != 100 {
		t.Errorf("capped history = %+v", h.s)
	}
}

func TestLSNAfter(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := lsnHistory{window: time.Minute, max: 1000}
	h.add(100, at(0), at(1))
	h.add(100, at(250), at(251))
	h.add(200, at(500), at(501))
	h.add(200, at(750), at(751))
	for _, c := range []struct {
		t    int
		want uint64
		ok   bool
	}{
		{-1, 100, true},  // first probe after is the one at 0
		{0, 100, true},   // probe at 250 saw 100 (sent after t, so the commit is in it)
		{249, 100, true}, // probe at 250
		{250, 200, true}, // probe at 500 is the first sent after 250
		{600, 200, true}, // probe at 750
		{750, 0, false},  // no probe sent after 750 yet
	} {
		got, ok := lsnAfter(h.s, at(c.t))
		if got != c.want || ok != c.ok {
			t.Errorf("lsnAfter(%d ms) = %d, %v; want %d, %v", c.t, got, ok, c.want, c.ok)
		}
	}
}

// fakeMonitor builds a Monitor whose probe results the test feeds by hand.
func fakeMonitor(t *testing.T, weights ...int) *Monitor {
	t.Helper()
	sc := ShardConfig{Name: "s0", Primary: NodeConfig{DSN: "postgres://postgres@127.0.0.1:1/app"}}
	for i, w := range weights {
		sc.Replicas = append(sc.Replicas, NodeConfig{DSN: "postgres://postgres@127.0.0.1:1/app", Addr: string(rune('a' + i)), Weight: w})
	}
	m, err := New(Config{Shards: []ShardConfig{sc}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func feed(m *Monitor, node int, inRecovery bool, lsn uint64, ts time.Time) {
	m.list()[0].record(node, probeResult{inRecovery: inRecovery, lsn: lsn, sent: ts, recv: ts})
}

func feedErr(m *Monitor, node int, ts time.Time) {
	m.list()[0].record(node, probeResult{err: errors.New("boom"), sent: ts, recv: ts})
}

func feedTimeout(m *Monitor, node int, ts time.Time) {
	err := fmt.Errorf("probe 127.0.0.1:5432: timeout: %w", context.DeadlineExceeded)
	m.list()[0].record(node, probeResult{err: err, sent: ts, recv: ts})
}

// One probe that runs out of time is a busy node, not a dead one: it
// stays up until a second one in a row does. A refusal counts at once.
func TestSlowProbeIsNotDown(t *testing.T) {
	m := fakeMonitor(t, 1, 1)
	t0 := time.Now()
	feed(m, 0, false, 10, t0)
	feed(m, 1, true, 10, t0)
	up := func(node int) bool { return m.States()[0].Nodes[node].Healthy }
	feedTimeout(m, 0, t0.Add(ms))
	if n, ok := m.Primary(0); n != 0 || !ok {
		t.Fatalf("primary after one slow probe = %d, %v; want 0, true", n, ok)
	}
	feed(m, 0, false, 11, t0.Add(2*ms)) // answers again: the count starts over
	feedTimeout(m, 0, t0.Add(3*ms))
	if _, ok := m.Primary(0); !ok {
		t.Fatal("a slow probe after an answer took the primary down")
	}
	feedTimeout(m, 0, t0.Add(4*ms))
	if _, ok := m.Primary(0); ok {
		t.Fatal("primary still up after two probes in a row timed out")
	}
	feedTimeout(m, 1, t0.Add(ms))
	if !up(1) {
		t.Fatal("replica down after one slow probe")
	}
	feedErr(m, 1, t0.Add(2*ms))
	if up(1) {
		t.Fatal("replica still up after a hard probe failure")
	}
}

func TestPickFilters(t *testing.T) {
	m := fakeMonitor(t, 1, 1, 1)
	t0 := time.Now()
	feed(m, 0, false, 1000, t0)
	feed(m, 1, true, 1000, t0)
	feed(m, 2, true, 1000, t0)
	feed(m, 3, true, 1000, t0)
	// The primary moves on; replica 2 follows, 3 does not, 1 is down.
	feed(m, 0, false, 2000, t0.Add(250*ms))
	feed(m, 2, true, 2000, t0.Add(900*ms))
	feed(m, 3, true, 1000, t0.Add(900*ms))
	feedErr(m, 1, t0.Add(900*ms))

	st := m.States()[0]
	if n3 := st.Nodes[3]; n3.LagBytes != 1000 || n3.LagSeconds == nil || *n3.LagSeconds != 0.65 {
		t.Fatalf("lagging replica state %+v (lag_seconds %v)", n3, *n3.LagSeconds)
	}
	if n2 := st.Nodes[2]; n2.LagBytes != 0 || *n2.LagSeconds != 0 {
		t.Fatalf("caught-up replica state %+v", n2)
	}
	for range 1000 {
		if n, ok := m.Pick(0, 500*ms, 0); !ok || n != 2 {
			t.Fatalf("Pick(maxLag 500ms) = %d, %v; want replica 2", n, ok)
		}
		if n, ok := m.Pick(0, 0, 1500); !ok || n != 2 {
			t.Fatalf("Pick(minLSN 1500) = %d, %v; want replica 2", n, ok)
		}
	}
	if n, ok := m.Pick(0, 0, 2001); ok {
		t.Fatalf("Pick(minLSN beyond every replica) = %d", n)
	}
	seen := map[int]bool{}
	for range 1000 {
		n, _ := m.Pick(0, 0, 0)
		seen[n] = true
	}
	if !seen[2] || !seen[3] || seen[1] || seen[0] {
		t.Fatalf("unbounded picks went to %v; want replicas 2 and 3 only", seen)
	}
}

func TestPickWeightsAndLoad(t *testing.T) {
	m := fakeMonitor(t, 1, 3)
	t0 := time.Now()
	feed(m, 0, false, 1, t0)
	feed(m, 1, true, 1, t0)
	feed(m, 2, true, 1, t0)
	count := [3]int{}
	// Idle (nothing outstanding): weights decide through the tie-break.
	for range 10000 {
		n, _ := m.Pick(0, time.Second, 0)
		count[n]++
	}
	if f := float64(count[2]) / 10000; f < 0.70 || f > 0.80 {
		t.Errorf("weight 3 of 4 got %.2f of idle picks", f)
	}
	// Loaded: least outstanding per weight keeps the ratio too.
	count = [3]int{}
	var inflight []int
	for range 10000 {
		n, _ := m.Pick(0, time.Second, 0)
		m.Acquire(0, n)
		count[n]++
		inflight = append(inflight, n)
		if len(inflight) == 16 {
			m.Release(0, inflight[0])
			inflight = inflight[1:]
		}
	}
	if f := float64(count[2]) / 10000; f < 0.70 || f > 0.80 {
		t.Errorf("weight 3 of 4 got %.2f of loaded picks", f)
	}
	if got := m.ServedTotal(0, 1) + m.ServedTotal(0, 2); got != 10000 {
		t.Errorf("served %d, want 10000", got)
	}
}

func TestElection(t *testing.T) {
	m := fakeMonitor(t, 1, 1)
	t0 := time.Now()
	if n, ok := m.Primary(0); n != -1 || ok {
		t.Fatalf("primary before any probe: %d, %v", n, ok)
	}
	feed(m, 1, true, 10, t0)
	if n, _ := m.Primary(0); n != -1 {
		t.Fatalf("replica in recovery reported as primary %d", n)
	}
	feed(m, 0, false, 10, t0)
	if n, ok := m.Primary(0); n != 0 || !ok {
		t.Fatalf("primary = %d, %v", n, ok)
	}
	feedErr(m, 0, t0)
	if n, ok := m.Primary(0); n != 0 || ok {
		t.Fatalf("dead primary = %d, %v; want 0, false", n, ok)
	}
	// Node 2 was never seen in recovery: an unobserved "promotion" of a
	// node we know nothing about must not take over.
	feed(m, 2, false, 10, t0)
	if n, ok := m.Primary(0); n != 0 || ok {
		t.Fatalf("node never seen in recovery took over: %d, %v", n, ok)
	}
	feed(m, 1, false, 20, t0.Add(ms)) // promoted
	if n, ok := m.Primary(0); n != 1 || !ok {
		t.Fatalf("after promotion primary = %d, %v; want 1, true", n, ok)
	}
	// The old primary returns, still out of recovery: split brain. It
	// must not become primary, nor serve reads.
	feed(m, 0, false, 15, t0.Add(2*ms))
	if n, _ := m.Primary(0); n != 1 {
		t.Fatalf("old primary took back over: %d", n)
	}
	if st := m.States()[0].Nodes[0]; st.Role != RoleStalePrimary {
		t.Fatalf("old primary role %q", st.Role)
	}
	for range 100 {
		if n, ok := m.Pick(0, 0, 0); ok {
			t.Fatalf("Pick returned %d with no node in recovery", n)
		}
	}
}

// The hot path allocates nothing.
func TestHotPathNoAlloc(t *testing.T) {
	m := fakeMonitor(t, 1, 2)
	t0 := time.Now()
	feed(m, 0, false, 100, t0)
	feed(m, 1, true, 100, t0)
	feed(m, 2, true, 90, t0)
	allocs := testing.AllocsPerRun(1000, func() {
		n, _ := m.Pick(0, time.Second, 0)
		m.Acquire(0, n)
		m.Release(0, n)
		m.LSNAfter(0, t0.Add(-time.Second))
		m.Primary(0)
	})
	if allocs != 0 {
		t.Errorf("hot path allocates %.1f times per call", allocs)
	}
}

func BenchmarkPick(b *testing.B) {
	sc := ShardConfig{Name: "s0", Primary: NodeConfig{DSN: "postgres://postgres@127.0.0.1:1/app"}}
	for range 4 {
		sc.Replicas = append(sc.Replicas, NodeConfig{DSN: "postgres://postgres@127.0.0.1:1/app"})
	}
	m, err := New(Config{Shards: []ShardConfig{sc}})
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	for i := range 5 {
		m.list()[0].record(i, probeResult{inRecovery: i > 0, lsn: 100, sent: t0, recv: t0})
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n, _ := m.Pick(0, time.Second, 0)
			m.Acquire(0, n)
			m.Release(0, n)
		}
	})
}

func TestPickHash(t *testing.T) {
	m := fakeMonitor(t, 1, 1, 2)
	t0 := time.Now()
	feed(m, 0, false, 100, t0)
	for i := 1; i <= 3; i++ {
		feed(m, i, true, 100, t0)
	}
	const keys = 20000
	first := make([]int, keys)
	count := [4]int{}
	for k := range keys {
		n, ok := m.PickHash(0, time.Second, 0, uint64(k))
		if !ok || n == 0 {
			t.Fatalf("PickHash(%d) = %d, %v", k, n, ok)
		}
		if again, _ := m.PickHash(0, time.Second, 0, uint64(k)); again != n {
			t.Fatalf("key %d moved from %d to %d with nothing changed", k, n, again)
		}
		first[k] = n
		count[n]++
	}
	if f := float64(count[3]) / keys; f < 0.45 || f > 0.55 {
		t.Errorf("weight 2 of 4 got %.3f of keys", f)
	}
	// Replica 1 goes down: only its keys move.
	feedErr(m, 1, t0)
	for k := range keys {
		n, _ := m.PickHash(0, time.Second, 0, uint64(k))
		if n == 1 || (first[k] != 1 && n != first[k]) {
			t.Fatalf("key %d: %d -> %d after replica 1 went down", k, first[k], n)
		}
	}
}
