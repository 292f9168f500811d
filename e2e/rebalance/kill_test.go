package rebalance

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shardproxy/shardproxy/admin"
)

// killTargets are the phases TestRebalanceKillEachPhase kills the proxy in.
var killTargets = []string{"copy", "catchup", "verify", "cutover", "cleanup"}

// TestRebalanceKillEachPhase kills `shardproxy dev` with SIGKILL in each
// phase of a rebalance (copy, catchup, verify, cutover, cleanup) while a
// light pgbench load writes through it, reruns it on the same directory
// and ports, and lets the rebalance go on (or roll back) on its own.
// After every rebalance: the tpcb-like invariant through the proxy, the
// unchanged row counts, every row on the node of the shard owning its
// slot and only there, and no rebalance object left on any node.
//
// One cluster serves both rebalances (the spare added and filled, then
// drained), and each rebalance takes a kill in every phase: after each
// restart the test waits for the next phase not yet hit (two moves, each
// going through every phase). A phase too short to be seen in 20 ms polls
// is replaced by the first later one seen; the phases hit are logged.
// Finally the drained spare is removed and added again.
func TestRebalanceKillEachPhase(t *testing.T) {
	needBinaries(t)
	d := newDev(t, 2, 0, 1)
	d.start()
	d.pgbenchInit(2)
	base := d.appTotals()
	checkInvariant(t, base)

	// Two rebalances, each killed in every phase: filling the spare, then
	// draining it.
	const rebalances = 2
	for rb := 1; rb <= rebalances; rb++ {
		remaining := slices.Clone(killTargets)
		var hits, misses []string
		load := d.startLoad("-n", "-c", "2", "-j", "1", "-M", "prepared", "-T", "2")
		time.Sleep(700 * time.Millisecond) // writes in flight before the rebalance starts
		what := d.nextRebalance()
		if what == "" {
			load.stop()
			t.Logf("no further rebalance to run")
			break
		}
		begin := time.Now()
		var windows [][2]time.Time
		var end admin.RebalanceStatus
		ended := false
		for len(remaining) > 0 {
			target := remaining[0]
			hit, atKill, st := d.waitPhase(target, 2*time.Minute)
			if hit == "" {
				end, ended = st, true
				misses = append(misses, fmt.Sprintf("rebalance %d (%s) ended %s before %s was seen", rb, what, st.State, target))
				break
			}
			killAt := time.Now()
			down := d.kill9()
			d.start()
			readyAt := time.Now()
			windows = append(windows, [2]time.Time{killAt, readyAt})
			t.Logf("rebalance %d (%s): killed in phase %s (wanted %s) %s after its start: %s; servers down after %s, ready again %s after the kill",
				rb, what, hit, target, killAt.Sub(begin).Round(time.Millisecond), brief(atKill),
				down.Round(time.Millisecond), readyAt.Sub(killAt).Round(time.Millisecond))
			hits = append(hits, hit)
			if hit != target {
				misses = append(misses, fmt.Sprintf("rebalance %d: %s missed, killed in %s", rb, target, hit))
			}
			remaining = slices.DeleteFunc(remaining, func(p string) bool { return phaseIndex(p) <= phaseIndex(hit) })
		}
		if !ended {
			end = d.waitEnd(2 * time.Minute)
		}
		t.Logf("rebalance %d (%s) ended %s after its start: %s (resumed %d times)",
			rb, what, time.Since(begin).Round(time.Millisecond), brief(end), end.Resumed)
		checkLoad(t, rb, load.stop(), windows)
		logJournal(t, end)

		switch end.State {
		case "done":
			for i, m := range end.Moves {
				if !m.Verified || m.VerifyError != "" {
					t.Errorf("rebalance %d: move %d %s -> %s not verified (phase %s, verify_error %q)", rb, i, m.From, m.To, m.Phase, m.VerifyError)
				}
			}
		case "cancelled":
			t.Logf("rebalance %d rolled back after a restart", rb)
		default:
			t.Errorf("rebalance %d ended in state %q: %s", rb, end.State, brief(end))
		}
		d.waitNoPrepared(20 * time.Second)
		after := d.appTotals()
		checkInvariant(t, after)
		if after.Abalance != after.Delta {
			d.dumpHistory()
		}
		for _, tb := range []string{"pgbench_accounts", "pgbench_tellers", "pgbench_branches"} {
			if after.Counts[tb] != base.Counts[tb] {
				t.Errorf("rebalance %d: %s has %d rows through the proxy, %d at the start", rb, tb, after.Counts[tb], base.Counts[tb])
			}
		}
		d.checkPlacement(after.Counts)
		d.checkNoLeftovers()
		t.Logf("rebalance %d: phases killed in: %v (wanted %v)", rb, hits, killTargets)
		for _, m := range misses {
			t.Logf("  %s", m)
		}
		if len(remaining) > 0 {
			t.Logf("rebalance %d: phases never killed in: %v", rb, remaining)
		}
	}

	// The operator's way back: a drained shard can be removed, and its
	// node added again.
	t.Run("RemoveAndAddAgain", func(t *testing.T) {
		d := *d
		d.t = t
		sp := d.shardInfo("spare0")
		if sp == nil || sp.State != "draining" || sp.Slots != 0 {
			if sp != nil && sp.Slots > 0 {
				d.mustCtl(time.Minute, "shard", "drain", "spare0")
				d.mustCtl(3*time.Minute, "rebalance", "start", "--wait")
			} else {
				t.Skipf("spare0 is not a drained shard: %+v", sp)
			}
		}
		d.mustCtl(time.Minute, "shard", "remove", "spare0")
		if sp := d.shardInfo("spare0"); sp != nil {
			t.Errorf("shardctl shards still lists spare0 after shard remove: %+v", *sp)
		}
		spare := d.node("spare0", "spare")
		out, err := d.ctl(time.Minute, "shard", "add", "--name", "spare0", "--primary", spare.DSN)
		if err != nil {
			t.Errorf("shardctl shard add --name spare0 --primary %s after shard remove spare0: %v\n%s", spare.DSN, err, out)
		}
		if sp := d.shardInfo("spare0"); sp == nil || sp.Slots != 0 {
			t.Errorf("after adding spare0 again, shardctl shards shows %+v, want it with 0 slots", sp)
		}
		if out, err := d.ctl(3*time.Minute, "rebalance", "start", "--even", "--wait"); err != nil {
			t.Errorf("shardctl rebalance start --even --wait onto the re-added spare0: %v\n%s", err, lastLines(out, 10))
		}
		after := d.appTotals()
		checkInvariant(t, after)
		d.checkPlacement(after.Counts)
		d.checkNoLeftovers()
	})
}

