package replica

import (
	"testing"
	"time"
)

// SetWeights (a reloaded config's replica_weights) changes the share of
// reads from the next pick, also while picks run (run with -race).
func TestSetWeights(t *testing.T) {
	m := fakeMonitor(t, 1, 1)
	t0 := time.Now()
	feed(m, 0, false, 1, t0)
	feed(m, 1, true, 1, t0)
	feed(m, 2, true, 1, t0)
	share := func() float64 {
		count := [3]int{}
		for range 10000 {
			n, _ := m.Pick(0, time.Second, 0)
			count[n]++
		}
		return float64(count[2]) / 10000
	}
	if f := share(); f < 0.40 || f > 0.60 {
		t.Fatalf("equal weights: replica 2 got %.2f", f)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			m.PickHash(0, time.Second, 0, 42)
		}
	}()
	if err := m.SetWeights("s0", []int{1, 3}); err != nil {
		t.Fatal(err)
	}
	<-done
	if f := share(); f < 0.70 || f > 0.80 {
		t.Errorf("weights 1:3: replica 2 got %.2f", f)
	}
	if w := m.States()[0].Nodes[2].Weight; w != 3 {
		t.Errorf("state weight %d, want 3", w)
	}
	// No weights: 1 each again.
	if err := m.SetWeights("s0", nil); err != nil {
		t.Fatal(err)
	}
	if w := m.States()[0].Nodes[2].Weight; w != 1 {
		t.Errorf("state weight %d after clearing, want 1", w)
	}
	if err := m.SetWeights("nope", nil); err == nil {
		t.Error("SetWeights of an unknown shard succeeded")
	}
}
