package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vbauerster/mpb/v8"

	"github.com/shardproxy/shardproxy/admin"
)

func TestMain(m *testing.M) {
	barInterval, lineInterval = 2*time.Millisecond, 2*time.Millisecond
	watchGrace = 2 * time.Second
	os.Exit(m.Run())
}

// fakeOperator answers the operator verbs from canned values. Each
// RebalanceStatus call returns the next of steps (staying on the last),
// so a watch sees a rebalance progress.
type fakeOperator struct {
	mu       sync.Mutex
	err      error // returned by every verb when set
	shards   []admin.ShardInfo
	plan     admin.Plan
	started  admin.RebalanceStatus
	steps    []admin.RebalanceStatus
	stepErrs map[int]error // RebalanceStatus call number -> error
	polls    int

	added   admin.AddShardRequest
	req     admin.RebalanceRequest
	drained string
	removed string
}

func (f *fakeOperator) Shards(context.Context) ([]admin.ShardInfo, error) {
	return f.shards, f.err
}

func (f *fakeOperator) AddShard(_ context.Context, req admin.AddShardRequest) (admin.ShardInfo, error) {
	f.added = req
	reps := make([]string, len(req.Replicas))
	for i := range reps {
		reps[i] = "10.0.0.10:5432"
	}
	return admin.ShardInfo{Name: req.Name, Primary: "10.0.0.9:5432", Replicas: reps, State: "added"}, f.err
}

func (f *fakeOperator) DrainShard(_ context.Context, name string) (admin.ShardInfo, error) {
	f.drained = name
	return admin.ShardInfo{Name: name, State: "draining", Slots: 341, FromConfig: true}, f.err
}

func (f *fakeOperator) RemoveShard(_ context.Context, name string) error {
	f.removed = name
	return f.err
}

func (f *fakeOperator) PlanRebalance(_ context.Context, req admin.RebalanceRequest) (admin.Plan, error) {
	f.req = req
	return f.plan, f.err
}

func (f *fakeOperator) StartRebalance(_ context.Context, req admin.RebalanceRequest) (admin.RebalanceStatus, error) {
	f.req = req
	return f.started, f.err
}

func (f *fakeOperator) RebalanceStatus(context.Context) (admin.RebalanceStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.polls
	f.polls++
	if err := f.stepErrs[n]; err != nil {
		return admin.RebalanceStatus{}, err
	}
	if len(f.steps) == 0 {
		return admin.RebalanceStatus{State: "idle"}, f.err
	}
	return f.steps[min(n, len(f.steps)-1)], f.err
}

