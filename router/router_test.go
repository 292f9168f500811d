package router

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

func TestCacheHitDoesNotAllocate(t *testing.T) {
	r := New(testSchema(), 100)
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
	first := r.Analyze(sql)
	allocs := testing.AllocsPerRun(1000, func() {
		parts := r.Analyze(sql)
		if len(parts) != 1 || parts[0].Stmt != first[0].Stmt {
			t.Fatal("cache hit returned a different plan")
		}
	})
	if allocs != 0 {
		t.Fatalf("cache hit allocates %.1f times per call, want 0", allocs)
	}
}

func TestCacheIsBounded(t *testing.T) {
	r := New(testSchema(), 64)
	for i := 0; i < 1000; i++ {
		r.Analyze(fmt.Sprintf("SELECT * FROM users WHERE id = %d", i))
	}
	if n := r.cache.len(); n > 64 || n < 32 {
		t.Fatalf("cache holds %d texts, want at most 64 (and not far fewer)", n)
	}
	// A hot text survives a stream of one-off texts: CLOCK gives it a
	// second chance on every lap.
	hot := "SELECT * FROM users WHERE id = $1"
	hotPlan := r.Analyze(hot)[0].Stmt
	for i := 0; i < 1000; i++ {
		r.Analyze(fmt.Sprintf("SELECT * FROM orders WHERE user_id = %d", i))
		if got := r.Analyze(hot)[0].Stmt; got != hotPlan {
			t.Fatalf("hot statement evicted after %d one-off statements", i)
		}
	}
}

func TestCacheBoundsBytes(t *testing.T) {
	r := New(testSchema(), 100)
	pad := strings.Repeat("x", 10<<10)
	for i := 0; i < 300; i++ {
		r.Analyze(fmt.Sprintf("SELECT '%s' FROM users WHERE id = %d", pad, i))
	}
	total, budget := 0, 0
	for i := range r.cache.shards {
		s := &r.cache.shards[i]
		if len(s.ring) != len(s.m) {
			t.Fatalf("shard %d: ring holds %d entries, map %d", i, len(s.ring), len(s.m))
		}
		total += s.bytes
		budget += s.maxBytes
	}
	if total > budget {
		t.Fatalf("cache holds %d bytes, budget %d", total, budget)
	}
	if n := r.cache.len(); n >= 100 {
		t.Fatalf("%d long texts cached: the byte budget did not bind", n)
	}
}

func TestCacheDisabled(t *testing.T) {
	r := New(testSchema(), 0)
	a := r.Analyze("SELECT 1")[0].Stmt
	b := r.Analyze("SELECT 1")[0].Stmt
	if a == b {
		t.Fatal("cache size 0 still caches")
	}
}

func TestSyntaxErrorsAreNotCached(t *testing.T) {
	r := New(testSchema(), 100)
	for i := 0; i < 10; i++ {
		parts := r.Analyze(fmt.Sprintf("SELEC %d", i))
		if len(parts) != 1 || parts[0].Stmt.Kind != plan.Refused || parts[0].Stmt.Err.Code != wire.CodeSyntaxError {
			t.Fatalf("bad plan for a syntax error: %+v", parts)
		}
	}
	if n := r.cache.len(); n != 0 {
		t.Fatalf("%d syntax errors cached", n)
	}
}

