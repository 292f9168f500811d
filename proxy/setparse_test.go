package proxy

import (
	"reflect"
	"testing"
)

func TestParseSessionSets(t *testing.T) {
	cases := []struct {
		q    string
		want []setOp
	}{
		{"SELECT 1", nil},
		{"SET application_name = 'x'", []setOp{{name: "application_name", value: "'x'"}}},
		{"set search_path to myschema, public", []setOp{{name: "search_path", value: "myschema, public"}}},
		{"SET SESSION TimeZone TO 'UTC'", []setOp{{name: "timezone", value: "'UTC'"}}},
		{"SET TIME ZONE 'Europe/Paris'", []setOp{{name: "timezone", value: "'Europe/Paris'"}}},
		{"SET LOCAL statement_timeout = 5", nil},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", nil},
		{"SET datestyle TO DEFAULT", []setOp{{name: "datestyle", reset: true}}},
		{"RESET search_path", []setOp{{name: "search_path", reset: true}}},
		{"RESET ALL", []setOp{{all: true}}},
		{"DISCARD ALL", []setOp{{all: true, discard: true}}},
		{"DEALLOCATE ALL", []setOp{{discard: true}}},
		{"/* hi */ SET a.b = 'c;d'; SELECT 1; -- x\nSET x = 1", []setOp{{name: "a.b", value: "'c;d'"}, {name: "x", value: "1"}}},
		{"SET x = $$y$$", nil},
		{"SELECT 'set x = 1'", nil},
	}
	for _, c := range cases {
		got := parseSessionSets(c.q)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %+v, want %+v", c.q, got, c.want)
		}
	}
}

func FuzzParseSessionSets(f *testing.F) {
	f.Add("SET a = 1; RESET b; DISCARD ALL")
	f.Add("/* x */ set time zone 'UTC' -- y")
	f.Add("'unterminated")
	f.Fuzz(func(t *testing.T, q string) {
		for _, op := range parseSessionSets(q) {
			if !op.all && !op.discard && !validGUCName(op.name) {
				t.Fatalf("%q: invalid name %q", q, op.name)
			}
		}
	})
}

func TestResolveSavepoints(t *testing.T) {
	ops := parseSessionSets(`SET a = 1; SAVEPOINT s; SET b = 2; SAVEPOINT "T"; SET c = 3;
		ROLLBACK TO SAVEPOINT s; SET d = 4; RELEASE s; ROLLBACK TO s; SET e = 5`)
	var names []string
	for _, o := range resolveSavepoints(ops) {
		names = append(names, o.name)
	}
	// After RELEASE s, "ROLLBACK TO s" names no savepoint and undoes nothing.
	if want := []string{"a", "d", "e"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("got %v, want %v", names, want)
	}
	if ops := parseSessionSets("ROLLBACK"); ops != nil {
		t.Fatalf("plain ROLLBACK parsed as %+v", ops)
	}
	if ops := parseSessionSets("rollback work to savepoint Sp1"); len(ops) != 1 || ops[0].rollbackTo != "sp1" {
		t.Fatalf("got %+v", ops)
	}
}

// The scan runs on every simple query; a query without SET must cost a
// pass over its bytes and no allocation.
func BenchmarkParseSessionSetsSelect(b *testing.B) {
	q := "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if parseSessionSets(q) != nil {
			b.Fatal("found a SET in a SELECT")
		}
	}
}

func BenchmarkParseSessionSetsUpdate(b *testing.B) {
	// pgbench's UPDATE has "SET" in it: the slow path, still no match.
	q := "UPDATE pgbench_accounts SET abalance = abalance + 10 WHERE aid = 48213;"
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if parseSessionSets(q) != nil {
			b.Fatal("UPDATE ... SET taken for a session SET")
		}
	}
}
