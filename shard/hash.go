package shard

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"github.com/shardproxy/shardproxy/config"
)

// PostgreSQL's hash partitioning, bit for bit (PostgreSQL 11 and later,
// little-endian servers): a partition key value v of type T lands in
// remainder (hash_combine64(0, T_hash_extended(v, HashPartitionSeed)) %
// modulus), where T_hash_extended is the type's extended hash support
// function (hashint8extended, hashtextextended, uuid_hash_extended,
// hash_numeric_extended). With the slot count as modulus, the slot of a
// key is the partition PostgreSQL would pick, so PostgreSQL itself can
// compute slots (publication row filters, verification, cleanup).
//
// The Jenkins hash (src/common/hashfn.c) reads the key as little-endian
// 32-bit words and numeric digits as native int16s; on a big-endian server
// PostgreSQL's hashes differ, and this package would not match it.

// HashPartitionSeed is PostgreSQL's HASH_PARTITION_SEED (partition.h).
const HashPartitionSeed uint64 = 0x7A5B22367996DCFD

// combineOffset is what hash_combine64(0, h) adds to h: with a zero
// accumulator the shifts vanish and the XOR is with zero. (hashfn.h's
// constant is 0x49a0f4dd15e5a8e3; the decimal form is 5305509591434766563.)
const combineOffset uint64 = 0x49a0f4dd15e5a8e3

// SlotOfHash returns the slot (partition remainder) of a key whose type
// hash (with HashPartitionSeed) is h.
func SlotOfHash(h uint64, slots int) int {
	return int((h + combineOffset) % uint64(slots))
}

// NullSlot is the slot of a NULL key: PostgreSQL skips NULL columns when
// combining hashes, so the row hash stays 0 and 0 % modulus is 0.
const NullSlot = 0

func rot(x uint32, k int) uint32 { return bits.RotateLeft32(x, k) }

// mix and final are the Jenkins lookup3 mixers as hashfn.c defines them.
func mix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= rot(c, 4)
	c += b
	b -= a
	b ^= rot(a, 6)
	a += c
	c -= b
	c ^= rot(b, 8)
	b += a
	a -= c
	a ^= rot(c, 16)
	c += b
	b -= a
	b ^= rot(a, 19)
	a += c
	c -= b
	c ^= rot(b, 4)
	b += a
	return a, b, c
}

func final(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= rot(b, 14)
	a ^= c
	a -= rot(c, 11)
	b ^= a
	b -= rot(a, 25)
	c ^= b
	c -= rot(b, 16)
	a ^= c
	a -= rot(c, 4)
	b ^= a
	b -= rot(a, 14)
	c ^= b
	c -= rot(b, 24)
	return a, b, c
}

// seeded is the state hash_bytes_*_extended reaches for a key of length n
// after folding in the seed.
func seeded(n int, seed uint64) (a, b, c uint32) {
	a = 0x9e3779b9 + uint32(n) + 3923095
	b, c = a, a
	if seed != 0 {
		a += uint32(seed >> 32)
		b += uint32(seed)
		a, b, c = mix(a, b, c)
	}
	return a, b, c
}

// int state after the partition seed, computed once: integer keys are the
// hot path.
var int4A, int4B, int4C = seeded(4, HashPartitionSeed)

