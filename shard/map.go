// Package shard is the shard map: which shard owns which rows. It hashes
// keys exactly as PostgreSQL's hash partitioning does (see hash.go), maps
// hash slots, key ranges and key lists to shards, decodes the key values
// a statement carries (literals, bound parameters, arrays, COPY fields),
// and keeps versioned slot assignments durably (see store.go).
//
// A Map is immutable: the proxy builds a new one for every new version
// and swaps it in atomically, so a statement routes against one
// consistent map from start to end.
package shard

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/shardproxy/shardproxy/config"
)

// DefaultSlots is the slot count when the config sets none.
const DefaultSlots = 256

// Method is how a sharded table spreads its rows.
type Method uint8

// Sharding methods.
const (
	Hash Method = iota + 1
	Range
	List
)

func (m Method) String() string {
	switch m {
	case Hash:
		return "hash"
	case Range:
		return "range"
	case List:
		return "list"
	}
	return "invalid"
}

// Table is a sharded table.
type Table struct {
	// Name is lower-case, without a "public." qualifier.
	Name string
	Key  string
	Type KeyType
	// Method hash uses the map's slots; range and list map key values
	// straight to shards, and keys they do not cover (and NULL) belong to
	// the default shard, like rows in a DEFAULT partition.
	Method Method
	// Ranges are sorted by lower bound and do not overlap. Text bounds
	// compare as bytes (the C collation) whatever the database's
	// collation, so every proxy agrees on them.
	Ranges []KeyRange
	// Lists in config order; no value appears twice.
	Lists []KeyList

	lists map[string]int // canonical value -> shard index
}

// KeyRange sends From <= key < To to Shard; an empty bound is unbounded.
type KeyRange struct {
	From, To string
	Shard    int

	from, to *value
}

// KeyList sends the listed key values to Shard.
type KeyList struct {
	Values []string
	Shard  int
}

// Map is one version of the shard map. It is never modified once built,
// so any number of sessions may route with it concurrently.
type Map struct {
	// Version is the slot assignment's version in the metadata store (0
	// for a map built from the config and not yet stored).
	Version int64
	// Shards are the shard names in config order; a shard index is a
	// position in it.
	Shards []string
	// Slots maps each hash slot to a shard index. Do not modify.
	Slots []int

	def       int
	shardIdx  map[string]int
	tables    map[string]*Table
	reference map[string]bool
	// single[i] is []int{i}, so locating one shard allocates nothing.
	single [][]int
}

// tableKey normalizes a table name the way the map stores it.
func tableKey(name string) string {
	name = strings.ToLower(name)
	return strings.TrimPrefix(name, "public.")
}