// shardInfo is spare0's (or another shard's) entry in shardctl shards.
func (d *dev) shardInfo(name string) *admin.ShardInfo {
	d.t.Helper()
	for _, s := range d.shardsInfo() {
		if s.Name == name {
			return &s
		}
	}
	return nil
}

// nextRebalance starts the next rebalance of the round trip: add the
// spare and spread evenly, drain it, then drain shard1. It returns what
// it did, or "" when nothing is left to move.
func (d *dev) nextRebalance() string {
	d.t.Helper()
	spare := d.node("spare0", "spare")
	sp, s1 := d.shardInfo("spare0"), d.shardInfo("shard1")
	var steps [][]string
	switch {
	case sp == nil:
		steps = [][]string{{"shard", "add", "--name", "spare0", "--primary", spare.DSN}, {"rebalance", "start", "--even"}}
	case sp.State == "draining" && sp.Slots > 0, s1 != nil && s1.State == "draining" && s1.Slots > 0:
		steps = [][]string{{"rebalance", "start"}}
	case sp.State != "draining" && sp.Slots > 0:
		steps = [][]string{{"shard", "drain", "spare0"}, {"rebalance", "start"}}
	case sp.State != "draining":
		steps = [][]string{{"rebalance", "start", "--even"}}
	case s1 != nil && s1.State != "draining":
		steps = [][]string{{"shard", "drain", "shard1"}, {"rebalance", "start"}}
	default:
		return ""
	}
	var names []string
	for _, s := range steps {
		d.mustCtl(time.Minute, s...)
		names = append(names, strings.Join(s[:min(len(s), 3)], " "))
	}
	return strings.Join(names, ", ")
}

