package merge

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// These tests hold our encoders to PostgreSQL's own output for many
// values, beyond what the differential queries happen to produce.

// textAndBinary runs sql (one column) and returns each row's value in
// text and in binary format.
func textAndBinary(t *testing.T, c *pgconn.PgConn, sql string) (text, bin [][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Materialize first: random() must give the same values to both reads.
	load := "DROP TABLE IF EXISTS pg_values; CREATE TEMP TABLE pg_values AS SELECT row_number() OVER () AS i, v FROM (" + sql + ") s"
	if _, err := c.Exec(ctx, load).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	for _, f := range []int16{0, 1} {
		res := c.ExecParams(ctx, "SELECT v FROM pg_values ORDER BY i", nil, nil, nil, []int16{f}).Read()
		if res.Err != nil {
			t.Fatalf("%s: %v", sql, res.Err)
		}
		for _, r := range res.Rows {
			if f == 0 {
				text = append(text, r[0])
			} else {
				bin = append(bin, r[0])
			}
		}
	}
	if len(text) != len(bin) || len(text) == 0 {
		t.Fatalf("%s: %d text rows, %d binary rows", sql, len(text), len(bin))
	}
	return text, bin
}

func TestFloatTextMatchesPostgres(t *testing.T) {
	c := pgConn(t)
	// Powers of ten around both notation thresholds, awkward fractions,
	// extremes, negatives and random doubles.
	text, bin := textAndBinary(t, c, `
		SELECT v FROM (
		  SELECT (10::float8 ^ e) * m AS v FROM generate_series(-300, 300) e, unnest(ARRAY[1, 1.5, -7.25, 1/3.0, 123456789.123]::float8[]) m
		  UNION ALL SELECT x FROM unnest(ARRAY['NaN','Infinity','-Infinity','-0','0', 5e-324, 2.2250738585072014e-308,
		                 1.7976931348623157e308, 0.1, 0.30000000000000004, 1e15, 999999999999999, 1e14, 123456789012345678]::float8[]) x
		  UNION ALL SELECT (random() - 0.5) * 10 ^ (random() * 40 - 20) FROM generate_series(1, 2000)
		) s WHERE v IS NOT NULL`)
	for i := range text {
		f := math.Float64frombits(binary.BigEndian.Uint64(bin[i]))
		if got := appendPGFloat(nil, f, 64); !bytes.Equal(got, text[i]) {
			t.Errorf("float8 %v: got %s, PostgreSQL %s", f, got, text[i])
		}
	}
	text, bin = textAndBinary(t, c, `
		SELECT v FROM (
		  SELECT ((10::float8 ^ e) * m)::real AS v FROM generate_series(-40, 35) e, unnest(ARRAY[1, 1.5, -7.25, 1/3.0, 1234.567]::float8[]) m
		  UNION ALL SELECT x FROM unnest(ARRAY['NaN','Infinity','-0', 1e6, 999999, 123456, 1234567, 1e-5, 0.0001]::real[]) x
		  UNION ALL SELECT ((random() - 0.5) * 10 ^ (random() * 20 - 10))::real FROM generate_series(1, 2000)
		) s WHERE v IS NOT NULL`)
	for i := range text {
		f := math.Float32frombits(binary.BigEndian.Uint32(bin[i]))
		if got := appendPGFloat(nil, float64(f), 32); !bytes.Equal(got, text[i]) {
			t.Errorf("float4 %v: got %s, PostgreSQL %s", f, got, text[i])
		}
	}
}

func TestNumericCodecMatchesPostgres(t *testing.T) {
	c := pgConn(t)
	text, bin := textAndBinary(t, c, `
		SELECT v FROM (
		  SELECT round(((random() - 0.5) * 10 ^ (random() * 60 - 30))::numeric, s) AS v
		    FROM generate_series(1, 3000) i, LATERAL (SELECT (i % 40) AS s) sc
		  UNION ALL SELECT x FROM unnest(ARRAY['NaN','Infinity','-Infinity', '0', '0.000', '-0.0', '1', '10000', '100000000',
		      '0.0001', '0.00010', '12345678901234567890123456789.123456789', '-0.5', '9999.9999', '1e-40', '1e40',
		      '100.00', '0.1000000000000000000000000001']::numeric[]) x
		) s WHERE v IS NOT NULL`)
	for i := range text {
		var fromText, fromBin decimal
		if err := parseDecimal(text[i], &fromText); err != nil {
			t.Fatalf("parse %s: %v", text[i], err)
		}
		if err := decodeDecimalBinary(bin[i], &fromBin); err != nil {
			t.Fatalf("decode binary of %s: %v", text[i], err)
		}
		if got := fromText.appendBinary(nil); !bytes.Equal(got, bin[i]) {
			t.Errorf("%s: binary %x, PostgreSQL %x", text[i], got, bin[i])
		}
		if got := fromBin.appendText(nil); !bytes.Equal(got, text[i]) {
			t.Errorf("%s: binary decoded and printed as %s", text[i], got)
		}
	}
}

// TestAvgDivisionMatchesPostgres checks divAvg against numeric_div, which
// is what avg() of integers and numerics ends with.
func TestAvgDivisionMatchesPostgres(t *testing.T) {
	c := pgConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := c.ExecParams(ctx, `
		SELECT s::text, n::text, (s / n::numeric)::text FROM (
		  SELECT round(((random() - 0.5) * 10 ^ (random() * 50 - 20))::numeric, (i % 25)) AS s,
		         (1 + floor(random() * 10 ^ (random() * 12)))::bigint AS n
		    FROM generate_series(1, 4000) i
		  UNION ALL SELECT s, n FROM unnest(ARRAY[0, 0.00, 5, -5, 1, 9999, 10000, 1e20, 0.0001, 2.5]::numeric[]) s,
		                             unnest(ARRAY[1, 2, 3, 7, 9999, 10000, 10001, 123456789012]::bigint[]) n
		) x`, nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	for _, r := range res.Rows {
		var sum, q decimal
		if err := parseDecimal(r[0], &sum); err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(string(r[1]), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		q.divAvg(&sum, n)
		if got := q.appendText(nil); !bytes.Equal(got, r[2]) {
			t.Errorf("%s / %d: got %s, PostgreSQL %s", r[0], n, got, r[2])
		}
	}
}
