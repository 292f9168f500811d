package shard

import (
	"slices"
	"strings"
	"testing"

	"github.com/shardproxy/shardproxy/config"
)

func TestFromConfigSlots(t *testing.T) {
	for _, c := range []struct{ shards, slots int }{{1, 256}, {2, 256}, {3, 256}, {4, 256}, {3, 10}, {5, 1024}} {
		cfg := &config.Config{Sharding: config.Sharding{Slots: c.slots}}
		for i := range c.shards {
			cfg.Shards = append(cfg.Shards, config.Shard{Name: "s" + string(rune('0'+i))})
		}
		m, err := FromConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Slots) != c.slots || m.Version != 0 {
			t.Fatalf("%d slots, version %d", len(m.Slots), m.Version)
		}
		counts := make([]int, c.shards)
		for i, s := range m.Slots {
			if i > 0 && s < m.Slots[i-1] {
				t.Errorf("%+v: blocks not contiguous at slot %d", c, i)
			}
			counts[s]++
		}
		if lo, hi := slices.Min(counts), slices.Max(counts); hi-lo > 1 {
			t.Errorf("%+v: uneven blocks %v", c, counts)
		}
		if m.Slots[0] != 0 || m.Slots[c.slots-1] != c.shards-1 {
			t.Errorf("%+v: first/last slot owners %d/%d", c, m.Slots[0], m.Slots[c.slots-1])
		}
	}
	// 4 shards x 256 slots: 64 each, in order.
	m := testMap(t)
	for _, c := range []struct{ slot, shard int }{{0, 0}, {63, 0}, {64, 1}, {128, 2}, {255, 3}} {
		if m.Slots[c.slot] != c.shard {
			t.Errorf("slot %d owned by %d, want %d", c.slot, m.Slots[c.slot], c.shard)
		}
	}
	if got := m.SlotsOf(1); len(got) != 64 || got[0] != 64 || got[63] != 127 {
		t.Errorf("SlotsOf(1) = %v", got)
	}
}

func TestLookups(t *testing.T) {
	m := testMap(t)
	if key, ok := m.IsSharded("Public.ACCOUNTS"); !ok || key != "id" {
		t.Errorf("IsSharded(accounts) = %q, %v", key, ok)
	}
	if key, ok := m.IsSharded("users"); !ok || key != "email" {
		t.Errorf("IsSharded(users) declared as Public.Users = %q, %v", key, ok)
	}
	if _, ok := m.IsSharded("countries"); ok {
		t.Error("reference table reported sharded")
	}
	if _, ok := m.IsSharded("other.accounts"); ok {
		t.Error("a table in another schema is not the same table")
	}
	if !m.IsReference("COUNTRIES") || !m.IsReference("currencies") || !m.IsReference("public.currencies") || m.IsReference("accounts") {
		t.Error("IsReference")
	}
	if i, ok := m.ShardIndex("s2"); !ok || i != 2 {
		t.Errorf("ShardIndex(s2) = %d, %v", i, ok)
	}
	if _, ok := m.ShardIndex("nope"); ok {
		t.Error("ShardIndex(nope) found")
	}
	if m.Default() != 3 {
		t.Errorf("Default = %d", m.Default())
	}
	tab, ok := m.Table("events")
	if !ok || tab.Method != Range || tab.Type.Kind != Int4 || len(tab.Ranges) != 3 || tab.Ranges[1].From != "100" {
		t.Errorf("Table(events) = %+v (ranges sorted by lower bound)", tab)
	}
	if got := strings.Join(m.ReferenceTables(), ","); got != "countries,currencies" {
		t.Errorf("ReferenceTables = %s", got)
	}
	if got := m.TableNames(); len(got) != 11 || got[0] != "accounts" {
		t.Errorf("TableNames = %v", got)
	}
}

