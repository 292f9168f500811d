package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

func TestReload(t *testing.T) {
	var result ReloadResult
	var err error
	calls := 0
	srv := NewServer(Options{Reload: func(context.Context) (ReloadResult, error) {
		calls++
		return result, err
	}})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	c := &Client{Addr: ts.URL}
	ctx := context.Background()

	result = ReloadResult{Changes: []string{"pool.size: 20 -> 40"}}
	got, e := c.Reload(ctx)
	if e != nil || !reflect.DeepEqual(got, result) {
		t.Fatalf("reload: %+v, %v", got, e)
	}

	// No change: an empty list, not null.
	result = ReloadResult{}
	raw, e := c.Do(ctx, http.MethodPost, ReloadPath, nil)
	if e != nil || strings.TrimSpace(string(raw)) != `{"changes":[]}` {
		t.Fatalf("reload without changes: %s, %v", raw, e)
	}

	// A refused reload: 400 with the proxy's message and hint.
	err = &Error{Status: http.StatusBadRequest, Message: "config x.yaml: pool.size: must be at least 1, got 0", Hint: "fix the file; the running config is unchanged"}
	_, e = c.Reload(ctx)
	var he *HTTPError
	if !errors.As(e, &he) || he.StatusCode != http.StatusBadRequest || he.Message != "config x.yaml: pool.size: must be at least 1, got 0" || !strings.Contains(he.Hint, "unchanged") {
		t.Fatalf("refused reload: %#v", e)
	}

	// GET is not a reload.
	resp, e := http.Get(ts.URL + ReloadPath)
	if e != nil {
		t.Fatal(e)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET %s: %d, Allow %q", ReloadPath, resp.StatusCode, resp.Header.Get("Allow"))
	}
	if calls != 3 {
		t.Errorf("Reload called %d times, want 3", calls)
	}
}

func TestReloadNotConfigured(t *testing.T) {
	ts := httptest.NewServer(NewServer(Options{}).Handler())
	defer ts.Close()
	_, err := (&Client{Addr: ts.URL}).Reload(context.Background())
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("got %v, want 503", err)
	}
}

// A reloaded admin.token applies to the next request.
func TestSetToken(t *testing.T) {
	srv := NewServer(Options{Token: "old"})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	status := func(token string) int {
		req, _ := http.NewRequest(http.MethodGet, ts.URL+MetricsPath, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if status("old") == http.StatusUnauthorized || status("new") != http.StatusUnauthorized {
		t.Fatal("old token refused or new one accepted before SetToken")
	}
	srv.SetToken("new")
	if status("old") != http.StatusUnauthorized || status("new") == http.StatusUnauthorized {
		t.Fatal("after SetToken: old token accepted or new one refused")
	}
	srv.SetToken("")
	if status("") == http.StatusUnauthorized {
		t.Fatal("an empty token still requires one")
	}
}