// FromConfig builds the map a config describes, version 0, with slots
// assigned to shards in contiguous, even blocks (slot i to shard
// i*shards/slots). Errors name the config field at fault.
func FromConfig(cfg *config.Config) (*Map, error) {
	m := &Map{shardIdx: map[string]int{}, tables: map[string]*Table{}, reference: map[string]bool{}}
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for i, s := range cfg.Shards {
		if _, dup := m.shardIdx[s.Name]; dup || s.Name == "" {
			bad(fmt.Sprintf("shards[%d].name", i), "missing or duplicate shard name %q", s.Name)
			continue
		}
		m.shardIdx[s.Name] = len(m.Shards)
		m.Shards = append(m.Shards, s.Name)
	}
	if len(m.Shards) == 0 {
		return nil, errors.New("shards: at least one shard is required")
	}
	m.single = make([][]int, len(m.Shards))
	for i := range m.single {
		m.single[i] = []int{i}
	}
	if d := cfg.Sharding.DefaultShard; d != "" {
		i, ok := m.shardIdx[d]
		if !ok {
			bad("sharding.default_shard", "no shard named %q", d)
		}
		m.def = i
	}
	slots := cfg.Sharding.Slots
	if slots == 0 {
		slots = DefaultSlots
	}
	if slots < 1 {
		return nil, fmt.Errorf("sharding.slots: must be at least 1, got %d", slots)
	}
	m.Slots = make([]int, slots)
	for i := range m.Slots {
		m.Slots[i] = i * len(m.Shards) / slots
	}
	for i, ct := range cfg.Sharding.Tables {
		field := fmt.Sprintf("sharding.tables[%d]", i)
		t, err := m.buildTable(field, ct)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := m.tables[t.Name]; dup {
			bad(field+".name", "table %q is declared twice", ct.Name)
			continue
		}
		m.tables[t.Name] = t
	}
	for i, name := range cfg.Sharding.ReferenceTables {
		key := tableKey(name)
		if _, dup := m.tables[key]; dup || m.reference[key] {
			bad(fmt.Sprintf("sharding.reference_tables[%d]", i), "table %q is declared twice", name)
			continue
		}
		m.reference[key] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Map) buildTable(field string, ct config.ShardedTable) (*Table, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	t := &Table{Name: tableKey(ct.Name), Key: strings.ToLower(ct.Key)}
	if t.Name == "" || t.Key == "" {
		return nil, fmt.Errorf("%s: name and key are required", field)
	}
	typeName := ct.Type
	if typeName == "" {
		typeName = "bigint"
	}
	typ, err := ParseKeyType(typeName)
	if err != nil {
		return nil, fmt.Errorf("%s.type: %w", field, err)
	}
	t.Type = typ
	shard := func(field, name string) int {
		i, ok := m.shardIdx[name]
		if !ok {
			bad(field, "no shard named %q", name)
		}
		return i
	}
	// Bounds and list values are parsed once here with their own storage
	// (nil scratch), as the column's input function would read them.
	parse := func(field, s string) *value {
		v, err := parseText(t.Type, s, nil)
		if err != nil {
			bad(field, "%s", err.Message)
			return nil
		}
		return &v
	}
	switch ct.Method {
	case "", "hash":
		t.Method = Hash
	case "range":
		t.Method = Range
		for j, r := range ct.Ranges {
			rf := fmt.Sprintf("%s.ranges[%d]", field, j)
			kr := KeyRange{From: r.From, To: r.To, Shard: shard(rf+".shard", r.Shard)}
			if r.From != "" {
				kr.from = parse(rf+".from", r.From)
			}
			if r.To != "" {
				kr.to = parse(rf+".to", r.To)
			}
			if kr.from != nil && kr.to != nil && kr.from.cmp(kr.to) >= 0 {
				bad(rf, "from %q must be less than to %q", r.From, r.To)
			}
			t.Ranges = append(t.Ranges, kr)
		}
		if len(errs) == 0 {
			if err := t.sortRanges(field); err != nil {
				return nil, err
			}
		}
	case "list":
		t.Method = List
		t.lists = map[string]int{}
		where := map[string]string{}
		for j, l := range ct.Lists {
			lf := fmt.Sprintf("%s.lists[%d]", field, j)
			kl := KeyList{Values: l.Values, Shard: shard(lf+".shard", l.Shard)}
			for k, s := range l.Values {
				vf := fmt.Sprintf("%s.values[%d]", lf, k)
				v := parse(vf, s)
				if v == nil {
					continue
				}
				key := string(v.appendCanonical(nil))
				if prev, dup := where[key]; dup {
					bad(vf, "value %q is already listed in %s", s, prev)
					continue
				}
				where[key] = vf
				t.lists[key] = kl.Shard
			}
			t.Lists = append(t.Lists, kl)
		}
	default:
		return nil, fmt.Errorf("%s.method: %q is not one of hash, range, list", field, ct.Method)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

// sortRanges orders the ranges by lower bound and rejects overlaps.
func (t *Table) sortRanges(field string) error {
	idx := make([]int, len(t.Ranges))
	for i := range idx {
		idx[i] = i
	}
	lowerLess := func(a, b *KeyRange) bool {
		if a.from == nil || b.from == nil {
			return a.from == nil && b.from != nil
		}
		return a.from.cmp(b.from) < 0
	}
	sort.SliceStable(idx, func(i, j int) bool { return lowerLess(&t.Ranges[idx[i]], &t.Ranges[idx[j]]) })
	sorted := make([]KeyRange, len(idx))
	for i, j := range idx {
		sorted[i] = t.Ranges[j]
	}
	for i := 1; i < len(sorted); i++ {
		prev, cur := &sorted[i-1], &sorted[i]
		if prev.to == nil || cur.from == nil || prev.to.cmp(cur.from) > 0 {
			return fmt.Errorf("%s.ranges[%d]: overlaps %s.ranges[%d]", field, idx[i], field, idx[i-1])
		}
	}
	t.Ranges = sorted
	return nil
}

// rangeShard returns the shard of v, or -1 when no range covers it.
func (t *Table) rangeShard(v *value) int {
	// The last range whose lower bound is <= v is the only candidate.
	i := sort.Search(len(t.Ranges), func(i int) bool {
		f := t.Ranges[i].from
		return f != nil && f.cmp(v) > 0
	}) - 1
	if i < 0 {
		return -1
	}
	if r := &t.Ranges[i]; r.to == nil || v.cmp(r.to) < 0 {
		return r.Shard
	}
	return -1
}

// owner returns the shard index owning non-NULL key v of table t.
func (m *Map) owner(t *Table, v *value) int {
	switch t.Method {
	case Range:
		if s := t.rangeShard(v); s >= 0 {
			return s
		}
		return m.def
	case List:
		var buf [64]byte
		if s, ok := t.lists[string(v.appendCanonical(buf[:0]))]; ok {
			return s
		}
		return m.def
	}
	return m.Slots[SlotOfHash(v.hash(), len(m.Slots))]
}

// nullOwner is the shard holding rows whose key is NULL: slot 0's owner
// for hash tables (where PostgreSQL's hash partitioning puts them), the
// default shard for range and list tables.
func (m *Map) nullOwner(t *Table) int {
	if t.Method == Hash {
		return m.Slots[NullSlot]
	}
	return m.def
}

// Table returns the sharded table called name (any case, optionally
// "public."-qualified).
func (m *Map) Table(name string) (*Table, bool) {
	t, ok := m.tables[tableKey(name)]
	return t, ok
}

// IsSharded reports whether table is sharded, and by which key column.
func (m *Map) IsSharded(table string) (key string, ok bool) {
	t, ok := m.tables[tableKey(table)]
	if !ok {
		return "", false
	}
	return t.Key, true
}

// IsReference reports whether table is a reference table (on every shard).
func (m *Map) IsReference(table string) bool { return m.reference[tableKey(table)] }

// ShardIndex returns the index of the shard called name.
func (m *Map) ShardIndex(name string) (int, bool) {
	i, ok := m.shardIdx[name]
	return i, ok
}

// Default is the index of the default shard, home of every table that is
// neither sharded nor a reference table.
func (m *Map) Default() int { return m.def }

// TableNames lists the sharded tables, sorted.
func (m *Map) TableNames() []string {
	names := make([]string, 0, len(m.tables))
	for n := range m.tables {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ReferenceTables lists the reference tables, sorted.
func (m *Map) ReferenceTables() []string {
	names := make([]string, 0, len(m.reference))
	for n := range m.reference {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// SlotsOf lists the slots assigned to shard index i, ascending.
func (m *Map) SlotsOf(i int) []int {
	var slots []int
	for s, owner := range m.Slots {
		if owner == i {
			slots = append(slots, s)
		}
	}
	return slots
}

// Assignment is the slot assignment as shard names, the form it is
// stored in: names survive shards being added or reordered in the config.
func (m *Map) Assignment() []string {
	a := make([]string, len(m.Slots))
	for i, s := range m.Slots {
		a[i] = m.Shards[s]
	}
	return a
}

// WithAssignment derives the map of another version: the same shards and
// tables with slots assigned as given (slot -> shard name). The slot
// count must match and every name must be one of the map's shards.
func (m *Map) WithAssignment(version int64, slots []string) (*Map, error) {
	if len(slots) != len(m.Slots) {
		return nil, fmt.Errorf("shard map version %d has %d slots, the config has %d (sharding.slots)", version, len(slots), len(m.Slots))
	}
	n := *m
	n.Version = version
	n.Slots = make([]int, len(slots))
	for i, name := range slots {
		idx, ok := m.shardIdx[name]
		if !ok {
			return nil, fmt.Errorf("shard map version %d assigns slot %d to shard %q, which is not in the config's shards (%s)",
				version, i, name, strings.Join(m.Shards, ", "))
		}
		n.Slots[i] = idx
	}
	return &n, nil
}

// Frozen is the owner, in a map from WithFrozen, of a slot being handed
// to another shard: statements touching it wait for the hand-over.
const Frozen = -1

// frozenOwners is what Locate returns for a key in a frozen slot.
var frozenOwners = []int{Frozen}

// one is the owner list of shard index i (Frozen included), shared.
func (m *Map) one(i int) []int {
	if i < 0 {
		return frozenOwners
	}
	return m.single[i]
}

// WithFrozen derives a map, of the same version, whose given slots belong
// to no shard (Frozen): the proxy installs it during a cutover, so every
// statement touching those slots waits instead of reaching either side.
func (m *Map) WithFrozen(slots []int) *Map {
	n := *m
	n.Slots = append([]int(nil), m.Slots...)
	for _, s := range slots {
		if s >= 0 && s < len(n.Slots) {
			n.Slots[s] = Frozen
		}
	}
	return &n
}

// FrozenSlots lists the slots a map from WithFrozen holds frozen.
func (m *Map) FrozenSlots() []int {
	var out []int
	for s, o := range m.Slots {
		if o == Frozen {
			out = append(out, s)
		}
	}
	return out
}

// WithShard derives a map with one more shard, last in index order and
// owning no slots yet (shard add).
func (m *Map) WithShard(name string) (*Map, error) {
	if name == "" {
		return nil, errors.New("a shard needs a name")
	}
	if _, dup := m.shardIdx[name]; dup {
		return nil, fmt.Errorf("shard %q already exists", name)
	}
	n := *m
	n.Shards = append(append([]string(nil), m.Shards...), name)
	n.shardIdx = make(map[string]int, len(n.Shards))
	for i, s := range n.Shards {
		n.shardIdx[s] = i
	}
	n.single = append(append([][]int(nil), m.single...), []int{len(m.Shards)})
	return &n, nil
}

// RenameShard derives a map in which shard old is called name (its index
// and slots unchanged): a removed shard keeps its index under another
// name, so its name can be added again.
func (m *Map) RenameShard(old, name string) (*Map, error) {
	i, ok := m.shardIdx[old]
	if !ok {
		return nil, fmt.Errorf("no shard named %q", old)
	}
	if _, dup := m.shardIdx[name]; dup {
		return nil, fmt.Errorf("shard %q already exists", name)
	}
	n := *m
	n.Shards = append([]string(nil), m.Shards...)
	n.Shards[i] = name
	n.shardIdx = make(map[string]int, len(n.Shards))
	for j, s := range n.Shards {
		n.shardIdx[s] = j
	}
	return &n, nil
}
