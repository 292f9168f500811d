package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const reloadBase = `
listen: 127.0.0.1:7000
admin: {listen: 127.0.0.1:7001, token: t0}
users:
  - {name: app, password: app}
  - {name: ops, password: ops, admin: true}
pool: {size: 10, wait_timeout: 2s}
shards:
  - {name: s0, primary: "postgres://postgres@127.0.0.1:5432/app", replicas: ["postgres://postgres@127.0.0.1:5433/app"]}
  - {name: s1, primary: "postgres://postgres@127.0.0.1:5442/app"}
sharding:
  tables: [{name: accounts, key: aid}]
  reference_tables: [countries]
replicas: {max_lag: 1s}
`

func mustParse(t *testing.T, s string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, s)
	}
	return cfg
}

func TestDiffUnchanged(t *testing.T) {
	a, b := mustParse(t, reloadBase), mustParse(t, reloadBase)
	// An explicit empty list is the same as none.
	b.Shards[1].Replicas = []string{}
	changes, err := Diff(a, b)
	if err != nil || len(changes) != 0 {
		t.Fatalf("identical configs: changes %q, err %v", changes, err)
	}
}

func TestDiffLiveChanges(t *testing.T) {
	a := mustParse(t, reloadBase)
	next := strings.NewReplacer(
		"pool: {size: 10, wait_timeout: 2s}", "pool: {size: 40, wait_timeout: 2s, connect_timeout: 3s, idle_timeout: 1m, prepared_statement_cache: 50}",
		"- {name: app, password: app}", "- {name: app, password: secret2}\n  - {name: bob, password: bob}",
		"- {name: ops, password: ops, admin: true}", "",
		"token: t0", "token: t1",
		"replicas: {max_lag: 1s}", "replicas: {max_lag: 250ms, fallback: error}\nmax_client_conn: 50",
		`replicas: ["postgres://postgres@127.0.0.1:5433/app"]}`, `replicas: ["postgres://postgres@127.0.0.1:5433/app"], replica_weights: [3]}`,
	).Replace(reloadBase)
	b := mustParse(t, next)
	changes, err := Diff(a, b)
	if err != nil {
		t.Fatalf("live-only changes refused: %v", err)
	}
	got := strings.Join(changes, "\n")
	for _, want := range []string{
		"users: added bob; removed ops; changed app (password)",
		"admin.token: changed",
		"max_client_conn: 1000 -> 50",
		"pool.size: 10 -> 40",
		"pool.connect_timeout: 5s -> 3s",
		"pool.idle_timeout: 5m0s -> 1m0s",
		"pool.prepared_statement_cache: 500 -> 50",
		"replicas.max_lag: 1s -> 250ms",
		`replicas.fallback: "primary" -> "error"`,
		"shards[0].replica_weights: [] -> [3]",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("changes lack %q:\n%s", want, got)
		}
	}
	for _, secret := range []string{"secret2", "t1", "t0"} {
		if strings.Contains(got, secret) {
			t.Errorf("changes reveal %q:\n%s", secret, got)
		}
	}
	if strings.Contains(got, "wait_timeout") {
		t.Errorf("unchanged wait_timeout reported:\n%s", got)
	}

	// Applying them yields a config with nothing left to reload.
	merged := a.WithReloadable(b)
	if changes, err := Diff(merged, b); err != nil || len(changes) != 0 {
		t.Errorf("after WithReloadable: changes %q, err %v", changes, err)
	}
	if merged.Pool.Size != 40 || merged.Users[1].Name != "bob" || merged.Shards[0].ReplicaWeights[0] != 3 || merged.Admin.Token != "t1" {
		t.Errorf("merged: %+v", merged)
	}
	// Neither input was modified, and the result shares nothing with b.
	if a.Pool.Size != 10 || len(a.Users) != 2 || a.Users[1].Name != "ops" {
		t.Errorf("running config modified: %+v", a)
	}
	b.Users[0].Password = "changed-after"
	if merged.Users[0].Password != "secret2" {
		t.Error("merged config shares its users with the loaded one")
	}
}