func (f *fakeOperator) CancelRebalance(context.Context) (admin.RebalanceStatus, error) {
	st := f.started
	st.State = "cancelling"
	return st, f.err
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func slotRange(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// rebalanceSteps is a two-move rebalance going from copy to the final
// state, as successive polls see it.
func rebalanceSteps(final string) (started admin.RebalanceStatus, steps []admin.RebalanceStatus) {
	m1 := admin.MoveStatus{PlannedMove: admin.PlannedMove{From: "s0", To: "s2", Slots: slotRange(0, 169), Rows: 170000, Bytes: 17 << 20}, Phase: "pending"}
	m2 := admin.MoveStatus{PlannedMove: admin.PlannedMove{From: "s1", To: "s2", Slots: slotRange(512, 681), Rows: 160000, Bytes: 16 << 20}, Phase: "pending"}
	for _, m := range []*admin.MoveStatus{&m1, &m2} {
		m.RowsTotal, m.BytesTotal, m.TablesTotal = m.Rows, m.Bytes, 3
	}
	st := func(state, phase string, a, b admin.MoveStatus, eta float64) admin.RebalanceStatus {
		s := admin.RebalanceStatus{ID: 7, State: state, Phase: phase, StartedAt: t0, Moves: []admin.MoveStatus{a, b}, ETASeconds: eta}
		for _, m := range s.Moves {
			s.Totals.RowsCopied += m.RowsCopied
			s.Totals.RowsTotal += m.RowsTotal
			s.Totals.BytesCopied += m.BytesCopied
			s.Totals.BytesTotal += m.BytesTotal
			s.Totals.LagBytes += m.LagBytes
		}
		return s
	}
	started = st("running", "prepare", m1, m2, 0)
	started.Moves[0].Phase = "prepare"

	a := m1
	a.Phase, a.RowsCopied, a.BytesCopied = "copy", 85000, 8<<20+512<<10
	steps = append(steps, st("running", "copy", a, m2, 80))
	a.Phase, a.RowsCopied, a.BytesCopied, a.LagBytes = "catchup", 170000, 17<<20, 3<<20
	steps = append(steps, st("running", "catchup", a, m2, 60))
	a.Phase, a.LagBytes, a.PauseMillis, a.Verified = "done", 0, 12.5, true
	b := m2
	b.Phase, b.RowsCopied, b.BytesCopied = "copy", 40000, 4<<20
	steps = append(steps, st("running", "copy", a, b, 30))

	end := st(final, "", a, b, 0)
	end.FinishedAt = t0.Add(2*time.Minute + 3*time.Second)
	switch final {
	case "done":
		b.Phase, b.RowsCopied, b.BytesCopied, b.PauseMillis, b.Verified = "done", 160000, 16<<20, 8, true
		end = st(final, "", a, b, 0)
		end.FinishedAt = t0.Add(2*time.Minute + 3*time.Second)
	case "failed":
		end.Moves[1].Phase = "rolled_back"
		end.Error = "verify: slot 600 checksum differs"
		end.Moves[1].VerifyError = "slot 600 checksum differs"
	case "cancelled":
		end.Moves[1].Phase = "rolled_back"
	}
	steps = append(steps, end)
	return started, steps
}

func operatorProxy(t *testing.T, op admin.Operator) *httptest.Server {
	t.Helper()
	opts := admin.Options{Token: "tok"}
	if op != nil {
		opts.Operator = op
	}
	srv := httptest.NewServer(admin.NewServer(opts).Handler())
	t.Cleanup(srv.Close)
	return srv
}

func ctl(t *testing.T, srv *httptest.Server, args ...string) (int, string, string) {
	t.Helper()
	return runCmd(t, nil, append([]string{"--admin", srv.URL, "--token", "tok"}, args...)...)
}

func wantLines(t *testing.T, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l) {
			t.Errorf("output lacks %q:\n%s", l, out)
		}
	}
}

func oneLineError(t *testing.T, code int, stderr string, want ...string) {
	t.Helper()
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "shardctl: ") {
		t.Errorf("exit %d stderr %q, want 1 and one line", code, stderr)
	}
	wantLines(t, stderr, want...)
}

func TestShards(t *testing.T) {
	f := &fakeOperator{shards: []admin.ShardInfo{
		{Name: "s0", Primary: "10.0.0.1:5432", Replicas: []string{"10.0.0.2:5432", "10.0.0.3:5432"}, State: "active", Slots: 512, FromConfig: true},
		{Name: "s2", Primary: "10.0.0.9:5432", State: "added"},
	}}
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "shards")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	t.Logf("\n%s", out)
	wantLines(t, out,
		"SHARD  STATE   SLOTS  PRIMARY        REPLICAS                     SOURCE\n",
		"s0     active  512    10.0.0.1:5432  10.0.0.2:5432,10.0.0.3:5432  config\n",
		"s2     added   0      10.0.0.9:5432  -                            shard add\n")

	code, out, _ = ctl(t, srv, "shards", "--json")
	var got []admin.ShardInfo
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got) != 2 || !strings.Contains(out, "\n    \"from_config\": true\n") {
		t.Errorf("--json: exit %d\n%s", code, out)
	}

	f.shards = nil
	if _, out, _ := ctl(t, srv, "shards"); out != "no shards\n" {
		t.Errorf("no shards: %q", out)
	}
}

