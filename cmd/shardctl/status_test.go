package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shardproxy/shardproxy/admin"
)

// fakeProxy serves the real admin handler, so the test covers the wire
// format shardctl will meet, with a status we control.
func fakeProxy(t *testing.T, token string) *httptest.Server {
	t.Helper()
	st := admin.Status{
		Version:           "9.9.9",
		StartedAt:         time.Now().Add(-time.Hour - 2*time.Minute),
		Listen:            "127.0.0.1:6432",
		PoolMode:          "transaction",
		ClientConnections: 3,
		Shards: []admin.ShardStatus{
			{Name: "s0", Primary: admin.NodeStatus{Addr: "10.1.0.1:5432", Role: "primary", Healthy: true},
				Replicas: []admin.NodeStatus{{Addr: "10.1.0.2:5432", Role: "replica", Healthy: false}}},
			{Name: "s1", Primary: admin.NodeStatus{Addr: "10.1.0.3:5432", Role: "primary", Healthy: true}},
		},
		Pools: []admin.PoolStatus{{Shard: "s0", Node: "10.1.0.1:5432", Role: "primary", User: "app", Database: "app", Idle: 4, Active: 2, Waiting: 1, MaxSize: 20}},
	}
	srv := httptest.NewServer(admin.NewServer(admin.Options{Token: token, Status: func() admin.Status { return st }}).Handler())
	t.Cleanup(srv.Close)
	return srv
}

func runCmd(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb, func(k string) string { return env[k] })
	return code, out.String(), errb.String()
}

func TestStatusText(t *testing.T) {
	srv := fakeProxy(t, "tok")
	code, out, errOut := runCmd(t, nil, "--admin", srv.Listener.Addr().String(), "--token", "tok", "status")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	t.Logf("output:\n%s", out)
	for _, want := range []string{
		"version:    9.9.9",
		"uptime:     1h2m", // seconds depend on test speed
		"listen:     127.0.0.1:6432",
		"pool mode:  transaction",
		"clients:    3",
		"SHARD  ROLE     ADDR           HEALTH",
		"s0     primary  10.1.0.1:5432  healthy",
		"s0     replica  10.1.0.2:5432  DOWN",
		"s1     primary  10.1.0.3:5432  healthy",
		"SHARD  NODE           ROLE     USER  DATABASE  IDLE  ACTIVE  WAITING  MAX",
		"s0     10.1.0.1:5432  primary  app   app       4     2       1        20",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	srv := fakeProxy(t, "tok")
	// Address and token from the environment this time.
	env := map[string]string{"SHARDCTL_ADMIN": srv.URL, "SHARDCTL_TOKEN": "tok"}
	code, out, errOut := runCmd(t, env, "status", "--json")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "\n  \"version\": \"9.9.9\",\n") {
		t.Errorf("not indented JSON:\n%s", out)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if st.Version != "9.9.9" || len(st.Shards) != 2 || len(st.Pools) != 1 || st.Pools[0].MaxSize != 20 {
		t.Errorf("decoded %+v", st)
	}
}

func TestStatusWrongToken(t *testing.T) {
	srv := fakeProxy(t, "tok")
	code, _, errOut := runCmd(t, nil, "--admin", srv.Listener.Addr().String(), "status")
	if code != 1 || !strings.Contains(errOut, "401") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("exit %d stderr %q, want 1 and one line naming 401", code, errOut)
	}
}

func TestStatusUnreachable(t *testing.T) {
	srv := httptest.NewServer(nil)
	addr := srv.Listener.Addr().String()
	srv.Close() // nothing listens there now
	code, out, errOut := runCmd(t, nil, "--admin", addr, "status")
	if code != 1 || out != "" {
		t.Errorf("exit %d stdout %q, want 1 and nothing", code, out)
	}
	if !strings.HasPrefix(errOut, "shardctl: cannot reach admin API at "+addr+": ") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("stderr %q, want one line `shardctl: cannot reach admin API at %s: ...`", errOut, addr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--bogus", "status"}, {"status", "extra"}, {"nosuchverb"}} {
		code, _, errOut := runCmd(t, nil, args...)
		if code != 2 || !strings.HasPrefix(errOut, "shardctl: ") {
			t.Errorf("%v: exit %d stderr %q, want 2", args, code, errOut)
		}
	}
}
