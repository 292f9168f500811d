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
		minimal + "pool: {wait_timeout: soon}":                                                                                                "not a duration",
		minimal + "bogus: 1":                                                                                                                  "field bogus not found",
		minimal + "sharding: {tables: [{name: t, key: k, type: float8}]}":                                                                     `sharding.tables[0].type: "float8" is not one of`,
		minimal + "sharding: {tables: [{name: t, key: k, type: 'numeric(10,2,3)'}]}":                                                          `sharding.tables[0].type: "numeric(10,2,3)"`,
		minimal + "sharding: {tables: [{name: t, key: k, type: 'bigint(3)'}]}":                                                                `sharding.tables[0].type: "bigint(3)"`,
		minimal + "sharding: {tables: [{name: t, key: k, method: range}]}":                                                                    "sharding.tables[0].ranges: at least one range is required for method range",
		minimal + "sharding: {tables: [{name: t, key: k, ranges: [{to: 5, shard: s0}]}]}":                                                     "sharding.tables[0].ranges: only allowed with method range",
		minimal + "sharding: {tables: [{name: t, key: k, method: list}]}":                                                                     "sharding.tables[0].lists: at least one list is required for method list",
		minimal + "sharding: {tables: [{name: t, key: k, lists: [{values: [1], shard: s0}]}]}":                                                "sharding.tables[0].lists: only allowed with method list",
		minimal + "sharding: {tables: [{name: t, key: k, method: list, lists: [{shard: s0}]}]}":                                               "sharding.tables[0].lists[0].values: at least one value is required",
		minimal + "sharding: {tables: [{name: t, key: k, method: list, lists: [{values: [1]}]}]}":                                             "sharding.tables[0].lists[0].shard: is required",
		minimal + "sharding: {tables: [{name: a, key: k}, {name: b, key: k}, {name: c, key: k, method: range, ranges: [{to: 5, shard: x}]}]}": `sharding.tables[2].ranges[0].shard: no shard named "x"`,
		minimal + "sharding: {tables: [{name: t, key: k}, {name: Public.T, key: k}]}":                                                         `sharding.tables[1].name: table "Public.T" is already declared in sharding.tables[0]`,
		minimal + "sharding: {tables: [{name: t, key: k}], reference_tables: [T]}":                                                            `sharding.reference_tables[0]: table "T" is already declared in sharding.tables[0]`,
		minimal + "metadata: {dsn: nohost}":                                                                                                   "metadata.dsn: DSN",
		minimal + "replicas: {fallback: maybe}":                                                                                               `replicas.fallback: must be primary or error, not "maybe"`,
		`users: [{name: app, password: app}]
shards: [{name: s0, primary: "postgres://h/app", replicas: ["postgres://r/app"], replica_weights: [1, 2]}]`: "shards[0].replica_weights: has 2 entries for 1 replicas",
		`users: [{name: app, password: app}]
shards: [{name: s0, primary: "postgres://h/app", replicas: ["postgres://r/app"], replica_weights: [0]}]`: "shards[0].replica_weights[0]: must be at least 1",
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

func TestShardingTables(t *testing.T) {
	cfg, err := Parse([]byte(`
users: [{name: app, password: app}]
shards:
  - {name: s0, primary: "postgres://h0/app"}
  - {name: s1, primary: "postgres://h1/app"}
metadata: {dsn: "postgres://meta/app"}
sharding:
  tables:
    - {name: accounts, key: id}
    - name: events
      key: amount
      type: numeric(12,2)
      method: range
      ranges:
        - {to: 1.50, shard: s0}
        - {from: 1.50, to: 100, shard: s1}
    - name: users
      key: country
      type: text
      method: list
      lists:
        - {values: [de, fr], shard: s0}
        - {values: [us], shard: s1}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metadata.DSN != "postgres://meta/app" {
		t.Errorf("metadata.dsn: %q", cfg.Metadata.DSN)
	}
	tabs := cfg.Sharding.Tables
	if tabs[0].Type != "bigint" || tabs[0].Method != "hash" {
		t.Errorf("table defaults: %+v", tabs[0])
	}
	// Numbers stay as written: 1.50 must not become the float 1.5.
	want := []KeyRange{{To: "1.50", Shard: "s0"}, {From: "1.50", To: "100", Shard: "s1"}}
	if len(tabs[1].Ranges) != 2 || tabs[1].Ranges[0] != want[0] || tabs[1].Ranges[1] != want[1] {
		t.Errorf("ranges: %+v", tabs[1].Ranges)
	}
	if len(tabs[2].Lists) != 2 || strings.Join(tabs[2].Lists[0].Values, ",") != "de,fr" || tabs[2].Lists[1].Shard != "s1" {
		t.Errorf("lists: %+v", tabs[2].Lists)
	}
	raw, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(raw)
	if err != nil {
		t.Fatalf("re-parse of\n%s: %v", raw, err)
	}
	if again.Sharding.Tables[1].Ranges[1] != want[1] || again.Metadata.DSN != cfg.Metadata.DSN {
		t.Errorf("round trip lost sharding or metadata:\n%s", raw)
	}
}

func TestValidKeyType(t *testing.T) {
	for _, ok := range []string{"bigint", "BIGINT", " int ", "numeric(10,2)", "numeric(10)", "decimal(5, -1)", "varchar(20)", "character varying", "uuid"} {
		if !ValidKeyType(ok) {
			t.Errorf("ValidKeyType(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "float8", "numeric(", "numeric(a)", "text(3)", "int(4)", "numeric(1,2,3)"} {
		if ValidKeyType(bad) {
			t.Errorf("ValidKeyType(%q) = true", bad)
		}
	}
}

func TestLimits(t *testing.T) {
	base := "users: [{name: a, password: b}]\nshards: [{name: s, primary: postgres://x@h/db}]\n"
	for y, want := range map[string]Size{"": 256 << 20, "1048576": 1 << 20, "64kB": 64 << 10, "16MB": 16 << 20, "1GB": 1 << 30} {
		doc := base
		if y != "" {
			doc += "limits:\n  max_message_size: " + y + "\n"
		}
		c, err := Parse([]byte(doc))
		if err != nil || c.Limits.MaxMessageSize != want {
			t.Errorf("max_message_size %q: %v, %v; want %d", y, c, err, want)
		}
	}
	for y, field := range map[string]string{
		"max_message_size: 12 parsecs":   "line 4",
		"max_message_size: 100":          "limits.max_message_size",
		"max_message_size: 2GB":          "limits.max_message_size",
		"statement_timeout: -1s":         "limits.statement_timeout",
		"query_timeout: 10us":            "limits.query_timeout",
		"idle_in_transaction_timeout: x": "line 4",
	} {
		_, err := Parse([]byte(base + "limits:\n  " + y + "\n"))
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: got %v, want an error naming %s", y, err, field)
		}
	}
	_, err := Parse([]byte("users: [{name: a, password: b, max_connections: -1}]\nshards: [{name: s, primary: postgres://x@h/db}]\n"))
	if err == nil || !strings.Contains(err.Error(), "users[0].max_connections") {
		t.Errorf("negative max_connections: %v", err)
	}
}