func TestShardAdd(t *testing.T) {
	f := &fakeOperator{}
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "shard", "add", "--name", "s2", "--primary", "postgres://su:pw@10.0.0.9/app",
		"--replica", "postgres://su:pw@10.0.0.10/app", "--replica", "postgres://su:pw@10.0.0.11/app")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if f.added.Name != "s2" || f.added.Primary != "postgres://su:pw@10.0.0.9/app" || len(f.added.Replicas) != 2 || f.added.Replicas[1] != "postgres://su:pw@10.0.0.11/app" {
		t.Errorf("operator got %+v", f.added)
	}
	if want := "shard s2 added: primary 10.0.0.9:5432, 2 replicas\n" +
		"it owns no slots yet: review with 'shardctl rebalance plan', then run 'shardctl rebalance start'\n"; out != want {
		t.Errorf("output %q, want %q", out, want)
	}

	code, out, _ = ctl(t, srv, "--json", "shard", "add", "--name", "s3", "--primary", "postgres://x")
	if code != 0 || !strings.Contains(out, `"state": "added"`) {
		t.Errorf("--json: exit %d %s", code, out)
	}

	code, _, errOut = ctl(t, srv, "shard", "add", "--name", "s4")
	if code != 2 || !strings.Contains(errOut, "--primary required") {
		t.Errorf("without --primary: exit %d %q", code, errOut)
	}

	f.err = &admin.Error{Status: http.StatusConflict, Message: `shard "s2" already exists`, Hint: "pick another --name"}
	code, out, errOut = ctl(t, srv, "shard", "add", "--name", "s2", "--primary", "postgres://x")
	oneLineError(t, code, errOut, `409 Conflict: shard "s2" already exists (pick another --name)`)
	if out != "" {
		t.Errorf("stdout on error: %q", out)
	}
}

func TestShardDrainAndRemove(t *testing.T) {
	f := &fakeOperator{}
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "shard", "drain", "s1")
	if code != 0 || f.drained != "s1" {
		t.Fatalf("exit %d drained %q: %s", code, f.drained, errOut)
	}
	if want := "shard s1 is draining, 341 slots to move away\n" +
		"move them with 'shardctl rebalance start', then remove it with 'shardctl shard remove s1'\n"; out != want {
		t.Errorf("drain output %q, want %q", out, want)
	}

	code, out, _ = ctl(t, srv, "shard", "remove", "s1")
	if code != 0 || f.removed != "s1" || out != "shard s1 removed\n" {
		t.Errorf("remove: exit %d removed %q output %q", code, f.removed, out)
	}
	code, out, _ = ctl(t, srv, "shard", "remove", "s1", "--json")
	if code != 0 || out != "{\n  \"removed\": \"s1\"\n}\n" {
		t.Errorf("remove --json: exit %d %q", code, out)
	}

	f.err = &admin.Error{Status: http.StatusConflict, Message: `shard "s1" still owns 341 slots`, Hint: "move them first: shardctl rebalance start"}
	code, _, errOut = ctl(t, srv, "shard", "remove", "s1")
	oneLineError(t, code, errOut, `shard "s1" still owns 341 slots (move them first: shardctl rebalance start)`)

	for _, args := range [][]string{{"shard", "drain"}, {"shard", "remove", "a", "b"}, {"shard", "bogus"}, {"rebalance", "bogus"}} {
		if code, _, errOut := ctl(t, srv, args...); code != 2 || !strings.HasPrefix(errOut, "shardctl: ") {
			t.Errorf("%v: exit %d %q, want 2", args, code, errOut)
		}
	}
	if code, out, _ := ctl(t, srv, "rebalance"); code != 0 || !strings.Contains(out, "plan") || !strings.Contains(out, "cancel") {
		t.Errorf("rebalance alone: exit %d, want its help:\n%s", code, out)
	}
}

