package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/shardproxy/shardproxy/admin"
)

func reloadProxy(t *testing.T, res admin.ReloadResult, err error) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(admin.NewServer(admin.Options{Token: "tok", Reload: func(context.Context) (admin.ReloadResult, error) {
		return res, err
	}}).Handler())
	t.Cleanup(srv.Close)
	return srv
}

func TestReloadPrintsChanges(t *testing.T) {
	srv := reloadProxy(t, admin.ReloadResult{Changes: []string{"pool.size: 20 -> 40", "users: added bob"}}, nil)
	code, out, errOut := ctl(t, srv, "reload")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d stderr %q", code, errOut)
	}
	if out != "config reloaded:\n  pool.size: 20 -> 40\n  users: added bob\n" {
		t.Errorf("output %q", out)
	}

	code, out, _ = ctl(t, srv, "reload", "--json")
	var res admin.ReloadResult
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || len(res.Changes) != 2 {
		t.Errorf("--json: exit %d, %q", code, out)
	}
}

func TestReloadNoChange(t *testing.T) {
	srv := reloadProxy(t, admin.ReloadResult{}, nil)
	if code, out, _ := ctl(t, srv, "reload"); code != 0 || out != "config reloaded: no change\n" {
		t.Errorf("exit %d output %q", code, out)
	}
}

// A refused reload prints the proxy's message and hint on one line and
// exits 1.
func TestReloadRefused(t *testing.T) {
	srv := reloadProxy(t, admin.ReloadResult{}, &admin.Error{
		Status:  http.StatusBadRequest,
		Message: "config /etc/shardproxy.yaml: pool.size: must be at least 1, got -3",
		Hint:    "fix the config file and reload again; the running config is unchanged",
	})
	code, out, errOut := ctl(t, srv, "reload")
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	oneLineError(t, code, errOut, "400 Bad Request", "pool.size: must be at least 1, got -3", "the running config is unchanged")
}

func TestReloadArgs(t *testing.T) {
	srv := reloadProxy(t, admin.ReloadResult{}, nil)
	if code, _, errOut := ctl(t, srv, "reload", "now"); code != 2 || !strings.Contains(errOut, "unknown command") && !strings.Contains(errOut, "accepts 0 arg") {
		t.Errorf("exit %d stderr %q", code, errOut)
	}
}