// hashBytesExtended is hash_bytes_extended on a little-endian machine. It
// is generic so that string keys hash without a copy.
func hashBytesExtended[T ~string | ~[]byte](k T, seed uint64) uint64 {
	n := len(k)
	a, b, c := seeded(n, seed)
	i := 0
	for ; n-i >= 12; i += 12 {
		a += uint32(k[i]) | uint32(k[i+1])<<8 | uint32(k[i+2])<<16 | uint32(k[i+3])<<24
		b += uint32(k[i+4]) | uint32(k[i+5])<<8 | uint32(k[i+6])<<16 | uint32(k[i+7])<<24
		c += uint32(k[i+8]) | uint32(k[i+9])<<8 | uint32(k[i+10])<<16 | uint32(k[i+11])<<24
		a, b, c = mix(a, b, c)
	}
	// The lowest byte of c is reserved for the length, so the tail's
	// bytes 8-10 go into c's upper three bytes.
	switch n - i {
	case 11:
		c += uint32(k[i+10]) << 24
		fallthrough
	case 10:
		c += uint32(k[i+9]) << 16
		fallthrough
	case 9:
		c += uint32(k[i+8]) << 8
		fallthrough
	case 8:
		b += uint32(k[i+7]) << 24
		fallthrough
	case 7:
		b += uint32(k[i+6]) << 16
		fallthrough
	case 6:
		b += uint32(k[i+5]) << 8
		fallthrough
	case 5:
		b += uint32(k[i+4])
		fallthrough
	case 4:
		a += uint32(k[i+3]) << 24
		fallthrough
	case 3:
		a += uint32(k[i+2]) << 16
		fallthrough
	case 2:
		a += uint32(k[i+1]) << 8
		fallthrough
	case 1:
		a += uint32(k[i])
	}
	_, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

// HashInt is hashint8extended(v, HashPartitionSeed). hashint2extended and
// hashint4extended give the same value for the same number (int8 folds
// its high half into the low one so that cross-type hash joins work), so
// this serves smallint, integer and bigint keys alike.
func HashInt(v int64) uint64 {
	lo, hi := uint32(v), uint32(uint64(v)>>32)
	if v >= 0 {
		lo ^= hi
	} else {
		lo ^= ^hi
	}
	a, b, c := int4A+lo, int4B, int4C
	_, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

// HashString is hashtextextended(s, HashPartitionSeed) under a
// deterministic collation (C, C.UTF-8, any libc locale): a hash of the
// bytes. Nondeterministic ICU collations hash a sort key instead and are
// not supported.
func HashString(s string) uint64 { return hashBytesExtended(s, HashPartitionSeed) }

// HashBytes is HashString for a key held in a byte slice.
func HashBytes(b []byte) uint64 { return hashBytesExtended(b, HashPartitionSeed) }

// HashUUID is uuid_hash_extended(u, HashPartitionSeed).
func HashUUID(u [16]byte) uint64 { return hashBytesExtended(u[:], HashPartitionSeed) }

// Kind is the family of a key column's type.
type Kind uint8

// Key kinds.
const (
	Int2 Kind = iota + 1
	Int4
	Int8
	Text
	Varchar
	UUID
	Numeric
)

var kindNames = [...]string{"", "smallint", "integer", "bigint", "text", "character varying", "uuid", "numeric"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return "invalid"
}

func (k Kind) isInt() bool  { return k == Int2 || k == Int4 || k == Int8 }
func (k Kind) isText() bool { return k == Text || k == Varchar }

// KeyType is a shard-key column type.
type KeyType struct {
	Kind Kind
	// Scale, when HasScale, is the s of numeric(p,s): PostgreSQL rounds a
	// value to that scale before it stores (and hashes) it, so 1.005 in
	// a numeric(10,2) column is the key 1.01.
	Scale    int
	HasScale bool
	// Precision is the p of numeric(p,s), kept for String only: a value
	// too wide for it is an error on the shard, not a different hash.
	Precision int
}

// Common key types.
var (
	Bigint   = KeyType{Kind: Int8}
	TextType = KeyType{Kind: Text}
)

// ParseKeyType reads a type name as config.ValidKeyType accepts it:
// smallint/int2, integer/int/int4, bigint/int8, text, varchar[(n)] /
// character varying[(n)], uuid, numeric/decimal[(p[,s])].
func ParseKeyType(name string) (KeyType, error) {
	s := strings.ToLower(strings.TrimSpace(name))
	if !config.ValidKeyType(s) {
		return KeyType{}, fmt.Errorf("unsupported shard key type %q (use smallint, integer, bigint, text, varchar, uuid or numeric)", name)
	}
	base, mods := s, ""
	if i := strings.IndexByte(s, '('); i >= 0 {
		base, mods = strings.TrimSpace(s[:i]), s[i+1:len(s)-1]
	}
	switch base {
	case "smallint", "int2":
		return KeyType{Kind: Int2}, nil
	case "integer", "int", "int4":
		return KeyType{Kind: Int4}, nil
	case "bigint", "int8":
		return KeyType{Kind: Int8}, nil
	case "text":
		return KeyType{Kind: Text}, nil
	case "varchar", "character varying":
		// The length limit does not change the hash.
		return KeyType{Kind: Varchar}, nil
	case "uuid":
		return KeyType{Kind: UUID}, nil
	case "numeric", "decimal":
		t := KeyType{Kind: Numeric}
		parts := strings.Split(mods, ",")
		if mods != "" {
			p, err := strconv.Atoi(strings.TrimSpace(parts[0]))
			if err != nil || p < 1 || p > 1000 {
				return KeyType{}, fmt.Errorf("numeric precision in %q must be between 1 and 1000", name)
			}
			t.Precision = p
		}
		if len(parts) == 2 {
			scale, err := strconv.Atoi(strings.TrimSpace(parts[1]))
			if err != nil {
				return KeyType{}, fmt.Errorf("bad scale in shard key type %q: %w", name, err)
			}
			// PostgreSQL 15 allows -1000..1000 for the scale.
			if scale < -1000 || scale > 1000 {
				return KeyType{}, fmt.Errorf("numeric scale %d in %q must be between -1000 and 1000", scale, name)
			}
			t.Scale, t.HasScale = scale, true
		} else if mods != "" {
			// numeric(p) means numeric(p,0).
			t.HasScale = true
		}
		return t, nil
	}
	return KeyType{}, fmt.Errorf("unsupported shard key type %q", name)
}

// String is the type's SQL name.
// IsInteger reports smallint, integer and bigint keys.
func (t KeyType) IsInteger() bool { return t.Kind.isInt() }

func (t KeyType) String() string {
	if t.Kind == Numeric && t.HasScale {
		return fmt.Sprintf("numeric(%d,%d)", t.Precision, t.Scale)
	}
	return t.Kind.String()
}

// HashFunc is the SQL name of PostgreSQL's extended hash function for the
// type, as used by hash partitioning.
func (t KeyType) HashFunc() string {
	switch t.Kind {
	case Int2:
		return "hashint2extended"
	case Int4:
		return "hashint4extended"
	case Int8:
		return "hashint8extended"
	case Text, Varchar:
		return "hashtextextended"
	case UUID:
		return "uuid_hash_extended"
	case Numeric:
		return "hash_numeric_extended"
	}
	return ""
}

// SlotExpr is a SQL expression computing the slot of column col (an SQL
// identifier, quoted as needed by the caller) with the given slot count,
// in plain SQL with built-in immutable functions only, so it is accepted
// in a publication row filter. A NULL key yields slot 0, as in
// PostgreSQL's hash partitioning.
//
// The hash is a signed bigint standing for an unsigned 64-bit value. For a
// power-of-two slot count (the default 256) the slot is just the low bits
// of hash + offset, which bigint bitwise arithmetic computes without
// overflow: several times cheaper per row than the numeric form PRODUCT.md
// spells out, which matters in row filters, policies, checksums and
// deletes that evaluate it for every row. Other counts use the numeric
// form. Both equal PostgreSQL's partition choice (pghash_test.go).
func SlotExpr(col string, t KeyType, slots int) string {
	if slots > 0 && slots&(slots-1) == 0 {
		mask := uint64(slots - 1)
		return fmt.Sprintf("coalesce(((%s(%s, %d) & %d) + %d) & %d, 0)",
			t.HashFunc(), col, int64(HashPartitionSeed), mask, combineOffset&mask, mask)
	}
	return NumericSlotExpr(col, t, slots)
}

// NumericSlotExpr is the slot expression in numeric arithmetic, valid for
// any slot count (the form PRODUCT.md gives).
func NumericSlotExpr(col string, t KeyType, slots int) string {
	return fmt.Sprintf("coalesce(((%s(%s, %d)::numeric + %d + 18446744073709551616) %% 18446744073709551616) %% %d, 0)",
		t.HashFunc(), col, int64(HashPartitionSeed), combineOffset, slots)
}

// HashText returns the type hash of a key given in PostgreSQL's text
// form, parsed exactly as the type's input function parses it (COPY
// text/csv fields after de-escaping, text-format parameters). Invalid
// input returns a *wire.Error with PostgreSQL's SQLSTATE and message.
func HashText(t KeyType, text string) (uint64, error) {
	var scratch [64]byte
	v, err := parseText(t, text, scratch[:0])
	if err != nil {
		return 0, err
	}
	return v.hash(), nil
}

// HashBinary returns the type hash of a key given in the type's binary
// send/recv format (binary COPY fields and parameters).
func HashBinary(t KeyType, b []byte) (uint64, error) {
	var scratch [64]byte
	v, err := decodeBinary(t, 0, b, scratch[:0], 0)
	if err != nil {
		return 0, err
	}
	return v.hash(), nil
}

// SlotOfText is the slot of a text-form key: SlotOfHash(HashText(...)).
func SlotOfText(t KeyType, text string, slots int) (int, error) {
	h, err := HashText(t, text)
	if err != nil {
		return 0, err
	}
	return SlotOfHash(h, slots), nil
}