func TestRebalancePlan(t *testing.T) {
	f := &fakeOperator{plan: admin.Plan{
		Moves: []admin.PlannedMove{
			{From: "s0", To: "s2", Slots: append(slotRange(3, 7), 12), Rows: 120000, Bytes: 12 << 20},
			{From: "s1", To: "s2", Slots: []int{700, 512, 513, 514}, Rows: 999, Bytes: 1536},
		},
		Before: map[string]int{"s0": 512, "s1": 512, "s2": 0},
		After:  map[string]int{"s0": 506, "s1": 508, "s2": 10},
	}}
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "rebalance", "plan", "--even")
	if code != 0 || !f.req.Even {
		t.Fatalf("exit %d even %v: %s", code, f.req.Even, errOut)
	}
	t.Logf("\n%s", out)
	want := `FROM  TO  SLOTS  SLOT RANGES  ROWS    BYTES
s0    s2  6      3-7,12       120000  12.0 MiB
s1    s2  4      512-514,700  999     1.5 KiB

2 moves: 10 slots, 120999 rows, 12.0 MiB (estimated)

SHARD  BEFORE  AFTER  CHANGE
s0     512     506    -6
s1     512     508    -4
s2     0       10     +10

start it with 'shardctl rebalance start --even'
`
	if out != want {
		t.Errorf("plan output:\n%s\nwant:\n%s", out, want)
	}

	code, out, _ = ctl(t, srv, "rebalance", "plan", "--json")
	var p admin.Plan
	if code != 0 || f.req.Even || json.Unmarshal([]byte(out), &p) != nil || len(p.Moves) != 2 || p.After["s2"] != 10 {
		t.Errorf("--json: exit %d even %v\n%s", code, f.req.Even, out)
	}

	f.plan = admin.Plan{Before: map[string]int{"s0": 512}, After: map[string]int{"s0": 512}}
	_, out, _ = ctl(t, srv, "rebalance", "plan")
	if !strings.HasPrefix(out, "nothing to move") || strings.Contains(out, "start it") {
		t.Errorf("empty plan:\n%s", out)
	}
}

func TestRebalanceStartNoWait(t *testing.T) {
	f := &fakeOperator{}
	f.started, f.steps = rebalanceSteps("done")
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "rebalance", "start")
	if code != 0 || f.req.Even {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if want := "rebalance 7 started: 2 moves, 340 slots, ~330000 rows, ~33.0 MiB\n" +
		"follow it with 'shardctl rebalance status --watch'; stop it with 'shardctl rebalance cancel'\n"; out != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if f.polls != 0 {
		t.Errorf("polled %d times without --wait", f.polls)
	}
	code, out, _ = ctl(t, srv, "rebalance", "start", "--even", "--json")
	if code != 0 || !f.req.Even || !strings.Contains(out, "\n  \"state\": \"running\",\n") {
		t.Errorf("--json: exit %d\n%s", code, out)
	}

	f.err = &admin.Error{Status: http.StatusConflict, Message: "rebalance 6 is running", Hint: "follow it with 'shardctl rebalance status --watch'"}
	code, _, errOut = ctl(t, srv, "rebalance", "start")
	oneLineError(t, code, errOut, "rebalance 6 is running (follow it with")
}

