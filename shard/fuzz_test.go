package shard

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
)

var fuzzKeyTypes = []string{"smallint", "integer", "bigint", "text", "varchar", "uuid", "numeric", "numeric(10,2)"}

// refInt is a reference for int2in/int4in/int8in: white space (C isspace)
// around an optionally signed run of decimal digits, within the type's range.
func refInt(s string, bits int) (int64, bool) {
	s = strings.Trim(s, " \t\n\r\v\f")
	if s == "" || strings.ContainsAny(s, "_") {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, bits)
	return v, err == nil
}

func keyTypeBits(k Kind) int {
	switch k {
	case Int2:
		return 16
	case Int4:
		return 32
	}
	return 64
}

func appendBE(b []byte, v int64, bits int) []byte {
	switch bits {
	case 16:
		return binary.BigEndian.AppendUint16(b, uint16(int16(v)))
	case 32:
		return binary.BigEndian.AppendUint32(b, uint32(int32(v)))
	}
	return binary.BigEndian.AppendUint64(b, uint64(v))
}

// FuzzHash feeds arbitrary text to every key type's text input. HashText
// must not panic; when it accepts the text, SlotOfText must agree with
// SlotOfHash and stay in range; integers must parse exactly as the
// reference does and hash the same in binary form (at every width, since
// PostgreSQL hashes equal int2/int4/int8 values alike); text hashes as its
// bytes; a uuid hashes as its 16 bytes and as its canonical spelling.
func FuzzHash(f *testing.F) {
	for _, s := range []string{
		"0", "1", "-1", "+42", "  7  ", "\t-32768\n", "32767", "32768", "-2147483648", "2147483648",
		"9223372036854775807", "-9223372036854775808", "9223372036854775808", "1_000", "0x10", "",
		" ", "-", "1.5", "1.005", "-0.00", "1e3", "NaN", "Infinity", "-inf", "12345678.999",
		"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}",
		"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", "héllo", "\x00\xff",
	} {
		f.Add(s)
	}
	types := make([]KeyType, len(fuzzKeyTypes))
	for i, n := range fuzzKeyTypes {
		t, err := ParseKeyType(n)
		if err != nil {
			f.Fatalf("ParseKeyType(%q): %v", n, err)
		}
		types[i] = t
	}
	f.Fuzz(func(t *testing.T, s string) {
		for i, kt := range types {
			name := fuzzKeyTypes[i]
			h, err := HashText(kt, s)
			slot, serr := SlotOfText(kt, s, 256)
			if (err == nil) != (serr == nil) {
				t.Fatalf("%s %q: HashText err %v, SlotOfText err %v", name, s, err, serr)
			}
			if kt.IsInteger() {
				bits := keyTypeBits(kt.Kind)
				v, ok := refInt(s, bits)
				if ok != (err == nil) {
					t.Fatalf("%s %q: reference parse ok=%v (%d), HashText err %v", name, s, ok, v, err)
				}
				if ok {
					if h != HashInt(v) {
						t.Fatalf("%s %q: HashText %x, HashInt(%d) %x", name, s, h, v, HashInt(v))
					}
					for _, w := range []int{16, 32, 64} {
						if w < bits && (v < -(1<<(w-1)) || v >= 1<<(w-1)) {
							continue
						}
						bh, berr := HashBinary(kt, appendBE(nil, v, w))
						if berr != nil || bh != h {
							t.Fatalf("%s %q: binary int%d form hash %x err %v, text hash %x", name, s, w/8, bh, berr, h)
						}
					}
				}
			}
			if err != nil {
				continue
			}
			if want := SlotOfHash(h, 256); slot != want {
				t.Fatalf("%s %q: SlotOfText %d, SlotOfHash %d", name, s, slot, want)
			}
			if slot < 0 || slot >= 256 {
				t.Fatalf("%s %q: slot %d out of range", name, s, slot)
			}
			switch {
			case kt.Kind == Text || kt.Kind == Varchar:
				if h != HashString(s) {
					t.Fatalf("%s %q: hash differs from HashString", name, s)
				}
				if bh, berr := HashBinary(kt, []byte(s)); berr != nil || bh != h {
					t.Fatalf("%s %q: binary hash %x err %v, text %x", name, s, bh, berr, h)
				}
			case kt.Kind == UUID:
				u, perr := parseUUID(s)
				if perr != nil {
					t.Fatalf("uuid %q: HashText ok but parseUUID: %v", s, perr)
				}
				if h != HashUUID(u) {
					t.Fatalf("uuid %q: hash differs from HashUUID", s)
				}
				if bh, berr := HashBinary(kt, u[:]); berr != nil || bh != h {
					t.Fatalf("uuid %q: binary hash %x err %v, text %x", s, bh, berr, h)
				}
				x := hex.EncodeToString(u[:])
				canon := x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
				if ch, cerr := HashText(kt, canon); cerr != nil || ch != h {
					t.Fatalf("uuid %q: canonical %q hash %x err %v, text %x", s, canon, ch, cerr, h)
				}
			case kt.Kind == Numeric:
				// An integer-valued input hashes as that integer's numeric.
				if v, ok := refInt(s, 64); ok {
					var scratch [64]byte
					if want := decimalFromInt(v, scratch[:0]); h != want.hash() {
						t.Fatalf("%s %q: hash %x, numeric %d hashes %x", name, s, h, v, want.hash())
					}
					if ch, cerr := HashText(kt, strconv.FormatInt(v, 10)); cerr != nil || ch != h {
						t.Fatalf("%s %q: canonical %d hash %x err %v, text %x", name, s, v, ch, cerr, h)
					}
				}
			}
		}
	})
}

// FuzzSlotOfText checks the slot of an accepted key for any slot count:
// SlotOfText equals SlotOfHash(HashText) and lies in [0, slots).
func FuzzSlotOfText(f *testing.F) {
	f.Add("42", uint16(256))
	f.Add("-1", uint16(1))
	f.Add("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", uint16(7))
	f.Add("1.005", uint16(1000))
	f.Add("hello", uint16(65535))
	types := make([]KeyType, len(fuzzKeyTypes))
	for i, n := range fuzzKeyTypes {
		types[i], _ = ParseKeyType(n)
	}
	f.Fuzz(func(t *testing.T, s string, n uint16) {
		slots := int(n)
		if slots == 0 {
			slots = 256
		}
		for i, kt := range types {
			h, err := HashText(kt, s)
			slot, serr := SlotOfText(kt, s, slots)
			if (err == nil) != (serr == nil) {
				t.Fatalf("%s %q: HashText err %v, SlotOfText err %v", fuzzKeyTypes[i], s, err, serr)
			}
			if err != nil {
				continue
			}
			if want := SlotOfHash(h, slots); slot != want || slot < 0 || slot >= slots {
				t.Fatalf("%s %q slots %d: SlotOfText %d, SlotOfHash %d", fuzzKeyTypes[i], s, slots, slot, want)
			}
		}
	})
}