func TestDiffRefusesFixedFields(t *testing.T) {
	a := mustParse(t, reloadBase)
	cases := map[string]struct {
		old, new string
		fields   []string
	}{
		"listen":        {"listen: 127.0.0.1:7000", "listen: 127.0.0.1:7100", []string{"listen"}},
		"admin listen":  {"admin: {listen: 127.0.0.1:7001,", "admin: {listen: 127.0.0.1:7101,", []string{"admin.listen"}},
		"primary":       {"127.0.0.1:5442/app", "127.0.0.1:5443/app", []string{"shards[1].primary"}},
		"replica added": {`primary: "postgres://postgres@127.0.0.1:5442/app"}`, `primary: "postgres://postgres@127.0.0.1:5442/app", replicas: ["postgres://h/app"]}`, []string{"shards[1].replicas"}},
		"shard added":   {"sharding:", "  - {name: s2, primary: \"postgres://h/app\"}\nsharding:", []string{"shards"}},
		"pool mode":     {"pool: {size: 10,", "pool: {mode: session, size: 10,", []string{"pool.mode"}},
		"slots":         {"sharding:", "sharding:\n  slots: 64", []string{"sharding.slots"}},
		"tables":        {"key: aid", "key: bid", []string{"sharding.tables[0].key"}},
		"reference":     {"[countries]", "[countries, cities]", []string{"sharding.reference_tables"}},
		"metadata":      {"replicas: {max_lag: 1s}", "replicas: {max_lag: 1s}\nmetadata: {dsn: \"postgres://m/meta\"}", []string{"metadata.dsn"}},
		"mixed": {"listen: 127.0.0.1:7000\n", "listen: 127.0.0.1:7100\nmax_client_conn: 5\n",
			[]string{"listen"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(reloadBase, c.old) {
				t.Fatalf("base lacks %q", c.old)
			}
			b := mustParse(t, strings.Replace(reloadBase, c.old, c.new, 1))
			_, err := Diff(a, b)
			var re *RestartError
			if !errors.As(err, &re) {
				t.Fatalf("want a RestartError, got %v", err)
			}
			if !reflect.DeepEqual(re.Fields, c.fields) {
				t.Errorf("fields %q, want %q", re.Fields, c.fields)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "restart the proxy to change "+strings.Join(c.fields, ", ")) || !strings.Contains(msg, "nothing was reloaded") {
				t.Errorf("message %q", msg)
			}
		})
	}
}

// A running config holds the shards added at run time after the file's;
// WithReloadable keeps them and their settings.
func TestWithReloadableKeepsRuntimeShards(t *testing.T) {
	file := mustParse(t, reloadBase)
	running := file.Clone()
	running.Shards = append(running.Shards, Shard{Name: "added", Primary: "postgres://h/app"})
	next := file.Clone()
	next.Pool.WaitTimeout = Duration(9 * time.Second)
	next.Shards[1].ReplicaWeights = nil
	merged := running.WithReloadable(next)
	if len(merged.Shards) != 3 || merged.Shards[2].Name != "added" || merged.Pool.WaitTimeout.D() != 9*time.Second {
		t.Errorf("merged: %+v", merged)
	}
	if changes, err := Diff(running, merged); err != nil || len(changes) != 1 {
		t.Errorf("running vs merged: %q %v", changes, err)
	}
}

func TestClone(t *testing.T) {
	a := mustParse(t, reloadBase)
	b := a.Clone()
	if !reflect.DeepEqual(a, b) {
		t.Fatal("clone differs")
	}
	b.Shards[0].Replicas[0] = "x"
	b.Users[0].Name = "y"
	b.Sharding.Tables[0].Key = "z"
	if a.Shards[0].Replicas[0] == "x" || a.Users[0].Name == "y" || a.Sharding.Tables[0].Key == "z" {
		t.Error("clone shares memory with the original")
	}
}