func TestRebalanceStartWait(t *testing.T) {
	for _, tc := range []struct {
		final    string
		code     int
		summary  string
		stderrRE string
	}{
		{"done", 0, "rebalance 7 done after 2m3s: 2 moves, 340 slots, 330000 rows copied, 33.0 MiB, longest write pause 12.5ms, 2/2 moves verified\n", `^$`},
		{"failed", 1, "rebalance 7 failed after 2m3s\n", `^shardctl: rebalance 7 failed in move 2 \(s1 -> s2\): verify: slot 600 checksum differs \(see its steps with 'shardctl rebalance status'; .*\)\n$`},
		{"cancelled", 1, "rebalance 7 cancelled after 2m3s\n", `^shardctl: rebalance 7 was cancelled \(see what is left to move with 'shardctl rebalance plan'\)\n$`},
	} {
		t.Run(tc.final, func(t *testing.T) {
			f := &fakeOperator{}
			f.started, f.steps = rebalanceSteps(tc.final)
			srv := operatorProxy(t, f)
			code, out, errOut := ctl(t, srv, "rebalance", "start", "--wait")
			t.Logf("\n%s", out)
			if code != tc.code || !regexp.MustCompile(tc.stderrRE).MatchString(errOut) {
				t.Errorf("exit %d stderr %q, want %d matching %s", code, errOut, tc.code, tc.stderrRE)
			}
			if !strings.HasPrefix(out, "rebalance 7 started: 2 moves") || !strings.HasSuffix(out, tc.summary) {
				t.Errorf("output:\n%s\nwant the start line first and %q last", out, tc.summary)
			}
			// Not a terminal: plain lines, one per poll, no escape codes.
			wantLines(t, out,
				"] running  move 1/2 s0->s2 copy  rows 85.0k/330.0k (26%)  bytes 8.5 MiB/33.0 MiB  lag 0 B  ETA 1m20s\n",
				"] running  move 1/2 s0->s2 catchup  rows 170.0k/330.0k (52%)  bytes 17.0 MiB/33.0 MiB  lag 3.0 MiB  ETA 1m0s\n",
				"] running  move 2/2 s1->s2 copy  rows 210.0k/330.0k (64%)  bytes 21.0 MiB/33.0 MiB  lag 0 B  ETA 30s\n")
			if strings.Contains(out, "\x1b") {
				t.Errorf("escape codes in non-terminal output: %q", out)
			}
		})
	}
}

func TestRebalanceStartWaitJSON(t *testing.T) {
	f := &fakeOperator{}
	f.started, f.steps = rebalanceSteps("failed")
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "rebalance", "start", "--wait", "--json")
	var st admin.RebalanceStatus
	if code != 1 || json.Unmarshal([]byte(out), &st) != nil || st.State != "failed" || !strings.Contains(errOut, "failed") {
		t.Errorf("exit %d stderr %q, want 1 and only the final JSON on stdout:\n%s", code, errOut, out)
	}
}

func TestRebalanceStatus(t *testing.T) {
	f := &fakeOperator{}
	_, steps := rebalanceSteps("failed")
	cur := steps[2]
	cur.Log = []admin.JournalNote{
		{At: t0.Add(61 * time.Second), Move: 0, Phase: "cutover", Message: "writes to 170 slots paused 12.5ms"},
		{At: t0.Add(62 * time.Second), Move: -1, Phase: "copy", Message: "move 2 started"},
	}
	f.steps = []admin.RebalanceStatus{cur}
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "rebalance", "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	t.Logf("\n%s", out)
	if !strings.HasPrefix(out, "rebalance 7: running, phase copy, started 2025-03-01T12:00:00Z (") || !strings.Contains(out, " ago), ETA 30s\n") {
		t.Errorf("header:\n%s", out)
	}
	wantLines(t, out,
		"\n#  FROM  TO  SLOTS  PHASE  ROWS           BYTES              LAG  PAUSE   VERIFIED\n",
		"\n1  s0    s2  170    done   170000/170000  17.0 MiB/17.0 MiB  -    12.5ms  yes\n",
		"\n2  s1    s2  170    copy   40000/160000   4.0 MiB/16.0 MiB   -    -       no\n",
		"\ntotal: 210000/330000 rows (64%), 21.0 MiB/33.0 MiB\n",
		"\nrecent steps:\n  12:01:01  move 1  cutover  writes to 170 slots paused 12.5ms\n  12:01:02  -       copy     move 2 started\n")

	f.steps, f.polls = steps[len(steps)-1:], 0
	_, out, _ = ctl(t, srv, "rebalance", "status")
	wantLines(t, out,
		"rebalance 7: failed, started 2025-03-01T12:00:00Z, finished 2025-03-01T12:02:03Z (took 2m3s)\nerror: verify: slot 600 checksum differs\n",
		"\n2  s1    s2  170    rolled_back  40000/160000   4.0 MiB/16.0 MiB   -    -       FAILED\n",
		"move 2 verify: slot 600 checksum differs\n")

	code, out, _ = ctl(t, srv, "rebalance", "status", "--json")
	if code != 0 || !strings.Contains(out, "\n  \"state\": \"failed\",\n") {
		t.Errorf("--json: exit %d\n%s", code, out)
	}

	f.steps = nil
	if _, out, _ := ctl(t, srv, "rebalance", "status"); out != "no rebalance has run\nsee what one would do with 'shardctl rebalance plan'\n" {
		t.Errorf("idle: %q", out)
	}
}

