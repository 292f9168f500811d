package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeOperator records its calls and answers with canned values or err.
type fakeOperator struct {
	mu    sync.Mutex
	calls []string
	err   error

	shards []ShardInfo
	plan   Plan
	status RebalanceStatus
	added  AddShardRequest
	req    RebalanceRequest
}

func (f *fakeOperator) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	return f.err
}

func (f *fakeOperator) Shards(context.Context) ([]ShardInfo, error) {
	return f.shards, f.record("Shards")
}

func (f *fakeOperator) AddShard(_ context.Context, req AddShardRequest) (ShardInfo, error) {
	f.added = req
	return ShardInfo{Name: req.Name, Primary: "10.0.0.9:5432", State: "added"}, f.record("AddShard " + req.Name)
}

func (f *fakeOperator) DrainShard(_ context.Context, name string) (ShardInfo, error) {
	return ShardInfo{Name: name, State: "draining", Slots: 512}, f.record("DrainShard " + name)
}

func (f *fakeOperator) RemoveShard(_ context.Context, name string) error {
	return f.record("RemoveShard " + name)
}

func (f *fakeOperator) PlanRebalance(_ context.Context, req RebalanceRequest) (Plan, error) {
	f.req = req
	return f.plan, f.record("PlanRebalance")
}

func (f *fakeOperator) StartRebalance(_ context.Context, req RebalanceRequest) (RebalanceStatus, error) {
	f.req = req
	return f.status, f.record("StartRebalance")
}

func (f *fakeOperator) RebalanceStatus(context.Context) (RebalanceStatus, error) {
	return f.status, f.record("RebalanceStatus")
}

func (f *fakeOperator) CancelRebalance(context.Context) (RebalanceStatus, error) {
	return f.status, f.record("CancelRebalance")
}

func (f *fakeOperator) lastCall() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return ""
	}
	return f.calls[len(f.calls)-1]
}

func opServer(t *testing.T, token string, op Operator) (*httptest.Server, *Client) {
	t.Helper()
	opts := Options{Token: token}
	if op != nil {
		opts.Operator = op
	}
	srv := httptest.NewServer(NewServer(opts).Handler())
	t.Cleanup(srv.Close)
	return srv, &Client{Addr: srv.URL, Token: token}
}

