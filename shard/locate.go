package shard

import (
	"fmt"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// Locate returns the indexes of the shards that own key k of a statement
// (sorted, without duplicates, never empty), reading bound parameters
// from p (which may be nil when k is a literal). Errors are *wire.Error
// with the SQLSTATE PostgreSQL would raise for the same input (22P02 for
// `invalid input syntax for type bigint: "abc"`, 22003, 22P03, ...).
//
// A key no row can match (a NULL, an array of NULLs or an empty array)
// goes to the shard that stores NULL keys, so the statement still runs
// somewhere and returns its empty result. A key of a table that is not
// sharded (the map changed since the statement was planned) goes to the
// default shard.
//
// The returned slice may be shared between calls: do not modify it.
func (m *Map) Locate(k plan.Key, p *plan.Params) ([]int, error) {
	t, ok := m.tables[tableKey(k.Table)]
	if !ok {
		return m.one(m.def), nil
	}
	var scratch [64]byte
	switch {
	case k.IsValue:
		v, err := parseLiteral(t.Type, k.Value, scratch[:0])
		if err != nil {
			return nil, err
		}
		return m.one(m.owner(t, &v)), nil
	case k.Null:
		return m.one(m.nullOwner(t)), nil
	case k.Param > 0:
		raw, err := param(p, k.Param)
		if err != nil {
			return nil, err
		}
		if raw == nil {
			return m.one(m.nullOwner(t)), nil
		}
		v, werr := decodeParam(t.Type, p, k.Param, raw, scratch[:0])
		if werr != nil {
			return nil, werr
		}
		return m.one(m.owner(t, &v)), nil
	case k.ArrayParam > 0:
		return m.locateArray(t, p, k.ArrayParam)
	}
	return nil, wire.Errorf(wire.CodeInternalError, "shard key of table %s carries no value", k.Table)
}

func param(p *plan.Params, n int) ([]byte, *wire.Error) {
	if p == nil {
		return nil, wire.Errorf(wire.CodeProtocolViolation, "no value bound for parameter $%d", n)
	}
	raw, ok := p.Value(n)
	if !ok {
		return nil, wire.Errorf(wire.CodeProtocolViolation,
			"bind message supplies %d parameters, but the shard key is $%d", len(p.Values), n)
	}
	return raw, nil
}

func declaredOID(p *plan.Params, n int) uint32 {
	if n-1 < len(p.OIDs) {
		return p.OIDs[n-1]
	}
	return 0
}

// decodeParam decodes non-NULL parameter $n for a key column of type t.
func decodeParam(t KeyType, p *plan.Params, n int, raw []byte, scratch []byte) (value, *wire.Error) {
	oid := declaredOID(p, n)
	if p.Binary(n) {
		return decodeBinary(t, oid, raw, scratch, n)
	}
	return parseTextAs(t, kindOfOID(oid), bytesString(raw), scratch)
}

// parseTextAs parses a text-format value the client declared as kind
// decl (0: not declared or not a key type; PostgreSQL then reads it with
// the column's type). A declared number type other than the column's is
// read as declared and converted, as PostgreSQL would compare it.
func parseTextAs(t KeyType, decl Kind, s string, scratch []byte) (value, *wire.Error) {
	if decl == 0 || decl == t.Kind || decl.isText() {
		return parseText(t, s, scratch)
	}
	v, err := parseText(KeyType{Kind: decl}, s, scratch)
	if err != nil {
		return v, err
	}
	return convert(v, t, scratch)
}

// shardSet collects shard indexes without allocating for up to 256 shards.
type shardSet struct {
	small [4]uint64
	words []uint64
}

func (s *shardSet) init(n int) {
	s.words = s.small[:]
	if n > 64*len(s.small) {
		s.words = make([]uint64, (n+63)/64)
	}
}

func (s *shardSet) add(i int) { s.words[i/64] |= 1 << (i % 64) }

func (m *Map) locateArray(t *Table, p *plan.Params, n int) ([]int, error) {
	raw, err := param(p, n)
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return m.one(m.nullOwner(t)), nil
	}
	var set shardSet
	set.init(len(m.Shards))
	frozen := false
	var numScratch [64]byte
	var werr *wire.Error
	if p.Binary(n) {
		werr = walkBinaryArray(raw, func(elemOID uint32, elem []byte, null bool) *wire.Error {
			if null {
				return nil
			}
			v, err := decodeBinary(t.Type, elemOID, elem, numScratch[:0], n)
			if err != nil {
				return err
			}
			if o := m.owner(t, &v); o == Frozen {
				frozen = true
			} else {
				set.add(o)
			}
			return nil
		})
		if werr == errBinary {
			werr = binaryFormatError(n)
		}
	} else {
		decl := kindOfOID(arrayElem(declaredOID(p, n)))
		var elemScratch [64]byte
		werr = walkTextArray(bytesString(raw), elemScratch[:0], func(elem string, null bool) *wire.Error {
			if null {
				return nil
			}
			v, err := parseTextAs(t.Type, decl, elem, numScratch[:0])
			if err != nil {
				return err
			}
			if o := m.owner(t, &v); o == Frozen {
				frozen = true
			} else {
				set.add(o)
			}
			return nil
		})
	}
	if werr != nil {
		return nil, werr
	}
	if frozen {
		return frozenOwners, nil
	}
	var shards []int
	for w, bits := range set.words {
		for b := 0; bits != 0; b++ {
			if bits&1 != 0 {
				shards = append(shards, w*64+b)
			}
			bits >>= 1
		}
	}
	switch len(shards) {
	case 0:
		return m.one(m.nullOwner(t)), nil
	case 1:
		return m.one(shards[0]), nil
	}
	return shards, nil
}

// ShardOfText returns the shard owning a row whose key is text, as a
// COPY text or CSV field reads after de-escaping (not NULL: see
// ShardOfNull). The text is parsed strictly with the column type's input
// function. A table that is not sharded belongs to the default shard.
func (m *Map) ShardOfText(table, text string) (int, error) {
	t, ok := m.tables[tableKey(table)]
	if !ok {
		return m.def, nil
	}
	var scratch [64]byte
	v, err := parseText(t.Type, text, scratch[:0])
	if err != nil {
		return 0, err
	}
	return m.owner(t, &v), nil
}

// ShardOfBinary returns the shard owning a row whose key is b in the
// column type's binary format (a binary COPY field); nil is NULL.
func (m *Map) ShardOfBinary(table string, b []byte) (int, error) {
	t, ok := m.tables[tableKey(table)]
	if !ok {
		return m.def, nil
	}
	if b == nil {
		return m.nullOwner(t), nil
	}
	var scratch [64]byte
	v, err := decodeBinary(t.Type, 0, b, scratch[:0], 0)
	if err != nil {
		return 0, err
	}
	return m.owner(t, &v), nil
}

// ShardOfNull returns the shard owning rows of table whose key is NULL.
func (m *Map) ShardOfNull(table string) int {
	t, ok := m.tables[tableKey(table)]
	if !ok {
		return m.def
	}
	return m.nullOwner(t)
}

// Slot returns the hash slot of a text-form key of a hash-sharded table.
func (m *Map) Slot(table, text string) (int, error) {
	t, ok := m.tables[tableKey(table)]
	if !ok || t.Method != Hash {
		return 0, fmt.Errorf("table %q is not hash-sharded", table)
	}
	var scratch [64]byte
	v, err := parseText(t.Type, text, scratch[:0])
	if err != nil {
		return 0, err
	}
	return SlotOfHash(v.hash(), len(m.Slots)), nil
}