func TestRebalanceStatusWatchPlain(t *testing.T) {
	f := &fakeOperator{}
	_, f.steps = rebalanceSteps("done")
	f.stepErrs = map[int]error{2: errors.New("metadata database: connection reset")}
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "rebalance", "status", "--watch")
	t.Logf("\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	// One line per poll (the first and the erroring one included), then the summary.
	// Polls: copy, catchup, an error, done.
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "[") || !strings.Contains(lines[3], "] done  moves 2/2 done  rows 330.0k/330.0k (100%)") ||
		!strings.HasPrefix(lines[4], "rebalance 7 done after 2m3s") {
		t.Errorf("got %d lines, want 3 progress lines, a retry note and the summary", len(lines))
	}
	wantLines(t, out, "admin API did not answer, retrying: admin API at "+srv.URL+": GET /api/v1/rebalance: 500 Internal Server Error: metadata database: connection reset\n")

	// Nothing running: the plain table, exit 0 even though it failed.
	_, steps := rebalanceSteps("failed")
	f.steps, f.polls, f.stepErrs = steps[len(steps)-1:], 0, nil
	code, out, _ = ctl(t, srv, "rebalance", "status", "--watch")
	if code != 0 || !strings.HasPrefix(out, "rebalance 7: failed, started") {
		t.Errorf("watch of an ended rebalance: exit %d\n%s", code, out)
	}
}

func TestRebalanceWatchGivesUp(t *testing.T) {
	f := &fakeOperator{}
	_, steps := rebalanceSteps("done")
	f.steps = steps[:1]
	srv := operatorProxy(t, f)
	saved := watchGrace
	watchGrace = 20 * time.Millisecond
	t.Cleanup(func() { watchGrace = saved })
	f.stepErrs = map[int]error{}
	for i := 1; i < 1000; i++ {
		f.stepErrs[i] = errors.New("boom")
	}
	code, _, errOut := ctl(t, srv, "rebalance", "status", "--watch")
	oneLineError(t, code, errOut, "shardctl: lost track of rebalance 7, which goes on in the proxy: ", "boom")
}

func TestRebalanceWatchBars(t *testing.T) {
	savedTerm := isTerminal
	isTerminal = func(io.Writer) bool { return true }
	barOptions = []mpb.ContainerOption{mpb.ForceTTY(), mpb.WithAutoRefresh(), mpb.WithWidth(140)}
	t.Cleanup(func() { isTerminal, barOptions = savedTerm, nil })
	for _, final := range []string{"done", "failed"} {
		f := &fakeOperator{}
		_, f.steps = rebalanceSteps(final)
		srv := operatorProxy(t, f)
		code, out, errOut := ctl(t, srv, "rebalance", "status", "--watch")
		t.Logf("%s: %q", final, out)
		if (final == "done") != (code == 0) {
			t.Errorf("%s: exit %d %s", final, code, errOut)
		}
		// Escape codes only show when a frame was redrawn, which depends
		// on timing; the bars themselves always do.
		wantLines(t, out, "1/2 s0->s2", "2/2 s1->s2", "total", "[=====", "rebalance 7 "+final+" after 2m3s")
		if final == "done" {
			wantLines(t, out, "100%", "rows 330.0k/330.0k  33.0 MiB/33.0 MiB")
		}
	}
}