// send does a raw request and returns the status, headers and body.
func send(t *testing.T, srv *httptest.Server, method, path, token, body string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func TestOperatorVerbsRoundTrip(t *testing.T) {
	started := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	f := &fakeOperator{
		shards: []ShardInfo{
			{Name: "s0", Primary: "10.0.0.1:5432", Replicas: []string{"10.0.0.2:5432"}, State: "active", Slots: 512, FromConfig: true},
			{Name: "s1", Primary: "10.0.0.3:5432", State: "active", Slots: 512, FromConfig: true},
		},
		plan: Plan{
			Moves:  []PlannedMove{{From: "s0", To: "s2", Slots: []int{0, 1, 2}, Rows: 300, Bytes: 4096}},
			Before: map[string]int{"s0": 512, "s2": 0},
			After:  map[string]int{"s0": 509, "s2": 3},
		},
		status: RebalanceStatus{ID: 7, State: "running", Phase: "copy", StartedAt: started,
			Moves: []MoveStatus{{PlannedMove: PlannedMove{From: "s0", To: "s2", Slots: []int{0, 1, 2}}, Phase: "copy",
				MoveProgress: MoveProgress{RowsCopied: 100, RowsTotal: 300}}},
			Totals: MoveProgress{RowsCopied: 100, RowsTotal: 300}, ETASeconds: 12},
	}
	_, c := opServer(t, "tok", f)
	ctx := context.Background()

	shards, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := f.shards
	want[1].Replicas = []string{} // null becomes []
	if !reflect.DeepEqual(shards, want) {
		t.Errorf("Shards = %+v, want %+v", shards, want)
	}

	sh, err := c.AddShard(ctx, AddShardRequest{Name: "s2", Primary: "postgres://u:p@10.0.0.9/db", Replicas: []string{"postgres://r"}})
	if err != nil || sh.Name != "s2" || sh.State != "added" {
		t.Errorf("AddShard = %+v, %v", sh, err)
	}
	if f.added.Primary != "postgres://u:p@10.0.0.9/db" || len(f.added.Replicas) != 1 {
		t.Errorf("operator got %+v", f.added)
	}

	// A name that needs escaping arrives intact.
	sh, err = c.DrainShard(ctx, "s 1/x")
	if err != nil || sh.State != "draining" || f.lastCall() != "DrainShard s 1/x" {
		t.Errorf("DrainShard = %+v, %v; last call %q", sh, err, f.lastCall())
	}
	if err := c.RemoveShard(ctx, "s1"); err != nil || f.lastCall() != "RemoveShard s1" {
		t.Errorf("RemoveShard: %v; last call %q", err, f.lastCall())
	}

	plan, err := c.PlanRebalance(ctx, RebalanceRequest{Even: true})
	if err != nil || !f.req.Even || !reflect.DeepEqual(plan, f.plan) {
		t.Errorf("PlanRebalance = %+v, %v (even %v)", plan, err, f.req.Even)
	}
	if _, err := c.PlanRebalance(ctx, RebalanceRequest{}); err != nil || f.req.Even {
		t.Errorf("PlanRebalance(even=false): %v, operator saw even=%v", err, f.req.Even)
	}

	st, err := c.StartRebalance(ctx, RebalanceRequest{Even: true})
	if err != nil || !f.req.Even || !reflect.DeepEqual(st, f.status) {
		t.Errorf("StartRebalance = %+v, %v", st, err)
	}
	st, err = c.RebalanceStatus(ctx)
	if err != nil || !reflect.DeepEqual(st, f.status) {
		t.Errorf("RebalanceStatus = %+v, %v", st, err)
	}
	if _, err := c.CancelRebalance(ctx); err != nil || f.lastCall() != "CancelRebalance" {
		t.Errorf("CancelRebalance: %v; last call %q", err, f.lastCall())
	}
}

func TestOperatorVerbsStatusCodes(t *testing.T) {
	f := &fakeOperator{}
	srv, _ := opServer(t, "", f)
	for _, tc := range []struct {
		method, path, body string
		code               int
	}{
		{"GET", ShardsPath, "", 200},
		{"POST", ShardsPath, `{"name":"s2","primary":"postgres://x"}`, 201},
		{"POST", "/api/v1/shards/s2/drain", "", 200},
		{"DELETE", "/api/v1/shards/s2", "", 204},
		{"GET", RebalancePlanPath, "", 200},
		{"GET", RebalancePlanPath + "?even=1", "", 200},
		{"POST", RebalancePath, "", 202}, // an empty body is the default request
		{"POST", RebalancePath, `{"even":true}`, 202},
		{"GET", RebalancePath, "", 200},
		{"POST", RebalanceCancelPath, "", 200},
	} {
		code, hdr, body := send(t, srv, tc.method, tc.path, "", tc.body)
		if code != tc.code {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, code, body, tc.code)
		}
		if code == 204 && body != "" {
			t.Errorf("%s %s: 204 with body %q", tc.method, tc.path, body)
		}
		if code != 204 && !strings.Contains(hdr.Get("Content-Type"), "application/json") {
			t.Errorf("%s %s: Content-Type %q", tc.method, tc.path, hdr.Get("Content-Type"))
		}
	}
	// Nil lists and maps from the operator arrive as [] and {}.
	_, _, body := send(t, srv, "GET", ShardsPath, "", "")
	if strings.TrimSpace(body) != "[]" {
		t.Errorf("empty shard list: %s, want []", body)
	}
	_, _, body = send(t, srv, "GET", RebalancePlanPath, "", "")
	if !strings.Contains(body, `"moves":[]`) || !strings.Contains(body, `"before":{}`) || !strings.Contains(body, `"after":{}`) {
		t.Errorf("empty plan: %s", body)
	}
	_, _, body = send(t, srv, "GET", RebalancePath, "", "")
	if !strings.Contains(body, `"moves":[]`) || strings.Contains(body, "started_at") {
		t.Errorf("idle rebalance: %s", body)
	}
}

func TestOperatorRoutingErrors(t *testing.T) {
	srv, _ := opServer(t, "", &fakeOperator{})
	for _, tc := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"PUT", ShardsPath, 405, "GET, POST"},
		{"GET", "/api/v1/shards/s1", 405, "DELETE"},
		{"GET", "/api/v1/shards/s1/drain", 405, "POST"},
		{"DELETE", RebalancePath, 405, "GET, POST"},
		{"GET", RebalanceCancelPath, 405, "POST"},
		{"POST", RebalancePlanPath, 405, "GET"},
		{"POST", "/api/v1/shards/s1/bogus", 404, ""},
		{"DELETE", "/api/v1/shards/", 404, ""},
		{"POST", "/api/v1/shards/s1/drain/x", 404, ""},
	} {
		code, hdr, body := send(t, srv, tc.method, tc.path, "", "")
		if code != tc.code || hdr.Get("Allow") != tc.allow || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s: %d Allow=%q %s, want %d Allow=%q", tc.method, tc.path, code, hdr.Get("Allow"), body, tc.code, tc.allow)
		}
	}
}