func TestWithAssignment(t *testing.T) {
	m := testMap(t)
	a := m.Assignment()
	if len(a) != 256 || a[0] != "s0" || a[255] != "s3" {
		t.Fatalf("Assignment = %v...", a[:3])
	}
	a[0] = "s2"
	n, err := m.WithAssignment(7, a)
	if err != nil {
		t.Fatal(err)
	}
	if n.Version != 7 || n.Slots[0] != 2 || m.Slots[0] != 0 || m.Version != 0 {
		t.Errorf("derived v%d slot0=%d; original v%d slot0=%d", n.Version, n.Slots[0], m.Version, m.Slots[0])
	}
	if _, ok := n.IsSharded("accounts"); !ok || n.Default() != 3 {
		t.Error("derived map lost tables or default")
	}
	// A key in slot 0 moves with it.
	var key string
	for i := 0; ; i++ {
		if s, _ := m.Slot("accounts", formatInt(int64(i))); s == 0 {
			key = formatInt(int64(i))
			break
		}
	}
	if got, _ := n.ShardOfText("accounts", key); got != 2 {
		t.Errorf("key %s in moved slot 0: shard %d, want 2", key, got)
	}
	if _, err := m.WithAssignment(8, a[:128]); err == nil || !strings.Contains(err.Error(), "has 128 slots, the config has 256") {
		t.Errorf("short assignment: %v", err)
	}
	a[5] = "s9"
	if _, err := m.WithAssignment(8, a); err == nil || !strings.Contains(err.Error(), `assigns slot 5 to shard "s9", which is not in the config's shards`) {
		t.Errorf("unknown shard: %v", err)
	}
}

func TestFromConfigErrors(t *testing.T) {
	base := `
users: [{name: app, password: app}]
shards: [{name: s0, primary: "postgres://h/app"}, {name: s1, primary: "postgres://h1/app"}]
sharding:
  tables:
`
	cases := map[string]string{
		"    - {name: t, key: k, method: range, ranges: [{to: x, shard: s0}]}":                                                     `sharding.tables[0].ranges[0].to: invalid input syntax for type bigint: "x"`,
		"    - {name: t, key: k, type: uuid, method: range, ranges: [{from: 1, shard: s0}]}":                                       `sharding.tables[0].ranges[0].from: invalid input syntax for type uuid: "1"`,
		"    - {name: t, key: k, method: range, ranges: [{from: 5, to: 5, shard: s0}]}":                                            `sharding.tables[0].ranges[0]: from "5" must be less than to "5"`,
		"    - {name: t, key: k, method: range, ranges: [{to: 10, shard: s0}, {from: 5, shard: s1}]}":                              "sharding.tables[0].ranges[1]: overlaps sharding.tables[0].ranges[0]",
		"    - {name: t, key: k, method: range, ranges: [{shard: s0}, {from: 5, shard: s1}]}":                                      "sharding.tables[0].ranges[1]: overlaps sharding.tables[0].ranges[0]",
		"    - {name: t, key: k, type: numeric, method: list, lists: [{values: [1.5], shard: s0}, {values: ['1.50'], shard: s1}]}": `sharding.tables[0].lists[1].values[0]: value "1.50" is already listed in sharding.tables[0].lists[0].values[0]`,
		"    - {name: t, key: k, type: smallint, method: list, lists: [{values: [70000], shard: s0}]}":                             `sharding.tables[0].lists[0].values[0]: value "70000" is out of range for type smallint`,
	}
	for tables, want := range cases {
		cfg, err := config.Parse([]byte(base + tables))
		if err != nil {
			t.Fatalf("config.Parse(%s): %v", tables, err)
		}
		_, err = FromConfig(cfg)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s\ngot %v\nwant %q", tables, err, want)
		}
	}
	if _, err := FromConfig(&config.Config{}); err == nil {
		t.Error("no shards: no error")
	}
	// Adjacent ranges are fine: bounds are half-open.
	cfg, err := config.Parse([]byte(base + "    - {name: t, key: k, method: range, ranges: [{to: 10, shard: s0}, {from: 10, shard: s1}]}"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FromConfig(cfg); err != nil {
		t.Error(err)
	}
}