func TestRebalanceCancel(t *testing.T) {
	f := &fakeOperator{}
	f.started, _ = rebalanceSteps("cancelled")
	srv := operatorProxy(t, f)
	code, out, errOut := ctl(t, srv, "rebalance", "cancel")
	if code != 0 || out != "rebalance 7: cancelling\nfollow it with 'shardctl rebalance status --watch'\n" {
		t.Errorf("exit %d stderr %q output %q", code, errOut, out)
	}
	code, out, _ = ctl(t, srv, "rebalance", "cancel", "--json")
	if code != 0 || !strings.Contains(out, `"state": "cancelling"`) {
		t.Errorf("--json: exit %d\n%s", code, out)
	}
	f.err = &admin.Error{Status: http.StatusConflict, Message: "no rebalance is running", Hint: "see the last one with 'shardctl rebalance status'"}
	code, _, errOut = ctl(t, srv, "rebalance", "cancel")
	oneLineError(t, code, errOut, "409 Conflict: no rebalance is running (see the last one with 'shardctl rebalance status')")
}

func TestOperatorVerbsWithoutOperator(t *testing.T) {
	srv := operatorProxy(t, nil)
	for _, args := range [][]string{
		{"shards"}, {"shard", "add", "--name", "s2", "--primary", "postgres://x"}, {"shard", "drain", "s1"}, {"shard", "remove", "s1"},
		{"rebalance", "plan"}, {"rebalance", "start", "--wait"}, {"rebalance", "status", "--watch"}, {"rebalance", "cancel"},
		{"rebalance", "status", "--json"},
	} {
		code, out, errOut := ctl(t, srv, args...)
		if out != "" {
			t.Errorf("%v: stdout %q", args, out)
		}
		oneLineError(t, code, errOut, "503 Service Unavailable: operator verbs are not available", "(set metadata.dsn in the proxy's config and restart it")
	}
}

func TestUnreachableHint(t *testing.T) {
	srv := httptest.NewServer(nil)
	addr := srv.Listener.Addr().String()
	srv.Close()
	code, _, errOut := runCmd(t, nil, "--admin", addr, "shards")
	oneLineError(t, code, errOut, "cannot reach admin API at "+addr, "(is shardproxy running? point --admin or SHARDCTL_ADMIN at its admin listener)")
	srv = operatorProxy(t, &fakeOperator{})
	code, _, errOut = runCmd(t, nil, "--admin", srv.URL, "shards")
	oneLineError(t, code, errOut, "401 Unauthorized: missing or invalid bearer token (pass the proxy's admin token with --token or SHARDCTL_TOKEN)")
}

func TestFormatHelpers(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, "-"}, {[]int{5}, "5"}, {[]int{3, 4, 5, 6, 7, 12}, "3-7,12"}, {[]int{12, 3, 4, 4, 9, 10}, "3-4,9-10,12"}, {[]int{1, 3, 5}, "1,3,5"},
	} {
		if got := compactSlots(tc.in); got != tc.want {
			t.Errorf("compactSlots(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 12 << 20: "12.0 MiB", 3 << 40: "3.0 TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{9999: "9999", 10000: "10.0k", 1234567: "1.2M", 5e9: "5.0G"} {
		if got := humanCount(n); got != want {
			t.Errorf("humanCount(%d) = %q, want %q", n, got, want)
		}
	}
}
