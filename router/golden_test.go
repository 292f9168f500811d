package router

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/routing/*.txt with the plans the router makes now")

const goldenDir = "../testdata/routing"

// testSchema is the schema of the golden files: pgbench's tables and an
// app-like model.
func testSchema() Schema {
	return Schema{
		Sharded: map[string]string{
			"pgbench_accounts": "aid",
			"pgbench_history":  "aid",
			"pgbench_tellers":  "tid",
			"pgbench_branches": "bid",
			"users":            "id",
			"orders":           "user_id",
			"events":           "tenant",
			"sessions":         "id",
		},
		Reference: map[string]bool{"countries": true, "currencies": true},
	}
}

// goldenCase is one statement of a golden file:
//
//	-- name [expect: words the refusal message must contain]
//	SQL, one or more lines
//	=> plan of the first statement
//	=> plan of the next statement, for multi-statement strings
type goldenCase struct {
	name   string
	expect string
	sql    string
	plans  []string
}

func readGolden(t *testing.T, path string) (header string, cases []goldenCase) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file: %v", err)
	}
	var head []string
	var cur *goldenCase
	var sql []string
	flush := func() {
		if cur != nil {
			cur.sql = strings.TrimSpace(strings.Join(sql, "\n"))
			cases = append(cases, *cur)
		}
		cur, sql = nil, nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "-- "):
			flush()
			name := strings.TrimPrefix(line, "-- ")
			c := goldenCase{name: name}
			if i := strings.Index(name, "[expect: "); i >= 0 && strings.HasSuffix(name, "]") {
				c.expect = name[i+len("[expect: ") : len(name)-1]
			}
			cur = &c
		case cur == nil:
			head = append(head, line)
		case strings.HasPrefix(line, "=> "):
			cur.plans = append(cur.plans, strings.TrimPrefix(line, "=> "))
		case len(cur.plans) > 0:
			// blank lines between cases
		default:
			sql = append(sql, line)
		}
	}
	flush()
	return strings.TrimRight(strings.Join(head, "\n"), "\n"), cases
}

func writeGolden(t *testing.T, path, header string, cases []goldenCase) {
	t.Helper()
	var b strings.Builder
	if header != "" {
		b.WriteString(header)
		b.WriteString("\n\n")
	}
	for _, c := range cases {
		fmt.Fprintf(&b, "-- %s\n%s\n", c.name, c.sql)
		for _, p := range c.plans {
			fmt.Fprintf(&b, "=> %s\n", p)
		}
		b.WriteString("\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("writing golden file: %v", err)
	}
}

func filepathGlob() ([]string, error) { return filepath.Glob(filepath.Join(goldenDir, "*.txt")) }

func TestGolden(t *testing.T) {
	files, err := filepathGlob()
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files in %s: %v", goldenDir, err)
	}
	r := New(testSchema(), 1000)
	total, refused := 0, 0
	for _, f := range files {
		header, cases := readGolden(t, f)
		names := map[string]bool{}
		for i := range cases {
			c := &cases[i]
			if names[c.name] {
				t.Errorf("%s: duplicate case name %q", filepath.Base(f), c.name)
			}
			names[c.name] = true
			parts := r.Analyze(c.sql)
			got := make([]string, len(parts))
			for j, p := range parts {
				got[j] = Describe(p.Stmt)
				if p.Stmt.Kind == plan.Refused {
					refused++
					checkRefusal(t, filepath.Base(f), c, p.Stmt)
				}
			}
			if len(parts) == 0 {
				got = []string{"(empty query)"}
			}
			total++
			if *update {
				c.plans = got
				continue
			}
			if strings.Join(got, "\n") != strings.Join(c.plans, "\n") {
				t.Errorf("%s: %s\nSQL:  %s\ngot:  %s\nwant: %s", filepath.Base(f), c.name, c.sql,
					strings.Join(got, "\n      "), strings.Join(c.plans, "\n      "))
			}
		}
		if *update {
			writeGolden(t, f, header, cases)
		}
	}
	t.Logf("%d golden cases, %d refused plans", total, refused)
	if total < 300 {
		t.Errorf("only %d golden cases, want at least 300", total)
	}
}

// checkRefusal asserts what every refusal must carry: 0A000 (or 42601
// for syntax errors), a message naming the construct the case expects,
// and a hint saying what to do.
func checkRefusal(t *testing.T, file string, c *goldenCase, st *plan.Statement) {
	t.Helper()
	if st.Err == nil {
		t.Errorf("%s: %s: refused without an error", file, c.name)
		return
	}
	if st.Err.Code == wire.CodeSyntaxError {
		return
	}
	if st.Err.Code != wire.CodeFeatureNotSupported {
		t.Errorf("%s: %s: refused with SQLSTATE %s, want 0A000", file, c.name, st.Err.Code)
	}
	if c.expect == "" {
		t.Errorf("%s: %s: refused (%q) but the case has no [expect: construct]", file, c.name, st.Err.Message)
	} else if !strings.Contains(strings.ToLower(st.Err.Message), strings.ToLower(c.expect)) {
		t.Errorf("%s: %s: message %q does not name the construct %q", file, c.name, st.Err.Message, c.expect)
	}
	if st.Err.Hint == "" {
		t.Errorf("%s: %s: refusal without a hint", file, c.name)
	}
}
