package config

import (
	"os"
	"testing"
)

// FuzzLoad feeds arbitrary YAML to the loader. Parse decodes, applies
// SetDefaults and runs Validate; it must never panic. A config it accepts
// must survive Marshal and a second Parse unchanged (the admin API and
// reload write configs back out with Marshal).
func FuzzLoad(f *testing.F) {
	if raw, err := os.ReadFile("../docker/shardproxy.yaml"); err == nil {
		f.Add(raw)
	}
	f.Add([]byte(minimal))
	f.Add([]byte(""))
	f.Add([]byte("users: [{name: app, password: app}]\n"))
	f.Add([]byte(minimal + "sharding: {tables: [{name: t, key: k, method: range, ranges: [{to: 5, shard: s0}]}]}"))
	f.Add([]byte(minimal + "sharding: {tables: [{name: t, key: k, type: 'numeric(10,2)', method: list, lists: [{values: [1.5, 2], shard: s0}]}]}"))
	f.Add([]byte(minimal + "pool: {wait_timeout: soon}"))
	f.Add([]byte("users: [{name: app, password: x}]\nshards: [{name: s0}, {name: s0, primary: \"postgres://h/a\"}]"))
	f.Add([]byte("{{{"))
	f.Add([]byte("users: &a [*a]"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, err := Parse(raw)
		if err != nil {
			return
		}
		// Parse already defaulted and validated; doing it again must be
		// idempotent.
		again := cfg.Clone()
		again.SetDefaults()
		if err := again.Validate(); err != nil {
			t.Fatalf("second Validate of an accepted config failed: %v", err)
		}
		out, err := cfg.Marshal()
		if err != nil {
			t.Fatalf("Marshal of an accepted config: %v", err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("re-Parse of the marshalled config: %v\ninput:\n%s\nmarshalled:\n%s", err, raw, out)
		}
		out2, err := back.Marshal()
		if err != nil {
			t.Fatalf("second Marshal: %v", err)
		}
		if string(out) != string(out2) {
			t.Fatalf("round trip not stable:\nfirst:\n%s\nsecond:\n%s", out, out2)
		}
	})
}