// waitPhase polls the status every 20 ms until the running rebalance is
// in target or a later phase (returned with the status seen) or ends
// (returned as end).
func (d *dev) waitPhase(target string, timeout time.Duration) (hit string, at, end admin.RebalanceStatus) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := d.status(ctx)
		cancel()
		if err != nil {
			d.t.Fatalf("rebalance status: %v", err)
		}
		if isTerminal(st.State) {
			return "", st, st
		}
		if st.State == "running" && phaseIndex(st.Phase) >= phaseIndex(target) {
			return st.Phase, st, st
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatalf("rebalance neither reached %s nor ended within %s", target, timeout)
	return
}

// checkLoad fails the test for any failed pgbench run that did not overlap
// a window from a kill to the restarted proxy's ready line.
func checkLoad(t *testing.T, rb int, segs []pgbenchResult, windows [][2]time.Time) {
	t.Helper()
	var processed int64
	var tolerated int
	for _, s := range segs {
		if s.processed > 0 {
			processed += s.processed
		}
		if s.ok() {
			continue
		}
		if slices.ContainsFunc(windows, func(w [2]time.Time) bool { return s.start.Before(w[1]) && s.end.After(w[0]) }) {
			tolerated++
			continue
		}
		t.Errorf("rebalance %d: pgbench run %s-%s failed away from the kills: %s\n%s", rb,
			s.start.Format("15:04:05.000"), s.end.Format("15:04:05.000"), s, lastLines(s.out, 15))
	}
	t.Logf("rebalance %d: load ran %d pgbench runs, %d transactions, %d failed runs around %d kills", rb, len(segs), processed, tolerated, len(windows))
}

// dumpHistory logs, per writable node, history rows that appear more than
// once and accounts whose balance differs from their history, to tell a
// duplicated row from a lost update when the invariant breaks.
func (d *dev) dumpHistory() {
	t := d.t
	for _, n := range d.writable() {
		dups := queryStrings(t, n.DSN, `SELECT format('tid=%s bid=%s aid=%s delta=%s mtime=%s n=%s', tid, bid, aid, delta, mtime, count(*))
			FROM pgbench_history GROUP BY tid, bid, aid, delta, mtime HAVING count(*) > 1`)
		t.Logf("%s: duplicated history rows: %v", n, dups)
	}
	var all []string
	for _, n := range d.writable() {
		all = append(all, queryStrings(t, n.DSN, `SELECT format('aid=%s abalance=%s', aid, abalance) FROM pgbench_accounts WHERE abalance <> 0`)...)
	}
	t.Logf("accounts with a balance: %d", len(all))
	hist := map[string]int64{}
	for _, n := range d.writable() {
		for _, s := range queryStrings(t, n.DSN, `SELECT format('%s %s', aid, sum(delta)) FROM pgbench_history GROUP BY aid`) {
			var aid string
			var sum int64
			fmt.Sscanf(s, "%s %d", &aid, &sum)
			hist[aid] += sum
		}
	}
	for _, a := range all {
		var aid string
		var bal int64
		fmt.Sscanf(a, "aid=%s abalance=%d", &aid, &bal)
		if hist[aid] != bal {
			t.Logf("aid %s: abalance %d, history sum %d", aid, bal, hist[aid])
		}
		delete(hist, aid)
	}
	for aid, sum := range hist {
		if sum != 0 {
			t.Logf("aid %s: abalance 0, history sum %d", aid, sum)
		}
	}
}
