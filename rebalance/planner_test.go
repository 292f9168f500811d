package rebalance

import (
	"testing"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/shard"
)

func testMap(t *testing.T, shards ...string) *shard.Map {
	t.Helper()
	cfg := &config.Config{Sharding: config.Sharding{Slots: 256, Tables: []config.ShardedTable{{Name: "t", Key: "k"}}}}
	for _, s := range shards {
		cfg.Shards = append(cfg.Shards, config.Shard{Name: s, Primary: "postgres://x@127.0.0.1/db"})
	}
	cfg.SetDefaults()
	m, err := shard.FromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPlanEvenAfterAdd(t *testing.T) {
	m := testMap(t, "a", "b")
	m, err := m.WithShard("c")
	if err != nil {
		t.Fatal(err)
	}
	moves, before, after := planMoves(m, nil, true, 64)
	if before["a"] != 128 || before["b"] != 128 || before["c"] != 0 {
		t.Fatalf("before = %v", before)
	}
	for _, n := range []string{"a", "b", "c"} {
		if after[n] < 85 || after[n] > 86 {
			t.Errorf("after[%s] = %d, want 85 or 86 (%v)", n, after[n], after)
		}
	}
	moved := 0
	seen := map[int]bool{}
	for _, mv := range moves {
		if mv.To != "c" || len(mv.Slots) > 64 {
			t.Errorf("unexpected move %+v", mv)
		}
		for _, s := range mv.Slots {
			if seen[s] || m.Shards[m.Slots[s]] != mv.From {
				t.Errorf("slot %d moved twice or not from its owner %s", s, mv.From)
			}
			seen[s] = true
		}
		moved += len(mv.Slots)
	}
	if moved != after["c"] {
		t.Errorf("moved %d slots, c ends with %d", moved, after["c"])
	}
	// Balanced already: nothing moves.
	if moves, _, _ := planMoves(testMap(t, "a", "b"), nil, true, 64); len(moves) != 0 {
		t.Errorf("balanced map planned %v", moves)
	}
}

func TestPlanDrain(t *testing.T) {
	m := testMap(t, "a", "b", "c")
	moves, _, after := planMoves(m, map[string]string{"c": StateDraining}, false, 32)
	if after["c"] != 0 || after["a"]+after["b"] != 256 || after["a"]-after["b"] > 1 || after["b"]-after["a"] > 1 {
		t.Fatalf("after = %v", after)
	}
	for _, mv := range moves {
		if mv.From != "c" || len(mv.Slots) > 32 {
			t.Errorf("unexpected move %+v", mv)
		}
	}
}
