package rebalance

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRebalanceCancelMidCopy cancels a rebalance while it copies rows to
// the added shard and checks that it rolled back completely: the same
// slot assignment, the same rows on every node, none on the spare, and no
// publication, subscription, replication slot, marker table, hidden slot
// or row-level security left behind.
//
// E2E_REBALANCE_CANCEL_SCALE sets the pgbench scale (default 10), so the
// copy lasts long enough to be caught.
func TestRebalanceCancelMidCopy(t *testing.T) {
	needBinaries(t)
	scale := envInt("E2E_REBALANCE_CANCEL_SCALE", 10)
	d := newDev(t, 2, 0, 1)
	d.start()
	spare := d.node("spare0", "spare")
	d.pgbenchInit(scale)

	v0, slots0 := d.assignment()
	counts0 := d.nodeCounts()
	app0 := d.appTotals()
	t.Logf("before: map version %d %v, rows per node %v", v0, slotCounts(slots0), counts0)

	d.mustCtl(30*time.Second, "shard", "add", "--name", "spare0", "--primary", spare.DSN)
	out := d.mustCtl(60*time.Second, "rebalance", "start", "--even")
	t.Logf("shardctl rebalance start --even: %s", strings.TrimSpace(lastLines(out, 5)))
	started := time.Now()

	// Catch the copy.
	var seen []string
	var copyAt time.Time
	for copyAt.IsZero() {
		if time.Since(started) > 2*time.Minute {
			t.Fatalf("no copy phase within 2 min; phases seen %v", seen)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := d.status(ctx)
		cancel()
		if err != nil {
			t.Fatalf("rebalance status: %v", err)
		}
		if len(seen) == 0 || seen[len(seen)-1] != st.State+"/"+st.Phase {
			seen = append(seen, st.State+"/"+st.Phase)
		}
		switch {
		case st.State == "running" && st.Phase == "copy":
			copyAt = time.Now()
			t.Logf("copy phase %s after start: %s", copyAt.Sub(started).Round(time.Millisecond), brief(st))
		case isTerminal(st.State):
			t.Fatalf("rebalance ended (%s) before its copy phase was seen (phases seen %v): raise E2E_REBALANCE_CANCEL_SCALE",
				brief(st), seen)
		default:
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Cancel once rows are arriving, so there is a partial copy to undo.
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := d.status(ctx)
		cancel()
		if err != nil {
			t.Fatalf("rebalance status: %v", err)
		}
		if st.Phase != "copy" || st.Totals.RowsCopied > 0 || time.Since(copyAt) > 30*time.Second {
			t.Logf("cancelling %s into the copy: %s", time.Since(copyAt).Round(time.Millisecond), brief(st))
			if st.Phase != "copy" {
				t.Logf("note: the copy phase ended before any copied rows were reported")
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	onSpare := tableCounts(t, spare.DSN)
	t.Logf("rows on spare0 (superuser, uncommitted copies invisible) right before the cancel: %v", onSpare)

	out = d.mustCtl(60*time.Second, "rebalance", "cancel")
	t.Logf("shardctl rebalance cancel (%s into the copy): %s", time.Since(copyAt).Round(time.Millisecond), strings.TrimSpace(lastLines(out, 5)))
	st := d.waitEnd(2 * time.Minute)
	t.Logf("ended %s after the cancel: %s", time.Since(copyAt).Round(time.Millisecond), brief(st))
	logJournal(t, st)
	if st.State != "cancelled" {
		t.Fatalf("after rebalance cancel mid-copy: state %q, want cancelled (%s)", st.State, brief(st))
	}
	if cst := d.ctlStatus(); cst.State != "cancelled" {
		t.Errorf("shardctl rebalance status --json: state %q, want cancelled", cst.State)
	}

	// Same map, same rows, nothing on the spare, nothing left behind.
	_, slots1 := d.assignment()
	if !slices.Equal(slots0, slots1) {
		var diff []int
		for i := range slots0 {
			if i >= len(slots1) || slots0[i] != slots1[i] {
				diff = append(diff, i)
			}
		}
		t.Errorf("slot assignment changed by a cancelled rebalance: %d slots differ (first %v); now %v",
			len(diff), diff[:min(len(diff), 10)], slotCounts(slots1))
	}
	counts1 := d.nodeCounts()
	t.Logf("after: rows per node %v", counts1)
	for _, node := range slices.Sorted(maps.Keys(counts0)) {
		for _, tb := range shardedTables {
			before, after := counts0[node][tb.name], counts1[node][tb.name]
			if node == "spare0" {
				if after > 0 {
					t.Errorf("spare0 still holds %d rows of %s after the cancel", after, tb.name)
				}
				continue
			}
			if before != after {
				t.Errorf("%s: %d rows of %s before, %d after the cancel", node, before, tb.name, after)
			}
		}
	}
	app1 := d.appTotals()
	if !maps.Equal(app0.Counts, app1.Counts) {
		t.Errorf("rows through the proxy: %v before, %v after the cancel", app0.Counts, app1.Counts)
	}
	d.checkPlacement(app1.Counts)
	d.checkNoLeftovers()
}
