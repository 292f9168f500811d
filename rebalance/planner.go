package rebalance

import (
	"cmp"
	"slices"

	"github.com/shardproxy/shardproxy/admin"
	"github.com/shardproxy/shardproxy/shard"
)

// DefaultBatchSlots is how many slots one move (one copy, one cutover)
// carries at most: fewer cutovers mean fewer write pauses, smaller
// batches mean less to redo when one is rolled back.
const DefaultBatchSlots = 64

// planMoves decides which slots move where: draining shards give up all
// their slots; with even (or when no shard drains) every active shard ends
// up with the same number of slots, give or take one. Each shard keeps as
// many of its own slots as it can, so as few rows as possible move.
// states maps shard names to their state (missing: active).
func planMoves(m *shard.Map, states map[string]string, even bool, batch int) (moves []admin.PlannedMove, before, after map[string]int) {
	if batch <= 0 {
		batch = DefaultBatchSlots
	}
	before, after = map[string]int{}, map[string]int{}
	owned := make([][]int, len(m.Shards))
	for s, o := range m.Slots {
		owned[o] = append(owned[o], s)
	}
	var eligible []int
	draining := false
	for i, name := range m.Shards {
		before[name] = len(owned[i])
		switch states[name] {
		case StateDraining:
			draining = true
		case StateRemoved:
		default:
			eligible = append(eligible, i)
		}
	}
	if len(eligible) == 0 {
		for k, v := range before {
			after[k] = v
		}
		return nil, before, after
	}
	target := make([]int, len(m.Shards))
	for i := range target {
		target[i] = len(owned[i]) // not eligible: keeps nothing below
	}
	var surplus [][2]int // (shard, slot)
	for i, name := range m.Shards {
		if st := states[name]; st == StateDraining || st == StateRemoved {
			target[i] = 0
		}
	}
	if even || !draining {
		// Shards holding the most slots keep the remainder's extra ones.
		order := slices.Clone(eligible)
		slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(len(owned[b]), len(owned[a])) })
		total := len(m.Slots)
		for k, i := range order {
			target[i] = total / len(order)
			if k < total%len(order) {
				target[i]++
			}
		}
	} else {
		// Draining only: spread the drained slots over the shards with
		// the fewest, as evenly as they go.
		free := 0
		for i := range m.Shards {
			if target[i] == 0 {
				free += len(owned[i])
			}
		}
		for ; free > 0; free-- {
			best := eligible[0]
			for _, i := range eligible {
				if target[i] < target[best] {
					best = i
				}
			}
			target[best]++
		}
	}
	for i := range m.Shards {
		if extra := len(owned[i]) - target[i]; extra > 0 {
			// Give away the highest slots: the rest stay contiguous.
			for _, s := range owned[i][len(owned[i])-extra:] {
				surplus = append(surplus, [2]int{i, s})
			}
		}
	}
	type pair struct{ from, to int }
	groups := map[pair][]int{}
	var order []pair
	k := 0
	for _, i := range eligible {
		for need := target[i] - len(owned[i]); need > 0 && k < len(surplus); need-- {
			p := pair{surplus[k][0], i}
			if _, ok := groups[p]; !ok {
				order = append(order, p)
			}
			groups[p] = append(groups[p], surplus[k][1])
			k++
		}
	}
	for _, p := range order {
		slots := groups[p]
		slices.Sort(slots)
		for len(slots) > 0 {
			n := min(batch, len(slots))
			moves = append(moves, admin.PlannedMove{From: m.Shards[p.from], To: m.Shards[p.to], Slots: slices.Clone(slots[:n])})
			slots = slots[n:]
		}
	}
	for k, v := range before {
		after[k] = v
	}
	for _, mv := range moves {
		after[mv.From] -= len(mv.Slots)
		after[mv.To] += len(mv.Slots)
	}
	return moves, before, after
}