func TestConcurrentAnalyze(t *testing.T) {
	r := New(testSchema(), 50)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				sql := fmt.Sprintf("SELECT * FROM users WHERE id = %d", (i*7+g)%120)
				parts := r.Analyze(sql)
				if len(parts) != 1 || parts[0].Stmt.Kind != plan.Keyed {
					t.Errorf("%s: %s", sql, Describe(parts[0].Stmt))
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestPartsCutFromText(t *testing.T) {
	r := New(testSchema(), 10)
	parts := r.Analyze("  BEGIN;\n /* c */ SELECT 'a;b' FROM users WHERE id = 1 ;SELECT 2  ")
	got := make([]string, len(parts))
	for i, p := range parts {
		got[i] = p.SQL
	}
	want := []string{"BEGIN", "/* c */ SELECT 'a;b' FROM users WHERE id = 1", "SELECT 2"}
	if !slices.Equal(got, want) {
		t.Fatalf("parts %q, want %q", got, want)
	}
}

func TestHints(t *testing.T) {
	cases := map[string]plan.Hints{
		"/* shardproxy: shard=s1, target=replica, explain=on */ SELECT 1": {Shard: "s1", Target: "replica", Explain: true},
		"/*shardproxy:max_replica_lag='2s'*/SELECT 1":                     {MaxReplicaLag: "2s"},
		"/* SHARDPROXY: shardproxy.shard = \"x y\" */ SELECT 1":           {Shard: "x y"},
		"SELECT 1 /* shardproxy: shard=s1 */":                             {},
		"/* shardproxy: explain=off */ SELECT 1":                          {},
	}
	for sql, want := range cases {
		if got := parseHints(sql); got != want {
			t.Errorf("%s: hints %+v, want %+v", sql, got, want)
		}
	}
}

func TestInsertRender(t *testing.T) {
	r := New(testSchema(), 10)
	st := r.Analyze("INSERT INTO users (id, name) VALUES ($1, $2), ($3, 'x'), (7, $4) ON CONFLICT (id) DO UPDATE SET name = $5")[0].Stmt
	if st.Kind != plan.InsertSplit {
		t.Fatalf("plan %s", Describe(st))
	}
	cases := []struct {
		rows   []int
		sql    string
		params []int
	}{
		{[]int{0}, "INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = $3", []int{1, 2, 5}},
		{[]int{1}, "INSERT INTO users (id, name) VALUES ($1, 'x') ON CONFLICT (id) DO UPDATE SET name = $2", []int{3, 5}},
		{[]int{0, 2}, "INSERT INTO users (id, name) VALUES ($1, $2), (7, $3) ON CONFLICT (id) DO UPDATE SET name = $4", []int{1, 2, 4, 5}},
		{[]int{2}, "INSERT INTO users (id, name) VALUES (7, $1) ON CONFLICT (id) DO UPDATE SET name = $2", []int{4, 5}},
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { // concurrent renders share the memo
			defer wg.Done()
			for _, c := range cases {
				sql, params := st.Insert.Render(c.rows)
				if sql != c.sql || !slices.Equal(params, c.params) {
					t.Errorf("rows %v: %q %v, want %q %v", c.rows, sql, params, c.sql, c.params)
				}
				params[0] = -1 // callers may keep and modify the slice
			}
		}()
	}
	wg.Wait()
	if sql, _ := st.Insert.Render([]int{5}); sql != "" {
		t.Errorf("rendering a row that does not exist gave %q", sql)
	}
}

func TestMergeResolve(t *testing.T) {
	st := New(testSchema(), 0).Analyze("SELECT * FROM users ORDER BY created_at DESC, lower(name) LIMIT 3")[0].Stmt
	m := st.Merge
	if m == nil || !m.Relative || m.Visible != -1 || m.Hidden != 2 {
		t.Fatalf("merge %s", Describe(st))
	}
	abs := m.Resolve(7) // 5 columns from *, 2 hidden
	if abs.Relative || abs.Visible != 5 || abs.OrderBy[0].Col != 5 || abs.OrderBy[1].Col != 6 {
		t.Fatalf("resolved %+v", abs)
	}
	if m.OrderBy[0].Col != -2 {
		t.Fatal("Resolve changed the shared plan")
	}
}

var paramRe = regexp.MustCompile(`\$[0-9]+`)

// TestShardSQL checks every rewritten statement of the golden files: it
// parses, and it takes exactly the client's parameters, so the Bind can
// be forwarded unchanged.
func TestShardSQL(t *testing.T) {
	r := New(testSchema(), 0)
	n := 0
	forEachGolden(t, func(file string, c goldenCase) {
		for _, p := range r.Analyze(c.sql) {
			if p.Stmt.ShardSQL == "" {
				continue
			}
			n++
			if _, err := pg_query.Parse(p.Stmt.ShardSQL); err != nil {
				t.Errorf("%s: %s: shard SQL %q does not parse: %v", file, c.name, p.Stmt.ShardSQL, err)
			}
			if a, b := paramSet(p.SQL), paramSet(p.Stmt.ShardSQL); !slices.Equal(a, b) {
				t.Errorf("%s: %s: shard SQL takes parameters %v, the client's text %v", file, c.name, b, a)
			}
		}
	})
	if n < 20 {
		t.Errorf("only %d rewritten statements checked", n)
	}
}

func paramSet(sql string) []string {
	seen := map[string]bool{}
	for _, m := range paramRe.FindAllString(sql, -1) {
		seen[m] = true
	}
	out := make([]string, 0, len(seen))
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// TestPlansAreConsistent checks invariants the executor relies on.
func TestPlansAreConsistent(t *testing.T) {
	r := New(testSchema(), 0)
	forEachGolden(t, func(file string, c goldenCase) {
		for _, p := range r.Analyze(c.sql) {
			st := p.Stmt
			where := fmt.Sprintf("%s: %s", file, c.name)
			switch st.Kind {
			case plan.Keyed:
				if len(st.Keys) == 0 {
					t.Errorf("%s: keyed without keys", where)
				}
			case plan.InsertSplit:
				if st.Insert == nil || len(st.Insert.Rows) < 2 {
					t.Errorf("%s: insert split without rows", where)
				}
			case plan.Local:
				if st.Control == nil {
					t.Errorf("%s: local without control", where)
				}
			case plan.CopyIn:
				if st.Copy == nil || st.Copy.KeyColumn == "" {
					t.Errorf("%s: copy-in without key", where)
				}
			case plan.Refused:
				if st.Err == nil {
					t.Errorf("%s: refused without error", where)
				}
			}
			for _, k := range st.Keys {
				n := 0
				for _, set := range []bool{k.IsValue, k.Null, k.Param > 0, k.ArrayParam > 0} {
					if set {
						n++
					}
				}
				if n != 1 || k.Table == "" || k.Column == "" {
					t.Errorf("%s: malformed key %+v", where, k)
				}
			}
			if m := st.Merge; m != nil {
				checkMerge(t, where, m)
			}
		}
	})
}

func checkMerge(t *testing.T, where string, m *plan.Merge) {
	t.Helper()
	width := m.Visible + m.Hidden
	if m.Relative {
		width = 1000 + m.Hidden // any row wide enough for the *
	}
	r := m.Resolve(width)
	check := func(what string, c int) {
		if c < 0 || c >= width {
			t.Errorf("%s: %s column %d outside %d columns", where, what, c, width)
		}
	}
	for _, c := range r.GroupBy {
		check("group", c)
	}
	for _, a := range r.Aggregates {
		check("aggregate", a.Col)
		if a.Func == plan.AggAvg {
			check("avg count", a.CountCol)
			if a.CountCol < r.Visible {
				t.Errorf("%s: avg count column %d is visible", where, a.CountCol)
			}
		}
	}
	for _, f := range r.Having {
		check("having", f.Col)
	}
	for _, s := range r.OrderBy {
		check("order", s.Col)
	}
	if !m.Grouped && len(m.Aggregates) > 0 {
		t.Errorf("%s: aggregates without grouping", where)
	}
}

func forEachGolden(t *testing.T, fn func(file string, c goldenCase)) {
	t.Helper()
	files, err := filepathGlob()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		_, cases := readGolden(t, f)
		for _, c := range cases {
			fn(f, c)
		}
	}
}

// FuzzAnalyze feeds the router arbitrary text: it must never panic (a
// router bug shows as an internal-error refusal, which the fuzzer also
// reports) and every plan must render.
func FuzzAnalyze(f *testing.F) {
	files, _ := filepathGlob()
	for _, file := range files {
		_, cases := readGolden(&testing.T{}, file)
		for _, c := range cases {
			f.Add(c.sql)
		}
	}
	r := New(testSchema(), 100)
	f.Fuzz(func(t *testing.T, sql string) {
		for _, p := range r.Analyze(sql) {
			if p.Stmt.Kind == plan.Refused && p.Stmt.Err.Code == wire.CodeInternalError {
				t.Fatalf("%q: %s", sql, p.Stmt.Err.Message)
			}
			_ = Describe(p.Stmt)
		}
	})
}