func TestOperatorBadRequests(t *testing.T) {
	f := &fakeOperator{}
	srv, _ := opServer(t, "", f)
	for _, tc := range []struct {
		method, path, body string
		want               string
	}{
		{"POST", ShardsPath, "", "request body is empty"},
		{"POST", ShardsPath, `{"name":`, "not valid JSON"},
		{"POST", ShardsPath, `{"name": 3, "primary": "x"}`, `field \"name\" must be a JSON string`},
		{"POST", ShardsPath, `{"name": "s2"}`, `lacks \"primary\"`},
		{"POST", ShardsPath, `{"name": "s2", "primary": "x"} {}`, "data after its JSON object"},
		{"POST", RebalancePath, `{"even": "yes"}`, `field \"even\" must be a JSON boolean`},
		{"POST", RebalancePath, `[`, "not valid JSON"},
		{"GET", RebalancePlanPath + "?even=maybe", "", `even=\"maybe\" is not a boolean`},
	} {
		code, _, body := send(t, srv, tc.method, tc.path, "", tc.body)
		if code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s %q: %d %s, want 400 mentioning %q", tc.method, tc.path, tc.body, code, body, tc.want)
		}
	}
	if len(f.calls) != 0 {
		t.Errorf("operator called on bad requests: %v", f.calls)
	}
	code, _, body := send(t, srv, "POST", ShardsPath, "", `{"name":"s2","primary":"`+strings.Repeat("x", maxRequestBody)+`"}`)
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("huge body: %d %.200s", code, body)
	}
}

func TestOperatorErrors(t *testing.T) {
	f := &fakeOperator{}
	srv, c := opServer(t, "", f)
	ctx := context.Background()

	f.err = &Error{Status: http.StatusConflict, Message: `shard "s0" owns 512 slots`, Hint: "drain it first"}
	err := c.RemoveShard(ctx, "s0")
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 409 || he.Message != `shard "s0" owns 512 slots` || he.Hint != "drain it first" {
		t.Fatalf("RemoveShard: %#v", err)
	}
	if got := err.Error(); !strings.HasSuffix(got, `409 Conflict: shard "s0" owns 512 slots (drain it first)`) {
		t.Errorf("error text %q", got)
	}

	// Wrapped, without a status: 400.
	f.err = errors.Join(errors.New("context"), &Error{Message: "no such shard"})
	code, _, body := send(t, srv, "POST", "/api/v1/shards/nope/drain", "", "")
	var eb errorBody
	if code != 400 || json.Unmarshal([]byte(body), &eb) != nil || eb.Error != "no such shard" || eb.Hint != "" || strings.Contains(body, "hint") {
		t.Errorf("status-less *Error: %d %s", code, body)
	}

	// Any other error: 500 with just the message.
	f.err = errors.New("metadata database: connection refused")
	code, _, body = send(t, srv, "GET", RebalancePath, "", "")
	if code != 500 || json.Unmarshal([]byte(body), &eb) != nil || eb.Error != "metadata database: connection refused" || eb.Hint != "" {
		t.Errorf("plain error: %d %s", code, body)
	}
}

func TestOperatorMissing(t *testing.T) {
	srv, c := opServer(t, "", nil)
	for _, tc := range []struct{ method, path string }{
		{"GET", ShardsPath}, {"POST", ShardsPath}, {"POST", "/api/v1/shards/s1/drain"}, {"DELETE", "/api/v1/shards/s1"},
		{"GET", RebalancePlanPath}, {"POST", RebalancePath}, {"GET", RebalancePath}, {"POST", RebalanceCancelPath},
	} {
		code, _, body := send(t, srv, tc.method, tc.path, "", `{"name":"s2","primary":"x"}`)
		var eb errorBody
		if code != 503 || json.Unmarshal([]byte(body), &eb) != nil || !strings.Contains(eb.Error, "metadata database") || !strings.Contains(eb.Hint, "metadata.dsn") {
			t.Errorf("%s %s without an operator: %d %s", tc.method, tc.path, code, body)
		}
	}
	_, err := c.Shards(context.Background())
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 503 || !strings.Contains(he.Hint, "metadata.dsn") {
		t.Errorf("client: %#v", err)
	}
}

func TestOperatorTokenRequired(t *testing.T) {
	f := &fakeOperator{}
	srv, _ := opServer(t, "s3cret", f)
	for _, tc := range []struct{ method, path string }{
		{"GET", ShardsPath}, {"POST", ShardsPath}, {"POST", "/api/v1/shards/s1/drain"}, {"DELETE", "/api/v1/shards/s1"},
		{"GET", RebalancePlanPath}, {"POST", RebalancePath}, {"GET", RebalancePath}, {"POST", RebalanceCancelPath},
	} {
		for _, tok := range []string{"", "wrong"} {
			if code, _, _ := send(t, srv, tc.method, tc.path, tok, ""); code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q: %d, want 401", tc.method, tc.path, tok, code)
			}
		}
	}
	if len(f.calls) != 0 {
		t.Errorf("operator called without the token: %v", f.calls)
	}
}
