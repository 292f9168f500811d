package config

import (
	"strings"
	"testing"
	"time"
)

const minimal = `
users: [{name: app, password: app}]
shards: [{name: s0, primary: "postgres://postgres@127.0.0.1:5432/app"}]
`

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:6432" || cfg.Admin.Listen != "127.0.0.1:6480" {
		t.Errorf("listen defaults: %q %q", cfg.Listen, cfg.Admin.Listen)
	}
	if cfg.Pool.Mode != PoolTransaction || cfg.Pool.Size != 20 || cfg.Pool.WaitTimeout.D() != 5*time.Second {
		t.Errorf("pool defaults: %+v", cfg.Pool)
	}
	if cfg.Users[0].Auth != "scram-sha-256" || cfg.Sharding.Slots != 256 || cfg.Sharding.DefaultShard != "s0" {
		t.Errorf("other defaults: %+v %+v", cfg.Users[0], cfg.Sharding)
	}
}

// Every error names the field an operator has to fix.
func TestValidationNamesTheField(t *testing.T) {
	cases := map[string]string{
		"":                                          "users: at least one user is required",
		minimal + "pool: {mode: statement}":         `pool.mode: "statement" is not one of transaction, session`,
		minimal + "pool: {size: -1}":                "pool.size: must be at least 1",
		minimal + "listen: nope":                    `listen: "nope" is not host:port`,
		minimal + "tls: {cert_file: x.crt}":         "tls: cert_file and key_file must be set together",
		minimal + "sharding: {default_shard: s9}":   `sharding.default_shard: no shard named "s9"`,
		minimal + "sharding: {tables: [{name: t}]}": "sharding.tables[0].key: is required",
		minimal + "sharding: {tables: [{name: t, key: k, method: x}]}": `sharding.tables[0].method: "x" is not one of hash, range, list`,
		`users: [{name: app, auth: md5}]
shards: [{name: s0, primary: "postgres://h/app"}]`: "users[0].password: is required for auth md5",
		`users: [{name: app, password: x}]
shards: [{name: s0, primary: "postgres://h/app", replicas: ["nohost"]}]`: "shards[0].replicas[0]: DSN",
		`users: [{name: app, password: x}]
shards: [{name: s0}, {name: s0, primary: "postgres://h/a"}]`: "shards[1].name: duplicate shard",
		minimal + "pool: {wait_timeout: soon}": "not a duration",
		minimal + "bogus: 1":                   "field bogus not found",
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config:\n%s\ngot error %v, want it to contain %q", in, err, want)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	cfg, err := Parse([]byte(minimal + "pool: {wait_timeout: 250ms}"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(raw)
	if err != nil {
		t.Fatalf("re-parse of\n%s: %v", raw, err)
	}
	if again.Pool.WaitTimeout.D() != 250*time.Millisecond {
		t.Fatalf("wait_timeout after round trip: %v", again.Pool.WaitTimeout.D())
	}
}
