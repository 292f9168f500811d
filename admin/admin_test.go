package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shardproxy/shardproxy/metrics"
)

// The proxy converts pool stats with a plain type conversion; this stops
// compiling if the two structs drift apart.
var _ = PoolStatus(metrics.PoolStats{})

func testStatus() Status {
	return Status{
		Version:           "test-1.2.3",
		StartedAt:         time.Now().Add(-90 * time.Second).UTC().Round(time.Millisecond),
		Listen:            "127.0.0.1:6432",
		PoolMode:          "transaction",
		ClientConnections: 7,
		Shards: []ShardStatus{
			{Name: "s0", Primary: NodeStatus{Addr: "127.0.0.1:5433", Role: "primary", Healthy: true},
				Replicas: []NodeStatus{{Addr: "127.0.0.1:5434", Role: "replica", Healthy: false}}},
			{Name: "s1", Primary: NodeStatus{Addr: "127.0.0.1:5435", Role: "primary", Healthy: true}},
		},
		Pools: []PoolStatus{{Shard: "s0", Node: "127.0.0.1:5433", Role: "primary", User: "app", Database: "app", Idle: 2, Active: 1, Waiting: 0, MaxSize: 20}},
	}
}

// startServer runs a real server on a free loopback port, with the pool
// collector wired the way the proxy wires it.
func startServer(t *testing.T, token string) *Server {
	t.Helper()
	m := metrics.New()
	m.Queries.Add(5)
	st := testStatus()
	m.RegisterPoolCollector(func() []metrics.PoolStats {
		out := make([]metrics.PoolStats, len(st.Pools))
		for i, p := range st.Pools {
			out[i] = metrics.PoolStats(p)
		}
		return out
	})
	s := NewServer(Options{Listen: "127.0.0.1:0", Token: token, Registry: m.Registry(), Status: testStatus})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

func get(t *testing.T, s *Server, path, token string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.Addr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

func TestTokenRequired(t *testing.T) {
	s := startServer(t, "s3cret")
	for _, path := range []string{MetricsPath, StatusPath, "/nope"} {
		for _, tok := range []string{"", "wrong", "s3cre"} {
			code, hdr, body := get(t, s, path, tok)
			if code != http.StatusUnauthorized {
				t.Errorf("GET %s with token %q: %d, want 401", path, tok, code)
			}
			if !strings.Contains(hdr.Get("Content-Type"), "application/json") || !strings.Contains(body, `"error"`) {
				t.Errorf("GET %s 401 body %q (%s), want a JSON error", path, body, hdr.Get("Content-Type"))
			}
		}
	}
	if code, _, body := get(t, s, StatusPath, "s3cret"); code != http.StatusOK {
		t.Errorf("GET %s with the token: %d %s, want 200", StatusPath, code, body)
	}
	if code, _, _ := get(t, s, MetricsPath, "s3cret"); code != http.StatusOK {
		t.Errorf("GET %s with the token: %d, want 200", MetricsPath, code)
	}

	c := &Client{Addr: s.Addr(), Token: "wrong"}
	_, err := c.Status(context.Background())
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("client with a wrong token: %v, want an HTTPError 401", err)
	}
	for _, want := range []string{s.Addr(), "401", "invalid bearer token"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestNoTokenConfiguredAllowsAll(t *testing.T) {
	s := startServer(t, "")
	if code, _, body := get(t, s, StatusPath, ""); code != http.StatusOK {
		t.Errorf("GET %s: %d %s, want 200", StatusPath, code, body)
	}
}

func TestUnknownRouteAndMethod(t *testing.T) {
	s := startServer(t, "")
	code, _, body := get(t, s, "/api/v1/nope", "")
	var e errorBody
	if code != http.StatusNotFound || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
		t.Errorf("unknown route: %d %q, want 404 with a JSON error", code, body)
	}
	resp, err := http.Post("http://"+s.Addr()+StatusPath, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Errorf("POST %s: %d Allow=%q, want 405 Allow=GET", StatusPath, resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestMetrics(t *testing.T) {
	s := startServer(t, "tok")
	code, _, body := get(t, s, MetricsPath, "tok")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	for _, want := range []string{
		"shardproxy_queries_total 5",
		`shardproxy_clients_refused_total{reason="too_many_clients"} 0`,
		`shardproxy_pool_server_connections{database="app",node="127.0.0.1:5433",role="primary",shard="s0",state="idle",user="app"} 2`,
		`shardproxy_pool_max_size{database="app",node="127.0.0.1:5433",role="primary",shard="s0",user="app"} 20`,
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	s := startServer(t, "tok")
	got, err := (&Client{Addr: s.Addr(), Token: "tok"}).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := testStatus()
	if got.UptimeSeconds < 89 || got.UptimeSeconds > 600 {
		t.Errorf("uptime_seconds = %v, want about 90 (from started_at)", got.UptimeSeconds)
	}
	// Empty replica lists arrive as [] so that scripts need no null check.
	want.Shards[1].Replicas = []NodeStatus{}
	got.UptimeSeconds, got.StartedAt, want.StartedAt = 0, time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("status round trip:\n got %+v\nwant %+v", got, want)
	}
}

func TestStatusJSONFieldNames(t *testing.T) {
	s := startServer(t, "")
	_, _, body := get(t, s, StatusPath, "")
	for _, want := range []string{`"version"`, `"started_at"`, `"uptime_seconds"`, `"pool_mode"`, `"client_connections"`, `"replicas"`, `"healthy"`, `"max_size"`} {
		if !strings.Contains(body, want) {
			t.Errorf("status JSON lacks %s: %s", want, body)
		}
	}
}

func TestClientUnreachable(t *testing.T) {
	// Start and stop a server to get a port that nothing listens on.
	s := NewServer(Options{Listen: "127.0.0.1:0"})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := (&Client{Addr: addr}).Status(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "cannot reach admin API at "+addr+": ") {
		t.Fatalf("unreachable: %v, want `cannot reach admin API at %s: ...`", err, addr)
	}
}

func TestStartTwiceFails(t *testing.T) {
	s := startServer(t, "")
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
}
